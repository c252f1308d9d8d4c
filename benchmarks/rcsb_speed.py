"""RCSB at real size: one bridge training step and one counterfactual (nfe 100) with I2SB's ADM-256 network.

    python benchmarks/rcsb_speed.py --device cuda --network adm256 --image-size 256 --classifier resnet50 \
        --train-batch 16 --sample-batch 8 --precision bf16

Weights are random (speed does not depend on them): the bridge network is built from its preset, the classifier is
timm's `--classifier` architecture at the bridge's image size. Reported: parameters, the median seconds of a training
step (AdamW, I2SB's inpainting loss on free-form masks) and its images per second and peak memory, and seconds per
counterfactual of RCSB's sampler (object-shaped centre-box region, truncation start 650, nfe 100, Tweedie, ADAM,
adaptive normalisation), each after warm-up, appended as a table to `--out`.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import timm  # noqa: E402
import torch  # noqa: E402

from rcsb import BridgeModule, box_mask, rcsb_sample, training_masks  # noqa: E402


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, repeats: int, device: str) -> list[float]:
    """Wall seconds of `repeats` calls of fn, each synchronised."""
    out = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - start)
    return out


class Normalised(torch.nn.Module):
    """A timm classifier on [0, 1] images (ImageNet normalisation inside), as the project's classifiers are."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.net = timm.create_model(name, pretrained=False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--network", default="adm256")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--classifier", default="resnet50")
    p.add_argument("--train-batch", type=int, default=16)
    p.add_argument("--sample-batch", type=int, default=8)
    p.add_argument("--nfe", type=int, default=100)
    p.add_argument("--steps", type=int, default=10, help="timed training steps (after 3 warm-up steps)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "rcsb_speed.md")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dev, size = args.device, args.image_size
    autocast = (torch.autocast(dev.split(":")[0], dtype=torch.bfloat16) if args.precision == "bf16"
                else nullcontext())
    where = torch.cuda.get_device_name(dev) if dev.startswith("cuda") else f"CPU, {args.threads} threads"

    bridge = BridgeModule(network=args.network, image_size=size).to(dev)
    n_params = sum(p.numel() for p in bridge.net.parameters())
    opt = torch.optim.AdamW(bridge.net.parameters(), lr=5e-5, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(args.train_batch, 3, size, size, device=dev)
    masks = training_masks(args.train_batch, size, g, device=dev)

    def train_step() -> None:
        steps = torch.randint(0, 1000, (args.train_batch,), device=dev)
        with autocast:
            loss = bridge.loss(images, masks, steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    timed(train_step, 3, dev)
    if dev.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    step_s = statistics.median(timed(train_step, args.steps, dev))
    train_mem = torch.cuda.max_memory_allocated() / 2**30 if dev.startswith("cuda") else float("nan")
    del opt

    classifier = Normalised(args.classifier).to(dev).eval().requires_grad_(False)
    x = torch.rand(args.sample_batch, 3, size, size, device=dev)
    region = box_mask(size, 0.5).to(dev)[None, None].expand(args.sample_batch, 1, size, size)
    net, schedule = bridge.denoiser().requires_grad_(False), bridge.schedule_on(dev)

    def counterfactual(nfe: int) -> None:
        with autocast:
            rcsb_sample(net, schedule, classifier, x, region, 1, nfe=nfe, start=650,
                        generator=torch.Generator(device=dev).manual_seed(0))

    timed(lambda: counterfactual(3), 1, dev)
    if dev.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    sample_s = statistics.median(timed(lambda: counterfactual(args.nfe), 2, dev))
    sample_mem = torch.cuda.max_memory_allocated() / 2**30 if dev.startswith("cuda") else float("nan")

    command = " ".join(["python benchmarks/rcsb_speed.py", *sys.argv[1:]])
    row = (f"| {where} | {args.network} | {n_params:,} | {size} | {args.precision} | {args.train_batch} | "
           f"{step_s:.3f} | {args.train_batch / step_s:.1f} | {train_mem:.1f} | {args.classifier} | "
           f"{args.sample_batch} | {args.nfe} | {sample_s / args.sample_batch:.2f} | {sample_mem:.1f} |")
    header = ("| device | network | parameters | px | precision | train batch | s / step | images / s | peak GiB "
              "| classifier | sample batch | nfe | s / counterfactual | peak GiB |\n" + "|---" * 14 + "|")
    text = args.out.read_text() if args.out.exists() else (
        "# RCSB at real size: bridge training step and counterfactual speed\n\n"
        "Random weights (speed does not depend on them); median of timed repeats after warm-up. Training: AdamW, "
        "I2SB's inpainting loss, free-form/box/cell masks. Counterfactual: RCSB's sampler with Tweedie, ADAM and "
        "adaptive normalisation, truncation start 650, a centre-box region.\n\n")
    text += f"\nCommand: `{command}`\n\n{header}\n{row}\n"
    args.out.write_text(text)
    print(row)


if __name__ == "__main__":
    main()
