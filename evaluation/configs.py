"""Config files by name (bare names resolve in configs/), and a config's data section built with jsonargparse."""
from __future__ import annotations

import os
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
    except Exception as err:  # jsonargparse reports every validation problem as one error
        raise SystemExit(f"error: cannot build the data of {str(path)!r}: {str(err).splitlines()[0]}") from err
