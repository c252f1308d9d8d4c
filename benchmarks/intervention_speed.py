"""CPU wall time of Algorithm 1 (K = 1000 permutations, N = 100 steps, 256 images) and of the whole pipeline.

python -m benchmarks.intervention_speed --out benchmarks/results/intervention_speed.md
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from interventions import AlphaBlend, gradual_intervention_test, permutation_test


def tiny_cnn(num_classes: int = 6) -> nn.Module:
    """A small CNN classifier on (B, 3, 64, 64) images (5.3k parameters)."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes),
    ).eval()


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--permutations", type=int, default=1000)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    b, n, k = args.images, args.steps, args.permutations

    curves = torch.rand(b, n, generator=g)
    rows = []
    for chunk in (None, 64):
        t = median_time(lambda: permutation_test(curves, None, k, g, chunk_size=chunk), args.repeats)
        rows.append((f"permutation test only (chunk_size={chunk})", t))

    images = torch.rand(b, 3, args.img_size, args.img_size, generator=g)
    mask = torch.zeros(b, 1, args.img_size, args.img_size, dtype=torch.bool)
    mask[..., : args.img_size // 4, : args.img_size // 4] = True
    edit = AlphaBlend(mask, (1.0, 0.0, 1.0))
    model = tiny_cnn()
    with torch.no_grad():
        t = median_time(lambda: gradual_intervention_test(model, images, edit, n, k, 0.01, g), args.repeats)
    rows.append((f"whole pipeline, tiny CNN ({b * n} forward images + test)", t))
    t = median_time(lambda: gradual_intervention_test(model, images, edit, n, k, 0.01, g, autograd=True), 1)
    rows.append(("whole pipeline + jvp check (1 repeat)", t))

    table = [
        f"# Gradual-intervention speed (CPU, {args.threads} threads)",
        "",
        f"K = {k} permutations, N = {n} steps, {b} images of {args.img_size}x{args.img_size}; median of "
        f"{args.repeats} repeats after one warm-up. torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; load average when done: "
        f"{os.getloadavg()[0]:.1f} (a shared machine: other jobs inflate these times).",
        "",
        "| what | wall time (s) | per image (ms) |",
        "|---|---:|---:|",
        *[f"| {name} | {t:.3f} | {1000 * t / b:.2f} |" for name, t in rows],
        "",
    ]
    text = "\n".join(table)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
