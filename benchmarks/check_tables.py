"""Which committed tables lack provenance: every `benchmarks/results/*.md` should start with the header fields of
`evaluation.provenance.FIELDS` (Command, Machine, Date, Code, Checkpoints, Data), as `provenance.header` writes them.

    python benchmarks/check_tables.py            # one line per table with what it lacks; exit 1 if any does
"""
from __future__ import annotations

import argparse
from pathlib import Path

from evaluation.provenance import FIELDS, ROOT, missing_fields


def main(argv: list[str] | None = None) -> int:
    """Print each table's missing header fields; the number of tables lacking any (the exit status is 1 if any)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    tables = sorted(args.results.glob("*.md"))
    lacking = 0
    for table in tables:
        missing = missing_fields(table.read_text())
        lacking += bool(missing)
        print(f"{table.name:48s} {'ok' if not missing else 'lacks ' + ', '.join(missing)}")
    print(f"{lacking} of {len(tables)} tables lack some of {', '.join(FIELDS)}")
    return lacking


if __name__ == "__main__":
    raise SystemExit(1 if main() else 0)
