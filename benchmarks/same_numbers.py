"""Do two result folders hold the same numbers? (cold vs warm cache, rerun, another machine)

Compares every cell's scores — ``metrics``, ``steps``, ``attacks`` and ``per_example`` (each
question's generation and values) — exactly, and ignores what legitimately differs between runs
(times, memory, dates, versions, hardware, ``model.finetune_seconds``). Exit 0 when every cell of
both folders matches, 1 otherwise, listing the first differences.

    python benchmarks/same_numbers.py results/cold results/warm
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SCORED = ("status", "metrics", "steps", "attacks", "per_example")


def _diff(a, b, path="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _diff(x, y, f"{path}[{i}]")]
    same = a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)  # nan == nan
    return [] if same else [f"{path}: {a!r} != {b!r}"]


def compare(a: Path, b: Path) -> tuple[int, list[str]]:
    cells_a = {p.name: p for p in (a / "cells").glob("*.json")}
    cells_b = {p.name: p for p in (b / "cells").glob("*.json")}
    problems = [f"only in {a}: {n}" for n in sorted(set(cells_a) - set(cells_b))]
    problems += [f"only in {b}: {n}" for n in sorted(set(cells_b) - set(cells_a))]
    for name in sorted(set(cells_a) & set(cells_b)):
        ra, rb = (json.loads(p.read_text()) for p in (cells_a[name], cells_b[name]))
        problems += [f"{name}{d}" for k in SCORED for d in _diff(ra.get(k), rb.get(k), f" {k}")]
    return len(set(cells_a) & set(cells_b)), problems


def main(argv=None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 2:
        print(__doc__)
        return 2
    n, problems = compare(Path(args[0]), Path(args[1]))
    if problems:
        print(f"{len(problems)} differences over {n} common cells; first ones:")
        print("\n".join(problems[:20]))
        return 1
    print(f"identical: {n} cells, every metric, attack and per-example generation")
    return 0


if __name__ == "__main__":
    sys.exit(main())
