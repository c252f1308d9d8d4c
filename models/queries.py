"""Black-box queries of a classifier (ReX section 4): masked images in, class probabilities out, in chunks.

`QueryEngine` is what ReX's search and extraction, the insertion/deletion metrics and the black-box baselines (RISE,
KernelSHAP, LIME) call; it runs the model eagerly, through `torch.compile`, or as an ONNX export under ONNX Runtime
(`engine`). `CallCounter` counts every forward call of a module (white-box methods included) for the per-method cost
columns.
"""
from __future__ import annotations

import os
import tempfile
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Literal, get_args

import torch
from torch import Tensor, nn

from models.masking import MaskValue, apply_mask, expand_fill, mask_fill, mask_value_of

QueryBackend = Literal["eager", "compile", "onnx"]
#: ONNX Runtime sessions of exported models: model -> (image shape, provider, device, threads) -> session.
_SESSIONS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, Any]] = weakref.WeakKeyDictionary()


def _onnx_session(model: nn.Module, images: Tensor) -> Any:
    """ONNX Runtime session of `model`, exported (dynamic batch axis) once per model, image shape, device and
    thread count; CPU provider for CPU images, CUDA provider for CUDA images."""
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise ImportError("engine='onnx' needs ONNX Runtime and onnx: pip install onnxruntime onnx") from err
    provider = "CUDAExecutionProvider" if images.is_cuda else "CPUExecutionProvider"
    if provider not in ort.get_available_providers():
        raise RuntimeError(f"engine='onnx': the images are on {images.device}, but ONNX Runtime offers only "
                           f"{ort.get_available_providers()}; install onnxruntime-gpu or query on the CPU")
    key = (tuple(images.shape[1:]), provider, images.device.index, torch.get_num_threads())
    sessions = _SESSIONS.setdefault(model, {})
    if key not in sessions:
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        device_options = {"device_id": images.device.index or 0} if images.is_cuda else {}
        with tempfile.TemporaryDirectory(prefix="query-engine-onnx-") as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notices
            path = os.path.join(tmp, "model.onnx")
            example = images[:2].float()
            export = dict(dynamo=False, input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                          training=torch.onnx.TrainingMode.PRESERVE)
            try:
                torch.onnx.export(model, (example,), path, **export)
            except RuntimeError:  # a module around a loaded TorchScript file (a black box): export its trace
                torch.onnx.export(torch.jit.trace(model, example), (example,), path, **export)
            sessions[key] = ort.InferenceSession(path, options, providers=[(provider, device_options)])
    return sessions[key]


def _onnx_forward(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """`images -> logits` through ONNX Runtime (`_onnx_session`), logits on the images' device."""
    def forward(images: Tensor) -> Tensor:
        """Logits of one batch, exported at the first call."""
        session = _onnx_session(model, images)
        logits = session.run(None, {"images": images.detach().float().cpu().numpy()})[0]
        return torch.from_numpy(logits).to(images.device)

    return forward


@dataclass
class QueryEngine:
    """`model(images) -> logits` in chunks of `max_batch` through `engine` ("eager", "compile": `torch.compile`,
    "onnx": ONNX Runtime on an export of the weights at the first query); removed pixels take `mask_value`
    (`models.masking`; "random" and "noise" drawn with `seed`). `observer`, when set, is called with
    (index, visible, probabilities) after every `masked_probabilities` query (e.g. `rex.confidence.ConfidenceMap`)."""

    model: nn.Module
    max_batch: int = 256
    mask_value: MaskValue = None
    engine: QueryBackend = "eager"
    seed: int = 0
    observer: Callable[[Tensor, Tensor, Tensor], None] | None = None

    def __post_init__(self) -> None:
        if self.engine not in get_args(QueryBackend):
            raise ValueError(f"unknown query engine {self.engine!r}; choose one of {get_args(QueryBackend)}")
        value = mask_value_of(self.model, self.mask_value)
        self.fill = None if isinstance(value, str) else mask_fill(value=value)
        self._value = value
        self._image_fill: tuple[Tensor, Tensor] | None = None
        self.forward: Callable[[Tensor], Tensor] = self.model
        if self.engine == "compile":
            self.forward = torch.compile(self.model)
        elif self.engine == "onnx":
            self.forward = _onnx_forward(self.model)

    def fill_for(self, images: Tensor) -> Tensor:
        """The fill of `images` (`models.masking.mask_fill`): the fixed one, or the one computed from these images."""
        if self.fill is not None:
            return self.fill
        if self._image_fill is None or self._image_fill[0] is not images:
            generator = torch.Generator().manual_seed(self.seed)
            self._image_fill = (images, mask_fill(value=self._value, images=images, generator=generator))
        return self._image_fill[1]

    def blank(self, images: Tensor) -> Tensor:
        """Fully masked copies of `images`."""
        return expand_fill(self.fill_for(images), images).clone()

    @torch.no_grad()
    def logits(self, images: Tensor) -> Tensor:
        """Logits (M, C) of a batch of images through the engine, sent in chunks of `max_batch`."""
        return torch.cat([self.forward(chunk) for chunk in images.split(self.max_batch)])

    @torch.no_grad()
    def probabilities(self, images: Tensor) -> Tensor:
        """Softmax class probabilities (M, C) of a batch of images, sent in chunks of `max_batch`."""
        return torch.softmax(self.logits(images).float(), dim=1)

    @torch.no_grad()
    def masked_probabilities(self, images: Tensor, index: Tensor, visible: Tensor) -> Tensor:
        """Probabilities (M, C) of mutants images[index] with only `visible` (M, H, W) pixels kept."""
        fill = self.fill_for(images)
        out = [self.probabilities(apply_mask(images, vis, fill, idx))
               for idx, vis in zip(index.split(self.max_batch), visible.split(self.max_batch))]
        if not out:
            return torch.zeros(0, 0, device=images.device)
        probs = torch.cat(out)
        if self.observer is not None:
            self.observer(index, visible, probs)
        return probs


class CallCounter:
    """Counts forward calls and images of a module through a forward pre-hook; a context manager."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.calls = self.images = 0
        self._hook = None

    def _count(self, module: nn.Module, args: tuple) -> None:
        self.calls += 1
        self.images += int(args[0].shape[0]) if args and isinstance(args[0], Tensor) else 0

    def __enter__(self) -> CallCounter:
        self._hook = self.module.register_forward_pre_hook(self._count)
        return self

    def __exit__(self, *exc: object) -> None:
        self._hook.remove()


class BlackBoxModel(nn.Module):
    """A model known only as a function images (B, 3, H, W) in [0, 1] -> logits (a TorchScript or torch.export file):
    it grants black-box access only (`access = "black"`); `mean`, when known, is the colour removed pixels take."""

    access = "black"

    def __init__(self, fn: Callable[[Tensor], Tensor], img_size: int, patch_grid: tuple[int, int] = (8, 8),
                 mean: Tensor | None = None) -> None:
        super().__init__()
        self.fn = fn
        self.img_size = img_size
        self.patch_grid = tuple(patch_grid)
        if mean is not None:
            self.register_buffer("mean", torch.as_tensor(mean).float().view(1, -1, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> BlackBoxModel:
        """A black box stays as it was saved (a torch.export program cannot switch modes at all)."""
        self.training = mode
        return self

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        return self.fn(images)
