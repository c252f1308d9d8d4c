"""Salvage quality table on the synthetic test set: SRG, R-SRG, RMA, RRA (appendix A.1) and explainer-as-classifier accuracy.

python benchmarks/salvage_quality.py --surrogate runs/surrogate_synthetic/checkpoints/best.ckpt \
    --explainer "Salvage (js + guided)=runs/salvage_synthetic/checkpoints/best.ckpt" \
    --explainer "js + shapley=runs/salvage_synthetic_shapley/checkpoints/best.ckpt" \
    --explainer "ViT-Shapley (mse + shapley)=runs/salvage_synthetic_mse/checkpoints/best.ckpt" \
    --n-images 500 --out benchmarks/results/salvage_quality.md

A random map (uniform noise per patch) is always added as the reference row. Targets are the surrogate's top-1 class.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from datamodules import SyntheticDataModule
from models import load_stage
from salvage import ExplainerModule
from salvage.explainer import surrogate_backbone_spec
from evaluation.provenance import file_hash, header
from explainers.metrics import paired_interval, relevance_mass_accuracy, relevance_rank_accuracy, summarise
from salvage.metrics import relative_srg_scores, srg_scores

COLUMNS = ("srg", "r_srg", "rma", "rra", "mif", "lif", "r_mif", "r_lif")
CLASSIFY = ("explainer_acc", "classifier_acc", "agreement")
NAMES = {"srg": "SRG", "r_srg": "R-SRG", "rma": "RMA", "rra": "RRA", "mif": "MIF", "lif": "LIF", "r_mif": "R-MIF",
         "r_lif": "R-LIF", "explainer_acc": "explainer acc", "classifier_acc": "classifier acc",
         "agreement": "agreement"}


def evaluate(name: str, explain, game, reference, images, masks, labels, args, explainer=None) -> dict[str, list]:
    """Per-image metrics of one method over all images, in batches ({metric: [value per image]}, NaN where a metric
    is undefined); explainer-as-classifier accuracy where it applies."""
    values: dict[str, list[float]] = {}
    g = torch.Generator(device=args.device).manual_seed(args.seed)
    for start in range(0, images.shape[0], args.batch_size):
        x = images[start:start + args.batch_size].to(args.device)
        gt = masks[start:start + args.batch_size].to(args.device)
        y = labels[start:start + args.batch_size].to(args.device)
        with torch.no_grad():
            target = game(x).argmax(-1)
            maps = explain(x, g)
            scores = {**srg_scores(game, x, maps, target, args.metric_batch),
                      **relative_srg_scores(game, x, maps, target, args.n_masks, g, args.metric_batch),
                      "rma": relevance_mass_accuracy(maps, gt, target if maps.dim() == 4 else None),
                      "rra": relevance_rank_accuracy(maps, gt, target if maps.dim() == 4 else None)}
            if explainer is not None:
                pred = explainer.class_probabilities(x).argmax(-1)
                clf = reference(x).argmax(-1)
                scores["explainer_acc"] = (pred == y).float()
                scores["classifier_acc"] = (clf == y).float()
                scores["agreement"] = (pred == clf).float()
        for k, v in scores.items():
            values.setdefault(k, []).extend(v.float().cpu().tolist())
        print(f"[{name}] {min(start + args.batch_size, images.shape[0])}/{images.shape[0]} images", flush=True)
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--surrogate", required=True, help="surrogate checkpoint (the game v(S))")
    parser.add_argument("--explainer", action="append", default=[], help="NAME=PATH of an explainer checkpoint")
    parser.add_argument("--n-images", type=int, default=500)
    parser.add_argument("--n-masks", type=int, default=32, help="masks per subset size for R-MIF/R-LIF (paper: 128)")
    parser.add_argument("--batch-size", type=int, default=25)
    parser.add_argument("--metric-batch", type=int, default=2048, help="masked images per surrogate call")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random map and of the R-metric masks")
    parser.add_argument("--data-seed", type=int, default=0, help="SyntheticDataModule seed (0 = the configs' test set)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--matmul-precision", default="highest", choices=("highest", "high", "medium"),
                        help="torch.set_float32_matmul_precision ('high' = TF32 matrix products on a GPU)")
    parser.add_argument("--out", default="benchmarks/results/salvage_quality.md")
    args = parser.parse_args()
    torch.set_float32_matmul_precision(args.matmul_precision)

    spec = surrogate_backbone_spec(args.surrogate)
    probe = ExplainerModule(surrogate_ckpt=args.surrogate, backbone_spec=spec)
    game = probe.attach_game(args.surrogate).to(args.device)
    reference = probe.reference.to(args.device)
    data = SyntheticDataModule(img_size=spec["img_size"], n_test=args.n_images, seed=args.data_seed).scenes("test")
    batch = {k: torch.stack([data[i][k] for i in range(len(data))]) for k in ("image", "mask", "label")}
    images, masks, labels = batch["image"], batch["mask"], batch["label"]
    gh, gw = game.patch_grid

    rows: dict[str, dict] = {}
    for item in args.explainer:
        name, path = item.split("=", 1)
        explainer = load_stage(path, expect="explainer").eval().to(args.device)
        explainer.attach_game(args.surrogate)
        start = time.time()
        per_image = evaluate(name, lambda x, g, e=explainer: e(x), game, reference, images, masks, labels, args,
                             explainer if explainer.hparams.loss == "js" else None)
        rows[name] = {"checkpoint": path, "per_image": per_image, "seconds": time.time() - start,
                      "loss/sampler": f"{explainer.hparams.loss}/{explainer.hparams.sampler}"}
        write_table(rows, args, spec["img_size"], (gh, gw))
    start = time.time()
    per_image = evaluate("Random", lambda x, g: torch.rand(x.shape[0], gh, gw, generator=g, device=x.device), game,
                         reference, images, masks, labels, args)
    rows["Random"] = {"per_image": per_image, "seconds": time.time() - start}
    print(write_table(rows, args, spec["img_size"], (gh, gw)))


def write_table(rows: dict[str, dict], args: argparse.Namespace, img_size: int, grid: tuple[int, int]) -> str:
    """Write the markdown table and its JSON with every per-image value (after every method, so a run cut short
    keeps the rows it finished): mean ± standard error (x 100) with n, and the paired differences of the first
    explainer from every other method with their 95 % intervals."""
    data = (f"{args.n_images} synthetic test scenes (SyntheticDataModule seed {args.data_seed}, {img_size} px, "
            f"{grid[0]}x{grid[1]} patches); surrogate `{args.surrogate}` (sha256 {file_hash(args.surrogate)}) is the "
            "game; target = surrogate top-1")
    lines = [
        header(__file__, [r["checkpoint"] for r in rows.values() if "checkpoint" in r], data, device=args.device),
        f"# Salvage quality on the synthetic test set ({args.n_images} images, {img_size} px, {grid[0]}x{grid[1]} "
        "patches)",
        "",
        f"R-metrics with {args.n_masks} masks per subset size; scores x 100 (higher is better except LIF, R-LIF), "
        "mean ± standard error over images; n = images where the metric is defined (RMA and RRA are undefined for a "
        "map without positive relevance).",
        "",
        "| method | n | " + " | ".join(NAMES[c] for c in (*COLUMNS, *CLASSIFY)) + " | seconds |",
        "|---|---|" + "---|" * (len(COLUMNS) + len(CLASSIFY) + 1),
    ]
    for name, r in rows.items():
        stats = summarise([dict(zip(r["per_image"], v)) for v in zip(*r["per_image"].values())],
                          [*COLUMNS, *CLASSIFY])
        cells = [f"{100 * stats[c]:.2f} ± {100 * stats[c + '_se']:.2f}"
                 + ("" if int(stats[c + "_n"]) == args.n_images else f" (n = {int(stats[c + '_n'])})")
                 if c in stats else "-" for c in (*COLUMNS, *CLASSIFY)]
        lines.append(f"| {name} | {args.n_images} | " + " | ".join(cells) + f" | {r['seconds']:.1f} |")
    first = next(iter(rows))
    if len(rows) > 1:
        lines += ["", f"Paired per-image differences of {first} from each other method (x 100): mean [95 % interval, "
                      "Student's t]; an interval that excludes 0 is a difference these images support.", "",
                  "| versus | " + " | ".join(NAMES[c] for c in COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
        for name, r in rows.items():
            if name == first:
                continue
            cells = []
            for c in COLUMNS:
                d = paired_interval(rows[first]["per_image"][c], r["per_image"][c])
                cells.append(f"{100 * d['mean']:+.2f} [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]"
                             + ("" if d["n"] == args.n_images else f" (n = {d['n']})"))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1, allow_nan=True))
    return text


if __name__ == "__main__":
    main()
