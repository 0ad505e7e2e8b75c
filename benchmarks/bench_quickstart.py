"""End to end and per-method cost: the quickstart benchmark, cold and warm.

* cold — an empty cache (``UNLEARNBENCH_CACHE`` in a scratch directory): the GGUF is
  dequantized, the implant trained, every cell run;
* warm — the same cache again, a fresh results folder: the implant is loaded, every cell run.

Both run ``unlearnbench run configs/quickstart.yaml`` as a subprocess (what ``make demo`` runs,
without the one-off ``pip install``). The per-method table (``apply`` wall time and peak RSS on
each scenario, evaluation time) comes from the warm run's result cells, which the runner
measures for every cell.

    python benchmarks/bench_quickstart.py            # cold + warm
    python benchmarks/bench_quickstart.py --warm-only  # warm, with the user's cache
    python benchmarks/bench_quickstart.py --from-runs COLD WARM   # tables from two finished runs
    python benchmarks/bench_quickstart.py --leaderboard FOLDER    # every method, from a `make leaderboard` run
                                                   # (wall times from their run_log.jsonl)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from common import HERE, write

ROOT = HERE.parent


def run(cache: str | None, out: Path) -> float:
    env = dict(os.environ)
    if cache:
        env["UNLEARNBENCH_CACHE"] = cache
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "unlearnbench.cli", "run", "configs/quickstart.yaml", "--out", str(out)],
                   cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def cells(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]


def cost_table(recs: list[dict]) -> tuple[list[str], float, float, dict, list]:
    """Per-method rows (apply s, cell peak, process peak per scenario; mean eval s), totals."""
    by = defaultdict(dict)
    for r in recs:
        by[r["row"]][r["scenario"]["label"]] = r
    scen = sorted({r["scenario"]["label"] for r in recs})
    lines = ["| method | kind | " + " | ".join(f"{s} apply s | {s} heap MiB | {s} cell peak MiB | {s} process peak MiB"
                                              for s in scen) + " | eval s (mean) |",
             "|---|---|" + "---|---|---|---|" * len(scen) + "---|"]
    total_apply = total_eval = 0.0
    for row in sorted(by, key=lambda m: -sum(c["cost"]["apply_seconds"] for c in by[m].values())):
        cs = by[row]
        kind = next(iter(cs.values()))["kind"]
        if kind == "reference":
            continue
        parts = []
        for s in scen:
            c = cs.get(s, {}).get("cost", {})
            parts += [f"{c.get('apply_seconds', float('nan')):.1f}", f"{c.get('cell_heap_mb') or float('nan'):.0f}",
                      f"{c.get('cell_peak_mb') or float('nan'):.0f}", f"{c.get('peak_rss_mb') or float('nan'):.0f}"]
        ev = [c["cost"]["eval_seconds"] for c in cs.values()]
        total_apply += sum(c["cost"]["apply_seconds"] for c in cs.values())
        total_eval += sum(ev)
        lines.append(f"| {row} | {kind} | " + " | ".join(parts) + f" | {sum(ev) / len(ev):.1f} |")
    return lines, total_apply, total_eval, by, scen


def run_seconds(folder: Path) -> float:
    return sum(json.loads(line)["seconds"] for line in (folder / "run_log.jsonl").read_text().split("\n")
               if line.strip())


def leaderboard_section(folder: Path) -> None:
    """``make leaderboard``'s grid (every registered method), from a finished run."""
    recs = cells(folder)
    table, total_apply, total_eval, by, scen = cost_table(recs)
    wall = run_seconds(folder)
    n_cells = sum(1 for r in recs if r["kind"] != "reference")
    lines = ["## 6. Every method (`make leaderboard`)", "",
             f"`unlearnbench run configs/leaderboard.yaml`, implant cached: {n_cells} method cells "
             f"({len(by) - 2} methods × {len(scen)} scenarios) in **{wall / 60:.1f} min** — `apply` "
             f"{total_apply / 60:.1f} min, evaluation {total_eval / 60:.1f} min, the rest (reference rows, attacks, "
             f"leaderboard, plots) {(wall - total_apply - total_eval) / 60:.1f} min. Heap = the C heap in use above "
             "the level before the cell (glibc mallinfo2: live allocations, what the 3 × fp32 weights bound is judged "
             "on; absent in older records); cell peak = RSS above the process before the cell (adds the free pages a "
             "fragmented heap keeps).", ""] + table
    write("leaderboard_cost", "\n".join(lines), {"seconds": wall, "cells": [
        {k: r[k] for k in ("row", "kind", "cost")} | {"scenario": r["scenario"]["label"]} for r in recs]})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--warm-only", action="store_true")
    ap.add_argument("--from-runs", nargs=2, metavar=("COLD", "WARM"), type=Path)
    ap.add_argument("--leaderboard", type=Path, metavar="FOLDER", help="only the every-method section, from a "
                    "finished `make leaderboard` run")
    a = ap.parse_args()
    if a.leaderboard:
        return leaderboard_section(a.leaderboard)
    times = {}
    if a.from_runs:
        for name, folder in zip(("cold", "warm"), a.from_runs):
            times[name] = run_seconds(folder)
        warm = a.from_runs[1]
    else:
        scratch = Path(tempfile.mkdtemp(prefix="ub-bench-"))
        cache = None
        if not a.warm_only:
            cache = str(scratch / "cache")
            times["cold"] = run(cache, scratch / "cold")
        times["warm"] = run(cache, scratch / "warm")
        warm = scratch / "warm"
    recs = cells(warm)
    table, total_apply, total_eval, by, scen = cost_table(recs)
    lines = ["## 3. Per-method cost", "",
             "`apply` wall time and memory per scenario of the quickstart (warm run): the cell's own peak "
             "(RSS above the process before the cell copied the model — the copy, optimiser state, activations) "
             "and the process's peak RSS (with the loaded models); evaluation time of the result.", ""] + table
    ft = next((r["model"].get("finetune_seconds") for r in recs if r["model"].get("finetune_seconds")), None)
    n_cells = sum(1 for r in recs if r["kind"] != "reference")
    e2e = ["## 4. End to end", "",
           "`unlearnbench run configs/quickstart.yaml` (= `make demo` after its one-off install), "
           f"{n_cells} method cells ({len(by) - 2} methods, one per family, × {len(scen)} scenarios) plus the "
           "reference rows. Targets: cold ≤ 10 min and warm ≤ 4 min on the developers' 2-core AMX Xeon, ≤ 6× "
           "that (60 / 24 min) on a 2-core CPU without native bf16.", "",
           "| run | wall time |", "|---|---|"]
    if "cold" in times:
        e2e.append(f"| cold (empty cache: dequantize + implant + grid) | {times['cold'] / 60:.1f} min |")
    e2e.append(f"| warm (implant cached) | {times['warm'] / 60:.1f} min |")
    e2e += ["", "Where the warm run's time goes (from the result cells): "
            f"`apply` {total_apply / 60:.1f} min, evaluation of the unlearned models {total_eval / 60:.1f} min, "
            f"the rest (loading, the two reference evaluations, attacks, leaderboard and plots) "
            f"{(times['warm'] - total_apply - total_eval) / 60:.1f} min."
            + (f" The implant trained in {ft / 60:.1f} min of the cold run." if ft else "")]
    write("method_cost", "\n".join(lines), {"cells": [{k: r[k] for k in ("row", "kind", "cost")} | {
        "scenario": r["scenario"]["label"]} for r in recs]})
    write("end_to_end", "\n".join(e2e), {"seconds": times, "apply_total_s": total_apply, "eval_total_s": total_eval})


if __name__ == "__main__":
    main()
