"""Speed of our batched ReX against the public tool rex-xai 0.4.1: same model, images, N and CPU threads.

    python benchmarks/rex_vs_rexxai.py [--ckpt classifier.ckpt | --arch cnn|linear] [--n-images 20] [--threads 1]

rex-xai pins numpy 1.26, so it runs in its own virtual environment (`--rexxai-python`, e.g. made with
`python -m venv /tmp/rexxai-venv && /tmp/rexxai-venv/bin/pip install rex-xai==0.4.1`) on the same TorchScript
model, called by this file in `--worker` mode (CPU, gpu = false, batch_size = 14, its defaults otherwise).
Without `--ckpt` a small model (`--arch`) is trained for a few seconds with a fixed seed on the synthetic training
split: a 3-layer CNN, or a linear classifier on 8 x 8 average-pooled pixels, whose cost is close to nothing, so that
the wall time is each tool's own overhead (the limit that large batches on an accelerator approach).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


class TinyCNN(nn.Module):
    """A small fixed-seed CNN for [0, 1] images (normalisation inside), used when no checkpoint is given."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1))
        self.net = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x - self.mean)


class PooledLinear(nn.Module):
    """A linear classifier on 8 x 8 average-pooled [0, 1] images: it costs almost nothing per image (and is near chance
    on the synthetic shapes), so a tool's wall time on it is its own overhead."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1))
        self.net = nn.Sequential(nn.AdaptiveAvgPool2d(8), nn.Flatten(), nn.Linear(3 * 64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x - self.mean)


ARCHS = {"cnn": TinyCNN, "linear": PooledLinear}


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


def _train_tiny(img_size: int, steps: int, seed: int, arch: str = "cnn") -> nn.Module:
    from datamodules import SyntheticDataModule

    torch.manual_seed(seed)
    dm = SyntheticDataModule(img_size=img_size, n_train=2000, n_val=1, n_test=1, seed=seed)
    data = dm.scenes("train")
    x = torch.stack([data[i]["image"] for i in range(len(data))])
    y = torch.stack([data[i]["label"] for i in range(len(data))])
    model = ARCHS[arch](dm.num_classes)
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
    """Run rex-xai on the saved images with the saved TorchScript model; print one JSON list of records."""
    import numpy as np
    import torch.nn.functional as F
    from PIL import Image
    from rex_xai.lib import ReX as ToolReX
    from rex_xai.responsibility.prediction import from_pytorch_tensor

    torch.set_num_threads(args.threads)
    model = torch.jit.load(args.model).eval()
    images, pixels = torch.load(args.images)
    count = {"calls": 0, "images": 0}

    def prediction_function(mutants, target=None, raw=False):
        with torch.no_grad():
            count["calls"] += 1
            count["images"] += mutants.shape[0]
            logits = model(mutants)
            return F.softmax(logits, dim=1) if raw else from_pytorch_tensor(logits, target=target)

    records = []
    for i, (img, pix) in enumerate(zip(images, pixels)):
        path = f"{Path(args.images).parent}/{i}.png"
        Image.fromarray((pix.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), "RGB").save(path)
        count.update(calls=0, images=0)
        start = time.perf_counter()
        tool = ToolReX(model, [1, *img.shape], "cpu", "RGB", prediction_function)
        tool.args.gpu, tool.args.batch_size, tool.args.iters = False, 14, args.n_partitions
        tool.args.seed, tool.args.progress_bar, tool.args.mask_value = args.seed + i, False, 0
        tool.set_rgb_image(path)
        tool.set_transformed_data(img[None].clone())
        tool.set_target()
        tool.calculate_responsibility()
        tool.extract_sufficient_explanation()
        seconds = time.perf_counter() - start
        mask = tool.explanation.sufficiency_mask.reshape(img.shape).any(0)
        records.append({"seconds": seconds, "calls": count["calls"], "images": count["images"],
                        "size": float(mask.float().mean()), "target": int(tool.data.target.classification)})
    print(json.dumps(records))


def _ours(
    model: nn.Module, images: torch.Tensor, rule: str, batched: bool, args: argparse.Namespace,
    work_budget: int | None = None,
) -> list[dict]:
    from rex import rex_explain

    options = dict(n_partitions=args.n_partitions, rule=rule, seed=args.seed, max_batch=args.max_batch,
                   mask_value=args.mask_value, work_budget=work_budget)
    groups = [images] if batched else [img[None] for img in images]
    out = []
    for group in groups:
        e = rex_explain(model, group, **options)
        n = len(group)
        sizes = e.explanation.flatten(1).float().mean(1)
        out += [{"seconds": e.seconds / n, "calls": e.model_calls / n, "images": e.model_images / n,
                 "size": float(s), "target": int(t)} for s, t in zip(sizes, e.target)]
    return out


def _model_seconds(model: nn.Module, recs: list[dict], args: argparse.Namespace) -> float:
    """Seconds per image of the model alone on as many mutants as a tool evaluated, in batches of its mean size
    (the fastest of 3 repeats: a floor)."""
    n = round(statistics.mean(r["images"] for r in recs))
    batch = max(1, round(n / statistics.mean(r["calls"] for r in recs)))
    x = torch.rand(n, 3, args.img_size, args.img_size, generator=torch.Generator().manual_seed(0))
    times = []
    with torch.no_grad():
        model(x[:batch])
        for _ in range(3):
            start = time.perf_counter()
            for chunk in x.split(batch):
                model(chunk)
            times.append(time.perf_counter() - start)
    return min(times)


def _row(name: str, recs: list[dict], ref_seconds: float | None, model_seconds: float) -> str:
    sec = statistics.mean(r["seconds"] for r in recs)
    calls = statistics.mean(r["calls"] for r in recs)
    imgs = statistics.mean(r["images"] for r in recs)
    size = statistics.median(r["size"] for r in recs)
    speed = f"{ref_seconds / sec:.1f}x" if ref_seconds else "1.0x"
    own = sec - model_seconds
    return (f"| {name} | {sec:.3f} | {speed} | {calls:.1f} | {imgs:.0f} | {model_seconds:.3f} | {own:.3f} | "
            f"{own / imgs * 1e6:.0f} | {size:.4f} | {statistics.mean(r['size'] for r in recs):.4f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", help="Lightning checkpoint of models.ClassifierModule (default: a small model, --arch)")
    p.add_argument("--arch", choices=sorted(ARCHS), default="cnn", help="the small model trained without --ckpt")
    p.add_argument("--n-images", type=int, default=20)
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--n-partitions", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-batch", type=int, default=None, help="default: ReX's own (16 on CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--rexxai-python", default="/tmp/rexxai-venv/bin/python")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/rex_vs_rexxai.md"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--images", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        _worker(args)
        return

    sys.path.insert(0, str(ROOT))
    from datamodules import SyntheticDataModule

    torch.set_num_threads(args.threads)
    if args.ckpt:
        from models import load_stage

        module = load_stage(args.ckpt, expect="classifier")
        classifier, args.img_size, source = module.model, module.hparams.img_size, f"checkpoint `{args.ckpt}`"
        mean, std = module.model.mean.flatten(), module.model.std.flatten()
    else:
        classifier = _train_tiny(args.img_size, args.train_steps, args.seed, args.arch)
        source = f"{type(classifier).__name__} (fixed seed, trained briefly)"
        mean, std = classifier.mean.flatten(), torch.ones(3)
    net, tool_net = _Plain(classifier).eval(), _Plain(classifier, mean, std).eval()
    args.mask_value = tuple(mean.tolist())
    scenes = SyntheticDataModule(img_size=args.img_size, n_test=args.n_images, seed=args.seed).scenes("test")
    images = torch.stack([scenes[i]["image"] for i in range(len(scenes))])
    labels = torch.stack([scenes[i]["label"] for i in range(len(scenes))])

    with tempfile.TemporaryDirectory() as tmp:
        model_path, images_path = f"{tmp}/model.pt", f"{tmp}/images.pt"
        normalised = (images - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
        torch.jit.trace(tool_net, normalised[:2]).save(model_path)
        torch.save((normalised, images), images_path)
        model = torch.jit.trace(net, images[:2]).eval()
        with torch.no_grad():
            acc = (model(images).argmax(1) == labels).float().mean().item()
        cmd = [args.rexxai_python, __file__, "--worker", "--model", model_path, "--images", images_path,
               "--threads", str(args.threads), "--n-partitions", str(args.n_partitions), "--seed", str(args.seed)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"rex-xai worker failed:\n{proc.stderr[-4000:]}")
        tool = json.loads(proc.stdout.strip().splitlines()[-1])
        budget = round(statistics.mean(r["images"] for r in tool) / args.n_partitions)
        results = {
            "rex-xai 0.4.1 (batch_size 14, CPU)": tool,
            "ours, paper rule, all images batched": _ours(model, images, "paper", True, args),
            "ours, paper rule, one image at a time": _ours(model, images, "paper", False, args),
            "ours, tool rule (1/|S|), all images batched": _ours(model, images, "tool", True, args),
            f"ours, paper rule, work budget {budget} mutants per partition (rex-xai's count)":
                _ours(model, images, "paper", True, args, work_budget=budget),
        }

    ref = statistics.mean(r["seconds"] for r in tool)
    floor = {name: _model_seconds(model, recs, args) for name, recs in results.items()}
    lines = [
        "# ReX speed: ours vs rex-xai 0.4.1",
        "",
        f"Model: {source}, test accuracy on these images {acc:.2f}. Images: {len(images)} synthetic test scenes "
        f"({args.img_size} x {args.img_size}), N = {args.n_partitions}, "
        f"masked pixels set to the model's mean colour {[round(v, 3) for v in args.mask_value]} (rex-xai: mask value 0 "
        "on normalised images, the same mutants), min superpixel 10 px, "
        f"queue 'area' of length 1, {args.threads} CPU thread(s) for both tools, our max_batch {args.max_batch or 'default (16 on CPU)'}. "
        "Wall time includes the map and the extraction of one explanation. Calls = model forward calls, "
        "images = mutants evaluated, both per image. Size = explanation size as a fraction of the image.",
        "",
        "Model s / image: the model alone on that many random images in batches of that size (calls / image), "
        "fastest of 3 repeats in the same run: the floor that no reorganisation of the same mutants can go below. "
        "Own s / image = s / image - model s / image: the tool's own work (masking, bookkeeping, search), "
        "also per mutant. The work-budget row stops each partition's refinement once it has used about as many "
        "mutants as rex-xai used per partition.",
        "",
        "| tool | s / image | speed-up | calls / image | images / image | model s / image | own s / image "
        "| own us / mutant | median size | mean size |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_row(name, recs, None if name.startswith("rex-xai") else ref, floor[name]) for name, recs in results.items()]
    lines += ["", f"Command: `python benchmarks/rex_vs_rexxai.py {' '.join(sys.argv[1:])}`", ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
