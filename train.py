"""Train one stage (`--config classifier_pet.yaml`) or a pipeline of stages (`--config quickstart.yaml`) with LightningCLI."""
from __future__ import annotations

import json
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

from evaluation.configs import instantiation_error, resolve_config
from evaluation.discovery import discover
from evaluation.wandb_log import wandb_offline


class MidEpochCheckpoint(Callback):
    """Write last.ckpt every n training steps and at every epoch end: a run killed mid-epoch resumes close to where it was."""

    def __init__(self, path: Path, every_n_steps: int) -> None:
        self.path, self.every_n_steps = path, every_n_steps

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.every_n_steps > 0 and trainer.global_step % self.every_n_steps == 0:
            trainer.save_checkpoint(self.path, weights_only=False)

    def on_train_epoch_end(self, trainer: L.Trainer, *args: Any) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)


class ExperimentCLI(LightningCLI):
    """LightningCLI with run directories under runs/<name>/, default W&B logging and checkpointing."""

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument("--name", type=str | None, default=None, help="experiment name (default: config name)")
        parser.add_argument("--run_root", type=str, default="runs", help="folder that holds runs/<name>/")
        parser.add_argument("--ckpt_path", type=str | None, default=None, help="'last' resumes an interrupted run")
        parser.add_argument("--wandb", type=bool, default=True, help="log to W&B (offline unless configured)")
        parser.add_argument("--wandb_project", type=str, default="explaining-classifiers")
        parser.add_argument("--checkpoint_every_n_steps", type=int, default=200, help="mid-epoch last.ckpt interval")
        parser.add_argument("--group", type=str | None, default=None,
                            help="W&B group of the run (a pipeline groups its stages under its name)")
        parser.add_argument("--test_only", type=bool, default=False,
                            help="skip fitting: test the checkpoint given by --ckpt_path")

    @property
    def run_dir(self) -> Path:
        return Path(self.config.run_root) / self.config.name

    def before_instantiate_classes(self) -> None:
        if self.config.name is None:
            self.config.name = Path(str(self.config.config[0])).stem if self.config.get("config") else "experiment"

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as err:
            config = self.config.get("config")
            what = f"the stage of {str(config[0])!r}" if config else "the stage"
            raise SystemExit(instantiation_error(err, what)) from None

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        trainer_cfg = self.config_init.trainer
        if trainer_cfg.get("logger") in (None, True):
            kwargs["logger"] = self._logger()
        monitor, mode = getattr(type(self.model), "monitor", ("val/loss", "min"))
        ckpt_dir = self.run_dir / "checkpoints"
        configured = trainer_cfg.get("callbacks") or []
        kwargs["callbacks"] = [
            *(configured if isinstance(configured, list) else [configured]),
            ModelCheckpoint(ckpt_dir, "best", monitor=monitor, mode=mode),
            MidEpochCheckpoint(ckpt_dir / "last.ckpt", self.config.checkpoint_every_n_steps),
        ]
        return super().instantiate_trainer(**kwargs)

    def _logger(self) -> Logger:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not self.config.wandb:
            return CSVLogger(self.run_dir, name="", version="")
        stage = getattr(self.model_class, "stage", None)
        return WandbLogger(
            name=self.config.name, project=self.config.wandb_project, save_dir=str(self.run_dir),
            offline=wandb_offline(), group=self.config.group, job_type=stage,
        )


def check_compatible(model: L.LightningModule, datamodule: L.LightningDataModule) -> None:
    """Fail before training when the model's classes do not match the data's."""
    model_classes = model.hparams.get("num_classes") or (model.hparams.get("backbone_spec") or {}).get("num_classes")
    data_classes = getattr(datamodule, "num_classes", None)
    if model_classes and data_classes and model_classes != data_classes:
        raise SystemExit(
            f"error: the model predicts {model_classes} classes but the data has {data_classes}; "
            f"set --model.init_args.num_classes {data_classes} (or use a checkpoint trained on this dataset)"
        )


def run_stage(args: list[str]) -> dict[str, Any]:
    """Fit one stage, test its best checkpoint, write config.yaml and results.json into its run directory; each
    stage is a W&B run of its own (finished before the next stage starts), with its resolved config."""
    discover()
    cli = ExperimentCLI(
        model_class=L.LightningModule,
        datamodule_class=L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_callback=None,
        run=False,
        args=args,
    )
    check_compatible(cli.model, cli.datamodule)
    if hasattr(cli.datamodule, "check_layout") and not getattr(cli.datamodule, "download", False):
        try:
            cli.datamodule.check_layout()
        except FileNotFoundError as err:
            raise SystemExit(f"error: {err}") from None
    run_dir, trainer = cli.run_dir, cli.trainer
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        cli.parser.save(cli.config, run_dir / "config.yaml", overwrite=True, multifile=False)
    wandb = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
    if wandb and trainer.is_global_zero:
        wandb[0].experiment.config.update({"stage_config": cli.config.as_dict()}, allow_val_change=True)
    start = time.time()
    if cli.config.test_only:
        if not cli.config.ckpt_path:
            raise SystemExit("error: --test_only needs --ckpt_path CHECKPOINT (the checkpoint to test)")
        best = cli.config.ckpt_path
    else:
        trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.config.ckpt_path)
        best = trainer.checkpoint_callback.best_model_path or None
    fit_seconds = time.time() - start
    trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best or None, verbose=trainer.is_global_zero)
    results = {
        "name": cli.config.name,
        "stage": getattr(cli.model, "stage", type(cli.model).__name__),
        "run_dir": str(run_dir),
        "best_checkpoint": best,
        "last_checkpoint": str(run_dir / "checkpoints" / "last.ckpt"),
        "fit_seconds": round(fit_seconds, 1),
        "world_size": trainer.world_size,
        "test": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")},
    }
    if trainer.is_global_zero:
        (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    for logger in wandb:
        logger.experiment.finish()
    return results


def _as_args(overrides: dict[str, Any] | list[str] | None, done: dict[str, dict[str, Any]]) -> list[str]:
    """Stage overrides as CLI arguments; '{stage}' in a value becomes that stage's best checkpoint."""
    if overrides is None:
        return []
    items = overrides.items() if isinstance(overrides, dict) else (a.split("=", 1) for a in overrides)
    args = []
    for key, value in items:
        value = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
        value = re.sub(r"\{(\w+)\}", lambda m: done[m[1]]["best_checkpoint"] if m[1] in done else m[0], value)
        args += [f"--{key.lstrip('-')}", value]
    return args


def split_option(argv: list[str], names: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """The values of the option `names` in argv (`--opt value` or `--opt=value`, in order) and the other arguments."""
    values, rest, i = [], [], 0
    while i < len(argv):
        flag, eq, value = argv[i].partition("=")
        if flag in names and eq:
            values.append(value)
        elif argv[i] in names and i + 1 < len(argv):
            values.append(argv[i + 1])
            i += 1
        else:
            rest.append(argv[i])
        i += 1
    return values, rest


def pipeline_name(config: Path, spec: dict[str, Any], extra: list[str]) -> tuple[str, list[str]]:
    """The pipeline's name (`--name` on the command line, else the config's `name`, else its file name) and the
    other arguments: each stage is named `<pipeline>/<stage>`, so a `--name` must not reach the stages."""
    names, rest = split_option(extra, ("--name",))
    return (names[-1] if names else spec.get("name", config.stem)), rest


def stage_arguments(extra: list[str], stages: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """A pipeline's command-line arguments split into those for every stage and, per stage, those written
    `--<stage>.KEY VALUE` (or `--<stage>.KEY=VALUE`), which reach that stage alone as `--KEY VALUE`."""
    common: list[str] = []
    own: dict[str, list[str]] = {s: [] for s in stages}
    i = 0
    while i < len(extra):
        flag, eq, value = extra[i].partition("=")
        stage = next((s for s in stages if flag.startswith(f"--{s}.")), None)
        if stage is None:
            common.append(extra[i])
        elif eq:
            own[stage] += [f"--{flag.removeprefix(f'--{stage}.')}", value]
        elif i + 1 < len(extra):
            own[stage] += [f"--{flag.removeprefix(f'--{stage}.')}", extra[i + 1]]
            i += 1
        else:
            raise SystemExit(f"error: {extra[i]} needs a value")
        i += 1
    return common, own


def run_pipeline(config: Path, spec: dict[str, Any], extra: list[str]) -> list[dict[str, Any]]:
    """Run the stages of a pipeline config in order; finished stages (results.json present under the run root) are
    not rerun when resuming. `--<stage>.KEY VALUE` reaches one stage, any other argument every stage."""
    name, extra = pipeline_name(config, spec, extra)
    extra, own = stage_arguments(extra, [stage["name"] for stage in spec["pipeline"]])
    resume = "--ckpt_path" in extra
    roots, _ = split_option(extra, ("--run_root",))
    run_root = Path(roots[-1] if roots else spec.get("run_root", "runs"))
    done: dict[str, dict[str, Any]] = {}
    for stage in spec["pipeline"]:
        stage_name = f"{name}/{stage['name']}"
        results_file = run_root / stage_name / "results.json"
        if resume and results_file.is_file():
            done[stage["name"]] = json.loads(results_file.read_text())
            print(f"[{stage_name}] already finished, reusing {results_file}")
            continue
        args = ["--config", str(resolve_config(stage["config"])), "--name", stage_name, "--group", name]
        args += _as_args(stage.get("overrides"), done) + extra + own[stage["name"]]
        print(f"\n=== stage {stage['name']}: {' '.join(args)}")
        done[stage["name"]] = run_stage(args)
    return list(done.values())


def summarise(results: list[dict[str, Any]]) -> None:
    """Print where every stage's checkpoints, logs and results went."""
    print("\n" + "=" * 72)
    for r in results:
        metrics = ", ".join(f"{k.removeprefix('test/')}={v:.4f}" for k, v in sorted(r["test"].items()))
        print(f"[{r['name']}] {r['stage']} ({r['fit_seconds']} s): {metrics}")
        print(f"    run dir     {r['run_dir']}  (config.yaml, results.json, logs)")
        print(f"    best ckpt   {r['best_checkpoint']}")
    print("=" * 72)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Entry point: resolve `--config NAME`, then run a single stage or a pipeline."""
    argv = list(sys.argv[1:] if argv is None else argv)
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")  # train.py passes argv on
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            argv[i + 1] = str(resolve_config(argv[i + 1]))
        elif arg.startswith("--config="):
            argv[i] = "--config=" + str(resolve_config(arg.split("=", 1)[1]))
    configs, rest = split_option(argv, ("--config", "-c"))
    spec = yaml.safe_load(Path(configs[0]).read_text()) if configs else None
    if isinstance(spec, dict) and "pipeline" in spec:
        results = run_pipeline(Path(configs[0]), spec, rest)
    else:
        results = [run_stage(argv)]
    summarise(results)
    return results


if __name__ == "__main__":
    main()
