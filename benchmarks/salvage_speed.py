"""Explanations per second of a trained Salvage explainer vs captum's KernelSHAP (256 samples, one feature per patch) on
the same surrogate and images, and the explainer's training throughput in masked images per second.

python -m benchmarks.salvage_speed --surrogate runs/surrogate_synthetic/checkpoints/best.ckpt \
    --explainer runs/salvage_synthetic/checkpoints/best.ckpt --out benchmarks/results/salvage_speed.md
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
from captum.attr import KernelShap

from datamodules import SyntheticDataModule
from models import load_stage
from salvage import ExplainerModule
from salvage.explainer import surrogate_backbone_spec


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def kernel_shap_rate(game, images: torch.Tensor, n_samples: int, per_eval: int, device: str) -> float:
    """Images per second of captum KernelShap whose features are the patches' presence (the surrogate's patch mask)."""
    n = game.num_patches

    def forward(presence: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        index = torch.zeros(presence.shape[0], dtype=torch.long, device=presence.device)
        return game(image, presence > 0.5, index).float().softmax(-1)

    ks = KernelShap(forward)
    start = time.perf_counter()
    for image in images:
        x = image[None].to(device)
        with torch.no_grad():
            target = int(game(x).argmax())
        ks.attribute(torch.ones(1, n, device=device), baselines=torch.zeros(1, n, device=device), target=target,
                     additional_forward_args=(x,), n_samples=n_samples, perturbations_per_eval=per_eval)
    synchronize(device)
    return images.shape[0] / (time.perf_counter() - start)


def explainer_rate(explainer: ExplainerModule, images: torch.Tensor, batch_size: int, device: str) -> float:
    """Images per second of the explainer's attribution maps (one forward pass per batch)."""
    with torch.no_grad():
        explainer(images[:batch_size].to(device))  # warm-up
        synchronize(device)
        start = time.perf_counter()
        for i in range(0, images.shape[0], batch_size):
            explainer(images[i:i + batch_size].to(device))
        synchronize(device)
    return images.shape[0] / (time.perf_counter() - start)


def training_rate(explainer: ExplainerModule, images: torch.Tensor, batch_size: int, steps: int, device: str) -> float:
    """Masked images per second through training steps (sampling, one surrogate call, JS/MSE loss, AdamW step)."""
    explainer.train()
    opt = torch.optim.AdamW([p for p in explainer.parameters() if p.requires_grad], lr=1e-5, weight_decay=1e-5)
    batch = {"image": images[:batch_size].to(device), "label": torch.zeros(batch_size, dtype=torch.long, device=device)}

    def step() -> None:
        loss = explainer.training_step(batch, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    explainer.eval()
    return steps * batch_size * explainer.hparams.masks_per_image / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--surrogate", required=True)
    parser.add_argument("--explainer", required=True, help="explainer checkpoint (its loss and sampler are used)")
    parser.add_argument("--n-images", type=int, default=256, help="images explained by the explainer")
    parser.add_argument("--kernel-images", type=int, default=16, help="images explained by KernelSHAP (slow)")
    parser.add_argument("--n-samples", type=int, default=256, help="KernelSHAP coalitions per image")
    parser.add_argument("--per-eval", type=int, default=64, help="KernelSHAP coalitions per surrogate call")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="benchmarks/results/salvage_speed.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    spec = surrogate_backbone_spec(args.surrogate)
    explainer = load_stage(args.explainer, expect="explainer").eval().to(args.device)
    game = explainer.attach_game(args.surrogate)
    data = SyntheticDataModule(img_size=spec["img_size"], n_test=max(args.n_images, args.kernel_images)).scenes("test")
    images = torch.stack([data[i]["image"] for i in range(len(data))])

    ours = explainer_rate(explainer, images[:args.n_images], args.batch_size, args.device)
    single = explainer_rate(explainer, images[:args.kernel_images], 1, args.device)
    kernel = kernel_shap_rate(game, images[:args.kernel_images], args.n_samples, args.per_eval, args.device)
    train = training_rate(explainer, images, args.train_batch, args.train_steps, args.device)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({platform.processor() or platform.machine()}, {args.threads} threads)"
    rows = {
        "explainer_images_per_s_batched": ours,
        "explainer_images_per_s_batch1": single,
        "kernelshap_images_per_s": kernel,
        "speedup_batched": ours / kernel,
        "speedup_batch1": single / kernel,
        "train_masked_images_per_s": train,
    }
    command = shlex.join(["python", "-m", "benchmarks.salvage_speed", *sys.argv[1:]])
    text = "\n".join([
        f"Command: `{command}`",
        "",
        f"# Salvage explainer speed vs KernelSHAP ({device})",
        "",
        f"Surrogate `{args.surrogate}` ({spec['backbone']}, {spec['img_size']} px, {game.num_patches} patches); explainer "
        f"`{args.explainer}` (loss {explainer.hparams.loss}, sampler {explainer.hparams.sampler}).",
        f"KernelSHAP: captum, {args.n_samples} coalitions per image over the {game.num_patches} patches, "
        f"{args.per_eval} per surrogate call, {args.kernel_images} images.",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| explainer, images/s (batch {args.batch_size}, {args.n_images} images) | {ours:.1f} |",
        f"| explainer, images/s (batch 1) | {single:.1f} |",
        f"| KernelSHAP, images/s | {kernel:.3f} |",
        f"| speed-up (batched / batch 1) | {ours / kernel:.0f}x / {single / kernel:.0f}x |",
        f"| training throughput, masked images/s (batch {args.train_batch} x {explainer.hparams.masks_per_image} masks) "
        f"| {train:.0f} |",
        "",
    ])
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"device": device, **rows}, indent=2))


if __name__ == "__main__":
    main()
