"""Real-size throughput of the Pet, ImageNette and MURA stages, and the projected wall time of their full recipes.

    python benchmarks/real_size.py              # one GPU: every stage of the three datasets' configs (about 4 min)
    python benchmarks/real_size.py --dry-run    # CPU: the same code at batch 2 and 28 px (about a minute)

Each stage is built from its config with random weights (classifier_X.yaml, surrogate_X.yaml, salvage_X.yaml, and
salvage_X.yaml with loss mse and sampler shapley for ViT-Shapley), handed the previous stage's checkpoint as
train.py hands it on, and run by a Lightning Trainer with the config's precision and gradient clipping on synthetic
random batches of the config's size: images per second of training steps (forward, backward, clipping, AdamW) and of
validation and test steps after warm-up batches, with peak GPU memory. The explainers' SRG / R-SRG metrics, computed
on `val_batches` validation batches per epoch and on every test image, are timed per image on a few images. Data
loading is outside the timed steps (the configs' 8 workers overlap it). The projection multiplies each dataset's
split sizes by the configured epochs and divides by the measured rates.
"""
from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lightning as L  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from jsonargparse import ArgumentParser  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from datamodules.base import split_indices  # noqa: E402
from evaluation import provenance  # noqa: E402
from evaluation.configs import instantiation_error, resolve_config  # noqa: E402

DATASETS = ("pet", "imagenette", "mura")
STAGES = ("classifier", "surrogate", "salvage", "vit_shapley")
#: train, validation and test images: Pet's 7,349 split 80/10/10 with seed 44; ImageNette (160 px) 9,469 training
#: images and its 3,925 validation images halved; MURA v1.1's 36,808 training images split about 90/10 by patient
#: (the exact share depends on the patients drawn) and its 3,197 validation images as test
SPLITS = {
    "pet": tuple(len(part) for part in split_indices(7349, (0.8, 0.1, 0.1), 44)),
    "imagenette": (9469, *(len(part) for part in split_indices(3925, (0.5, 0.5), 44))),
    "mura": (33127, 3681, 3197),
}
#: full-size ViT-S/14 passes (224 px, 257 tokens) per second assumed for the expected time of a GPU call (bf16, an
#: H100-class GPU); a pass with half the patches masked counts as half a pass
ASSUMED_PASSES_PER_S = 4000
#: seconds of fixed cost per stage (building the model, Trainer set-up, writing a checkpoint)
STAGE_OVERHEAD_S = 4


@dataclass
class Settings:
    """What one call measures: warm-up and timed batches, metric images, image size and batch (None: the config's)."""

    warmup: int = 3
    steps: int = 10
    metric_images: int = 2
    img_size: int | None = None
    batch_size: int | None = None
    accelerator: str = "auto"


@dataclass
class StageResult:
    """The measured rates of one stage (images per second) and its peak GPU memory (GiB) per phase."""

    dataset: str
    stage: str
    config: str
    img_size: int
    batch_size: int
    precision: str
    epochs: int
    val_batches: int
    train_ips: float
    eval_ips: float
    test_ips: float
    srg_ips: float | None = None
    peak_gib: dict[str, float] = field(default_factory=dict)


class RandomImages(Dataset):
    """`n` dict samples of random [0, 1] images of one size with labels, dataset indices and (Pet) object masks."""

    def __init__(self, n: int, img_size: int, num_classes: int, masks: bool, pool: int = 64) -> None:
        g = torch.Generator().manual_seed(0)
        self.n, self.pool = n, min(n, pool)
        self.images = torch.rand(self.pool, 3, img_size, img_size, generator=g)
        self.labels = torch.randint(num_classes, (self.pool,), generator=g)
        self.masks = torch.rand(self.pool, 1, img_size, img_size, generator=g) > 0.5 if masks else None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        j = i % self.pool
        sample = {"image": self.images[j], "label": self.labels[j], "index": i}
        return sample if self.masks is None else {**sample, "mask": self.masks[j]}


class BatchTimer(Callback):
    """Synchronised seconds of every training, validation and test batch from the `warmup`-th on, and the peak GPU
    memory of those batches."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.seconds: dict[str, list[float]] = defaultdict(list)
        self.peak: dict[str, float] = {}
        self._start = 0.0

    def _begin(self, pl_module: L.LightningModule, batch_idx: int) -> None:
        cuda = pl_module.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            if batch_idx == self.warmup:
                torch.cuda.reset_peak_memory_stats()
        self._start = time.perf_counter()

    def _end(self, phase: str, pl_module: L.LightningModule, batch_idx: int) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak[phase] = torch.cuda.max_memory_allocated() / 2**30
        if batch_idx >= self.warmup:
            self.seconds[phase].append(time.perf_counter() - self._start)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._begin(pl_module, batch_idx)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._end("train", pl_module, batch_idx)

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        self._begin(pl_module, batch_idx)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self._end("validation", pl_module, batch_idx)

    def on_test_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int,
                            dataloader_idx: int = 0) -> None:
        self._begin(pl_module, batch_idx)

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._end("test", pl_module, batch_idx)


def stage_config(dataset: str, stage: str) -> tuple[str, dict[str, Any]]:
    """A stage's config file and the init_args that make it this benchmark's stage (random weights; ViT-Shapley)."""
    if stage == "classifier":
        return f"classifier_{dataset}.yaml", {"pretrained": False}
    if stage == "surrogate":
        return f"surrogate_{dataset}.yaml", {}
    return f"salvage_{dataset}.yaml", {"loss": "mse", "sampler": "shapley"} if stage == "vit_shapley" else {}


def build_module(spec: dict[str, Any], overrides: dict[str, Any], name: str) -> L.LightningModule:
    """The `model` section of a config, init_args overridden, instantiated as train.py's LightningCLI would."""
    model = spec["model"]
    section = {"class_path": model["class_path"], "init_args": {**(model.get("init_args") or {}), **overrides}}
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningModule, "model", required=True)
    try:
        return parser.instantiate_classes(parser.parse_object({"model": section})).model
    except Exception as err:
        raise SystemExit(instantiation_error(err, f"the model of {name!r}")) from None


def loader(dataset: Dataset, batch_size: int, train: bool) -> DataLoader:
    """Batches as the real datamodules deal them (training: shuffled, incomplete batch dropped)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=train, drop_last=train, num_workers=0)


def trainer_for(trainer_cfg: dict[str, Any], settings: Settings, timer: BatchTimer, fit_steps: int = 0) -> L.Trainer:
    """A one-device Trainer with the config's precision and gradient clipping, no logger and no checkpoints; with
    `fit_steps`, one that trains that many steps and never validates."""
    return L.Trainer(
        accelerator=settings.accelerator, devices=1, precision=trainer_cfg.get("precision", "32-true"),
        gradient_clip_val=trainer_cfg.get("gradient_clip_val"), max_steps=fit_steps or -1,
        limit_val_batches=0 if fit_steps else 1.0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
    )


def rate(seconds: list[float], images: int) -> float:
    """Images per second of the median timed batch."""
    return images / statistics.median(seconds)


def measure_stage(dataset: str, stage: str, settings: Settings, handed: dict[str, str], work: Path) -> StageResult:
    """Train, validate and test one stage on random batches; its checkpoint goes to `handed` for the next stage."""
    name, overrides = stage_config(dataset, stage)
    spec = yaml.safe_load(resolve_config(name).read_text())
    data_args, trainer_cfg = spec["data"]["init_args"], spec["trainer"]
    img_size = settings.img_size or data_args["img_size"]
    batch = settings.batch_size or data_args["batch_size"]
    if stage == "classifier":
        overrides["img_size"] = img_size
    elif stage == "surrogate":
        overrides["classifier_ckpt"] = handed["classifier"]
    else:
        overrides["surrogate_ckpt"] = handed["surrogate"]
    L.seed_everything(spec.get("seed_everything", 0), verbose=False)
    module = build_module(spec, overrides, name)
    classes = module.hparams.get("num_classes") or module.hparams["backbone_spec"]["num_classes"]
    timed = settings.warmup + settings.steps
    data = RandomImages(timed * batch, img_size, classes, masks=dataset == "pet")
    timer = BatchTimer(settings.warmup)
    fit = trainer_for(trainer_cfg, settings, timer, fit_steps=timed)
    fit.fit(module, train_dataloaders=loader(data, batch, train=True))
    if stage in ("classifier", "surrogate"):
        handed[stage] = str(work / f"{dataset}_{stage}.ckpt")
        fit.save_checkpoint(handed[stage], weights_only=True)
    evaluate = trainer_for(trainer_cfg, settings, timer)
    explainer = stage in ("salvage", "vit_shapley")
    val_batches = module.hparams.val_batches if explainer else 0
    if explainer:
        module.hparams.val_batches = 0
    evaluate.validate(module, dataloaders=loader(data, batch, train=False), verbose=False)
    result = StageResult(
        dataset, stage, name, img_size, batch, str(fit.precision), trainer_cfg["max_epochs"], val_batches,
        rate(timer.seconds["train"], batch), rate(timer.seconds["validation"], batch), math.nan,
    )
    if explainer:
        few = RandomImages(settings.metric_images, img_size, classes, masks=dataset == "pet")
        metrics = BatchTimer(0)
        evaluate = trainer_for(trainer_cfg, settings, metrics)
        module.hparams.val_batches = 1
        evaluate.validate(module, dataloaders=loader(few, settings.metric_images, train=False), verbose=False)
        evaluate.test(module, dataloaders=loader(few, settings.metric_images, train=False), verbose=False)
        module.hparams.val_batches = val_batches
        result.srg_ips = rate(metrics.seconds["validation"], settings.metric_images)
        result.test_ips = rate(metrics.seconds["test"], settings.metric_images)
        timer.peak.update({f"metrics {k}": v for k, v in metrics.peak.items()})
    else:
        evaluate.test(module, dataloaders=loader(data, batch, train=False), verbose=False)
        result.test_ips = rate(timer.seconds["test"], batch)
    result.peak_gib = dict(timer.peak)
    return result


def projection(result: StageResult) -> dict[str, float]:
    """Hours of the stage's full recipe on its dataset: training, validation every epoch, one test pass."""
    n_train, n_val, n_test = SPLITS[result.dataset]
    epochs = result.epochs
    srg_images = min(result.val_batches * result.batch_size, n_val)
    val_seconds = (n_val - srg_images) / result.eval_ips + (srg_images / result.srg_ips if srg_images else 0.0)
    hours = {
        "train": n_train * epochs / result.train_ips / 3600,
        "validation": epochs * val_seconds / 3600,
        "test": n_test / result.test_ips / 3600,
    }
    return {**hours, "total": sum(hours.values())}


def expected_seconds(settings: Settings, datasets: list[str], stages: list[str]) -> float:
    """A GPU call's expected seconds: its full-size ViT-S pass equivalents at ASSUMED_PASSES_PER_S, plus set-up."""
    timed, m, n = (settings.warmup + settings.steps) * (settings.batch_size or 64), settings.metric_images, 256
    masks, val_r, test_r = 32, 16, 128
    explainer = timed * (3 + 1 + masks * 0.5) * 2 + m * n * (2 + 2 * val_r + 2 * test_r) * 0.5
    passes = {
        "classifier": timed * (3 + 1 + 4),  # forward and backward; validation; four masked test passes
        "surrogate": timed * (3 * 0.5 + 1 + 1.5 + 4 + 1),  # masked training and teacher; validation; test
        "salvage": explainer,  # training and validation on 32 masks per image; SRG and R-SRG on a few images
        "vit_shapley": explainer,
    }
    per_dataset = sum(passes[stage] / ASSUMED_PASSES_PER_S + STAGE_OVERHEAD_S for stage in stages)
    return len(datasets) * per_dataset


def _number(value: float | None) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"


def report(results: list[StageResult], head: str, dry_run: bool, seconds: float, skipped: list[str]) -> str:
    """The markdown: the provenance header, the rates per stage and the projected hours per stage and dataset."""
    lines = [
        head,
        f"This call took {seconds:.0f} s.",
        "",
        "# Real-size stages: throughput and projected wall time of the full recipes",
        "",
    ]
    if skipped:
        lines += [f"Not measured (the call reached its --time-limit first): {', '.join(skipped)}.", ""]
    if dry_run:
        lines += ["**Dry run**: batch 2 at 28 px on this machine, so it checks the code path only; its rates and "
                  "projections say nothing about the real recipe. Run `python benchmarks/real_size.py` on one GPU for "
                  "the real table.", ""]
    lines += [
        "Random weights and synthetic batches of the config's size; images per second of the median timed batch "
        "after warm-up. `SRG val` and `test` of the explainers include Salvage's SRG / R-SRG metrics (their R-SRG "
        "masks per subset size: the config's `val_r_masks` / `test_r_masks`), timed per image on a few images. Peak "
        "memory is the GPU's (— on a CPU).",
        "",
        "## Throughput",
        "",
        "| dataset | stage | config | px | batch | precision | train img/s | eval img/s | SRG val img/s | test img/s "
        "| peak GiB train | peak GiB eval | peak GiB metrics |",
        "|---" * 13 + "|",
    ]
    for r in results:
        lines.append(
            f"| {r.dataset} | {r.stage} | {r.config} | {r.img_size} | {r.batch_size} | {r.precision} | "
            f"{_number(r.train_ips)} | {_number(r.eval_ips)} | {_number(r.srg_ips)} | {_number(r.test_ips)} | "
            f"{_number(r.peak_gib.get('train'))} | {_number(r.peak_gib.get('validation'))} | "
            f"{_number(max((v for k, v in r.peak_gib.items() if k.startswith('metrics')), default=None))} |"
        )
    lines += [
        "",
        "## Projected hours of each stage's full recipe",
        "",
        "train = training images x epochs / train img/s; validation = every epoch, its images at eval img/s (the "
        "first `val_batches` batches at SRG val img/s); test = test images / test img/s. The pipeline row is "
        "classifier + surrogate + salvage (what `pipeline_X.yaml` trains).",
        "",
        "| dataset | stage | train images | val images | test images | epochs | iterations | train h | validation h "
        "| test h | total h |",
        "|---" * 11 + "|",
    ]
    for dataset in dict.fromkeys(r.dataset for r in results):
        n_train, n_val, n_test = SPLITS[dataset]
        rows = [r for r in results if r.dataset == dataset]
        chain = 0.0
        for r in rows:
            hours = projection(r)
            chain += hours["total"] if r.stage != "vit_shapley" else 0.0
            iterations = n_train // r.batch_size * r.epochs
            lines.append(
                f"| {dataset} | {r.stage} | {n_train} | {n_val} | {n_test} | {r.epochs} | {iterations} | "
                f"{_number(hours['train'])} | {_number(hours['validation'])} | {_number(hours['test'])} | "
                f"{_number(hours['total'])} |"
            )
        if {r.stage for r in rows} >= {"classifier", "surrogate", "salvage"}:
            lines.append(f"| {dataset} | pipeline | | | | | | | | | {_number(chain)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[StageResult]:
    """Measure every stage of the chosen datasets and write the markdown table; returns the measurements."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="CPU check of the code path: batch 2, 28 px, 1 + 1 batches")
    p.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    p.add_argument("--warmup", type=int, default=3, help="untimed batches per phase")
    p.add_argument("--steps", type=int, default=10, help="timed batches per phase")
    p.add_argument("--metric-images", type=int, default=2, help="images the explainers' SRG / R-SRG are timed on")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: torch's; 1 with --dry-run, fastest for its tiny batches)")
    p.add_argument("--time-limit", type=float, default=480,
                   help="seconds after which no further stage starts (the table keeps the stages done)")
    p.add_argument("--out", type=Path, default=None,
                   help="markdown file (default benchmarks/results/real_size.md, or real_size_dry_run.md)")
    args = p.parse_args(argv)
    if ("salvage" in args.stages or "vit_shapley" in args.stages) and "surrogate" not in args.stages:
        p.error("the explainer stages need the surrogate stage (its checkpoint)")
    if "surrogate" in args.stages and "classifier" not in args.stages:
        p.error("the surrogate stage needs the classifier stage (its checkpoint)")
    settings = Settings(args.warmup, args.steps, args.metric_images, accelerator=args.accelerator)
    if args.dry_run:
        settings = Settings(1, 1, 1, img_size=28, batch_size=2, accelerator=args.accelerator)
    threads = args.threads or (1 if args.dry_run else None)
    if threads:
        torch.set_num_threads(threads)
    out = args.out or ROOT / "benchmarks" / "results" / ("real_size_dry_run.md" if args.dry_run else "real_size.md")
    gpu_call = Settings(args.warmup, args.steps, args.metric_images)
    expected = expected_seconds(gpu_call, args.datasets, args.stages)
    print(f"a GPU call of these settings: about {expected / 60:.1f} min "
          f"(at {ASSUMED_PASSES_PER_S} full-size ViT-S passes per second)", flush=True)
    clock = time.perf_counter()
    device = "cuda" if args.accelerator != "cpu" and torch.cuda.is_available() else "cpu"
    head = provenance.header(__file__, [], "random weights and random batches of each config's size "
                             + ("(dry run: batch 2, 28 px)" if args.dry_run else "(the configs' batch and image size)"),
                             argv, device)
    results: list[StageResult] = []
    skipped: list[str] = []
    handed_by_dataset: dict[str, dict[str, str]] = {}
    text = ""
    quiet = logging.getLogger("lightning.pytorch")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings(), tempfile.TemporaryDirectory() as work:
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
            warnings.filterwarnings("ignore", message=".*but have no `val_dataloader`.*")
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            for dataset, stage in [(d, s) for d in args.datasets for s in STAGES if s in args.stages]:
                if time.perf_counter() - clock > args.time_limit:
                    skipped.append(f"{dataset} {stage}")
                    continue
                handed = handed_by_dataset.setdefault(dataset, {})
                begun = time.perf_counter()
                results.append(measure_stage(dataset, stage, settings, handed, Path(work)))
                r = results[-1]
                print(f"{dataset} {stage}: train {r.train_ips:.4g} img/s, eval {r.eval_ips:.4g} img/s "
                      f"({time.perf_counter() - begun:.0f} s)", flush=True)
                text = report(results, head, args.dry_run, time.perf_counter() - clock, skipped)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(text)
    finally:
        quiet.setLevel(level)
    if skipped:
        text = report(results, head, args.dry_run, time.perf_counter() - clock, skipped)
        out.write_text(text)
    print(text)
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
