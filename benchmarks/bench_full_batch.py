"""The gradient methods on full batches against the memory bound, with and without the norm
outputs recomputed (``unlearnbench.core.lean``: the layers reading a norm's output keep a recipe,
not a copy), side by side in one process.

The request is the structural study's ``batch_of_two`` (E1_F1 + E2_q2 of the quickstart's implant:
12 forget rows, so the first step's batch holds the default 8 forget and 8 retain rows; one edge
has 6). Each method's apply with its defaults, the two variants alternating; the method's peak C
heap in use above the level before it (glibc mallinfo2) against 3 × the fp32 weights.
Writes ``results/full_batch.md``.

    python benchmarks/bench_full_batch.py [gd dpo ...]
    python benchmarks/bench_full_batch.py dpo-recompute   # dpo's two answers' activations: both vs one
"""

from __future__ import annotations

import contextlib
import sys

from common import edge_request, measured_apply, write

from methods import get_method
from unlearnbench.core import lean


@contextlib.contextmanager
def copies():
    """The loop as before the norm recipe: every norm output kept by the layers reading it."""
    pack = lean._NormOutputs.pack
    lean._NormOutputs.pack = lambda self, t: t
    try:
        yield
    finally:
        lean._NormOutputs.pack = pack


def dpo_recompute(rounds: int = 2):
    """IdK-DPO with both answers' activations alive at the start of the backward (as before) vs the
    preferred answer's pass recomputed in the backward (``recompute_preferred``, the default now),
    norm recipe on, alternating, ``rounds`` times each: heap, apply time, the final loss."""
    model, tok, request = edge_request(["E1_F1", "E2_q2"])
    bound = 3 * sum(p.numel() for p in model.parameters()) * 4 / 2**20
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cls = get_method("dpo")
    res = {False: [], True: []}
    for _ in range(rounds):
        for flag in (False, True):
            out, fig = measured_apply(cls, model, tok, request, cls.Params(recompute_preferred=flag))
            fig["last_loss"] = (getattr(out, "info", None) or {}).get("last_loss")
            res[flag].append(fig)
            model.load_state_dict(state)
            model.requires_grad_(False)
            print("dpo recompute_preferred", flag, fig, flush=True)
    best = {f: {"heap_mib": min(r["heap_mib"] for r in res[f]), "seconds": min(r["seconds"] for r in res[f]),
                "last_loss": res[f][-1]["last_loss"]} for f in res}
    a, b = best[False], best[True]
    md = "\n".join([
        "## IdK-DPO keeps one answer's activations at a time (issue 18)", "",
        f"`batch_of_two` request as above (batches of 8 forget rows), norm recipe on, dpo's defaults but "
        f"`recompute_preferred`; one process, alternating, best of {rounds}. Bound **{bound:.0f} MiB**.", "",
        "| both answers' activations kept → the preferred answer's pass recomputed | value |", "|---|---|",
        f"| heap MiB | {a['heap_mib']:.0f} → {b['heap_mib']:.0f} ({100 * b['heap_mib'] / bound:.0f}% of the bound) |",
        f"| apply s | {a['seconds']:.1f} → {b['seconds']:.1f} ({b['seconds'] / a['seconds']:.2f}×) |",
        f"| last loss | {a['last_loss']:.6f} → {b['last_loss']:.6f} |"])
    write("dpo_recompute", md, {"bound_mib": bound, "runs": {str(k): v for k, v in res.items()}, "best":
                                {str(k): v for k, v in best.items()}})


def main():
    if sys.argv[1:] == ["dpo-recompute"]:
        return dpo_recompute()
    names = sys.argv[1:] or ["gd", "ukl", "dpo"]
    model, tok, request = edge_request(["E1_F1", "E2_q2"])
    bound = 3 * sum(p.numel() for p in model.parameters()) * 4 / 2**20
    state = {k: v.clone() for k, v in model.state_dict().items()}
    res = {}
    for name in names:
        cls = get_method(name)
        for variant in ("copies", "recipe"):
            with copies() if variant == "copies" else contextlib.nullcontext():
                out, fig = measured_apply(cls, model, tok, request, cls.Params())
            fig["last_loss"] = (getattr(out, "info", None) or {}).get("last_loss")
            res.setdefault(name, {})[variant] = fig
            model.load_state_dict(state)
            model.requires_grad_(False)
            print(name, variant, fig, flush=True)
    rows = [f"| {n} | {r['copies']['heap_mib']:.0f} → {r['recipe']['heap_mib']:.0f} "
            f"({100 * r['recipe']['heap_mib'] / bound:.0f}% of the bound) | "
            f"{r['copies']['seconds']:.1f} → {r['recipe']['seconds']:.1f} | "
            f"{r['copies']['last_loss']:.6f} / {r['recipe']['last_loss']:.6f} |" for n, r in res.items()]
    md = "\n".join([
        "## Gradient methods on full batches: the norm outputs recomputed (issue 18)", "",
        f"Structural study's `batch_of_two` request (12 forget rows: batches of 8), SmolLM2 implant, fp32, each "
        f"method's defaults; norm outputs kept as copies (before) → recomputed from a recipe (after), one "
        f"process, alternating. Bound: 3 × fp32 weights = **{bound:.0f} MiB**. Heap: peak C heap in use above "
        "the level before apply (glibc mallinfo2).", "",
        "| method | heap MiB | apply s | last loss (before / after) |", "|---|---|---|---|", *rows])
    write("full_batch", md, {"bound_mib": bound, "runs": res})


if __name__ == "__main__":
    main()
