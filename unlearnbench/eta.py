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

    def __init__(self, cfg, cell_ids: list[str], device: str):
        self.flops: dict[str, float] = {}
        try:
            from .plan import plan

            cells = {c["cell"]: c["flops"] for c in plan(cfg, device=device, memory_gb=1e6)["cells"]}
            # a cell id is row__label__seedN; plan has one cell per row and label (seeds cost the same)
            self.flops = {cid: cells[cid.rsplit("__", 1)[0]] for cid in cell_ids}
        except Exception as e:  # noqa: BLE001 — an estimate must never stop a grid
            log.info("no FLOP-weighted estimate for this grid (%s): cells counted as equal", e)
        self.peak = matmul_gflops(device if device in ("cpu", "cuda") else "cpu") * 1e9
        self.done_flops = 0.0
        self.done_seconds = 0.0
        self.done_cells = 0

    @property
    def weighted(self) -> bool:
        return bool(self.flops)

    def speed(self) -> float:
        """FLOP/s: what the finished cells achieved, else the prior."""
        if self.done_seconds > 0 and self.done_flops > 0:
            return self.done_flops / self.done_seconds
        return EFFICIENCY * self.peak

    def finished(self, cid: str, seconds: float) -> None:
        self.done_flops += self.flops.get(cid, 0.0)
        self.done_seconds += seconds
        self.done_cells += 1

    def remaining(self, cell_ids: list[str]) -> float | None:
        """Seconds for these cells, or None when there is nothing to go on (no plan, no cell yet)."""
        if self.weighted:
            return sum(self.flops[c] for c in cell_ids) / self.speed()
        if self.done_cells:
            return self.done_seconds / self.done_cells * len(cell_ids)
        return None

    def basis(self) -> str:
        if not self.weighted:
            return "cells counted as equal"
        if self.done_cells:
            return (f"each cell's FLOPs from `unlearnbench plan` at the {self.speed() / 1e9:.0f} GFLOP/s the "
                    f"{self.done_cells} finished cell(s) achieved")
        return (f"each cell's FLOPs from `unlearnbench plan` at {EFFICIENCY:.0%} of this machine's "
                f"{self.peak / 1e9:.0f} GFLOP/s matmul peak")
