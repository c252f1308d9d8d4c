"""Config files by name (bare names resolve in configs/), and a config's data section built with jsonargparse."""
from __future__ import annotations

import os
import re
import traceback
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from jsonargparse import ArgumentParser

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def available_configs() -> list[str]:
    """Names of the configs shipped in configs/."""
    return sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config(name: str) -> Path:
    """A config path as given, or a bare name (with or without .yaml) looked up in configs/."""
    candidates = [Path(name)]
    if os.sep not in name:
        candidates += [CONFIG_DIR / name, CONFIG_DIR / f"{name}.yaml"]
    for path in candidates:
        if path.is_file():
            return path
    raise SystemExit(
        f"error: unknown config {name!r}: no such file, and configs/ has no {Path(name).stem}.yaml.\n"
        f"Available configs: {', '.join(available_configs())}"
    )


def stage_config(name: str) -> tuple[Path, dict[str, Any]]:
    """The path and contents of a stage config; a pipeline config gives its first stage's."""
    path = resolve_config(name)
    spec = yaml.safe_load(path.read_text()) or {}
    if "pipeline" in spec and "data" not in spec:
        path = resolve_config(spec["pipeline"][0]["config"])
        spec = yaml.safe_load(path.read_text()) or {}
    return path, spec


def build_datamodule(name: str, overrides: dict[str, Any] | None = None) -> L.LightningDataModule:
    """Instantiate a config's `data` section (class_path / init_args), with init_args overridden, via jsonargparse:
    types are checked and an unknown argument is named."""
    path, spec = stage_config(name)
    data = spec.get("data")
    if not isinstance(data, dict) or "class_path" not in data:
        raise SystemExit(f"error: config {str(path)!r} has no data section with a class_path")
    data = {"class_path": data["class_path"], "init_args": {**(data.get("init_args") or {}), **(overrides or {})}}
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningDataModule, "data", required=True)
    try:
        cfg = parser.parse_object({"data": data})
        return parser.instantiate_classes(cfg).data
    except Exception as err:
        raise SystemExit(instantiation_error(err, f"the data of {str(path)!r}")) from None


def _root_cause(err: BaseException) -> BaseException:
    """The deepest exception in `err`'s chain that was not raised by jsonargparse itself (it wraps the real error in
    a union-type failure and a dump of the namespace)."""
    chain, seen = [], err
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ if seen.__cause__ is not None else None if seen.__suppress_context__ else seen.__context__
    own = [e for e in chain if e.__traceback__ is None
           or "jsonargparse" not in traceback.extract_tb(e.__traceback__)[-1].filename]
    return own[-1] if own else chain[0]


def producing_command(path: str) -> str | None:
    """The train.py command that writes checkpoint `path` (runs/NAME/checkpoints/...), if NAME is a shipped config or
    a pipeline's stage."""
    match = re.search(r"(?:^|[\\/])runs[\\/](\w+)(?:[\\/]\w+)?[\\/]checkpoints[\\/]", path)
    if match is None or match[1] + ".yaml" not in available_configs():
        return None
    return f"python train.py --config {match[1]}.yaml"


def instantiation_error(err: BaseException, what: str) -> str:
    """One message for an error raised while a config is instantiated: the real error (no parser traceback or
    namespace dump) and, for a missing checkpoint, the command that makes it."""
    cause = _root_cause(err)
    text = str(cause).strip() or type(cause).__name__
    message = f"error: cannot build {what}: {text}"
    missing = re.search(r"checkpoint not found: '([^']+)'", text)
    command = producing_command(missing[1]) if missing else None
    if command:
        message += f"\nThat checkpoint is made by the stage before this one: {command}"
    return message
