"""Where the gradient loop's step goes, against what its own matmul shapes can reach.

``bench_phases.py`` puts gd's step (forget NLL ascent + retain NLL, forward and backward, one
batch of the hub edge's request) at 41–47% of the fp32 matmul peak measured on 2048³. This script
asks how much of the gap is the machine's limit for the shapes the step multiplies, in one
process, on the quickstart's implanted SmolLM2 (fp32):

1. the fp32 matmul peak (2048³, best of 10);
2. one step of the shared loop (gd's loss terms, each forward and backward as the loop runs them,
   clipping and the fused AdamW update), timed alone (best of 3 after a warm-up; the weights put
   back between steps outside the timing), its FLOPs counted (``torch.utils.flop_counter``);
3. the step once under ``torch.profiler``: self time of the matrix products (``mm``, ``addmm``,
   ``bmm``), of attention and of everything else (elementwise ops, norms, the loss, autograd's
   bookkeeping) — so what the products achieve *inside* the step — and the largest other ops;
4. every matrix product the step ran, recorded with its shapes, and each distinct shape timed
   alone (best of 5 after a warm-up): the rate those shapes reach on this machine by themselves.

The ratio (step's products alone) ÷ (2048³ peak) bounds what any scheduling of the same products
can reach; a larger batch would change the method's arithmetic, not its speed.

    python benchmarks/bench_step_profile.py
"""

from __future__ import annotations

import time
from collections import Counter

import torch
from common import edge_request, matmul_peak, write
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from methods import get_method
from methods.training import build_batches
from unlearnbench.core.lean import grouped_kv_attention, lean_mlp
from unlearnbench.core.lm import split_prefix_backward

_MM = {"aten::mm", "aten::addmm", "aten::bmm"}


class _Products(TorchDispatchMode):
    """Records (op, shapes, strides) of every matrix product dispatched inside it."""

    def __init__(self):
        super().__init__()
        self.seen: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in ("mm", "addmm", "bmm"):
            mats = [a for a in args if isinstance(a, torch.Tensor)]
            self.seen[(name, tuple((tuple(m.shape), tuple(m.stride())) for m in mats))] += 1
        return func(*args, **(kwargs or {}))


def _product_flops(name: str, shapes) -> int:
    a, b = shapes[-2][0], shapes[-1][0]
    if name == "bmm":
        return 2 * a[0] * a[1] * a[2] * b[2]
    return 2 * a[0] * a[1] * b[1]


def _alone(name: str, shapes, reps: int = 5) -> float:
    """Best seconds of one product of these shapes and strides, run by itself."""
    mats = [torch.empty_strided(s, st).normal_() for s, st in shapes]
    fn = {"mm": torch.mm, "bmm": torch.bmm, "addmm": torch.addmm}[name]
    for _ in range(2):
        fn(*mats)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn(*mats)
        best = min(best, time.perf_counter() - t)
    return best


def main():
    peak = matmul_peak()["float32"]
    model, tok, request = edge_request()
    gd = get_method("gd")()
    params = gd.Params()
    batch = next(iter(build_batches(tok, request, params.batch_size)))
    opt = gd.make_optimizer(model, params)  # embeddings fixed, fused AdamW: as the loop's
    ctx = {"params": params, "ref": None, "tokenizer": tok, "seed": 0}
    weights = [p.detach().clone() for p in model.parameters()]

    def step():
        """One step of the shared loop as ``GradientMethod.apply`` runs it: each loss term's forward
        (lean MLPs and norms, key/value heads not repeated, the prompt prefix's backward split off)
        and backward, clipping, AdamW."""
        model.train()
        with lean_mlp(model), grouped_kv_attention():
            for term in gd.loss_terms(model, batch, ctx):
                with split_prefix_backward(True):
                    part = term()
                part.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), params.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.eval()

    def restore():
        """The weights put back after a step (not timed), so every step does the same arithmetic."""
        with torch.no_grad():
            for p, w in zip(model.parameters(), weights):
                p.copy_(w)

    step()  # warm-up
    restore()
    with FlopCounterMode(display=False) as fc:
        step()
    restore()
    flops = fc.get_total_flops()
    times = []
    for _ in range(3):
        times.append(_timed(step))
        restore()
    secs = min(times)

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    restore()
    self_us, other = Counter(), Counter()
    for ev in prof.key_averages():
        key = "products" if ev.key in _MM else "attention" if "attention" in ev.key else "other"
        self_us[key] += ev.self_cpu_time_total
        if key == "other":
            other[ev.key] += ev.self_cpu_time_total
    prof_total = sum(self_us.values()) / 1e6
    top_other = [(k, v / 1e6) for k, v in other.most_common(10)]

    rec = _Products()
    with rec:
        step()
    restore()
    mm_flops = sum(_product_flops(n, s) * c for (n, s), c in rec.seen.items())
    each = {key: _alone(*key) for key in rec.seen}  # every distinct shape timed once
    alone = sum(each[key] * c for key, c in rec.seen.items())
    in_step = self_us["products"] / 1e6
    worst = sorted(((_product_flops(n, s) / each[(n, s)] / 1e9, n, s, c) for (n, s), c in rec.seen.items()),
                   key=lambda r: r[0])[:5]

    res = {"peak_gflops": peak, "step_seconds": secs, "step_gflop": flops / 1e9,
           "step_fraction": flops / secs / 1e9 / peak,
           "profile_seconds": prof_total, "profile_share": {k: v / 1e6 / prof_total for k, v in self_us.items()},
           "products_gflop": mm_flops / 1e9, "products_in_step_seconds": in_step,
           "products_in_step_fraction": mm_flops / in_step / 1e9 / peak,
           "products_alone_seconds": alone, "products_alone_fraction": mm_flops / alone / 1e9 / peak,
           "distinct_shapes": len(rec.seen), "products": sum(rec.seen.values()),
           "top_other_seconds": top_other,
           "slowest_shapes": [{"gflops": g, "op": n, "shapes": [s for s, _ in sh], "count": c} for g, n, sh, c in worst]}
    print(res, flush=True)
    share = res["profile_share"]
    lines = ["## The gradient loop's step against its own shapes", "",
             f"gd's step on the hub edge's first batch ({batch_rows(batch)} rows; each term's forward and "
             "backward, clipping and AdamW), SmolLM2 implanted, fp32; "
             f"fp32 matmul peak (2048³) **{peak:.0f} GFLOP/s**.", "",
             "| measure | value |", "|---|---|",
             f"| step, alone (best of 3) | {secs:.3f} s, {flops / 1e9:.1f} GFLOP, "
             f"**{100 * res['step_fraction']:.0f}% of peak** |",
             f"| profiled step: matrix products / attention / everything else | "
             f"{100 * share.get('products', 0):.0f}% / {100 * share.get('attention', 0):.0f}% / "
             f"{100 * share.get('other', 0):.0f}% of {prof_total:.3f} s |",
             f"| the step's {res['products']} products ({len(rec.seen)} distinct shapes), {mm_flops / 1e9:.1f} GFLOP, "
             f"inside the step | {in_step:.3f} s, {100 * res['products_in_step_fraction']:.0f}% of peak |",
             f"| the same products, each shape alone (best of 5) | {alone:.3f} s, "
             f"**{100 * res['products_alone_fraction']:.0f}% of peak** |", "",
             "Largest non-product ops in the profiled step (self seconds): " + "; ".join(
                 f"{k} {v:.3f}" for k, v in top_other), "",
             "Slowest shapes alone (GFLOP/s, op, shapes, count): " + "; ".join(
                 f"{g:.0f} {n} {'×'.join(str(s) for s, _ in sh)} ×{c}" for g, n, sh, c in worst)]
    write("step_profile", "\n".join(lines), res)


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def batch_rows(batch) -> str:
    parts = [f"{k} {v['input_ids'].shape[0]}" for k, v in batch.items()
             if isinstance(v, dict) and "input_ids" in v]
    return ", ".join(parts) or "?"


if __name__ == "__main__":
    main()
