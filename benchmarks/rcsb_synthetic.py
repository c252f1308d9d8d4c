"""RCSB on the ground-truth scenes: flip rate and oracle flip rate by region, the poster's ablation, and a known bias.

    python benchmarks/rcsb_synthetic.py --classifier runs/quickstart_classifier/checkpoints/best.ckpt \
        --bridge runs/bridge_synthetic/checkpoints/best.ckpt --oracle runs/oracle_synthetic/checkpoints/best.ckpt \
        --biased runs/classifier_synthetic_biased/checkpoints/best.ckpt \
        --unbiased runs/classifier_synthetic_unbiased/checkpoints/best.ckpt

Experiments (each a table in benchmarks/results/rcsb_synthetic.md):
* flip: target = (predicted + 1) mod 6, regions from `--regions` (default: the object mask "truth", its bounding
  box dilated by 4 px "box:4", and ReX / Integrated Gradients cells of the predicted class covering 10 % and 30 %
  of the image, written "auto:rex@0.1"), each at the guidance scales of `--scales` (s = 0: the unguided control,
  the bridge's inpainting alone), with paired 95 % intervals of guided minus unguided;
* ablation: the four interventions (Tweedie, ADAM, adaptive normalisation, truncation) switched on one at a time
  on the object-mask region, against all off and all on;
* bias: the cue-biased and the unbiased classifier, region = the corner where the cue would be, target = the cue's
  class: RCSB should flip the biased classifier only (needs --biased and --unbiased).
The classifier's flip rate says the guidance worked; the oracle flip rate (`--oracle`, an independent judge:
configs/oracle_synthetic.yaml) says whether another model also sees the target class in the counterfactual. Rates
are mean ± standard error sqrt(p (1 - p) / n). Realism: FID in the pre-logit feature space of the unbiased
classifier (the oracle without --unbiased; offline, not comparable to Inception FID) against 500 other real test
scenes, and LPIPS where torchvision's weights are available. `--json` keeps every image's flags; `--pictures DIR`
draws the first 8 images of every row.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from datamodules import CLASS_SHAPES, CueConfig, SyntheticScenes  # noqa: E402
from evaluation import discover  # noqa: E402
from evaluation.provenance import header  # noqa: E402
from explainers import get  # noqa: E402
from explainers.metrics import paired_interval  # noqa: E402
from explainers.regions import make_region  # noqa: E402
from models import load_checkpoint, load_stage  # noqa: E402
from rcsb.callback import oracle_flipped  # noqa: E402
from rcsb.realism import ClassifierFeatures, RealismUnavailable, frechet_distance, lpips_distance  # noqa: E402


def batches(scenes: SyntheticScenes, indices: list[int], size: int,
            device: str = "cpu") -> list[dict[str, torch.Tensor]]:
    """The scenes at `indices` as stacked batches of at most `size`, on `device`."""
    out = []
    for i in range(0, len(indices), size):
        items = [scenes[j] for j in indices[i:i + size]]
        out.append({k: torch.stack([torch.as_tensor(it[k]) for it in items]).to(device) for k in items[0]})
    return out


def rate(flags: torch.Tensor) -> tuple[float, float]:
    """Mean of 0/1 flags and its binomial standard error sqrt(p (1 - p) / n)."""
    n = max(int(flags.numel()), 1)
    p = float(flags.float().mean()) if flags.numel() else math.nan
    return p, math.sqrt(p * (1 - p) / n)


def parse_region(spec: str) -> tuple[str, float]:
    """A `--regions` entry: "auto:METHOD@AREA" gives (auto:METHOD, AREA); anything else (spec, 0.3)."""
    name, _, area = spec.partition("@")
    return name, float(area) if area else 0.3


def region_name(spec: str) -> str:
    """The table's name of a `--regions` entry."""
    name, area = parse_region(spec)
    if name == "truth":
        return "object mask (truth)"
    if name.startswith("box"):
        return f"object box, margin {name.partition(':')[2] or 0}" + (" px" if "." not in name else "")
    return f"{name[5:]} top cells, a = {area}" if name.startswith("auto:") else name


class Runner:
    """Runs RCSB on fixed batches and turns the results into one table row (and per-image flags)."""

    def __init__(self, bridge: Any, features: ClassifierFeatures, reference: torch.Tensor, args: argparse.Namespace,
                 oracle: torch.nn.Module | None = None):
        self.bridge, self.features, self.reference, self.args, self.oracle = bridge, features, reference, args, oracle
        self.method = get("rcsb")
        self.lpips_note: str | None = None

    def run(self, classifier: torch.nn.Module, data: list[dict], regions: list[torch.Tensor],
            targets: list[torch.Tensor],
            **options: Any) -> dict[str, Any]:
        """RCSB on every batch; the row's means and rates, and the per-image flags under "per_image"."""
        rows: dict[str, list[torch.Tensor]] = {}
        originals, counterfactuals, seconds = [], [], 0.0
        for batch, region, target in zip(data, regions, targets):
            out = self.method({"classifier": classifier, "bridge": self.bridge}, batch["image"], target, batch=batch,
                              region=region, nfe=self.args.nfe, **options)
            seconds += out.seconds
            for k, v in out.scores.items():
                rows.setdefault(k, []).append(torch.as_tensor(v).float().cpu())
            if self.oracle is not None:
                judged = oracle_flipped(self.oracle, out.counterfactual, target)
                rows.setdefault("oracle_flipped", []).append(judged.cpu())
                rows.setdefault("oracle_before", []).append(oracle_flipped(self.oracle, batch["image"], target).cpu())
            originals.append(batch["image"])
            counterfactuals.append(out.counterfactual)
            rows.setdefault("area", []).append(region.flatten(1).float().mean(1).cpu())
        scores = {k: torch.cat(v) for k, v in rows.items()}
        x, cf = torch.cat(originals), torch.cat(counterfactuals)
        flip, flip_se = rate(scores["flipped"])
        oracle, oracle_se = rate(scores["oracle_flipped"]) if self.oracle is not None else (math.nan, math.nan)
        before = rate(scores["oracle_before"])[0] if self.oracle is not None else math.nan
        row = {
            "n": len(x),
            "flip": f"{flip:.3f} ± {flip_se:.3f}",
            "oracle": "n/a" if oracle != oracle else f"{oracle:.3f} ± {oracle_se:.3f}",
            "oracle_before": before,
            "p_target": scores["target_probability"].mean().item(),
            "p_before": scores["original_probability"].mean().item(),
            "l1_in": scores["l1_inside"].mean().item(),
            "out": scores["change_outside"].max().item(),
            "area": scores["area"].mean().item(),
            "fid": frechet_distance(self.features, self.reference, cf),
            "fid_orig": frechet_distance(self.features, self.reference, x),
            "s_per_image": seconds / len(x),
        }
        row["lpips"] = float("nan")
        if self.lpips_note is None:
            try:
                row["lpips"] = lpips_distance(x, cf).mean().item()
            except RealismUnavailable as err:
                self.lpips_note = str(err)
        row["per_image"] = {"flipped": scores["flipped"].tolist(),
                            "oracle_flipped": scores.get("oracle_flipped", torch.zeros(0)).float().tolist()}
        row["images"], row["counterfactuals"] = x.cpu(), cf.cpu()
        return row


def fmt(row: dict[str, Any], keys: tuple[str, ...]) -> str:
    """One markdown table row of `row`'s `keys` (floats to 3 decimals, NaN as n/a)."""
    cells = []
    for k in keys:
        v = row[k]
        cells.append("n/a" if isinstance(v, float) and v != v else f"{v:.3f}" if isinstance(v, float) else str(v))
    return "| " + " | ".join(cells) + " |"


def draw(path: Path, row: dict[str, Any], title: str, predictions: tuple[torch.Tensor, ...], k: int = 8) -> None:
    """The first `k` originals above their counterfactuals, each titled with the classifier's / oracle's argmax."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x, cf = row["images"][:k], row["counterfactuals"][:k]
    fig = Figure(figsize=(1.6 * len(x), 3.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(x), squeeze=False)
    for i in range(len(x)):
        for r, img in enumerate((x[i], cf[i])):
            ax = axes[r][i]
            ax.imshow(img.float().clamp(0, 1).permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            c, o = (int(p[i]) for p in predictions[2 * r:2 * r + 2])
            ax.set_title(f"clf {CLASS_SHAPES[c]}\noracle {CLASS_SHAPES[o] if o >= 0 else '-'}", fontsize=7)
    fig.suptitle(title, fontsize=8, wrap=True)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


COLUMNS = ("n", "flip", "oracle", "oracle_before", "p_target", "p_before", "l1_in", "out", "area", "fid", "fid_orig",
           "lpips", "s_per_image")
HEADER = ("| images | flip rate ± SE | oracle flip rate ± SE | oracle says target before | p(target) after "
          "| p(target) before | L1 inside | max change outside | region area | FID (feat.) | FID (feat.) of originals "
          "| LPIPS | s / image |")
RULE = "|---" * (len(COLUMNS)) + "|"


def load_classifier(path: str, dev: str) -> torch.nn.Module:
    """The classifier network of a classifier checkpoint, frozen, in eval mode, on `dev`."""
    return load_stage(path, expect="classifier").model.eval().requires_grad_(False).to(dev)


def main() -> None:
    """Run the experiments of `--experiments` and write the markdown table (after every row) and the JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classifier", required=True)
    p.add_argument("--bridge", required=True)
    p.add_argument("--oracle", default=None, help="classifier checkpoint of the independent judge (oracle flip rate)")
    p.add_argument("--biased", default=None)
    p.add_argument("--unbiased", default=None)
    p.add_argument("--n-images", type=int, default=48)
    p.add_argument("--first-image", type=int, default=0, help="index of the first test scene")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--nfe", type=int, default=100)
    p.add_argument("--experiments", default="speed,flip,ablation,bias")
    p.add_argument("--regions", default="truth,box:4,auto:rex@0.1,auto:rex@0.3,auto:integrated_gradients@0.1,"
                   "auto:integrated_gradients@0.3", help="regions of the flip experiment (auto:METHOD@AREA)")
    p.add_argument("--scales", default="1.5,0", help="guidance scales of the flip experiment (0 = the control)")
    p.add_argument("--options", default="", help="more rcsb options for every run, KEY=VALUE,... (start=700)")
    p.add_argument("--bias-scales", default="1.5,0", help="guidance scales of the bias check (0 = the control)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "rcsb_synthetic.md")
    p.add_argument("--json", type=Path, default=None, help="per-image flags of every row")
    p.add_argument("--pictures", type=Path, default=None, help="folder for one PNG of 8 images per row")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    discover()
    start = time.time()
    dev = args.device
    bridge = load_stage(args.bridge, expect="bridge").eval().requires_grad_(False).to(dev)
    size = int(bridge.hparams["image_size"])
    classifier = load_classifier(args.classifier, dev)
    oracle = load_classifier(args.oracle, dev) if args.oracle else None
    judge = args.unbiased or args.oracle or args.classifier
    features = ClassifierFeatures(load_classifier(judge, dev))
    options: dict[str, Any] = {}
    for item in filter(None, args.options.split(",")):
        key, _, value = item.partition("=")
        options[key] = value if not value.replace(".", "").replace("-", "").isdigit() else (
            float(value) if "." in value else int(value))
    first, n = args.first_image, args.n_images
    plain = SyntheticScenes("test", max(1000, first + n) + 500, img_size=size, progress=False)
    spare = [i for i in range(len(plain)) if not first <= i < first + n][:500]
    reference = torch.stack([plain[i]["image"] for i in spare])
    runner = Runner(bridge, features, reference, args, oracle)
    checkpoints = [c for c in (args.classifier, args.bridge, args.oracle, args.biased, args.unbiased) if c]
    lines = [
        header(__file__, checkpoints, f"SyntheticScenes test split (seed 0), scenes {first}..{first + n - 1} at "
               f"{size} px; FID reference: 500 other test scenes", device=dev),
        "# RCSB on the synthetic scenes: flips, oracle flips, realism, ablation, a known bias\n",
        f"Classifier `{args.classifier}`; oracle `{args.oracle}`; bridge `{args.bridge}` ({size} px); "
        f"nfe {args.nfe}, start {options.get('start', 650)} of 1000, s = 1.5 unless stated; "
        f"other rcsb options {options or 'the defaults'}. Rates: mean ± standard error sqrt(p (1 - p) / n). "
        "'oracle flip rate': the oracle's argmax on the counterfactual is the target class; 'oracle says target "
        "before': the same on the unedited image. FID (feat.) is a Frechet distance in the pre-logit space of "
        f"`{judge}` (offline stand-in; NOT comparable to Inception FID), against 500 other real test scenes; "
        "'FID of originals' is the same distance for the unedited images (the floor for this sample size). "
        "'max change outside' is the largest |change| outside the region over all images (must be 0).\n",
    ]
    record: dict[str, Any] = {"command": " ".join(sys.argv), "rows": []}

    def emit(line: str, key: str | None = None, row: dict[str, Any] | None = None) -> None:
        lines.append(line)
        print(line, flush=True)
        if row is not None:
            kept = {k: v for k, v in row.items() if k not in ("images", "counterfactuals")}
            record["rows"].append({"key": key, **kept})
        args.out.write_text("\n".join(lines) + "\n")
        if args.json:
            args.json.write_text(json.dumps(record, indent=1))

    experiments = args.experiments.split(",")
    data = batches(plain, list(range(first, first + n)), args.batch_size, dev)
    with torch.no_grad():
        predicted = [classifier(b["image"]).argmax(1) for b in data]
    targets = [(p + 1) % 6 for p in predicted]

    if "speed" in experiments:
        emit("## Speed at the poster's nfe 100 (object-mask region, one batch)\n")
        emit("| nfe | batch " + HEADER)
        emit("|---|---" + RULE)
        speed_args = argparse.Namespace(**{**vars(args), "nfe": 100})
        warm = {key: v[:2] for key, v in data[0].items()}
        runner.run(classifier, [warm], [warm["mask"].bool()], [targets[0][:2]], **options)
        for k in sorted({min(8, args.batch_size), args.batch_size}):
            first_batch = {key: v[:k] for key, v in data[0].items()}
            row = Runner(bridge, features, reference, speed_args, oracle).run(
                classifier, [first_batch], [first_batch["mask"].bool()], [targets[0][:k]], **options)
            emit(f"| 100 | {k} " + fmt(row, COLUMNS))
        emit("")

    if "flip" in experiments:
        emit("## Flip rate, oracle flip rate and realism by region (target = predicted + 1 mod 6)\n")
        emit("| region | s " + HEADER)
        emit("|---|---" + RULE)
        scales = [float(v) for v in args.scales.split(",")]
        flags: dict[tuple[str, float], list[float]] = {}
        for spec in args.regions.split(","):
            name, area = parse_region(spec)
            regions = [make_region(name, classifier, b["image"], pr, b, area) for b, pr in zip(data, predicted)]
            for scale in scales:
                row = runner.run(classifier, data, regions, targets, **{**options, "scale": scale})
                flags[(spec, scale)] = row["per_image"]["oracle_flipped"]
                emit(f"| {region_name(spec)} | {scale} " + fmt(row, COLUMNS), f"flip {spec} s={scale}", row)
                if args.pictures and oracle is not None:
                    with torch.no_grad():
                        preds = tuple(torch.cat([m(im.to(dev)).argmax(1).cpu() for im in row[key].split(16)])
                                      for key in ("images", "counterfactuals") for m in (classifier, oracle))
                    tag = spec.replace(":", "_").replace("@", "_")
                    draw(args.pictures / f"rcsb_{tag}_s{scale:g}.png", row,
                         f"{region_name(spec)}, s = {scale}: top originals, bottom counterfactuals (target = clf + 1)",
                         preds)
        if oracle is not None and 0.0 in scales:
            emit("\nOracle flip rate, guided minus unguided (the same images; paired mean difference, 95 % t "
                 "interval):\n")
            emit("| region | s | difference | 95 % interval | n |")
            emit("|---|---|---|---|---|")
            for (spec, scale), f in flags.items():
                if scale != 0.0:
                    d = paired_interval(f, flags[(spec, 0.0)])
                    emit(f"| {region_name(spec)} | {scale} | {d['mean']:+.3f} | [{d['low']:+.3f}, {d['high']:+.3f}] "
                         f"| {d['n']} |")
        emit("")

    if "ablation" in experiments:
        emit("## Ablation: the four interventions one at a time (object-mask region)\n")
        emit("| Tweedie | ADAM | normalisation | truncation (start) " + HEADER)
        emit("|---|---|---|---" + RULE)
        regions = [b["mask"].bool() for b in data]
        base = dict(tweedie=False, adam=False, normalise=False, start=1000)
        settings = [base, {**base, "tweedie": True}, {**base, "adam": True}, {**base, "normalise": True},
                    {**base, "start": 650}, dict(tweedie=True, adam=True, normalise=True, start=650)]
        for s in settings:
            row = runner.run(classifier, data, regions, targets, **{**options, **s})
            flags_on = " | ".join("on" if s[k] else "off" for k in ("tweedie", "adam", "normalise"))
            emit(f"| {flags_on} | {s['start']} " + fmt(row, COLUMNS), f"ablation {s}", row)
        emit("")

    if "bias" in experiments and args.biased and args.unbiased:
        hp = load_checkpoint(args.biased, expect="classifier").get("datamodule_hyper_parameters") or {}
        cue = CueConfig(**{**hp["cue"], "p_eval": 0.0})
        cued = SyntheticScenes("test", 4 * n, img_size=size, cue=cue, progress=False)
        keep = [i for i in range(len(cued)) if int(cued[i]["label"]) != cue.target_class][:n]
        cue_data = batches(cued, keep, args.batch_size, dev)
        regions = [b["cue_mask"].bool() for b in cue_data]
        cue_targets = [torch.full_like(b["label"], cue.target_class) for b in cue_data]
        emit(f"## A known bias: region = the corner where the cue would be, target = the cue's class "
             f"{cue.target_class}; images of other classes, cue absent\n")
        emit("| classifier | s " + HEADER)
        emit("|---|---" + RULE)
        for name, ckpt in (("biased (cue on every class-0 training image)", args.biased),
                           ("unbiased (cue independent of the class)", args.unbiased)):
            model = load_classifier(ckpt, dev)
            for scale in (float(v) for v in args.bias_scales.split(",")):
                row = runner.run(model, cue_data, regions, cue_targets, **{**options, "scale": scale})
                emit(f"| {name} | {scale} " + fmt(row, COLUMNS), f"bias {name} s={scale}", row)
        emit("")

    if runner.lpips_note:
        emit(f"LPIPS: {runner.lpips_note}\n")
    emit(f"Total wall time {time.time() - start:.0f} s.\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
