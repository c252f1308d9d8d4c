"""Every registered method and stage, found by importing each module of the method packages once."""
from __future__ import annotations

import importlib
import pkgutil

#: Packages whose modules register explanation methods (`@explainer`) and stages (`@register_stage`): a new module
#: in any of them is found without further edits; a new package is added here.
METHOD_PACKAGES = ("explainers", "rex", "salvage", "interventions", "rcsb")

_DONE = False


def discover() -> None:
    """Import every module of `METHOD_PACKAGES` (once), so that all methods and stages are registered."""
    global _DONE
    if _DONE:
        return
    for name in METHOD_PACKAGES:
        package = importlib.import_module(name)
        for info in pkgutil.walk_packages(package.__path__, f"{name}."):
            importlib.import_module(info.name)
    _DONE = True
