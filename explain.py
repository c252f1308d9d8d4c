"""Explain a trained checkpoint: `python explain.py --ckpt best.ckpt --method rex,gradcam --images a.png b.jpg`.

Every method of the shared registry (`attribution.available()`) plus `intervention` (the gradual-intervention test,
with `--property`). Per image and method: an overlay PNG, an npz with the pixel-level map and the explanation extracted
from it, and one record in summary.json with prediction, timing, model calls and every metric that applies
(ReX section 6; Salvage appendix A.1 with a surrogate; IN/OUT/RRA/RMA with ground truth). Batches run through
Lightning's Trainer.predict, so `--devices N` splits the images across N devices.
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
import yaml
from PIL import Image, UnidentifiedImageError
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

import attribution
import attribution.baselines  # noqa: F401  (registers the baselines)
import rex  # noqa: F401  (registers "rex")
import salvage
from attribution.baselines import BlackBoxModel, check_access
from attribution.maps import to_pixel_map
from attribution.overlay import save_overlay

INTERVENTION = "intervention"
METRIC_KEYS = ("size", "insertion", "deletion", "in", "out", "srg", "r_srg", "rra", "rma", "S", "p", "flips")


@dataclass
class LoadedModel:
    """What a checkpoint provides: the classifier (black-box calls; an explainer's reference classifier), its stage
    module, and the surrogate (the game of Salvage's SRG metrics) of a surrogate or explainer checkpoint."""

    classifier: nn.Module
    stage: str | None
    module: nn.Module | None
    surrogate: nn.Module | None
    img_size: int


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive (torch.jit.save) holds compiled code/ entries; plain checkpoints do not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any("/code/" in n for n in zf.namelist())


def load_model(path: str | Path, img_size: int | None = None, grid: int = 8) -> LoadedModel:
    """A checkpoint of any stage (weights_only), or a TorchScript file as a black box (images in [0, 1] -> logits)."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"error: checkpoint not found: {str(path)!r}")
    if is_torchscript(path):
        size = img_size or 224
        scripted = torch.jit.load(str(path), map_location="cpu").eval()
        mean = getattr(scripted, "mean", None)
        fill = "black" if mean is None else f"its mean colour {[round(float(v), 3) for v in mean.flatten()]}"
        print(f"note: {path} is a TorchScript model: treated as a black box on {size} px images (--img-size), "
              f"perturbed on a {grid}x{grid} grid (--grid), masked pixels set to {fill}")
        return LoadedModel(BlackBoxModel(scripted, size, (grid, grid), mean), None, None, None, size)
    try:
        module = salvage.stage_module(path).eval()
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from err
    stage = module.stage
    hp = module.hparams
    size = hp.get("img_size") or (hp.get("backbone_spec") or {}).get("img_size") or img_size or 224
    if stage == "explainer":
        try:
            surrogate = module.attach_game()
        except FileNotFoundError as err:
            raise SystemExit(f"error: the explainer checkpoint {str(path)!r} needs its surrogate: {err}") from err
        return LoadedModel(module.reference, stage, module, surrogate, int(size))
    surrogate = module.model if stage == "surrogate" else None
    return LoadedModel(module.model, stage, module, surrogate, int(size))


def _fit_image(img: Image.Image, name: str, size: int) -> Image.Image:
    notes = []
    if img.mode != "RGB":
        notes.append(f"mode {img.mode} -> RGB")
        img = img.convert("RGBA").convert("RGB") if img.mode in ("P", "LA") else img.convert("RGB")
    if img.size != (size, size):
        notes.append(f"{img.size[0]}x{img.size[1]} -> {size}x{size}")
        img = img.resize((size, size), Image.BILINEAR)
    if notes:
        print(f"note: {name}: converted ({', '.join(notes)})")
    return img


def load_image(path: str | Path, size: int) -> Tensor:
    """An image file as (3, size, size) float in [0, 1]; other modes and sizes are converted with a note."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"error: image not found: {str(path)!r}")
    try:
        with Image.open(path) as img:
            img.load()
            img = _fit_image(img, path.name, size)
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise SystemExit(f"error: cannot read image {str(path)!r}: {err}") from err
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1).contiguous()


class ImageFiles(Dataset):
    """Image files as dataset items {image, name, index}."""

    def __init__(self, paths: list[str], size: int) -> None:
        self.images = [load_image(p, size) for p in paths]
        stems = [Path(p).stem for p in paths]
        self.names = [s if stems.count(s) == 1 else f"{s}_{i}" for i, s in enumerate(stems)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.images[i], "name": self.names[i], "index": i}


class NamedSplit(Dataset):
    """The first `limit` items of a datamodule split, each with a name and its index in the split."""

    def __init__(self, dataset: Dataset, split: str, limit: int | None) -> None:
        self.dataset, self.split = dataset, split
        self.n = len(dataset) if limit is None else min(limit, len(dataset))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = dict(self.dataset[i])
        item.update(name=f"{self.split}_{i:05d}", index=i)
        return item


def load_split(config: str, split: str, overrides: list[str]) -> tuple[L.LightningDataModule, Dataset]:
    """Instantiate a config's `data` section (class_path/init_args; a pipeline's first stage) and set up `split`."""
    import train

    path = train.resolve_config(config)
    spec = yaml.safe_load(path.read_text()) or {}
    if "pipeline" in spec and "data" not in spec:
        spec = yaml.safe_load(train.resolve_config(spec["pipeline"][0]["config"]).read_text())
    data = spec.get("data")
    if not isinstance(data, dict) or "class_path" not in data:
        raise SystemExit(f"error: config {str(path)!r} has no data section with a class_path")
    init = dict(data.get("init_args") or {})
    for item in overrides:
        key, _, value = item.partition("=")
        init[key.removeprefix("init_args.")] = yaml.safe_load(value)
    module_name, _, cls_name = data["class_path"].rpartition(".")
    dm = getattr(importlib.import_module(module_name), cls_name)(**init)
    stage = {"train": "fit", "val": "validate", "test": "test"}[split]
    dm.setup(stage)
    dataset = getattr(dm, f"data_{split}", None)
    if dataset is None:
        raise SystemExit(f"error: {data['class_path']} has no {split} split (data_{split})")
    return dm, dataset


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


class CallCounter:
    """Counts forward calls and images of a module through a forward pre-hook."""

    def __init__(self, module: nn.Module) -> None:
        self.calls = self.images = 0
        self._hook = module.register_forward_pre_hook(self._count)

    def _count(self, module: nn.Module, args: tuple) -> None:
        self.calls += 1
        self.images += int(args[0].shape[0]) if args and isinstance(args[0], Tensor) else 0

    def reset(self) -> None:
        self.calls = self.images = 0

    def remove(self) -> None:
        self._hook.remove()


def quality_metrics(
    model: nn.Module, images: Tensor, pixel_maps: Tensor, maps: Tensor, target: Tensor, batch: dict[str, Any],
    surrogate: nn.Module | None, steps: int, generator: torch.Generator, srg_masks: int = 128,
) -> tuple[dict[str, Tensor], Tensor]:
    """ReX section 6 metrics (size, insertion, deletion AUC, IN, OUT) via rex.metrics, Salvage's SRG/R-SRG with a
    surrogate and RRA/RMA with ground truth via salvage.metrics; returns them (B,) and the explanation masks."""
    from salvage.metrics import (
        relative_srg_scores,
        relevance_mass_accuracy,
        relevance_rank_accuracy,
        srg_scores,
    )

    bb = rex.BlackBox(model, 256)
    size, expl = rex.explanation_size(bb, images, pixel_maps, target)
    _, _, ins, dele = rex.insertion_deletion(bb, images, pixel_maps, target, steps)
    out = {"size": size, "insertion": ins, "deletion": dele}
    if "mask" in batch:
        out["in"] = rex.fraction_inside(expl, batch["mask"])
        out["rra"] = relevance_rank_accuracy(pixel_maps, batch["mask"])
        out["rma"] = relevance_mass_accuracy(pixel_maps, batch["mask"])
    if "occluder_mask" in batch:
        out["out"] = rex.fraction_outside(expl, batch["occluder_mask"])
    if surrogate is not None:
        with torch.no_grad():
            out["srg"] = srg_scores(surrogate, images, maps, target)["srg"]
            out["r_srg"] = relative_srg_scores(surrogate, images, maps, target, srg_masks, generator)["r_srg"]
    return out, expl


class ExplainTask(L.LightningModule):
    """Trainer.predict wrapper: predict_step runs every method on a batch, writes its pictures, returns records."""

    def __init__(self, loaded: LoadedModel, methods: list[str], out_dir: Path, options: dict[str, dict[str, Any]],
                 target: int | None = None, class_names: list[str] | None = None, dataset: Any = None,
                 prop: str | None = None, steps: int = 50, seed: int = 0, metrics: bool = True,
                 srg_masks: int = 128) -> None:
        super().__init__()
        self.classifier = loaded.classifier
        object.__setattr__(self, "loaded", loaded)
        self.methods, self.out_dir, self.options = methods, out_dir, options
        self.fixed_target, self.class_names, self.dataset, self.prop = target, class_names, dataset, prop
        self.steps, self.seed, self.with_metrics, self.srg_masks = steps, seed, metrics, srg_masks
        self.records: list[dict[str, Any]] = []

    def on_predict_start(self) -> None:
        for m in (self.loaded.module, self.loaded.surrogate):
            if m is not None:
                m.to(self.device).eval()
        self.counter = CallCounter(self.classifier)

    def on_predict_end(self) -> None:
        self.counter.remove()

    def _class_name(self, c: int) -> str:
        return self.class_names[c] if self.class_names and 0 <= c < len(self.class_names) else f"class {c}"

    def _method_model(self, name: str) -> nn.Module:
        spec = attribution.get(name)
        if spec.needs == "classifier":
            return self.classifier
        return self.loaded.module

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        images = batch["image"]
        with torch.no_grad():
            probs = self.classifier(images).float().softmax(-1)
        pred = probs.argmax(1)
        target = pred if self.fixed_target is None else torch.full_like(pred, self.fixed_target)
        base = []
        for i in range(images.shape[0]):
            rec = {"image": batch["name"][i], "predicted": int(pred[i]), "predicted_name": self._class_name(int(pred[i])),
                   "confidence": float(probs[i, pred[i]]), "target": int(target[i]),
                   "target_confidence": float(probs[i, target[i]])}
            if "label" in batch:
                rec["label"] = int(batch["label"][i])
            base.append(rec)
        records = []
        for method in self.methods:
            run = self._intervention if method == INTERVENTION else self._attribution
            records += run(method, batch, images, target, base, batch_idx)
        self.records += records
        return records

    def _attribution(self, method: str, batch: dict[str, Any], images: Tensor, target: Tensor,
                     base: list[dict[str, Any]], batch_idx: int) -> list[dict[str, Any]]:
        spec = attribution.get(method)
        self.counter.reset()
        start = time.perf_counter()
        maps = spec.fn(self._method_model(method), images, target, **self.options.get(method, {}))
        seconds = time.perf_counter() - start
        calls, n_images = self.counter.calls, self.counter.images
        maps = maps.detach().float()
        pixel = to_pixel_map(maps, tuple(images.shape[-2:]), target).float()
        metrics, expl = {}, None
        if self.with_metrics:
            g = torch.Generator(device=images.device).manual_seed(self.seed * 1_000_003 + batch_idx)
            metrics, expl = quality_metrics(self.classifier, images, pixel, maps, target, batch, self.loaded.surrogate,
                                            self.steps, g, self.srg_masks)
        out = []
        for i, rec in enumerate(base):
            stem = f"{rec['image']}_{method}"
            arrays = {"map": pixel[i].cpu().numpy(), "raw_map": maps[i].cpu().numpy()}
            if expl is not None:
                arrays["explanation"] = expl[i, 0].cpu().numpy()
            np.savez_compressed(self.out_dir / f"{stem}.npz", **arrays)
            title = (f"{method}: predicted {rec['predicted_name']} (p = {rec['confidence']:.2f})"
                     + ("" if rec["target"] == rec["predicted"] else f", target {self._class_name(rec['target'])}"))
            save_overlay(self.out_dir / f"{stem}.png", images[i], pixel[i], title,
                         None if expl is None else expl[i], map_title=f"{method} map")
            out.append({**rec, "method": method, "seconds": seconds / len(base), "model_calls": calls / len(base),
                        "model_images": n_images / len(base),
                        "metrics": {k: float(v[i]) for k, v in metrics.items()},
                        "files": {"overlay": f"{stem}.png", "npz": f"{stem}.npz"}})
        return out

    def _intervention(self, method: str, batch: dict[str, Any], images: Tensor, target: Tensor,
                      base: list[dict[str, Any]], batch_idx: int) -> list[dict[str, Any]]:
        from interventions import get_property, gradual_intervention_test, save_intervention_plot

        factory = get_property(self.prop)
        try:
            intervention = factory({**batch, "index": torch.as_tensor(batch["index"])}, self.dataset)
        except (KeyError, AttributeError, TypeError) as err:
            raise SystemExit(
                f"error: property {self.prop!r} needs what these images do not have ({err}): ground-truth masks or a "
                "synthetic dataset; run it on a datamodule split with --data"
            ) from err
        opts = self.options.get(INTERVENTION, {})
        g = torch.Generator().manual_seed(self.seed + batch_idx)
        self.counter.reset()
        start = time.perf_counter()
        res = gradual_intervention_test(self.classifier, images, intervention, generator=g, target=target, **opts)
        seconds = time.perf_counter() - start
        calls, n_images = self.counter.calls, self.counter.images
        out = []
        for i, rec in enumerate(base):
            stem = f"{rec['image']}_{method}_{self.prop}"
            title = (f"{self.prop}: S = {float(res.gradient[i]):.3f}, p = {float(res.p_value[i]):.3g}, "
                     f"{int(res.flip_count[i])} flips ({rec['predicted_name']})")
            save_intervention_plot(self.out_dir / f"{stem}.png", res.x, res.curve[i], images, intervention, i,
                                   title=title)
            np.savez_compressed(self.out_dir / f"{stem}.npz", x=res.x.cpu().numpy(), curve=res.curve[i].cpu().numpy())
            metrics = {"S": float(res.gradient[i]), "p": float(res.p_value[i]), "flips": int(res.flip_count[i])}
            out.append({**rec, "method": method, "property": self.prop, "significant": bool(res.significant[i]),
                        "seconds": seconds / len(base), "model_calls": calls / len(base),
                        "model_images": n_images / len(base), "metrics": metrics,
                        "files": {"overlay": f"{stem}.png", "npz": f"{stem}.npz"}})
        return out


def gather_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """All ranks' records (one per (image, method); DistributedSampler padding removed), in image order."""
    if dist.is_available() and dist.is_initialized():
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, records)
        records = [r for part in parts for r in part]
    unique = {(r["image"], r["method"]): r for r in records}
    return sorted(unique.values(), key=lambda r: (r["image"], r["method"]))


def comparison_table(records: list[dict[str, Any]]) -> str:
    """Markdown: one row per method, mean +- std of each metric over images, seconds and model calls per image."""
    methods = list(dict.fromkeys(r["method"] for r in records))
    keys = [k for k in METRIC_KEYS if any(k in r["metrics"] for r in records)]
    head = ["method", "images", *keys, "seconds/image", "model calls/image"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        rows = [r for r in records if r["method"] == m]
        cells = [m, str(len(rows))]
        for k in [*keys, "seconds", "model_calls"]:
            vals = np.array([r["metrics"][k] if k in r["metrics"] else r.get(k, np.nan) for r in rows
                             if k in r["metrics"] or k in r], dtype=float)
            cells.append("-" if vals.size == 0 else f"{vals.mean():.3f} ± {vals.std():.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def check_methods(methods: list[str], loaded: LoadedModel, prop: str | None) -> None:
    """Fail before any work on unknown methods, a missing stage, or access the model does not grant."""
    known = [*attribution.available(), INTERVENTION]
    for m in methods:
        if m == INTERVENTION:
            if prop is None:
                from interventions import PROPERTIES

                raise SystemExit(f"error: --method intervention needs --property NAME; available: {', '.join(PROPERTIES)}")
            continue
        if m not in known:
            raise SystemExit(f"error: unknown method {m!r}; available: {', '.join(known)}")
        spec = attribution.get(m)
        if spec.needs != "classifier" and loaded.stage != spec.needs:
            what = "a TorchScript black box" if loaded.stage is None else f"a {loaded.stage} checkpoint"
            raise SystemExit(f"error: method {m!r} needs a {spec.needs} checkpoint, but --ckpt is {what}")
        try:
            check_access(loaded.classifier, m, spec.access)
        except ValueError as err:
            raise SystemExit(f"error: {err}") from err


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint of any stage (.ckpt) or a TorchScript model (.pt)")
    p.add_argument("--method", required=True,
                   help="comma-separated methods: " + ", ".join([*attribution.available(), INTERVENTION]))
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", nargs="+", help="image files (converted to RGB at the model's size)")
    src.add_argument("--data", help="config name or path whose data section gives the images (like train.py)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--limit", type=int, default=None, help="first N images of the split")
    p.add_argument("--data-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="override a data init_arg, e.g. --data-arg n_test=64")
    p.add_argument("--target", default=None, help="class index or name to explain (default: the predicted class)")
    p.add_argument("--property", default=None, help="property for --method intervention")
    p.add_argument("--option", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="method option, e.g. --option rex.n_partitions=10 --option rise.n_masks=2000")
    p.add_argument("--out", default="explanations", help="output folder")
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--img-size", type=int, default=None, help="input size of a TorchScript model (default 224)")
    p.add_argument("--grid", type=int, default=8, help="patch grid side for perturbing a TorchScript model")
    p.add_argument("--steps", type=int, default=50, help="insertion/deletion curve steps")
    p.add_argument("--srg-masks", type=int, default=128, help="masks per subset size for R-SRG (Salvage: 128)")
    p.add_argument("--no-metrics", action="store_true", help="maps and pictures only")
    p.add_argument("--seed", type=int, default=0)
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
    args = build_parser().parse_args(argv)
    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    loaded = load_model(args.ckpt, args.img_size, args.grid)
    check_methods(methods, loaded, args.property)
    options = parse_options(args.option)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    class_names, dataset = None, None
    if args.images:
        items: Dataset = ImageFiles(args.images, loaded.img_size)
    else:
        dm, dataset = load_split(args.data, args.split, args.data_arg)
        class_names = getattr(dm, "class_names", None)
        items = NamedSplit(dataset, args.split, args.limit)
        size = tuple(items[0]["image"].shape[-2:]) if len(items) else None
        if size and loaded.stage is not None and size != (loaded.img_size, loaded.img_size):
            raise SystemExit(f"error: the data has {size[0]}x{size[1]} images but the model expects "
                             f"{loaded.img_size} px; set --data-arg img_size={loaded.img_size}")
    target = _target_index(args.target, class_names)
    task = ExplainTask(loaded, methods, out_dir, options, target, class_names, dataset, args.property, args.steps,
                       args.seed, not args.no_metrics, args.srg_masks)
    trainer = L.Trainer(accelerator=args.accelerator, devices=args.devices, logger=False, inference_mode=False,
                        enable_checkpointing=False, enable_model_summary=False)
    loader = DataLoader(items, batch_size=args.batch_size, shuffle=False)
    trainer.predict(task, loader, return_predictions=False)
    records = gather_records(task.records)
    if trainer.is_global_zero:
        summary = {"checkpoint": str(args.ckpt), "stage": loaded.stage, "methods": methods,
                   "source": args.images or {"data": args.data, "split": args.split, "limit": args.limit},
                   "records": records}
        (out_dir / "summary.json").write_text(json.dumps(finite(summary), indent=1, allow_nan=False))
        if args.data and len(methods) > 1:
            (out_dir / "comparison.md").write_text(comparison_table(records))
        print(f"wrote {len(records)} records for {len(items)} images to {out_dir}/ (summary.json"
              + (", comparison.md)" if args.data and len(methods) > 1 else ")"))
    return records


def finite(value: Any) -> Any:
    """JSON-ready copy of `value` with NaN and infinite floats as null."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


if __name__ == "__main__":
    main(sys.argv[1:])
