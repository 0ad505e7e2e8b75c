"""How long the rest of a grid will take: each pending cell's FLOPs as ``unlearnbench plan``
predicts them (apply and evaluation), at this machine's speed.

Before any cell has run, the speed is :data:`EFFICIENCY` × the machine's fp32 matmul peak,
measured here in a fraction of a second (calibrated on the quickstart's 12 cells on a 2-core AVX2
EPYC: plan's FLOPs went by at 0.89 × its 1024³ peak of 141 GFLOP/s, 0.66–1.25 per method, ROME
fastest: its value optimisation stops early); once cells have finished, it is the speed those cells
achieved (their predicted FLOPs over their seconds). Cells of costly methods (an editor, LUNAR's layer
search) thus weigh more than a gradient baseline's, where a count of cells would weigh them all
alike. Attacks are not counted (a few generations each; the relearning attacks' few steps).
A configuration ``plan`` cannot read (a model whose shape it does not know) falls back to cells
of equal cost.

A cell whose method and scenario were already timed on this machine (another seed, in this run or
in a record of the results folder: :func:`recorded_seconds`, hardware of the same label) is predicted by that
time rather than by FLOPs: seeds cost the same, and plan's FLOPs are a rough guide per method (the
2026-12-07 structural records went by at 75–380 GFLOP/s of plan's count on one 180 GFLOP/s CPU:
attacks, a sequence's step evaluations and early stops are not in the count). The recorded cells also
calibrate the speed before this run's first cell.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)

EFFICIENCY = 0.85  # plan's FLOPs per second / the matmul peak, before this grid has measured itself


def matmul_gflops(device: str = "cpu", n: int = 1024, reps: int = 5, dtype=None, warmup: int = 1) -> float:
    """Best GFLOP/s of an n×n @ n×n matmul on ``device`` (fp32 unless ``dtype``), after ``warmup`` calls."""
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype or torch.float32)
    b = torch.randn(n, n, device=device, dtype=dtype or torch.float32)
    best = float("inf")
    for i in range(warmup + reps):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


class GridClock:
    """Predicted FLOPs per pending cell and the speed to turn them into minutes."""

    def __init__(self, cfg, cell_ids: list[str], device: str, timed: dict[str, float] | None = None):
        """``timed``: seconds of cells recorded before on this kind of machine, by cell id (any seed)."""
        self.flops: dict[str, float] = {}
        by_key: dict[str, float] = {}
        try:
            from .plan import plan

            by_key = {c["cell"]: c["flops"] for c in plan(cfg, device=device, memory_gb=1e6)["cells"]}
            # a cell id is row__label__seedN; plan has one cell per row and label (seeds cost the same)
            self.flops = {cid: by_key[_key(cid)] for cid in cell_ids}
        except Exception as e:  # noqa: BLE001 — an estimate must never stop a grid
            log.info("no FLOP-weighted estimate for this grid (%s): cells counted as equal", e)
        self.peak = matmul_gflops(device if device in ("cpu", "cuda") else "cpu") * 1e9
        self.done_flops = 0.0
        self.done_seconds = 0.0
        self.done_cells = 0
        self.known: dict[str, list[float]] = {}  # row__label → seconds of its finished cells (any seed)
        self.kept_cells = 0
        for cid, seconds in (timed or {}).items():
            if seconds and seconds > 0:
                self.known.setdefault(_key(cid), []).append(seconds)
                if _key(cid) in by_key:  # the speed this machine showed, before this run's first cell
                    self.kept_cells += 1
                    self.done_flops += by_key[_key(cid)]
                    self.done_seconds += seconds

    @property
    def weighted(self) -> bool:
        return bool(self.flops)

    def speed(self) -> float:
        """FLOP/s: what the finished cells (this run's and those recorded here before) achieved, else the prior."""
        if self.done_seconds > 0 and self.done_flops > 0:
            return self.done_flops / self.done_seconds
        return EFFICIENCY * self.peak

    def finished(self, cid: str, seconds: float) -> None:
        if self.weighted:
            self.done_flops += self.flops.get(cid, 0.0)
            self.done_seconds += seconds
        self.done_cells += 1
        self.known.setdefault(_key(cid), []).append(seconds)

    def _timed(self, cid: str) -> float | None:
        t = self.known.get(_key(cid))
        return sum(t) / len(t) if t else None

    def remaining(self, cell_ids: list[str]) -> float | None:
        """Seconds for these cells, or None when there is nothing to go on (no plan, no cell timed yet)."""
        times = [self._timed(c) for c in cell_ids]
        if self.weighted:
            return sum(t if t is not None else self.flops[c] / self.speed() for c, t in zip(cell_ids, times))
        timed = [s for ts in self.known.values() for s in ts]
        if not timed:
            return None
        mean = sum(timed) / len(timed)  # cells of equal cost, but a timed row and scenario by its own time
        return sum(t if t is not None else mean for t in times)

    def basis(self, cell_ids: list[str] | None = None) -> str:
        n_timed = sum(self._timed(c) is not None for c in cell_ids) if cell_ids is not None else 0
        if cell_ids and n_timed == len(cell_ids):
            return "each by the time its method and scenario took on this machine (another seed)"
        timed = (f"{n_timed} by the time their method and scenario took on this machine (another seed), the "
                 "others by " if n_timed else "")
        if not self.weighted:
            return timed + "cells counted as equal"
        if self.done_seconds > 0:
            ran = [f"{self.done_cells} finished cell(s)"] if self.done_cells else []
            ran += [f"{self.kept_cells} cell(s) recorded here before"] if self.kept_cells else []
            return (f"{timed}each cell's FLOPs from `unlearnbench plan` at the {self.speed() / 1e9:.0f} GFLOP/s "
                    f"the {' and '.join(ran)} achieved")
        return (f"{timed}each cell's FLOPs from `unlearnbench plan` at {EFFICIENCY:.0%} of this machine's "
                f"{self.peak / 1e9:.0f} GFLOP/s matmul peak")


def recorded_seconds(rec: dict) -> float | None:
    """A finished cell's wall time: ``cost.cell_seconds``, or for a record written before that field existed,
    apply plus its evaluations (a sequence's steps each) plus one more for the attacks — within −7…+12%
    of the wall time (mean |error| 3%) on the 218 structural cells of 2026-12-05…07 (`benchmarks/notes.md`)."""
    cost = rec.get("cost") or {}
    if cost.get("cell_seconds"):
        return cost["cell_seconds"]
    if cost.get("apply_seconds") is None or not cost.get("eval_seconds"):
        return None
    evaluations = max(1, len(rec.get("steps") or [])) + (1 if rec.get("attacks") else 0)
    return cost["apply_seconds"] + cost["eval_seconds"] * evaluations


def _key(cid: str) -> str:
    """row__label of a cell id row__label__seedN."""
    return cid.rsplit("__", 1)[0]
