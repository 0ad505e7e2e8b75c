"""The gradient loop's memory savings, side by side in one process: each method's apply on the
quickstart's hub edge (SmolLM2 implant, fp32) with the stock forwards and with the savings
(``unlearnbench.core.lean``: MLP and RMSNorm keep less; ``core.lm``: the LM head on answer positions
only with no vocabulary-sized activations, the shared prefix's backward split off, and DPO's two
answers' backwards apart), alternating,
each variant twice (best time kept). Writes ``results/lean_training.md``.

    python benchmarks/bench_lean.py [gd npo ...]   # adds to the table of the methods measured before here

Reports apply seconds, the method's peak C heap in use above the level before it (glibc mallinfo2:
live allocations) and its peak RSS above the level before it, and the loss it ended on (equal
up to float rounding: the savings change the order of some additions, not the arithmetic).
"""

from __future__ import annotations

import contextlib
import json
import sys

from common import RESULTS, edge_request, machine, measured_apply, write
from report import machine_line

import methods.training as training
import unlearnbench.core.lm as lm_mod
from methods import get_method


@contextlib.contextmanager
def stock():
    """The loop as it was: no lean forwards, the LM head on every kept column, one backward graph."""
    saved = (training.lean_mlp, training.answer_logits, training.answer_nll, training.split_prefix_backward)
    training.lean_mlp = lambda m: contextlib.nullcontext(0)
    training.answer_logits = lambda model, b, share_prefix=True, lean_head=False: lm_mod.answer_logits(model, b, share_prefix)
    training.answer_nll = lambda model, b, lean_head=False: lm_mod.answer_nll(model, b)
    training.split_prefix_backward = lambda on=True: contextlib.nullcontext()
    try:
        yield
    finally:
        training.lean_mlp, training.answer_logits, training.answer_nll, training.split_prefix_backward = saved


def run(method: str, model, tok, request, variant: str) -> dict:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cls = get_method(method)
    with stock() if variant == "stock" else contextlib.nullcontext():
        res, fig = measured_apply(cls, model, tok, request, cls.Params())
    info = getattr(res, "info", None) or {}
    model.load_state_dict(state)
    model.requires_grad_(False)
    return {**fig, "last_loss": info.get("last_loss")}


def main():
    names = sys.argv[1:] or ["gd", "npo", "blur-npo"]
    model, tok, request = edge_request("A_B")
    m = machine()
    store = RESULTS / "lean_training.json"
    old = json.loads(store.read_text()) if store.exists() else {}
    # methods measured before on this same machine stay in the table (a run of some methods adds to it)
    data = dict(old.get("runs", {})) if old.get("machine", {}).get("cpu") == m["cpu"] else {}
    for name in names:
        runs = {"stock": [], "lean": []}
        for variant in ("stock", "lean", "stock", "lean"):
            runs[variant].append(run(name, model, tok, request, variant))
        data[name] = runs
        print(json.dumps({name: {v: min(r, key=lambda x: x["seconds"]) for v, r in runs.items()}}))
    rows = []
    for name, runs in data.items():
        best = {v: min(r, key=lambda x: x["seconds"]) for v, r in runs.items()}
        s, le = best["stock"], best["lean"]
        rows.append(f"| {name} | {s['seconds']:.1f} → {le['seconds']:.1f} ({le['seconds'] / s['seconds']:.2f}×) | "
                    f"{s['heap_mib']:.0f} → {le['heap_mib']:.0f} | {s['rss_mib']:.0f} → {le['rss_mib']:.0f} | "
                    f"{s['last_loss']:.6f} / {le['last_loss']:.6f} |")
    md = "\n".join([
        "## Gradient loop: the same steps in less memory (issue 18)", "",
        f"*Measured on: {machine_line(m)}.*", "",
        "Quickstart hub edge, SmolLM2 implant, fp32, each method's defaults; stock forwards vs the savings "
        "(`core.lean`, `lean_head`, `split_prefix_backward`, DPO's `backward_apart`), alternating in one process, best of two. "
        "Heap: peak C heap in use above the level before apply (glibc mallinfo2, live allocations); "
        "RSS: peak resident above the level before apply (adds the free pages a fragmented heap keeps).", "",
        "| method | apply s | heap MiB | RSS MiB | last loss (stock / lean) |", "|---|---|---|---|---|", *rows])
    write("lean_training", md, {"runs": data})


if __name__ == "__main__":
    main()
