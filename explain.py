"""Explain a trained checkpoint: `python explain.py --ckpt best.ckpt --method rex,gradcam --images a.png b.jpg`.

Every registered method (`--help` lists them). Per image and method: a PNG, an npz with the map, the explanation
extracted from it (or the method's own), and one record in summary.json with prediction, cost and every metric that
applies (ReX section 6; Salvage appendix A.1 with a surrogate; IN/OUT/RRA/RMA with ground truth); comparison.md for
several methods on a data split; report.html to see it all in a browser. Batches run through Lightning's
Trainer.predict, so `--devices N` splits the images across N devices.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from datetime import datetime
from typing import Any

import yaml

from evaluation import ImageFiles, LoadedModels, discover, explain_images, load_models, split_items
from evaluation.wandb_log import log_explanations
from explainers import available, get
from explainers.protocol import REQUIRED


#: stages that can be loaded beside --ckpt, each by a flag of its name
STAGE_FLAGS = ("bridge",)


def parse_options(items: list[str]) -> dict[str, dict[str, Any]]:
    """`method.key=value` strings (values parsed as YAML) to {method: {key: value}}."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        method, dot, name = key.partition(".")
        if not sep or not dot:
            raise SystemExit(f"error: --option expects METHOD.KEY=VALUE, got {item!r}")
        out.setdefault(method, {})[name] = yaml.safe_load(value)
    return out


def check_options(methods: list[str], options: dict[str, dict[str, Any]]) -> None:
    """Fail before any model or data loads on unknown methods, options of no method, unknown option names (with
    their close matches) and option values a method refuses."""
    for m in methods:
        if m not in available():
            raise SystemExit(f"error: unknown method {m!r}; available: {', '.join(available())}")
    stray = sorted(set(options) - set(available()))
    if stray:
        raise SystemExit(f"error: --option {stray[0]}.* names no method; available: {', '.join(available())}")
    for m in methods:
        shortcut = [k for k in get(m).required if k in ("property", "region") and k not in options.get(m, {})]
        if shortcut:
            raise SystemExit(f"error: --method {m} needs --{shortcut[0]} NAME; see --help")
        try:
            get(m).check_options(options.get(m, {}))
        except ValueError as err:
            raise SystemExit(f"error: {err}") from err


def check_methods(methods: list[str], loaded: LoadedModels, options: dict[str, dict[str, Any]]) -> None:
    """Fail before any work on a missing stage or access the model does not grant."""
    for m in methods:
        spec = get(m)
        missing = [s for s in spec.needs if s not in loaded.models]
        if missing:
            hint = f"; give one with --{missing[0]} PATH" if missing[0] in STAGE_FLAGS else ""
            raise SystemExit(f"error: method {m!r} needs a {missing[0]} checkpoint, but --ckpt is {loaded.describe()}"
                             + hint)
        try:
            spec.check_access(loaded.classifier)
        except ValueError as err:
            raise SystemExit(f"error: {err}") from err


def method_help(name: str) -> str:
    """`--help` text of one method's options: each with its default and its one line."""
    spec = get(name)
    lines = [f"options of {name} (--option {name}.NAME=VALUE):"]
    helps = spec.option_help()
    for opt, default in spec.options.items():
        shown = "required" if default is REQUIRED else f"default {default!r}"
        lines.append(f"  {opt:18s} {shown}" + (f"; {helps[opt]}" if opt in helps else ""))
    return "\n".join(lines if len(lines) > 1 else [f"{name} takes no options"])


def build_parser(chosen: list[str] | None = None) -> argparse.ArgumentParser:
    """The command line; with `chosen` methods, `--help` also lists their options."""
    discover()
    methods = "\n".join(f"  {n:22s} {get(n).access}-box  {get(n).summary}" for n in available())
    epilog = "methods:\n" + methods + "".join("\n\n" + method_help(m) for m in chosen or () if m in available())
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=epilog,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ckpt", "--model", dest="ckpt", required=True,
                   help="checkpoint of any stage (.ckpt); timm:NAME (a timm model, white box); package.module:factory "
                        "(a Python callable returning an nn.Module on [0, 1] images -> logits, white box); a "
                        "TorchScript (.pt) or torch.export (.pt2) file (black box)")
    p.add_argument("--weights", default="pretrained",
                   help="for timm:NAME: pretrained (timm's weights; offline needs a cache), random, or a local file")
    p.add_argument("--classes", default=None, help="file with the class names, one per line")
    p.add_argument("--method", required=True,
                   help="comma-separated methods (listed below; with --help, their options are listed too)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", nargs="+", help="image files (converted to RGB at the model's size)")
    src.add_argument("--data", help="config name or path whose data section gives the images (like train.py)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--limit", type=int, default=None, help="first N images of the split")
    p.add_argument("--data-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="override a data init_arg, e.g. --data-arg n_test=64")
    p.add_argument("--target", default=None, help="class index or name to explain (default: the predicted class)")
    p.add_argument("--property", default=None, help="the `property` option of the methods that take one (intervention)")
    p.add_argument("--region", default=None,
                   help="the `region` option of the methods that take one (rcsb): auto:METHOD, truth, box[:MARGIN] "
                        "(the truth's bounding box, dilated) or mask.png")
    p.add_argument("--bridge", default=None, help="a bridge checkpoint, for the methods that need one (rcsb)")
    p.add_argument("--option", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="method option, e.g. --option rex.n_partitions=10 --option rise.n_masks=2000")
    p.add_argument("--out", default="explanations", help="output folder")
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--img-size", type=int, default=None,
                   help="input size of a model file or factory (default 224; timm: its data config)")
    p.add_argument("--grid", type=int, default=8, help="patch grid side for perturbing a TorchScript model")
    p.add_argument("--steps", type=int, default=50, help="insertion/deletion curve steps")
    p.add_argument("--srg-masks", type=int, default=128, help="masks per subset size for R-SRG (Salvage: 128)")
    p.add_argument("--min-confidence", default="auto",
                   help="sufficiency: a kept subset must keep the class and this fraction of the full image's "
                        "probability (auto: 0, or 0.8 for two-class models)")
    p.add_argument("--no-metrics", action="store_true", help="maps and pictures only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--wandb", action="store_true",
                   help="also log a W&B run: one table of image, map, explanation and scores per image and method "
                        "(offline unless configured)")
    p.add_argument("--wandb-project", default="explaining-classifiers", help="W&B project of --wandb")
    return p


def _target_index(value: str | None, class_names: list[str] | None) -> int | None:
    if value is None:
        return None
    if value.lstrip("-").isdigit():
        return int(value)
    if class_names and value in class_names:
        return class_names.index(value)
    raise SystemExit(f"error: unknown target class {value!r}; classes: {', '.join(class_names or []) or 'indices only'}")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Entry point: explain images or a datamodule split with every requested method; returns the summary records."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--method", default="")
    chosen = [m.strip() for m in pre.parse_known_args(argv)[0].method.split(",") if m.strip()]
    args = build_parser(chosen).parse_args(argv)
    methods = chosen
    options = parse_options(args.option)
    for name in ("property", "region"):
        for m in methods:
            if getattr(args, name) is not None and m in available() and name in get(m).options:
                options.setdefault(m, {})[name] = getattr(args, name)
    check_options(methods, options)
    extra = {stage: getattr(args, stage) for stage in STAGE_FLAGS if getattr(args, stage)}
    loaded = load_models(args.ckpt, args.img_size, args.grid, extra, args.weights, args.classes)
    check_methods(methods, loaded, options)
    if args.images:
        items, dataset, class_names = ImageFiles(args.images, loaded.img_size, loaded.crop_pct), None, loaded.class_names
    else:
        items, dataset, class_names = split_items(args.data, args.split, args.data_arg, args.limit, loaded)
        class_names = loaded.class_names or class_names
    command = "python explain.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    meta = {"command": command, "date": datetime.now().astimezone().isoformat(timespec="seconds"),
            "checkpoint": str(args.ckpt), "stage": loaded.stage, "methods": methods,
            "source": args.images or {"data": args.data, "split": args.split, "limit": args.limit}}
    records = explain_images(
        loaded, methods, items, args.out, options, _target_index(args.target, class_names), dataset, class_names,
        meta, compare=bool(args.data) and len(methods) > 1, batch_size=args.batch_size, devices=args.devices,
        accelerator=args.accelerator, steps=args.steps, seed=args.seed, metrics=not args.no_metrics,
        srg_masks=args.srg_masks, min_confidence=args.min_confidence,
    )
    if args.wandb and records:
        print(f"W&B run: {log_explanations(args.out, records, meta, args.wandb_project)}")
    return records

if __name__ == "__main__":
    main(sys.argv[1:])
