"""Query engines for black-box queries (models.queries.QueryEngine): milliseconds per mutant for eager, torch.compile
and ONNX Runtime, on the quickstart classifier and a small CNN.

    python benchmarks/query_engines.py [--ckpt runs/quickstart/classifier/checkpoints/best.ckpt] [--threads 1 2]
        [--batches 16 64 256] [--rounds 5]

One timing is one `QueryEngine.masked_probabilities` call (masking, model, softmax) on a batch of mutants (random
pixel masks keeping half of the pixels of fixed-seed random images), divided by the batch size.
Within each round the three engines are timed in turn, so that they share the machine's load; the table gives the
median over the rounds. The first call of each engine (tracing and compilation, ONNX export and session) is timed
apart and kept out of the table; each batch size gets one untimed call per engine before its rounds.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models import QueryEngine, build_classifier, load_stage  # noqa: E402

ENGINES = ("eager", "compile", "onnx")


def _query(engine: QueryEngine, images: torch.Tensor, index: torch.Tensor, visible: torch.Tensor) -> float:
    """Seconds of one `masked_probabilities` call."""
    start = time.perf_counter()
    engine.masked_probabilities(images, index, visible)
    return time.perf_counter() - start


def _measure(model: nn.Module, img_size: int, args: argparse.Namespace) -> tuple[dict, dict]:
    """Per batch size, the median ms per mutant of every engine; and each engine's first-call seconds."""
    g = torch.Generator().manual_seed(args.seed)
    images = torch.rand(8, 3, img_size, img_size, generator=g)
    index = torch.arange(max(args.batches)) % len(images)
    visible = torch.rand(len(index), img_size, img_size, generator=g) < 0.5
    engines = {name: QueryEngine(model, max(args.batches), engine=name) for name in ENGINES}
    first = {name: _query(engine, images, index[: args.batches[0]], visible[: args.batches[0]])
             for name, engine in engines.items()}
    table = {}
    for batch in args.batches:
        for engine in engines.values():
            _query(engine, images, index[:batch], visible[:batch])
        times: dict[str, list[float]] = {name: [] for name in ENGINES}
        for _ in range(args.rounds):
            for name, engine in engines.items():
                times[name].append(_query(engine, images, index[:batch], visible[:batch]) / batch * 1e3)
        table[batch] = {name: statistics.median(t) for name, t in times.items()}
    return table, first


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default="runs/quickstart/classifier/checkpoints/best.ckpt")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batches", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/query_engines.md"))
    args = p.parse_args()
    import onnxruntime

    module = load_stage(args.ckpt, expect="classifier")
    torch.manual_seed(args.seed)
    models = {
        f"quickstart classifier ({module.hparams.backbone}, {module.hparams.img_size} px)":
            (module.model.eval(), module.hparams.img_size),
        f"small CNN (3 conv layers, {module.hparams.img_size} px)":
            (build_classifier("small_cnn", module.hparams.num_classes, module.hparams.img_size,
                              patch_size=module.hparams.img_size // 4).eval(), module.hparams.img_size),
    }
    rows, setup = [], []
    wall = time.perf_counter()
    for threads in args.threads:
        torch.set_num_threads(threads)
        torch._dynamo.reset()  # compile again under this thread count
        for label, (model, size) in models.items():
            table, first = _measure(model, size, args)
            setup.append(f"| {label} | {threads} | " + " | ".join(f"{first[e]:.2f}" for e in ENGINES) + " |")
            for batch, ms in table.items():
                best = min(ENGINES, key=ms.get)
                rows.append(f"| {label} | {threads} | {batch} | " + " | ".join(f"{ms[e]:.3f}" for e in ENGINES)
                            + f" | {ms['eager'] / ms['compile']:.2f} | {ms['eager'] / ms['onnx']:.2f} | {best} |")
    wall = time.perf_counter() - wall

    command = "python benchmarks/query_engines.py " + " ".join(sys.argv[1:])
    lines = [
        f"Command: `{command.strip()}`",
        "",
        "# Query engines: milliseconds per mutant (CPU)",
        "",
        "One `QueryEngine.masked_probabilities` call on a batch of mutants (random half-pixel masks of 8 random "
        f"images) per timing, divided by the batch size; median of {args.rounds} rounds, the engines timed in turn "
        "within each round. Compile = `torch.compile(model)` (inductor, default options: the batch axis turns dynamic "
        "at the second batch size), onnx = the legacy TorchScript exporter with a dynamic batch axis run by ONNX "
        "Runtime's CPU provider with as many intra-op threads as torch. The small CNN has fixed-seed untrained "
        "weights. "
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, {platform.machine()}, "
        f"{os.cpu_count()} cores; run time {wall:.0f} s; load average when done: {os.getloadavg()[0]:.1f} "
        "(a shared machine: other jobs inflate the times, the engines alike).",
        "",
        "| model | threads | batch | eager ms | compile ms | onnx ms | eager / compile | eager / onnx | fastest |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "First call (seconds, not in the table above): eager = one batch; compile = tracing and compiling (with "
        "the kernels inductor keeps on disk from earlier runs; a cold cache takes tens of seconds); onnx = export, "
        "session and one batch.",
        "",
        "| model | threads | eager s | compile s | onnx s |",
        "|---|---|---|---|---|",
        *setup,
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
