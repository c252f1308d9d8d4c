"""What the Salvage mask samplers show the explainer: balance of the game's values (Figure 5) and per-patch coverage.

    python benchmarks/salvage_sampling.py --explainer runs/quickstart/explainer/checkpoints/best.ckpt --images 64

For each test image, `--masks` masks from every sampler (shapley: p_w(S) of eq. 2; kernel: KernelSHAP's weights;
guided: Algorithm 3 with the trained explainer's phi of the surrogate's class) are scored by the surrogate. Balance:
the share of masks whose target probability v_y(S) falls in each fifth of [0, 1] (section 4.2 says p_w gives mostly
very high or very low values and the guided sampler evens them out). Coverage of patch i: min(P(i in S), P(i not in
S)), the rarer of the two events an estimate of phi_i = phi+_i - phi-_i needs; mean over patches, the image's
worst patch, and separately for object patches (over half their pixels on the target) and the rest.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from datamodules import SyntheticScenes  # noqa: E402
from evaluation import load_models  # noqa: E402
from salvage.sampling import SAMPLERS, sample_masks  # noqa: E402

BINS = torch.tensor([0.2, 0.4, 0.6, 0.8])


def coverage(masks: torch.Tensor) -> torch.Tensor:
    """min(P(i in S), P(i not in S)) per patch from masks (M, n): (n,)."""
    visible = masks.float().mean(0)
    return torch.minimum(visible, 1 - visible)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--explainer", required=True, help="Salvage (loss=js) explainer checkpoint: its phi guides the sampler")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--masks", type=int, default=256, help="masks per image and sampler (even)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "salvage_sampling.md")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    loaded = load_models(args.explainer)
    explainer, surrogate = loaded.models["explainer"].eval(), loaded.models["surrogate"].eval()
    grid, n = surrogate.patch_grid, surrogate.num_patches
    scenes = SyntheticScenes("test", args.images, img_size=loaded.img_size, progress=False)
    generator = torch.Generator().manual_seed(0)
    rows: dict[str, dict[str, list[torch.Tensor]]] = {s: {"bins": [], "mean": [], "worst": [], "object": [], "rest": []}
                                                       for s in SAMPLERS}
    for i in range(args.images):
        item = scenes[i]
        image = item["image"][None]
        on_object = F.adaptive_avg_pool2d(item["mask"][None].float(), grid).flatten() > 0.5
        with torch.no_grad():
            target = surrogate(image).argmax(1)
            phi = explainer(image)[0, int(target)].flatten()[None]
        for sampler in SAMPLERS:
            masks = sample_masks(sampler, 1, args.masks, n, generator, "cpu", phi)[0]
            with torch.no_grad():
                probs = surrogate(image, masks, torch.zeros(len(masks), dtype=torch.long)).softmax(-1)[:, int(target)]
            cov = coverage(masks)
            r = rows[sampler]
            r["bins"].append(torch.bincount(torch.bucketize(probs, BINS), minlength=5).float() / len(masks))
            r["mean"].append(cov.mean())
            r["worst"].append(cov.min())
            if on_object.any():
                r["object"].append(cov[on_object].mean())
            if (~on_object).any():
                r["rest"].append(cov[~on_object].mean())
    lines = [
        "# Salvage's mask samplers: balance of v_y(S) and per-patch coverage\n",
        f"Command: `python benchmarks/salvage_sampling.py {' '.join(sys.argv[1:])}`\n",
        f"Explainer `{args.explainer}` ({grid[0]} x {grid[1]} patches); {args.images} synthetic test images, "
        f"{args.masks} masks per image and sampler; target = the surrogate's class; {time.time() - start:.0f} s.\n",
        "| sampler | v_y in [0, .2) | [.2, .4) | [.4, .6) | [.6, .8) | [.8, 1] | coverage, mean patch | worst patch | "
        "object patches | other patches |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for sampler, r in rows.items():
        bins = torch.stack(r["bins"]).mean(0)
        cells = [f"{float(b):.3f}" for b in bins] + [f"{float(torch.stack(r[k]).mean()):.3f}" if r[k] else "-"
                                                      for k in ("mean", "worst", "object", "rest")]
        lines.append(f"| {sampler} | " + " | ".join(cells) + " |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
