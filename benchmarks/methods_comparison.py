"""Every registered method on the same synthetic test images: the table behind ReX Tables 1-3 and Salvage Table 1.

    python benchmarks/methods_comparison.py --explainer runs/salvage_synthetic/checkpoints/best.ckpt \
        [--vit-shapley runs/vit_shapley_synthetic/checkpoints/best.ckpt] --limit 200

All methods run through explain.py on the Salvage explainer checkpoint, so the black-box methods see the explainer's
reference classifier and every method gets SRG / R-SRG on its surrogate; ground truth gives IN, OUT, RRA and RMA.
`--train` first trains the classifier, surrogate and explainer with configs/{classifier,surrogate,salvage}_synthetic.
Writes `benchmarks/results/methods_synthetic.md` (or `--table`) with the command, settings and the table.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import explain  # noqa: E402
from attribution import available, get  # noqa: E402

STAGES = ("classifier_synthetic", "surrogate_synthetic", "salvage_synthetic")


def train_stages() -> str:
    """Train (or reuse, when results.json exists) the three synthetic stages; the explainer's best checkpoint."""
    import json

    import train

    for config in STAGES:
        results = ROOT / "runs" / config / "results.json"
        if not results.is_file():
            train.main(["--config", config])
        best = json.loads(results.read_text())["best_checkpoint"]
    return best


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--explainer", help="Salvage (loss=js) explainer checkpoint")
    p.add_argument("--vit-shapley", default=None, help="optional ViT-Shapley (loss=mse) explainer checkpoint")
    p.add_argument("--train", action="store_true", help="train the synthetic stages first (reused when done)")
    p.add_argument("--data", default="classifier_synthetic")
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--methods", default=None, help="comma-separated subset (default: every registered method)")
    p.add_argument("--out", default=str(ROOT / "runs" / "methods_comparison"))
    p.add_argument("--table", default=str(ROOT / "benchmarks" / "results" / "methods_synthetic.md"))
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--srg-masks", type=int, default=128, help="R-SRG masks per subset size (Salvage: 128)")
    p.add_argument("--data-arg", action="append", default=[])
    p.add_argument("--option", action="append", default=[])
    args = p.parse_args(argv)
    ckpt = train_stages() if args.train else args.explainer
    if ckpt is None:
        raise SystemExit("error: give --explainer CKPT or --train")
    names = args.methods.split(",") if args.methods else [m for m in available() if m != "vit_shapley"]
    common = ["--data", args.data, "--limit", str(args.limit), "--batch-size", str(args.batch_size),
              "--devices", str(args.devices), "--srg-masks", str(args.srg_masks)]
    common += [a for d in args.data_arg for a in ("--data-arg", d)] + [a for o in args.option for a in ("--option", o)]
    start = time.time()
    records = explain.main(["--ckpt", ckpt, "--method", ",".join(names), "--out", args.out, *common])
    if args.vit_shapley and "vit_shapley" in available():
        records += explain.main(["--ckpt", args.vit_shapley, "--method", "vit_shapley", "--out",
                                 str(Path(args.out) / "vit_shapley"), *common])
    minutes = (time.time() - start) / 60
    access = ", ".join(f"{m} ({get(m).access})" for m in dict.fromkeys(r["method"] for r in records))
    table = Path(args.table)
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_text(
        "# Attribution methods on the synthetic ground-truth scenes\n\n"
        f"Command: `python benchmarks/methods_comparison.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n\n"
        f"Explainer checkpoint `{ckpt}`; {args.limit} images of the {args.data} test split; {minutes:.1f} min in all.\n"
        f"Methods (access): {access}.\n\n"
        "size: explanation size (fraction of the image, Algorithm 3 extraction on each map; lower is better); "
        "insertion / deletion: normalised AUC (ReX section 6; insertion higher, deletion lower is better); "
        "in: fraction of the explanation inside the target object; out: fraction outside the occluders; "
        "srg / r_srg: Salvage eq. 7-8 on the surrogate (higher is better); rra / rma: relevance rank / mass accuracy "
        "against the object mask. Mean ± std over images; seconds and classifier calls per image (batch share).\n\n"
        + explain.comparison_table(records)
    )
    print(f"wrote {table}")
    return table


if __name__ == "__main__":
    main()
