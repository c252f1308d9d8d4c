"""Every registered method on the same synthetic test images: the table behind ReX Tables 1-3 and Salvage Table 1.

    python benchmarks/methods_comparison.py --explainer runs/salvage_synthetic/checkpoints/best.ckpt \
        [--vit-shapley runs/vit_shapley_synthetic/checkpoints/best.ckpt] --limit 200 \
        [--variant kernel_shap.n_samples=2048 --variant lime.n_samples=2048]

All methods run through the same explain run as explain.py (`evaluation.explain_images`) on the Salvage explainer checkpoint, so the black-box methods see the explainer's
reference classifier and every method gets SRG / R-SRG on its surrogate; ground truth gives IN, OUT, RRA and RMA.
`--train` first trains the classifier, surrogate and explainer with configs/{classifier,surrogate,salvage}_synthetic.
Writes `benchmarks/results/methods_synthetic.md` (or `--table`) with the command, settings and the table, and one
report.html over every run in `--out`.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import yaml  # noqa: E402

from evaluation import comparison_table, discover, explain_images, load_models, split_items  # noqa: E402
from evaluation import provenance  # noqa: E402
from evaluation.report import write_report  # noqa: E402
from explainers import available, get  # noqa: E402
from models import QueryEngine  # noqa: E402

STAGES = ("classifier_synthetic", "surrogate_synthetic", "salvage_synthetic")


def train_stages() -> str:
    """Train (or reuse, when results.json exists) the three synthetic stages with train.py; the explainer's best
    checkpoint."""
    for config in STAGES:
        results = ROOT / "runs" / config / "results.json"
        if not results.is_file():
            subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", config], cwd=ROOT, check=True)
        best = json.loads(results.read_text())["best_checkpoint"]
    return best


def masked_class(ckpt: str) -> int:
    """The class the checkpoint's classifier gives a fully masked image (every pixel at the mask value)."""
    loaded = load_models(ckpt)
    engine = QueryEngine(loaded.classifier)
    return int(engine.probabilities(engine.blank(torch.zeros(1, 3, loaded.img_size, loaded.img_size))).argmax())


def parse_options(items: list[str]) -> dict[str, dict]:
    """`METHOD.NAME=VALUE` items as {method: {name: value}}."""
    options: dict[str, dict] = {}
    for item in items:
        key, _, value = item.partition("=")
        method, _, name = key.partition(".")
        options.setdefault(method, {})[name] = yaml.safe_load(value)
    return options


def run(ckpt: str, methods: str, out: Path, args: argparse.Namespace, extra: list[str] = ()) -> list[dict]:
    """The explain run of one checkpoint on the first `--limit` test images (`extra` options on top of --option)."""
    loaded = load_models(ckpt)
    names = methods.split(",")
    options = parse_options(list(args.option) + list(extra))
    items, dataset, class_names = split_items(args.data, "test", args.data_arg, args.limit, loaded)
    return explain_images(loaded, names, items, out, options, None, dataset, class_names,
                          {"checkpoint": ckpt, "methods": names}, compare=len(names) > 1,
                          batch_size=args.batch_size, devices=args.devices, srg_masks=args.srg_masks)


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--explainer", help="Salvage (loss=js) explainer checkpoint")
    p.add_argument("--vit-shapley", default=None, help="optional ViT-Shapley (loss=mse) explainer checkpoint")
    p.add_argument("--train", action="store_true", help="train the synthetic stages first (reused when done)")
    p.add_argument("--data", default="classifier_synthetic")
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--methods", default=None, help="comma-separated subset (default: every registered method the checkpoint can run without "
                   "required options)")
    p.add_argument("--out", default=str(ROOT / "runs" / "methods_comparison"))
    p.add_argument("--table", default=str(ROOT / "benchmarks" / "results" / "methods_synthetic.md"))
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--srg-masks", type=int, default=128, help="R-SRG masks per subset size (Salvage: 128)")
    p.add_argument("--data-arg", action="append", default=[])
    p.add_argument("--option", action="append", default=[])
    p.add_argument("--variant", action="append", default=[],
                   help="an extra row: METHOD.NAME=VALUE[,NAME=VALUE] runs METHOD again with those options, labelled "
                        "'METHOD NAME=VALUE' (e.g. kernel_shap.n_samples=2048)")
    p.add_argument("--reuse", action="store_true", help="tabulate the summary.json files of an earlier run in --out")
    args = p.parse_args(argv)
    discover()
    ckpt = train_stages() if args.train else args.explainer
    if ckpt is None:
        raise SystemExit("error: give --explainer CKPT or --train")
    stages = set(load_models(ckpt).models)
    usable = [m for m in available() if set(get(m).needs) <= stages and not get(m).required]
    names = args.methods.split(",") if args.methods else [m for m in usable if m != "vit_shapley"]
    start = time.time()
    runs = [(ckpt, ",".join(names), Path(args.out), [], None)]
    if args.vit_shapley and "vit_shapley" in available():
        runs.append((args.vit_shapley, "vit_shapley", Path(args.out) / "vit_shapley", [], None))
    for variant in args.variant:
        method, _, settings = variant.partition(".")
        extra = [f"{method}.{s}" for s in settings.split(",")]
        label = f"{method} {settings.replace(',', ' ')}"
        runs.append((ckpt, method, Path(args.out) / label.replace(" ", "_").replace("=", "-"), extra, label))
    records, reused = [], 0
    for path, methods, out, extra, label in runs:
        summary = out / "summary.json"
        if args.reuse and summary.is_file():
            got = json.loads(summary.read_text())["records"]
            reused += 1
        else:
            got = run(path, methods, out, args, extra)
        where = out.relative_to(args.out)
        got = [{**r, "files": {k: str(where / v) for k, v in r["files"].items()}} for r in got]
        records += [{**r, "method": label} for r in got] if label else got
    minutes = (time.time() - start) / 60
    access_of = {m: get(m.split()[0]).access for m in dict.fromkeys(r["method"] for r in records)}
    access = ", ".join(f"{m} ({a})" for m, a in access_of.items())
    command = provenance.command(__file__, argv)
    blank_class = masked_class(ckpt)
    images = {r["image"]: r["target"] for r in records}
    blank = sum(t == blank_class for t in images.values())
    table = Path(args.table)
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_text(
        provenance.header(__file__, [ckpt, *([args.vit_shapley] if args.vit_shapley else [])],
                          f"the first {args.limit} images of the {args.data} test split", argv)
        + "\n# Attribution methods on the synthetic ground-truth scenes\n\n"
        f"{'Tabulated from the summary.json of the earlier run' if reused else f'{minutes:.1f} min in all'}.\n"
        f"Methods (access): {access}.\n\n"
        "size: explanation size (fraction of the image, Algorithm 3 extraction on each map; lower is better); "
        "insertion / deletion: normalised AUC (ReX section 6; insertion higher, deletion lower is better); "
        "in: fraction of the explanation inside the target object; out: fraction outside the occluders; "
        "srg / r_srg: Salvage eq. 7-8 on the surrogate (higher is better); rra / rma: relevance rank / mass accuracy "
        "against the object mask. Mean ± standard error over images; seconds and classifier calls per image "
        "(batch share).\n\n"
        f"The classifier calls the fully masked image (its mean colour) class {blank_class}, so the {blank} of "
        f"{len(images)} images with that target are 'explained' by any single pixel, whatever the map.\n\n"
        + comparison_table(records)
        + ("" if not blank else f"\nThe same without those {blank} images:\n\n"
           + comparison_table([r for r in records if r["target"] != blank_class]))
    )
    report = write_report(args.out, records, {"command": command, "checkpoint": ckpt, "methods": list(access_of),
                                               "source": {"data": args.data, "split": "test", "limit": args.limit},
                                               "date": datetime.now().astimezone().isoformat(timespec="seconds")})
    print(f"wrote {table} and {report}")
    return table


if __name__ == "__main__":
    main()
