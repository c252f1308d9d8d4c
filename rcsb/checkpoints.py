"""Load NVlabs I2SB checkpoints into :class:`rcsb.network.ADMUNet`.

NVlabs' ``results/<name>/latest.pt`` (written by ``Runner.train``) is a dict::

    {"net": Image256Net.state_dict(),        # keys "diffusion_model.<UNetModel key>"
     "ema": ExponentialMovingAverage.state_dict(),  # torch_ema: {"decay", "num_updates",
                                                    #  "shadow_params": [tensor, ...] in
                                                    #  net.parameters() order, "collected_params"}
     "optimizer": ..., "sched": ...}

Everything in it is tensors and plain containers, so it loads with ``weights_only=True``. NVlabs
sample with the EMA weights (``ema.average_parameters()``), hence ``use_ema=True`` by default.
A bare ``UNetModel`` state dict (e.g. I2SB's converted ``256x256_diffusion_uncond_fixedsigma.pt``)
is accepted as well.

I2SB itself starts training from guided-diffusion's released 256x256 unconditional ADM
(``256x256_diffusion_uncond.pt``, :data:`ADM256_UNCOND_URL`): a bare ``UNetModel`` state dict with the same key names
as :func:`rcsb.network.adm256` but a learned variance, so ``out.2`` has 6 output channels of which I2SB keeps the
first 3 (the eps prediction). :func:`load_openai_adm` does that mapping; :func:`resolve_adm_checkpoint` finds the
file (a path, or the torch hub cache, downloaded there when missing) and fails fast offline with the ways out.
"""
from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from typing import Any, Union

import torch
from torch import Tensor, nn

from models.weights import WeightsUnavailable, cached_download

__all__ = [
    "ADM256_UNCOND_URL",
    "ADMWeightsUnavailable",
    "adm_cache_path",
    "extract_i2sb_state_dict",
    "load_i2sb_pair",
    "load_i2sb_weights",
    "load_openai_adm",
    "openai_adm_state_dict",
    "read_checkpoint",
    "resolve_adm_checkpoint",
]

#: guided-diffusion's released 256x256 unconditional ADM, the weights I2SB starts training from (ckpt_util.py).
ADM256_UNCOND_URL = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt"

_PREFIX = "diffusion_model."  # I2SB's Image256Net holds the UNetModel as self.diffusion_model
_EXPECTED = (
    "expected an NVlabs I2SB checkpoint (results/<name>/latest.pt: a dict with 'net' and 'ema' entries) "
    "or a bare guided-diffusion UNetModel state dict"
)


def _strip(key: str) -> str:
    return key[len(_PREFIX):] if key.startswith(_PREFIX) else key


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    )


def _last_line(err: BaseException) -> str:
    """The most specific line of an exception message (torch's weights_only errors end with the cause)."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in str(err).splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("Check the documentation")]
    return lines[-1][:200] if lines else type(err).__name__


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = list(obj)[:8]
        return f"a dict with keys {keys}{' ...' if len(obj) > 8 else ''}"
    return f"a {type(obj).__name__}"


def extract_i2sb_state_dict(checkpoint: Mapping[str, Any], net: nn.Module, use_ema: bool = True) -> dict[str, Tensor]:
    """I2SB Runner checkpoint layout: the UNetModel state dict from 'net' (prefix stripped) or from the EMA shadow list.

    The EMA's ``shadow_params`` list follows the wrapper's ``parameters()`` order; names are taken
    from the checkpoint's own 'net' keys when present (their module's registration order), else
    from ``net.named_parameters()``. Raises ValueError when the layout is not recognised.
    """
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{_EXPECTED}; got {_describe(checkpoint)}")

    if "net" not in checkpoint and "ema" not in checkpoint:
        if _is_state_dict(checkpoint):
            return {_strip(k): v for k, v in checkpoint.items()}
        raise ValueError(f"{_EXPECTED}; got {_describe(checkpoint)}")

    raw = checkpoint.get("net")
    if raw is not None and not _is_state_dict(raw):
        raise ValueError(f"the checkpoint's 'net' entry should be a state dict of tensors, got {_describe(raw)}")
    net_state = {_strip(k): v for k, v in raw.items()} if raw is not None else None
    if raw is not None and not all(k.startswith(_PREFIX) for k in raw):
        bad = next(k for k in raw if not k.startswith(_PREFIX))
        raise ValueError(
            f"the checkpoint's 'net' keys should all start with 'diffusion_model.' (I2SB's Image256Net wrapper), "
            f"found {bad!r}; this is not an I2SB Image256Net checkpoint"
        )

    if not use_ema:
        if net_state is None:
            raise ValueError("the checkpoint has no 'net' entry; load its EMA weights with use_ema=True")
        return net_state

    ema = checkpoint.get("ema")
    if ema is None:
        raise ValueError("the checkpoint has no 'ema' entry; pass use_ema=False to load the raw 'net' weights")
    shadow = ema.get("shadow_params") if isinstance(ema, Mapping) else None
    if not isinstance(shadow, (list, tuple)) or not all(isinstance(p, Tensor) for p in shadow):
        raise ValueError(
            "the checkpoint's 'ema' entry should be a torch_ema ExponentialMovingAverage state dict with a "
            f"'shadow_params' list of tensors, got {_describe(ema)}; pass use_ema=False to load the raw 'net' weights"
        )
    names = list(net_state) if net_state is not None else [n for n, _ in net.named_parameters()]
    if len(shadow) != len(names):
        raise ValueError(
            f"the EMA holds {len(shadow)} tensors but the {'checkpoint network' if net_state is not None else 'network'} "
            f"has {len(names)} parameters; the checkpoint does not match this architecture "
            "(NVlabs' ImageNet checkpoints need rcsb.adm256())"
        )
    return dict(zip(names, shadow))


def _check_compatible(state: Mapping[str, Tensor], net: nn.Module, source: str) -> None:
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs network {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if not (missing or unexpected or mismatched):
        return
    problems = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", mismatched)):
        if items:
            problems.append(f"{len(items)} {label} (e.g. {items[:3]})")
    hint = "build the network with the checkpoint's architecture (NVlabs' 256x256 ImageNet checkpoints: rcsb.adm256())"
    first = "input_blocks.0.0.weight"
    if first in state and first in own and state[first].ndim == 4 and state[first].shape[1] != own[first].shape[1]:
        hint = (
            f"the checkpoint takes {state[first].shape[1]} input channels (I2SB --cond-x1 models take [x_t, x1] "
            f"concatenated); build the network with in_channels={state[first].shape[1]}"
        )
    raise ValueError(f"{source} does not fit the network: {'; '.join(problems)}. Fix: {hint}.")


def _torch_load(path: str, map_location: Union[str, torch.device]) -> Any:
    """torch.load(weights_only=True), memory-mapped when the file allows it: a Runner checkpoint also
    holds the optimizer state, and mmap reads only the tensors that are actually copied into the net."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err):  # legacy (non-zip) files cannot be memory-mapped
            raise
    return torch.load(path, map_location=map_location, weights_only=True)


def read_checkpoint(path: Union[str, os.PathLike], map_location: Union[str, torch.device] = "cpu") -> Any:
    """``torch.load(weights_only=True)`` of a weights file, with FileNotFoundError / ValueError that name the fix."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file at {path!r}")
    try:
        return _torch_load(path, map_location)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if found:  # a pickle that needs Python code (a class or function) to rebuild
            raise ValueError(
                f"{path!r} was refused by torch.load(weights_only=True): it pickles {found.group(1)}, Python code "
                f"rather than tensors and plain containers (e.g. I2SB's options.pkl, or a whole pickled model); "
                f"{_EXPECTED}. Fix: pass results/<name>/latest.pt, or re-save just the weights from trusted code."
            ) from None
        raise ValueError(f"{path!r} is not a readable PyTorch checkpoint ({_last_line(err)}); {_EXPECTED}.") from None
    except Exception as err:  # noqa: BLE001 - truncated zips, foreign formats, unpickler internals
        raise ValueError(
            f"{path!r} is not a readable PyTorch checkpoint ({type(err).__name__}: {_last_line(err)}); "
            f"the file may be truncated or of another format; {_EXPECTED}."
        ) from None


def _has(checkpoint: Any, entry: str) -> bool:
    return isinstance(checkpoint, Mapping) and checkpoint.get(entry) is not None


def load_i2sb_weights(
    path: Union[str, os.PathLike],
    net: nn.Module,
    use_ema: bool = True,
    map_location: Union[str, torch.device] = "cpu",
) -> nn.Module:
    """I2SB Runner.__init__ (opt.load) + ema.average_parameters: load a released checkpoint's (EMA) weights into ``net``.

    Reads ``path`` with ``torch.load(weights_only=True)``, strips the ``diffusion_model.`` prefix,
    maps the EMA shadow list onto parameter names, and loads strictly. Returns ``net``.
    Raises FileNotFoundError for a missing file and ValueError, naming the problem and the fix,
    for anything that is not such a checkpoint or does not fit ``net``.
    """
    checkpoint = read_checkpoint(path, map_location)
    _load(checkpoint, net, use_ema, os.fspath(path))
    return net


def _load(checkpoint: Any, net: nn.Module, use_ema: bool, path: str) -> None:
    state = extract_i2sb_state_dict(checkpoint, net, use_ema=use_ema)
    source = f"{path!r} ({'EMA' if use_ema and _has(checkpoint, 'ema') else 'raw'} weights)"
    _check_compatible(state, net, source)
    net.load_state_dict(state, strict=True)


def load_i2sb_pair(path: Union[str, os.PathLike], net: nn.Module, ema: nn.Module,
                   map_location: Union[str, torch.device] = "cpu") -> None:
    """I2SB Runner.__init__ (opt.load): the checkpoint's raw 'net' weights into ``net`` and its EMA into ``ema``.

    A file with only one of them (or a bare state dict) fills both networks with it.
    """
    checkpoint = read_checkpoint(path, map_location)
    path = os.fspath(path)
    has_net, has_ema = _has(checkpoint, "net"), _has(checkpoint, "ema")
    _load(checkpoint, net, has_ema and not has_net, path)
    _load(checkpoint, ema, has_ema or not has_net, path)


# --------------------------------------------------------------------------- guided-diffusion's pretrained ADM


def adm_cache_path() -> str:
    """Where :func:`resolve_adm_checkpoint` looks for (and downloads) ``256x256_diffusion_uncond.pt``: the torch hub
    cache's checkpoints folder (``$TORCH_HOME/hub/checkpoints``)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(ADM256_UNCOND_URL))


class ADMWeightsUnavailable(WeightsUnavailable):
    """guided-diffusion's 256x256 ADM is neither at the path given, nor cached, nor downloadable: the ways out."""

    def ways_out(self, file_flag: str = "--model.init_args.pretrained PATH",
                 off_flag: str = "--model.init_args.pretrained null") -> str:
        """The message: the URL, where to put the file, the config key that names a file, random weights."""
        cache = adm_cache_path()
        return (
            f"{self.name} from {self.source} is not available ({self.reason}). Ways out:\n"
            f"  1. download {ADM256_UNCOND_URL} where there is internet (2.2 GB) and put it at {cache} "
            f"(the torch hub cache, where pretrained: openai looks; TORCH_HOME moves it), e.g.\n"
            f"       curl -L --create-dirs -o {cache} {ADM256_UNCOND_URL}\n"
            f"  2. give the file's path: {file_flag} (config key model.init_args.pretrained);\n"
            f"  or start from random weights with {off_flag}."
        )


def resolve_adm_checkpoint(pretrained: Union[str, os.PathLike]) -> str:
    """The local file of guided-diffusion's 256x256 unconditional ADM (I2SB ckpt_util.download_adm_image256_*).

    ``pretrained`` is "openai" (the torch hub cache's copy, downloaded from :data:`ADM256_UNCOND_URL` when missing,
    after one quick reachability probe) or a path to the file. Raises :class:`ADMWeightsUnavailable`, naming the URL,
    where to put the file and the config key, when neither works; it never waits on a dead network.
    """
    name = "guided-diffusion's 256x256 unconditional ADM (the bridge's starting weights)"
    if os.fspath(pretrained) == "openai":
        try:
            return cached_download(name, ADM256_UNCOND_URL)
        except WeightsUnavailable as err:
            raise ADMWeightsUnavailable(name, ADM256_UNCOND_URL, err.reason) from None
    path = os.path.expanduser(os.fspath(pretrained))
    if not os.path.isfile(path):
        raise ADMWeightsUnavailable(name, f"file {path!r}", "no such file")
    return path


def openai_adm_state_dict(state: Mapping[str, Tensor], net: nn.Module) -> dict[str, Tensor]:
    """I2SB ckpt_util.download_adm_image256_*: guided-diffusion ``UNetModel`` keys -> ``net``'s (the same names).

    A learned-variance output (``out.2`` with twice ``net``'s output channels) keeps its first half, the eps
    prediction; an input conv with fewer channels than ``net`` (I2SB's ``--cond-x1`` models) keeps ``net``'s own
    initial weights for the extra channels. Tensors take ``net``'s dtype. Other keys pass unchanged (and a mismatch is
    reported when loading).
    """
    if not _is_state_dict(state):
        raise ValueError(f"expected guided-diffusion's UNetModel state dict (name -> tensor), got {_describe(state)}")
    own = net.state_dict()
    out = {k: v.to(own[k].dtype) if k in own else v for k, v in ((_strip(k), v) for k, v in state.items())}
    for key in ("out.2.weight", "out.2.bias"):
        if key in out and key in own and out[key].shape[0] == 2 * own[key].shape[0]:
            out[key] = out[key][: own[key].shape[0]]
    first = "input_blocks.0.0.weight"
    if first in out and first in own and out[first].ndim == 4 and out[first].shape[1] < own[first].shape[1]:
        out[first] = torch.cat([out[first], own[first][:, out[first].shape[1]:].to(out[first].device)], dim=1)
    return out


def load_openai_adm(path: Union[str, os.PathLike], net: nn.Module) -> nn.Module:
    """I2SB Image256Net(pretrained_adm=True): load guided-diffusion's released ADM file into ``net`` strictly.

    Reads ``path`` with ``torch.load(weights_only=True)`` (memory-mapped), maps it with
    :func:`openai_adm_state_dict` and loads it; returns ``net``.
    """
    state = openai_adm_state_dict(read_checkpoint(path), net)
    _check_compatible(state, net, f"{os.fspath(path)!r} (guided-diffusion ADM weights)")
    net.load_state_dict(state, strict=True)
    return net
