"""Where a result table comes from: the command exactly as it ran, the machine, the date, the code, the checkpoints
(with a short hash of each file) and the data. Every benchmark writes these lines at the top of its table."""
from __future__ import annotations

import hashlib
import os
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
#: The header fields every committed table starts with (`benchmarks/check_tables.py` checks them).
FIELDS = ("Command", "Machine", "Date", "Code", "Checkpoints", "Data")


def command(script: str | Path, argv: list[str] | None = None) -> str:
    """The command line as it ran: `python <script relative to the repository> <arguments, shell-quoted>`."""
    path = Path(script).resolve()
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    return f"python {shown} " + shlex.join(sys.argv[1:] if argv is None else argv)


def machine(device: str | torch.device = "cpu") -> str:
    """CPU model, threads torch uses of the CPUs there are, the GPU when `device` is one, Python, torch and OS."""
    cpu = platform.processor() or "unknown CPU"
    try:
        names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    device = torch.device(device)
    gpu = f"; GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return (f"{cpu} ({platform.machine()}), {torch.get_num_threads()} of {os.cpu_count()} CPU threads{gpu}; "
            f"Python {platform.python_version()}, torch {torch.__version__}, {platform.system()} {platform.release()}")


def code_version() -> str:
    """`git <commit>` of the repository, with `+ uncommitted changes` when tracked files differ from it."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return f"git {head}" + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "git unknown"


def file_hash(path: str | Path, length: int = 12) -> str:
    """The first `length` hex digits of a file's SHA-256 (`missing` when there is no such file)."""
    path = Path(path)
    if not path.is_file():
        return "missing"
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


def header(script: str | Path, checkpoints: list[str | Path], data: str, argv: list[str] | None = None,
           device: str | torch.device = "cpu") -> str:
    """The provenance lines (markdown, one per field of FIELDS) a table starts with."""
    ckpts = ", ".join(f"`{c}` (sha256 {file_hash(c)})" for c in checkpoints) or "none"
    lines = {"Command": f"`{command(script, argv)}`", "Machine": machine(device),
             "Date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "Code": code_version(),
             "Checkpoints": ckpts, "Data": data}
    return "\n\n".join(f"{k}: {lines[k]}" for k in FIELDS) + "\n"


def missing_fields(text: str) -> list[str]:
    """The header fields of FIELDS a table's text does not start a line with (`Field:`), in order."""
    starts = {line.split(":", 1)[0].strip() for line in text.splitlines() if ":" in line}
    return [f for f in FIELDS if f not in starts]
