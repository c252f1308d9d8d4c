"""Pretrained weights resolved to a local file before any other work, so an offline node fails in seconds, clearly."""
from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch

HF_FILES = ("model.safetensors", "pytorch_model.bin")


class WeightsUnavailable(RuntimeError):
    """Pretrained weights that are neither cached nor downloadable (no network), with the ways out in the message;
    `ways_out(file_flag, off_flag)` words them for another command line (train.py's flags by default)."""

    def __init__(self, name: str, source: str, reason: str) -> None:
        self.name, self.source, self.reason = name, source, reason
        super().__init__(self.ways_out())

    def ways_out(self, file_flag: str = "--model.init_args.pretrained_file PATH",
                 off_flag: str = "--model.init_args.pretrained false") -> str:
        fetch = f"python -c \"import timm; timm.create_model('{self.name}', pretrained=True)\""
        return (
            f"pretrained weights for backbone {self.name!r} ({self.source}) are not in the local cache and cannot be "
            f"downloaded ({self.reason}). Ways out:\n"
            f"  1. pre-fetch them where there is internet (e.g. a login node, same HF_HOME / TORCH_HOME as the job):\n"
            f"       {fetch}\n"
            f"  2. run with HF_HUB_OFFLINE=1 and HF_HOME pointing at a cache that holds them;\n"
            f"  3. give a local weights file (state dict, .safetensors / .pth / .bin): {file_flag};\n"
            f"  or start from random weights with {off_flag}."
        )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _unreachable(url: str, timeout: float = 3.0) -> str | None:
    """Why the host of `url` cannot be reached (DNS or TCP within `timeout` s), None when it can: one quick probe
    instead of the hub client's retries with back-off (about 40 s on a node without network)."""
    parts = urlparse(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as err:
        return f"no network: cannot reach {host}:{port} ({err})"


def _from_hub(name: str, repo: str, filenames: tuple[str, ...]) -> str:
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    for filename in filenames:
        cached = try_to_load_from_cache(repo, filename)
        if isinstance(cached, str):
            return cached
    source = f"Hugging Face Hub '{repo}'"
    if _offline():
        raise WeightsUnavailable(name, source, "HF_HUB_OFFLINE is set")
    from huggingface_hub import constants

    reason = _unreachable(constants.ENDPOINT)
    if reason:
        raise WeightsUnavailable(name, source, reason)
    for filename in filenames:
        try:
            return hf_hub_download(repo, filename, etag_timeout=10)
        except LocalEntryNotFoundError as err:  # no connection and no cached copy (a subclass of the next one)
            raise WeightsUnavailable(name, source, f"no network? {str(err).splitlines()[0][:200]}") from None
        except EntryNotFoundError:
            continue
        except Exception as err:  # any network failure ends here: no retries, one message
            raise WeightsUnavailable(name, source, f"no network? {type(err).__name__}: {str(err).splitlines()[0][:200]}") from None
    raise WeightsUnavailable(name, source, f"the repository has none of {', '.join(filenames)}")


def cached_download(name: str, url: str) -> str:
    """The torch hub cache's copy of the weights at `url`, downloaded if missing after one quick reachability probe;
    `WeightsUnavailable` (naming `name`) when offline."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if cached.is_file():
        return str(cached)
    if _offline():
        raise WeightsUnavailable(name, url, "HF_HUB_OFFLINE is set")
    reason = _unreachable(url)
    if reason:
        raise WeightsUnavailable(name, url, reason)
    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(cached), progress=True)
    except Exception as err:
        raise WeightsUnavailable(name, url, f"no network? {type(err).__name__}: {err}") from None
    return str(cached)


def resolve_pretrained(name: str, pretrained_file: str | os.PathLike | None = None) -> str:
    """A local file with the pretrained weights of timm model `name`: `pretrained_file` if given, else the Hugging
    Face / torch hub cache, else a download (HF_HUB_OFFLINE honoured); `WeightsUnavailable` says what to do."""
    if pretrained_file is not None:
        path = Path(pretrained_file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"pretrained_file not found: '{path}' (a state dict saved as .safetensors, .pth or .bin)")
        return str(path)
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise ValueError(f"timm has no pretrained weights for {name!r}; set pretrained: false or give pretrained_file")
    if cfg.file:
        return resolve_pretrained(name, cfg.file)
    if cfg.hf_hub_id:
        return _from_hub(name, cfg.hf_hub_id, (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HF_FILES)
    return cached_download(name, cfg.url)
