"""The explainer protocol: one decorator, one registry, one result type for every explanation method.

    @explainer("my_method", access="black")
    def my_method(model, images, target, n_samples: int = 64) -> Explanation:
        ...
        return Explanation(maps=scores)            # (B, h, w), higher = more important for `target`

`model` is always the classifier being explained (images (B, 3, H, W) in [0, 1] -> logits); the other stages a
method needs (`needs=("explainer",)`, RCSB's `("bridge",)`) arrive as keyword arguments of the same names, and a
method that declares a `batch` or `dataset` parameter receives the batch dict (ground-truth masks, indices) and
its dataset. Every keyword parameter after those is an option (`--option my_method.n_samples=128`); a method with
many options declares them as a dataclass instead (`@explainer(..., options=MyConfig)`: its fields are the options,
a field's `metadata["help"]` its one line in `explain.py --method NAME --help`, and building it validates them, so
that bad options are refused before any model loads). Calling a
`MethodSpec` checks the stages and the access the model grants, fills the default target (the predicted class),
sets the gradient mode (on for white-box methods only), and times the call and counts the classifier's forward calls.
"""
from __future__ import annotations

import difflib
import inspect
import time
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, Callable, Literal

import torch
from torch import Tensor, nn

from models.queries import CallCounter

Access = Literal["black", "grey", "white"]
ACCESS_LEVEL: dict[str, int] = {"black": 0, "grey": 1, "white": 2}
_GRANTS = {"grey": "model internals (activations or attention weights)", "white": "gradients"}
_CONTEXT = ("batch", "dataset")
REQUIRED = inspect.Parameter.empty


@dataclass
class Explanation:
    """What a method returns for B images; every field but `target` is optional.

    maps: (B, h, w) float, the target class's map at pixel (h, w = H, W) or patch-grid resolution, higher = more
    important. explanation: (B, 1, H, W) bool, the method's own sufficient explanation (ReX extracts one; for other
    methods the metrics extract it from `maps`). counterfactual: (B, 3, H, W) edited images and region: (B, 1, H, W)
    bool, where edits were allowed. curve: (B, N) the target probability along an intervention x (N,), frames:
    (B, T, 3, H, W) thumbnails of it. scores: per-image values (B,) the method measures itself (bool values are
    flags). seconds, model_calls, model_images: the cost of the call, filled in by the registry.
    """

    target: Tensor | None = None
    maps: Tensor | None = None
    explanation: Tensor | None = None
    counterfactual: Tensor | None = None
    region: Tensor | None = None
    curve: Tensor | None = None
    x: Tensor | None = None
    frames: Tensor | None = None
    scores: dict[str, Tensor] = field(default_factory=dict)
    seconds: float = 0.0
    model_calls: int = 0
    model_images: int = 0

    def detach(self) -> Explanation:
        """A copy with every tensor detached (maps as float)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        for k, v in values.items():
            if isinstance(v, Tensor):
                values[k] = v.detach().float() if k == "maps" else v.detach()
        values["scores"] = {k: v.detach() for k, v in self.scores.items()}
        return Explanation(**values)


def model_access(model: nn.Module) -> Access:
    """The access a model grants: its `access` attribute, "white" for an ordinary nn.Module."""
    return getattr(model, "access", "white")


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its function, the access to the classifier it needs, the stages it uses, and an
    optional `supports(model) -> reason or None` that refuses a model the method cannot explain (before any work)."""

    name: str
    fn: Callable[..., Explanation]
    access: Access
    needs: tuple[str, ...]
    supports: Callable[[nn.Module], str | None] | None = None
    config: type | None = None

    @property
    def summary(self) -> str:
        """The first line of the method's docstring."""
        return (inspect.getdoc(self.fn) or self.name).splitlines()[0]

    @property
    def options(self) -> dict[str, Any]:
        """Option names and defaults (`REQUIRED` for an option the user must give): the function's keyword
        parameters, then the fields of its declared options dataclass."""
        params = list(inspect.signature(self.fn).parameters.values())[3:]
        out = {p.name: p.default for p in params
               if p.name not in (*self.needs, *_CONTEXT) and p.kind is not p.VAR_KEYWORD}
        for f in fields(self.config) if self.config is not None else ():
            out[f.name] = f.default if f.default is not MISSING else REQUIRED
        return out

    def option_help(self) -> dict[str, str]:
        """One line per option that has one (the options dataclass's `metadata["help"]`)."""
        if self.config is None:
            return {}
        return {f.name: f.metadata["help"] for f in fields(self.config) if "help" in f.metadata}

    @property
    def required(self) -> list[str]:
        """Options without a default, which every call must give."""
        return [k for k, v in self.options.items() if v is REQUIRED]

    def check_access(self, model: nn.Module) -> None:
        """Refuse a model that grants less access (gradients, internals) than the method needs."""
        have = model_access(model)
        if ACCESS_LEVEL[self.access] <= ACCESS_LEVEL[have]:
            reason = self.supports(model) if self.supports is not None else None
            if reason:
                raise ValueError(f"method {self.name!r} cannot explain this model: {reason}")
            return
        usable = [n for n in available() if ACCESS_LEVEL[get(n).access] <= ACCESS_LEVEL[have]]
        raise ValueError(
            f"method {self.name!r} is a {self.access}-box method: it needs {_GRANTS[self.access]}, but this model is "
            f"a {have}-box model ({type(model).__name__}). Methods this model supports: {', '.join(usable)}"
        )

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Refuse options the method does not take (naming close matches and the ones it takes), missing required
        ones, and values its options dataclass rejects; needs no model, so it runs before any loads."""
        takes_any = self.config is None and any(p.kind is p.VAR_KEYWORD
                                                for p in inspect.signature(self.fn).parameters.values())
        unknown = sorted(set(options) - set(self.options))
        if unknown and not takes_any:
            raise ValueError(unknown_options(self.name, unknown, self.options))
        missing = [k for k in self.required if k not in options]
        if missing:
            raise ValueError(f"method {self.name!r} needs the option(s) {', '.join(missing)} "
                             f"(--option {self.name}.{missing[0]}=VALUE)")
        if self.config is not None:
            names = {f.name for f in fields(self.config)}
            try:
                self.config(**{k: v for k, v in options.items() if k in names})
            except (TypeError, ValueError) as err:
                raise ValueError(f"method {self.name!r}: {err}") from err

    def check_models(self, models: Mapping[str, nn.Module]) -> None:
        """Refuse a call that lacks a stage the method needs."""
        missing = [s for s in ("classifier", *self.needs) if models.get(s) is None]
        if missing:
            have = ", ".join(k for k, v in models.items() if v is not None) or "nothing"
            raise ValueError(f"method {self.name!r} needs a {' and a '.join(missing)} checkpoint, but only "
                             f"{have} is loaded")

    def __call__(self, models: Mapping[str, nn.Module] | nn.Module, images: Tensor, target: Tensor | int | None = None,
                 *, batch: Mapping[str, Any] | None = None, dataset: Any = None, **options: Any) -> Explanation:
        """Run the method on `images` for `target` (default: the predicted class); `models` maps stage names to
        models (a bare module is the classifier)."""
        models = {"classifier": models} if isinstance(models, nn.Module) else dict(models)
        self.check_models(models)
        model = models["classifier"]
        self.check_access(model)
        self.check_options(options)
        target = default_target(model, images, target)
        params = inspect.signature(self.fn).parameters
        extra = {s: models[s] for s in self.needs}
        extra.update({k: v for k, v in (("batch", batch), ("dataset", dataset)) if k in params})
        with CallCounter(model) as counter, torch.set_grad_enabled(self.access == "white"):
            start = time.perf_counter()
            out = self.fn(model, images, target, **extra, **options)
            if images.is_cuda:
                torch.cuda.synchronize(images.device)
            seconds = time.perf_counter() - start
        if not isinstance(out, Explanation):
            raise TypeError(f"method {self.name!r} returned {type(out).__name__}; methods return an Explanation")
        if out.maps is not None and (out.maps.dim() != 3 or out.maps.shape[0] != images.shape[0]):
            raise ValueError(f"method {self.name!r} returned maps of shape {tuple(out.maps.shape)}; "
                             f"expected (B={images.shape[0]}, h, w) for the target class")
        out.target = target if out.target is None else out.target
        out.seconds, out.model_calls, out.model_images = seconds, counter.calls, counter.images
        return out


def unknown_options(method: str, unknown: list[str], options: Mapping[str, Any]) -> str:
    """The error for options `unknown` of `method`: each with its close matches, then every option it takes."""
    guesses = [f"{u!r} (did you mean {' or '.join(repr(m) for m in close)}?)" if close else repr(u)
               for u in unknown for close in [difflib.get_close_matches(u, list(options), n=2, cutoff=0.6)]]
    known = ", ".join(k if v is REQUIRED else f"{k}={v!r}" for k, v in options.items()) or "none"
    return f"unknown option(s) {', '.join(guesses)} for method {method!r}; its options: {known}"


def default_target(model: nn.Module, images: Tensor, target: Tensor | int | None) -> Tensor:
    """Target classes (B,): given (a class index or one per image), or the model's prediction."""
    if target is None:
        with torch.no_grad():
            return model(images).argmax(1)
    return torch.as_tensor(target, device=images.device).long().expand(images.shape[0])


_REGISTRY: dict[str, MethodSpec] = {}


def explainer(name: str, access: Access = "black", needs: tuple[str, ...] = (),
              supports: Callable[[nn.Module], str | None] | None = None, options: type | None = None) -> Callable:
    """Decorator: register `fn(model, images, target, [stage models], [batch], [dataset], **options) -> Explanation`
    as method `name`; the registered `MethodSpec` is what the decorator returns. `supports(model)` returns why a
    model cannot be explained (None when it can); it runs with the access check, before any work. `options`, a
    dataclass, declares the options `fn` takes as `**options` (see the module docstring)."""
    if access not in ACCESS_LEVEL:
        raise ValueError(f"access must be one of {', '.join(ACCESS_LEVEL)}, got {access!r}")
    if options is not None and not is_dataclass(options):
        raise TypeError(f"options of method {name!r} must be a dataclass, got {options!r}")

    def wrap(fn: Callable[..., Explanation]) -> MethodSpec:
        if name in _REGISTRY:
            raise ValueError(f"explanation method {name!r} is registered twice")
        spec = MethodSpec(name, fn, access, tuple(s for s in needs if s != "classifier"), supports, options)
        _REGISTRY[name] = spec
        return spec

    return wrap


def unregister(name: str) -> None:
    """Remove a method (for tests that register a toy one)."""
    _REGISTRY.pop(name, None)


def get(name: str) -> MethodSpec:
    """The method registered as `name`; unknown names list the known ones."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown explanation method {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def available() -> list[str]:
    """Names of all registered methods."""
    return sorted(_REGISTRY)
