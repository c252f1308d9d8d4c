"""ReX against rex-xai 0.4.1: explanation quality against model evaluations and wall time per image, by engine.

    python benchmarks/rex_vs_rexxai.py [--ckpt classifier.ckpt] [--n-images 32] [--first-image 0] \
        [--threads 2] [--device cpu|cuda] [--rexxai-python /tmp/rexxai-venv/bin/python | --no-rexxai] \
        [--rows "frugal|N = 20"]
    python benchmarks/rex_vs_rexxai.py --photos DIR --model SPEC --img-size 128 [--rows preset --engines eager,onnx]

Rows: ours at N = 5, 10, 20 and adaptive (`n_partitions: auto`) on the eager engine, N = 20 without the mutant
cache, N = 3, 5, 10 with a frugal extraction (8 candidate sizes per round, a check of 16 below), a frugal search
(N = 6 near-central splits down to 160 px, rex-xai's unshared superpixel responsibility, ties broken by a blurred
map, frugal extraction), a focused frugal search (coarser, 256 px, the last of 6 partitions refined inside the top
pixels' box, h-Shap) and the same with 2 of 5 partitions focused, pruned and graded variants, N = 20 with the
tie-break and the frugal extraction, and N = 20 and adaptive on the compile and onnx engines; rex-xai 0.4.1 at N =
5, 10, 20 on ONNX Runtime, the way its users run it (an exported `.onnx` model through its own
`get_prediction_function`, CPU provider, its default session options), and at N = 20 on the same torch model
(TorchScript) for the like-for-like row; ours with its presets (`preset: paper`, `preset: fast`, and
`preset: fast` on the onnx engine when `--engines` names onnx). `--rows preset --engines eager,onnx` runs only the
preset rows and rex-xai at its defaults (N = 20, ONNX Runtime), which always runs. Every row sees the same model,
images, masked colour (the model's mean colour; rex-xai: 0 on normalised images) and CPU threads.

Photograph mode (`--photos DIR --model SPEC`): the image files of DIR (sorted by name) at the model's size (resized
and centre-cropped as explain.py does), SPEC anything explain.py's `--model` takes (a checkpoint, `timm:NAME`,
`package.module:factory`, a TorchScript or torch.export file; loaded by `evaluation.load_models`). There is no
object mask, so IN is omitted; masked pixels take the model's mean colour when it has one (`mean`), else black (0),
for both tools.

Quality is measured the same way for both tools, on each tool's own map and extracted explanation: median and mean
explanation size, normalised insertion and deletion AUC of the map (ReX section 6; our implementation, 50 steps, the
eager engine), IN (fraction of the explanation inside the object). "Evaluations" are the mutants (images) the model
was asked about per image, the full and blank images and the extraction included; seconds are wall time per image
(ours batched over all images, as `explain.py` runs it; rex-xai one image at a time, as it runs).

rex-xai pins numpy 1.26, so it runs in its own virtual environment, made with
`python -m venv /tmp/rexxai-venv && /tmp/rexxai-venv/bin/pip install rex-xai==0.4.1`, called by this file in
`--worker` mode. Without `--ckpt` a small CNN is trained for a few seconds with a fixed seed on the synthetic
training split. Writes the table (`--out X.md`; its header: the command as it ran, the machine, the date, the model
and the images), the paired per-image differences of every quality figure from rex-xai's default row with 95 %
intervals, the per-image values (`X.json`) and a picture of the curve (`X.png`) beside it.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


class _Plain(nn.Module):
    """`model(images) -> logits` around a classifier (drops the optional patch_mask argument); with `mean` and `std`
    it takes normalised images instead, as rex-xai's models do, so that its mask value 0 is our mean colour."""

    def __init__(self, model: nn.Module, mean: torch.Tensor | None = None, std: torch.Tensor | None = None) -> None:
        super().__init__()
        self.model = model
        self.normalised = mean is not None
        if self.normalised:
            self.register_buffer("mean", mean.view(1, 3, 1, 1))
            self.register_buffer("std", std.view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x * self.std + self.mean if self.normalised else x)


def _train_tiny(img_size: int, steps: int, seed: int) -> nn.Module:
    from datamodules import SyntheticDataModule
    from models import build_classifier

    torch.manual_seed(seed)
    dm = SyntheticDataModule(img_size=img_size, n_train=2000, n_val=1, n_test=1, seed=seed)
    data = dm.scenes("train")
    x = torch.stack([data[i]["image"] for i in range(len(data))])
    y = torch.stack([data[i]["label"] for i in range(len(data))])
    model = build_classifier("small_cnn", dm.num_classes, img_size, patch_size=img_size // 4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (128,), generator=g)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _worker(args: argparse.Namespace) -> None:
    """rex-xai on the saved images with the saved model (TorchScript, or ONNX through its own ONNX Runtime runner);
    maps and explanations to `--result`, one JSON list of per-image records on stdout."""
    import numpy as np
    import torch.nn.functional as F
    from PIL import Image
    from rex_xai.lib import ReX as ToolReX
    from rex_xai.responsibility.prediction import from_pytorch_tensor

    torch.set_num_threads(args.threads)
    images, pixels = torch.load(args.images)
    count = {"calls": 0, "images": 0}
    if args.worker_model.endswith(".onnx"):
        from rex_xai.input.onnx import get_prediction_function

        onnx_fn, _ = get_prediction_function(SimpleNamespace(model=args.worker_model, gpu=False, ort_logger=3))

        def prediction_function(mutants, target=None, raw=False, binary_threshold=None):
            count["calls"] += 1
            count["images"] += len(mutants) if isinstance(mutants, list) else mutants.shape[0]
            return onnx_fn(mutants, target=target, raw=raw, binary_threshold=binary_threshold)
    else:
        model = torch.jit.load(args.worker_model).eval()

        def prediction_function(mutants, target=None, raw=False, binary_threshold=None):
            with torch.no_grad():
                count["calls"] += 1
                count["images"] += mutants.shape[0]
                logits = model(mutants)
                return F.softmax(logits, dim=1) if raw else from_pytorch_tensor(logits, target=target)

    records, maps, masks = [], [], []
    for i, (img, pix) in enumerate(zip(images, pixels)):
        path = f"{Path(args.images).parent}/{i}.png"
        Image.fromarray((pix.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), "RGB").save(path)
        count.update(calls=0, images=0)
        start = time.perf_counter()
        tool = ToolReX(None, [1, *img.shape], "cpu", "RGB", prediction_function)
        tool.args.gpu, tool.args.batch_size, tool.args.iters = False, 14, args.n_partitions
        tool.args.seed, tool.args.progress_bar, tool.args.mask_value = args.seed + i, False, 0
        tool.set_rgb_image(path)
        tool.set_transformed_data(img[None].clone())
        tool.set_target()
        tool.calculate_responsibility()
        tool.extract_sufficient_explanation()
        seconds = time.perf_counter() - start
        mask = tool.explanation.sufficiency_mask.reshape(img.shape).any(0)
        maps.append(torch.as_tensor(tool.explanation.target_map).float().reshape(img.shape[-2:]))
        masks.append(mask.bool())
        records.append({"seconds": seconds, "calls": count["calls"], "evaluations": count["images"],
                        "target": int(tool.data.target.classification)})
    torch.save({"maps": torch.stack(maps), "explanations": torch.stack(masks)}, args.result)
    print(json.dumps(records))


def _rexxai(args: argparse.Namespace, model_path: str, images_path: str, n: int, tmp: str) -> dict:
    """One rex-xai run in its own environment: per-image records, maps and explanations."""
    result = f"{tmp}/rexxai_{Path(model_path).suffix[1:]}_{n}.pt"
    cmd = [args.rexxai_python, __file__, "--worker", "--worker-model", model_path, "--images", images_path, "--result",
           result, "--threads", str(args.threads), "--n-partitions", str(n), "--seed", str(args.seed)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"rex-xai worker failed:\n{proc.stderr[-4000:]}")
    records = json.loads(proc.stdout.strip().splitlines()[-1])
    saved = torch.load(result)
    return {"seconds": [r["seconds"] for r in records], "evaluations": [r["evaluations"] for r in records],
            "target": torch.tensor([r["target"] for r in records]), "maps": saved["maps"],
            "explanations": saved["explanations"], "found": torch.ones(len(records), dtype=torch.bool)}


def _rex_options(row: dict) -> dict:
    """A row's options as ReX takes them: its public options as they are, its other settings (`min_size`,
    `tie_sigma`, ...) as changes to its preset, `paper` where the row names none (the rows of the tuning history
    are Algorithm 3's settings with changes)."""
    from rex import PRESETS, ReXConfig

    public = {f.name for f in dataclasses.fields(ReXConfig)}
    options = {k: v for k, v in row.items() if k in public}
    options.setdefault("preset", "paper")
    settings = {k: v for k, v in row.items() if k not in public}
    if settings:
        options["preset"] = PRESETS[options["preset"]].but(**settings)
    return options


def _ours(model: nn.Module, images: torch.Tensor, options: dict) -> dict:
    """Our ReX on all images in one batch: per-image evaluations, wall seconds, maps and explanations."""
    from explainers import get

    e = get("rex")(model, images, **_rex_options(options))
    n = len(images)
    return {"seconds": [e.seconds / n] * n, "evaluations": e.scores["model_evaluations"].tolist(),
            "target": e.target.cpu(), "maps": e.maps.float().cpu(), "explanations": e.explanation[:, 0].cpu(),
            "found": e.scores["found"].cpu(), "partitions": e.scores.get("partitions")}


def _quality(model: nn.Module, images: torch.Tensor, objects: torch.Tensor | None, run: dict, mask_value: tuple
             ) -> dict:
    """Size, insertion, deletion and IN of a run's maps and explanations, measured the same way for every tool (IN
    is NaN without object masks, as for photographs)."""
    from explainers.metrics import fraction_inside
    from rex.metrics import insertion_deletion

    dev = images.device
    target = run["target"].to(dev)
    _, _, ins, dele = insertion_deletion(model, images, run["maps"].to(dev), target, 50, mask_value=mask_value)
    ex = run["explanations"].to(dev)
    size = torch.where(run["found"].to(dev), ex.flatten(1).float().mean(1), torch.ones(len(ex), device=dev))
    inside = (fraction_inside(ex[:, None], objects.to(dev)) if objects is not None
              else torch.full((len(ex),), float("nan"), device=dev))
    return {"size": size.cpu(), "insertion": ins.cpu(), "deletion": dele.cpu(), "in": inside.cpu()}


def _row(name: str, run: dict, quality: dict, ref: dict | None, ref_deletion: torch.Tensor | None = None) -> dict:
    evals = statistics.mean(run["evaluations"])
    sec = statistics.mean(run["seconds"])
    inside = quality["in"][~quality["in"].isnan()]
    row = {"name": name, "evaluations": evals, "seconds": sec,
           "median_size": quality["size"].median().item(), "mean_size": quality["size"].mean().item(),
           "insertion": quality["insertion"].mean().item(), "deletion": quality["deletion"].mean().item(),
           "in": inside.mean().item() if len(inside) else float("nan"),
           "partitions": (run["partitions"].float().mean().item() if run.get("partitions") is not None else None)}
    diff = quality["deletion"] - ref_deletion if ref_deletion is not None else None
    row["deletion_diff"] = (diff.mean().item(), 2 * diff.std().item() / len(diff) ** 0.5) if diff is not None else None
    row["fewer"] = ref["evaluations"] / evals if ref else 1.0
    row["faster"] = ref["seconds"] / sec if ref else 1.0
    return row


def _no_worse(row: dict, ref: dict) -> bool:
    """Median size, deletion no higher and insertion, IN no lower than the reference's (IN only where known)."""
    in_ok = row["in"] >= ref["in"] or (row["in"] != row["in"] and ref["in"] != ref["in"])
    return (row["median_size"] <= ref["median_size"] and row["deletion"] <= ref["deletion"]
            and row["insertion"] >= ref["insertion"] and in_ok)


REF_NAME = "rex-xai 0.4.1, N = 20, ONNX Runtime"
#: ReX options of the preset rows (`rex.ReXConfig`'s presets), and the engine of their onnx variant
PRESET_ROWS = {"ours, preset paper": {"preset": "paper"}, "ours, preset fast": {"preset": "fast"}}
PRESET_ENGINE_ROWS = {"ours, preset fast, onnx": {"preset": "fast", "engine": "onnx"}}


def _subset(run: dict, keep: torch.Tensor) -> dict:
    """A run's per-image records restricted to the images `keep` (bool)."""
    picked = keep.nonzero().flatten().tolist()
    parts = run.get("partitions")
    return {**run, "seconds": [run["seconds"][i] for i in picked], "evaluations": [run["evaluations"][i] for i in picked],
            "partitions": parts[keep] if parts is not None else None}


def _rows(runs: dict[str, dict], quality: dict[str, dict], keep: torch.Tensor | None = None
          ) -> tuple[list[dict], dict | None]:
    """Table rows of every run and the reference row (rex-xai at its defaults), over all images or those `keep`."""
    def picked(name: str) -> tuple[dict, dict]:
        run, q = runs[name], quality[name]
        return (_subset(run, keep), {k: v[keep] for k, v in q.items()}) if keep is not None else (run, q)

    if REF_NAME not in runs:
        return [_row(name, *picked(name), None) for name in runs], None
    ref_run, ref_quality = picked(REF_NAME)
    ref = _row(REF_NAME, ref_run, ref_quality, None)
    return [_row(name, *picked(name), ref, ref_quality["deletion"]) for name in runs], ref


def _table(rows: list[dict], ref: dict | None) -> list[str]:
    """The markdown table of `rows` against `ref` (rex-xai at its defaults), with the largest no-worse factors."""
    lines = ["| tool | evaluations / image | x fewer | s / image | x faster | partitions | median size | mean size "
             "| insertion | deletion | deletion - rex-xai's (± 2 SE) | IN | no worse |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        parts = f"{r['partitions']:.1f}" if r["partitions"] is not None else ("N" if r["name"].startswith("ours") else "")
        worse = ("yes" if _no_worse(r, ref) else "no") if ref and r["name"] != REF_NAME else ""
        d = r["deletion_diff"]
        diff = f"{d[0]:+.3f} ± {d[1]:.3f}" if d is not None and r["name"] != REF_NAME else ""
        lines.append(
            f"| {r['name']} | {r['evaluations']:.0f} | {r['fewer']:.2f} | {r['seconds']:.3f} | {r['faster']:.2f} | "
            f"{parts} | {r['median_size']:.4f} | {r['mean_size']:.4f} | {r['insertion']:.3f} | {r['deletion']:.3f} | "
            f"{diff} | {_fmt(r['in'])} | {worse} |")
    if ref:
        good = [r for r in rows if r["name"].startswith("ours") and _no_worse(r, ref)]
        best_evals = max(good, key=lambda r: r["fewer"]) if good else None
        best_time = max(good, key=lambda r: r["faster"]) if good else None
        lines += ["", "Largest factors with quality no worse than rex-xai's defaults: "
                  + (f"{best_evals['fewer']:.2f}x fewer evaluations ({best_evals['name']}), "
                     f"{best_time['faster']:.2f}x less wall time ({best_time['name']})." if good else "none.")]
    return lines


def _fmt(v: float) -> str:
    return "–" if v != v else f"{v:.3f}"


QUALITY = (("size", "explanation size", "lower"), ("insertion", "insertion AUC", "higher"),
           ("deletion", "deletion AUC", "lower"), ("in", "IN", "higher"))


def _paired(quality: dict[str, dict], runs: dict[str, dict], keep: torch.Tensor | None = None) -> dict[str, dict]:
    """Per row, for every quality figure: the mean per-image difference from rex-xai's default row on the same
    images, its 95 % interval (mean ± 1.96 standard errors) and n (images where both values are known); and the
    factors in mean model evaluations and mean wall time per image (rex-xai's / the row's)."""
    ref_q, ref_run = quality[REF_NAME], runs[REF_NAME]
    pick = (lambda v: v[keep]) if keep is not None else (lambda v: v)
    idx = keep.nonzero().flatten().tolist() if keep is not None else None

    def mean_of(values: list) -> float:
        return statistics.mean([values[i] for i in idx] if idx is not None else values)

    out = {}
    for name, q in quality.items():
        row = {}
        for key, _, _ in QUALITY:
            d = (pick(q[key]) - pick(ref_q[key])).double()
            d = d[~d.isnan()]
            n = len(d)
            mean = d.mean().item() if n else float("nan")
            half = 1.96 * d.std().item() / n ** 0.5 if n > 1 else float("nan")
            row[key] = {"mean": mean, "low": mean - half, "high": mean + half, "n": n}
        row["evaluations_factor"] = mean_of(ref_run["evaluations"]) / mean_of(runs[name]["evaluations"])
        row["time_factor"] = mean_of(ref_run["seconds"]) / mean_of(runs[name]["seconds"])
        out[name] = row
    return out


def _paired_table(paired: dict[str, dict]) -> list[str]:
    """Markdown table of `_paired`: each row's difference from rex-xai at its defaults, mean [95 % interval] (n)."""
    lines = ["| tool | x fewer evaluations | x less time | "
             + " | ".join(f"{label} - rex-xai's ({better} is better)" for _, label, better in QUALITY) + " |",
             "|---|---|---|" + "---|" * len(QUALITY)]
    for name, row in paired.items():
        if name == REF_NAME:
            continue
        cells = []
        for key, _, _ in QUALITY:
            c = row[key]
            cells.append("–" if c["n"] == 0
                         else f"{c['mean']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}] (n = {c['n']})")
        lines.append(f"| {name} | {row['evaluations_factor']:.2f} | {row['time_factor']:.2f} | "
                     + " | ".join(cells) + " |")
    return lines


def _preset_settings(options: dict) -> dict | None:
    """The settings a row's `preset` stands for at this commit (`rex.presets.PRESETS`), for the JSON record."""
    name = options.get("preset")
    if not isinstance(name, str):
        return None
    from rex.presets import PRESETS

    preset = PRESETS.get(name)
    return dataclasses.asdict(preset) if dataclasses.is_dataclass(preset) else None


def _no_nan(value):
    """JSON-safe: NaN -> None, tuples -> lists, recursively."""
    if isinstance(value, float):
        return None if value != value else value
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_no_nan(v) for v in value]
    return value


def _plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # the engines and the cache change the time, not the explanation: one point per explanation
    shown = [r for r in rows if not any(k in r["name"] for k in (", compile", ", onnx", "no cache", ", torch"))]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    known_in = any(r["in"] == r["in"] for r in shown)  # photographs have no object masks: deletion instead of IN
    for ax, key, label in zip(axes, ("median_size", "insertion", "in" if known_in else "deletion"),
                              ("median explanation size (lower is better)", "insertion AUC (higher is better)",
                               "IN (higher is better)" if known_in else "deletion AUC (lower is better)")):
        for r in shown:
            ours = r["name"].startswith("ours")
            ax.scatter(r["evaluations"], r[key], marker="o" if ours else "s", color="C0" if ours else "C3")
            short = r["name"].replace("ours, ", "").replace("rex-xai 0.4.1, ", "rex-xai ").replace(", eager", "")
            ax.annotate(short.replace(", ONNX Runtime", "").replace(", frugal extraction", " frugal"),
                        (r["evaluations"], r[key]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("model evaluations per image")
        ax.set_title(label, fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", help="Lightning checkpoint of a classifier stage (default: a small CNN trained here)")
    p.add_argument("--n-images", type=int, default=32)
    p.add_argument("--first-image", type=int, default=0, help="index of the first test scene (to hold out others)")
    p.add_argument("--rows", help="regular expression; only rows whose name it matches run (rex-xai N = 20 always)")
    p.add_argument("--img-size", type=int, help="scenes without --ckpt: 64; photographs: the model's input size "
                   "(default: its own, else 224, as explain.py)")
    p.add_argument("--photos", help="folder of photographs (PNG / JPEG ...): explain them instead of synthetic scenes")
    p.add_argument("--model", help="with --photos: the model, anything explain.py's --model takes (a checkpoint, "
                   "timm:NAME, package.module:factory, a TorchScript / torch.export file)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--engines", default="eager,compile,onnx")
    p.add_argument("--rexxai-python", default="/tmp/rexxai-venv/bin/python")
    p.add_argument("--no-rexxai", action="store_true", help="ours only (e.g. on a machine without rex-xai)")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/rex_vs_rexxai.md"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker-model", help=argparse.SUPPRESS)
    p.add_argument("--images", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--n-partitions", type=int, default=20, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        _worker(args)
        return

    sys.path.insert(0, str(ROOT))
    from datamodules import SyntheticDataModule
    from evaluation import discover, provenance
    from models import expand_fill

    discover()
    torch.set_num_threads(args.threads)
    if bool(args.photos) != bool(args.model):
        p.error("--photos and --model go together")
    if args.photos:
        from evaluation import ImageFiles, load_models

        loaded = load_models(args.model, args.img_size)
        classifier, args.img_size = loaded.classifier.eval(), loaded.img_size
        source = f"`{args.model}` ({loaded.describe()}, {args.img_size} px)"
        mean = getattr(classifier, "mean", None)
        std = getattr(classifier, "std", None)
        mean = torch.zeros(3) if mean is None else mean.detach().flatten().float().cpu()
        std = torch.ones(3) if std is None else std.detach().flatten().float().cpu()
    elif args.ckpt:
        from models import load_stage

        module = load_stage(args.ckpt, expect="classifier")
        classifier, args.img_size, source = module.model, module.hparams.img_size, f"checkpoint `{args.ckpt}`"
        mean, std = module.model.mean.flatten(), module.model.std.flatten()
    else:
        args.img_size = args.img_size or 64
        classifier = _train_tiny(args.img_size, args.train_steps, args.seed)
        source = "a small CNN (3 conv layers; fixed seed, trained briefly)"
        mean, std = classifier.mean.flatten(), torch.ones(3)
    net, tool_net = _Plain(classifier).eval(), _Plain(classifier, mean, std).eval()
    mask_value = tuple(mean.tolist())
    first = args.first_image
    if args.photos:
        suffixes = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
        paths = sorted(str(f) for f in Path(args.photos).iterdir() if f.suffix.lower() in suffixes)
        if not paths:
            raise SystemExit(f"error: no image files in {args.photos!r}")
        files = ImageFiles(paths, args.img_size, loaded.crop_pct)
        images, objects, labels = torch.stack(files.images), None, None
        image_names = [Path(f).name for f in paths]
        class_names = loaded.class_names
    else:
        scenes = SyntheticDataModule(img_size=args.img_size, n_test=first + args.n_images, seed=args.seed
                                     ).scenes("test")
        chosen = range(first, first + args.n_images)
        images = torch.stack([scenes[i]["image"] for i in chosen])
        objects = torch.stack([scenes[i]["mask"] for i in chosen]).bool()
        labels = torch.stack([scenes[i]["label"] for i in chosen])
        image_names = [f"test scene {i}" for i in chosen]

    def want(name: str) -> bool:
        return not args.rows or name == REF_NAME or re.search(args.rows, name) is not None
    dev = args.device
    where = torch.cuda.get_device_name(dev) if dev.startswith("cuda") else f"CPU, {args.threads} threads"
    start_all = time.time()

    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        normalised = (images - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
        model = net.to(dev)
        if not args.no_rexxai:
            script_path, onnx_path, images_path = f"{tmp}/model.pt", f"{tmp}/model.onnx", f"{tmp}/images.pt"
            traced = torch.jit.trace(tool_net, normalised[:2])
            traced.save(script_path)
            onnx_args = dict(input_names=["input"], output_names=["logits"],
                             dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
            try:
                torch.onnx.export(tool_net, (normalised[:2],), onnx_path, **onnx_args)
            except RuntimeError:  # a loaded TorchScript model inside (a black-box file): export its trace instead
                torch.onnx.export(traced, (normalised[:2],), onnx_path, **onnx_args)
            torch.save((normalised, images), images_path)
            for n in (5, 10, 20):
                if want(f"rex-xai 0.4.1, N = {n}, ONNX Runtime"):
                    runs[f"rex-xai 0.4.1, N = {n}, ONNX Runtime"] = _rexxai(args, onnx_path, images_path, n, tmp)
            if want("rex-xai 0.4.1, N = 20, torch"):
                runs["rex-xai 0.4.1, N = 20, torch"] = _rexxai(args, script_path, images_path, 20, tmp)
        x = images.to(dev)
        with torch.no_grad():
            predicted = model(x).argmax(1).cpu()
            keeps_blank = model(expand_fill(mask_value, x)).argmax(1).cpu() == predicted
        acc = (predicted == labels).float().mean().item() if labels is not None else None
        base = dict(seed=args.seed, mask_value=mask_value)
        ours: dict[str, dict] = {f"ours, N = {n}, eager": {"n_partitions": n} for n in (5, 10, 20, "auto")}
        ours["ours, N = 20, eager, no cache"] = {"n_partitions": 20, "cache": False}
        for n in (3, 5, 10):
            ours[f"ours, N = {n}, eager, frugal extraction"] = {"n_partitions": n, "candidates": 8, "check": 16}
        frugal = {"distribution": "binom", "area_share": False, "candidates": 8, "check": 16}
        ours["ours, N = 6, eager, frugal search"] = {"n_partitions": 6, "min_size": 160, "tie_sigma": 2.0, **frugal}
        ours["ours, N = 6, eager, frugal search, focused"] = {
            "n_partitions": 6, "min_size": 256, "focus_after": 5, "focus_min_size": 40, "tie_sigma": 3.0, **frugal}
        ours["ours, N = 5, eager, frugal search, focused early"] = {
            "n_partitions": 5, "min_size": 160, "focus_after": 3, "focus_min_size": 40, "tie_sigma": 2.0, **frugal}
        ours["ours, N = 5, eager, fine frugal search"] = {
            "n_partitions": 5, "min_size": 80, "distribution": "binom", "tie_sigma": 2.0, "candidates": 6, "check": 12}
        ours["ours, N = 5, eager, monotone search"] = {
            "n_partitions": 5, "min_size": 20, "monotone": True, "tie_sigma": 2.0, "candidates": 8, "check": 0}
        pruned = {"prune_cell": 8, "explanation_first": True}
        ours["ours, N = 5, eager, monotone search, pruned"] = {**ours["ours, N = 5, eager, monotone search"], **pruned}
        for n in (5, 10):
            ours[f"ours, N = {n}, eager, pruned, default search"] = {"n_partitions": n, "tie_sigma": 2.0, **pruned}
        ours["ours, N = 5, eager, frugal search, focused early, pruned"] = {
            **ours["ours, N = 5, eager, frugal search, focused early"], **pruned}
        graded = {"blank_fails": True, "confidence_weight": 0.3}
        for name in [n for n in ours if n.endswith(", pruned")]:
            ours[f"{name}, graded"] = {**ours[name], **graded}
        ours["ours, N = 20, eager, tie-broken, frugal extraction"] = {
            "n_partitions": 20, "tie_sigma": 2.0, "candidates": 8, "check": 16}
        for engine in args.engines.split(","):
            if engine != "eager":
                ours.update({f"ours, N = {n}, {engine}": {"n_partitions": n, "engine": engine} for n in (20, "auto")})
        ours.update(PRESET_ROWS)
        ours.update({name: o for name, o in PRESET_ENGINE_ROWS.items() if o["engine"] in args.engines.split(",")})
        chosen_ours = [name for name in ours if want(name)]
        if chosen_ours:  # one untimed run on one image first: one-time costs (kernels, caches) do not land on a row
            _ours(model, x[:1], {**base, **ours[chosen_ours[0]], "engine": "eager"})
        for name in chosen_ours:
            options = {**base, **ours[name]}
            runs[name] = _ours(model, x, options)

    quality = {name: _quality(model, x, objects, run, mask_value) for name, run in runs.items()}
    rows, ref = _rows(runs, quality)
    command = shlex.join(["python", sys.argv[0], *sys.argv[1:]])
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{provenance.machine(dev)} (--threads {args.threads})"
    commit = provenance.code_version()
    if args.photos:
        counts = torch.bincount(predicted, minlength=2).tolist()
        named = [class_names[c] if class_names and c < len(class_names) else str(c) for c in range(len(counts))]
        seen = (f"predicted classes: {', '.join(f'{k} {v}' for k, v in zip(named, counts) if v)}. "
                f"{len(images)} photographs from `{args.photos}` ({', '.join(image_names)}), resized and "
                f"centre-cropped to {args.img_size} x {args.img_size} as explain.py does; no object masks, so no IN")
        fill = ("the model's mean colour" if getattr(classifier, "mean", None) is not None
                else "black, the model having no mean colour")
    else:
        seen = (f"accuracy on these images {acc:.2f}. {len(images)} synthetic test scenes (indices {first}-"
                f"{first + len(images) - 1}, {args.img_size} x {args.img_size})")
        fill = "the model's mean colour"
    lines = [
        f"Command: `{command}`",
        "",
        f"Machine: {machine}. Date: {date}. Code: {commit}.",
        "",
        f"Model: {source}. Images: " + (f"{len(images)} photographs in `{args.photos}`: {', '.join(image_names)}."
                                         if args.photos else f"synthetic test scenes {first}-{first + len(images) - 1} "
                                         f"(seed {args.seed}, {args.img_size} px)."),
        "",
        "# ReX against rex-xai 0.4.1: quality against model evaluations per image",
        "",
        f"On these images: {seen}; masked pixels take {fill} {[round(v, 3) for v in mask_value]} for both tools "
        f"(rex-xai: 0 on normalised images, the same mutants); {where}; "
        f"torch {torch.__version__}. Preset paper / fast = our ReX with only `preset: paper` / `preset: fast` "
        "(rex.ReXConfig's presets at the commit above; the onnx variant adds `engine: onnx`). Evaluations = images "
        "the model was asked about per image (search, extraction, "
        "full and blank images); seconds = wall time per image. Quality is measured the same way for every row "
        "(our section 6 metrics on each tool's own map and explanation): median and mean explanation size (lower is "
        "better), normalised insertion AUC (higher) and deletion AUC (lower) of the map, IN (higher). "
        "'x fewer' and 'x faster' are against rex-xai at its defaults (N = 20) on ONNX Runtime; 'no worse' = median "
        "size, insertion, deletion and IN all at least as good as that row's; deletion - rex-xai's = the mean "
        "per-image difference of deletion AUC from that row's on the same images, ± 2 standard errors of that mean "
        "(the paired noise a 'no worse' on deletion is within). Adaptive = `n_partitions: auto` "
        "(waves of 5, stop when the top 10 % of the map has IoU >= 0.9 with the previous wave's, cap 40); "
        "partitions = mean partitions used. Frugal extraction = 8 prefix sizes per round and a check of 16 sizes "
        "below the found one (defaults: 32 and 64). Frugal search = `distribution: binom` (split points near the box "
        "centre), `min_size: 160`, `area_share: false` (each pixel of a superpixel gets its whole responsibility, as "
        "rex-xai), `tie_sigma: 2` (the extraction breaks ties by a blurred map) and the frugal extraction; focused = "
        "the same with `min_size: 256`, `tie_sigma: 3` and `focus_after: 5, focus_min_size: 40` (the last of 6 "
        "partitions refines the box of the map's top 5 % down to 40 px; chosen on scenes 32-127); focused early = "
        "N = 5 with `focus_after: 3` (the last 2 partitions focused); fine frugal search = N = 5, "
        "`distribution: binom`, `min_size: 80`, `area_share: true` (Algorithm 3), `tie_sigma: 2`, 6 prefix sizes "
        "per round and a check of 12 (chosen for the trained CNN on its scenes 0-31); tie-broken = `tie_sigma: 2`. "
        "Monotone search = N = 5 with Algorithm 3's search (uniform split points, R(P) / |P|) but `min_size: 20`, "
        "`monotone: true` (each split's mutants asked largest first; those whose outcome follows from the others' "
        "by monotonicity, Observation 4.6, are inferred, not asked), `tie_sigma: 2`, 8 prefix sizes per round and no "
        "check below the found one. Pruned = the same with `prune_cell: 8` (one greedy pass drops every 8 x 8 px cell "
        "of the "
        "explanation the class does not need, least responsible first: section 3's minimality, one evaluation per "
        "cell tried) and `explanation_first: true` (the returned map ranks the pruned explanation first, so it "
        "is again a prefix of the map's ranking); pruned, default search = N = 5 or 10 with `tie_sigma: 2` and "
        "pruned. Graded = the same with `confidence_weight: 0.3` (the returned map is unit(map) + 0.3 x unit(RISE's "
        "estimate from the mutants and prefixes already evaluated: mean target probability where a pixel was kept "
        "minus where it was masked), no extra evaluations) and `blank_fails: true` (an image whose blank image "
        "already gets the class is read as rex-xai reads it: the blank image counts as failing). Rows other than "
        "the presets are the paper preset with the settings named (`rex.PRESETS['paper'].but(...)`).",
        "",
    ]
    lines += _table(rows, ref)
    if keeps_blank.any() and not keeps_blank.all():
        sub_rows, sub_ref = _rows(runs, quality, ~keeps_blank)
        lines += ["", f"The same without the {int(keeps_blank.sum())} images whose blank image (every pixel masked) "
                  "already gets the explained class: no part of them is a cause, so ReX's responsibility is zero "
                  "everywhere (but in the graded rows and the fast preset, which read their blank image as failing), "
                  "any single pixel "
                  "'explains' them and the other rows' maps rank pixels by tie-breaking only (as in "
                  "methods_synthetic.md):", ""]
        lines += _table(sub_rows, sub_ref)
    paired = _paired(quality, runs) if REF_NAME in runs else None
    if paired:
        lines += ["", f"Paired per-image differences from {REF_NAME} (mean [95 % interval: mean ± 1.96 standard "
                  f"errors] (n images where both are known)), on all {len(images)} images; x fewer evaluations and x "
                  "less time = rex-xai's mean per image / the row's:", ""]
        lines += _paired_table(paired)
        if keeps_blank.any() and (~keeps_blank).sum() > 1:
            lines += ["", f"The same without the {int(keeps_blank.sum())} images whose blank image already gets the "
                      "explained class:", ""]
            lines += _paired_table(_paired(quality, runs, ~keeps_blank))
    lines += ["", f"Total run time {time.time() - start_all:.0f} s.", ""]
    out = Path(args.out)
    out.write_text("\n".join(lines))
    record = {
        "command": command, "machine": machine, "date": date, "code": commit, "model": source,
        "img_size": args.img_size, "threads": args.threads, "device": dev, "mask_value": list(mask_value),
        "images": image_names, "predicted": predicted.tolist(),
        "labels": labels.tolist() if labels is not None else None,
        "blank_keeps_class": keeps_blank.tolist(), "reference": REF_NAME,
        "rows": {name: {
            "options": ({"tool": "rex-xai 0.4.1", "n_partitions": int(re.search(r"N = (\d+)", name).group(1))}
                        if name.startswith("rex-xai") else {**base, **ours[name]}),
            "preset_settings": None if name.startswith("rex-xai") else _preset_settings(ours[name]),
            "summary": next(r for r in rows if r["name"] == name),
            "paired": paired[name] if paired else None,
            "per_image": {"target": runs[name]["target"].tolist(), "evaluations": list(runs[name]["evaluations"]),
                          "seconds": list(runs[name]["seconds"]), "found": runs[name]["found"].tolist(),
                          **{k: v.tolist() for k, v in quality[name].items()}}}
            for name in runs},
    }
    out.with_suffix(".json").write_text(json.dumps(_no_nan(record), indent=1, default=str))
    _plot(rows, out.with_suffix(".png"), f"ReX vs rex-xai 0.4.1: {source.split(' (')[0]}, {where}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
