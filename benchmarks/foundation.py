"""Foundation table: accuracy of classifier and surrogate with 0/25/50/75% of patches masked, agreement, wall time.

Run the quickstart first (`time python train.py --config quickstart.yaml`), then
`python benchmarks/foundation.py --run runs/quickstart --wall SECONDS` to add a section to
benchmarks/results/foundation.md (`--classifier DIR --surrogate DIR --title NAME` for stages run on their own).
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch


def table(stages: dict[str, Path], wall: float | None) -> str:
    """Markdown table of the stages' results.json files."""
    rows = []
    for stage, run_dir in stages.items():
        res = json.loads((run_dir / "results.json").read_text())
        acc = [res["test"][f"test/acc_masked_{p}"] for p in (0, 25, 50, 75)]
        agree = res["test"].get("test/agreement_top1")
        rows.append(
            f"| {stage} | " + " | ".join(f"{100 * a:.1f}" for a in acc)
            + f" | {'' if agree is None else f'{100 * agree:.1f}'} | {res['fit_seconds']:.0f} |"
        )
    head = (
        f"Runs: {', '.join(f'`{d}`' for d in stages.values())}; machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads" + (f"; whole pipeline wall time {wall:.0f} s" if wall else "") + "\n\n"
        "| stage | acc full (%) | acc 25% masked | acc 50% masked | acc 75% masked | top-1 agreement with classifier (%) | fit time (s) |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    return head + "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", type=Path, default=Path("runs/quickstart"), help="pipeline folder with classifier/ and surrogate/")
    parser.add_argument("--classifier", type=Path, default=None, help="a classifier run folder (instead of --run)")
    parser.add_argument("--surrogate", type=Path, default=None, help="a surrogate run folder (instead of --run)")
    parser.add_argument("--title", default="quickstart")
    parser.add_argument("--wall", type=float, default=None, help="measured wall time of the whole pipeline (s)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/foundation.md"))
    args = parser.parse_args()
    stages = {"classifier": args.classifier or args.run / "classifier", "surrogate": args.surrogate or args.run / "surrogate"}
    text = f"## {args.title}\n\n" + table(stages, args.wall)
    header = "# Foundation: classifier vs masked-image surrogate on the synthetic test set\n\n"
    old = args.out.read_text() if args.out.is_file() else header
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(old.rstrip() + "\n\n" + text)
    print(text)


if __name__ == "__main__":
    main()
