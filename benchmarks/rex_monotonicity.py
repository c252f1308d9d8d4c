"""How monotone each classifier's ReX splits are (Observation 4.6), i.e. how safe the search's `monotone` setting
is for it.

Usage: python benchmarks/rex_monotonicity.py --ckpt A.ckpt [--ckpt B.ckpt ...] [--n-images 32] [--first-image 32]
    [--threads 2] [--out benchmarks/results/rex_monotonicity.md]

For every split the search refines (each of the 16 subsets of its 4 superpixels evaluated), a split is non-monotone
when some subset keeps the class while a subset holding it loses it; then `monotone` may infer an outcome the
model would not give. The same search is then run with `monotone: true` to show the evaluations it saves.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datamodules import SyntheticDataModule  # noqa: E402
from models import QueryEngine, load_stage  # noqa: E402
from rex.search import SearchSettings, responsibility_map  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", action="append", required=True, help="classifier stage checkpoint (repeatable)")
    p.add_argument("--n-images", type=int, default=32)
    p.add_argument("--first-image", type=int, default=32)
    p.add_argument("--n-partitions", type=int, default=9)
    p.add_argument("--min-size", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/rex_monotonicity.md"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    rows = []
    for ckpt in args.ckpt:
        module = load_stage(ckpt, expect="classifier")
        model = module.model.eval()
        first, n = args.first_image, args.n_images
        scenes = SyntheticDataModule(img_size=module.hparams.img_size, n_test=first + n, seed=0).scenes("test")
        images = torch.stack([scenes[i]["image"] for i in range(first, first + n)])
        with torch.no_grad():
            target = model(images).argmax(1)
        counts = {}
        for monotone in (False, True):
            c: dict[str, torch.Tensor] = {}
            settings = SearchSettings(n_partitions=args.n_partitions, min_size=args.min_size, distribution="binom",
                                      monotone=monotone)
            responsibility_map(QueryEngine(model, 64), images, target, torch.Generator().manual_seed(0), settings,
                               counts=c)
            counts[monotone] = c
        full, mono = counts[False], counts[True]
        rows.append(f"| `{ckpt}` | {module.hparams.img_size} px | {int(full['splits'].sum())} | "
                    f"{full['non_monotone'].sum().item() / full['splits'].sum().item():.3f} | "
                    f"{full['evaluated'].float().mean():.0f} | {mono['evaluated'].float().mean():.0f} | "
                    f"{full['evaluated'].float().mean() / mono['evaluated'].float().mean():.2f} |")
    lines = [
        f"Command: `{' '.join(['python benchmarks/rex_monotonicity.py', *sys.argv[1:]])}`",
        "",
        "# How monotone ReX's splits are, per classifier",
        "",
        f"Synthetic test scenes {args.first_image}-{args.first_image + args.n_images - 1}; the search of "
        f"`rex.search.responsibility_map` with N = {args.n_partitions}, `min_size: {args.min_size}`, "
        "`distribution: binom`, seed 0, target = the predicted class. A split is non-monotone when some subset of "
        "its 4 superpixels keeps the class while a subset holding it loses it (`rex.responsibility.non_monotone`); "
        "on such a split `monotone: true` may infer an outcome the model would not give. Search evaluations per "
        "image without and with `monotone: true` (the same partitions where no inference differs).",
        "",
        "| classifier | input | splits | non-monotone share | search evaluations / image | with `monotone` | x fewer |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Total run time {time.time() - start:.0f} s.",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
