"""One registry of explainers sharing the protocol explain(model, images, target=None, **kw) -> maps."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

from torch import Tensor

Access = Literal["black", "grey", "white"]


@dataclass(frozen=True)
class ExplainerSpec:
    """A registered method: its callable and what access to the model it needs."""

    name: str
    fn: Callable[..., Tensor]
    access: Access
    needs: str = "classifier"


_REGISTRY: dict[str, ExplainerSpec] = {}


def register(name: str, access: Access = "black", needs: str = "classifier") -> Callable:
    """Decorator: register `fn(model, images, target=None, **kw) -> maps` under `name`."""

    def wrap(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        if name in _REGISTRY:
            raise ValueError(f"explainer {name!r} is registered twice")
        _REGISTRY[name] = ExplainerSpec(name, fn, access, needs)
        return fn

    return wrap


def get(name: str) -> ExplainerSpec:
    """The explainer registered as `name`; unknown names list the known ones."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown explanation method {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def available() -> list[str]:
    """Names of all registered explainers."""
    return sorted(_REGISTRY)
