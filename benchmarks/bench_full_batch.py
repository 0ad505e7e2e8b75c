"""The gradient methods on full batches against the memory bound, with and without the norm
outputs recomputed (``unlearnbench.core.lean``: the layers reading a norm's output keep a recipe,
not a copy), side by side in one process.

The request is the structural study's ``batch_of_two`` (E1_F1 + E2_q2 of the quickstart's implant:
12 forget rows, so the first step's batch holds the default 8 forget and 8 retain rows; one edge
has 6). Each method's apply with its defaults, the two variants alternating; the method's peak C
heap in use above the level before it (glibc mallinfo2) against 3 × the fp32 weights.
Writes ``results/full_batch.md``.

    python benchmarks/bench_full_batch.py [gd dpo ...]
    python benchmarks/bench_full_batch.py CHANGE [METHOD]   # one change of CHANGES (dpo-defaults, gqa, kl, ...), before vs after
"""

from __future__ import annotations

import contextlib
import sys

import torch
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


class Bench:
    """The full-batch request (``batch_of_two``) on the quickstart's implant, the bound, and one
    method's apply from the same weights each time."""

    def __init__(self, spec: dict | None = None):
        self.model, self.tok, self.request = edge_request(spec or ["E1_F1", "E2_q2"])
        self.bound = 3 * sum(p.numel() for p in self.model.parameters()) * 4 / 2**20
        self.state = {k: v.clone() for k, v in self.model.state_dict().items()}

    def apply(self, cls, params, ctx=contextlib.nullcontext) -> dict:
        """Heap, seconds and the last loss of ``cls``'s apply inside ``ctx()``; the weights put back."""
        with ctx():
            out, fig = measured_apply(cls, self.model, self.tok, self.request, params)
        fig["last_loss"] = (getattr(out, "info", None) or {}).get("last_loss")
        self.model.load_state_dict(self.state)
        self.model.requires_grad_(False)
        return fig


@contextlib.contextmanager
def repeated_kv():
    """The loop without ``core.lean.grouped_kv_attention``: SDPA given key/value heads repeated to
    every query head, as transformers does under a padding mask."""
    import methods.training as training

    kept = training.grouped_kv_attention
    training.grouped_kv_attention = contextlib.nullcontext
    try:
        yield
    finally:
        training.grouped_kv_attention = kept


@contextlib.contextmanager
def plain_kl():
    """The KL to the reference as ``F.kl_div`` over the logits' log-softmax (before ``_KLFromRef``)."""
    import torch.nn.functional as F

    from unlearnbench.core.lm import AnswerLogits, upcast

    kept = AnswerLogits.kl_from
    AnswerLogits.kl_from = lambda self, ref: F.kl_div(torch.log_softmax(upcast(self.logits), -1), ref,
                                                      log_target=True, reduction="none").sum(-1)
    try:
        yield
    finally:
        AnswerLogits.kl_from = kept


# name: (title, what changes, the method, (before: context, params), (after: context, params))
CHANGES = {
    "dpo-recompute": ("IdK-DPO keeps one answer's activations at a time",
                      "both answers' activations alive at the start of the backward → the preferred answer's pass "
                      "run again in the backward (`recompute_preferred`)", "dpo",
                      (contextlib.nullcontext, {"recompute_preferred": False, "rows_per_pass": None}),
                      (contextlib.nullcontext, {"recompute_preferred": True, "rows_per_pass": None})),
    "rows-per-pass": ("IdK-DPO runs a term over 8 rows as two passes of 4",
                      "each term's 8 rows in one pass → two passes of 4 rows, one's backward before the other's "
                      "forward (`rows_per_pass`)", "dpo",
                      (contextlib.nullcontext, {"rows_per_pass": None, "recompute_preferred": False}),
                      (contextlib.nullcontext, {"rows_per_pass": 4, "recompute_preferred": False})),
    "dpo-defaults": ("IdK-DPO's defaults keep one chunk of one answer's activations",
                     "one pass per term, both answers' activations alive → `recompute_preferred` and "
                     "`rows_per_pass: 4` (the defaults)", "dpo",
                     (contextlib.nullcontext, {"rows_per_pass": None, "recompute_preferred": False}),
                     (contextlib.nullcontext, {})),
    "ukl-rows": ("ukl runs a term over 8 rows as two passes of 4",
                 "each term's 8 rows in one pass → two passes of 4 rows, one's backward before the other's forward "
                 "(`rows_per_pass: 4`)", "ukl",
                 (contextlib.nullcontext, {"rows_per_pass": None}), (contextlib.nullcontext, {"rows_per_pass": 4})),
    "gqa": ("Attention on the key/value heads as they are",
            "SDPA given key/value heads repeated to every query head (transformers' default under a padding "
            "mask) → as they are (`enable_gqa`, `core.lean.grouped_kv_attention`)", "gd",
            (repeated_kv, {}), (contextlib.nullcontext, {})),
    "kl": ("ukl's KL without vocabulary-sized activations",
           "`F.kl_div` over the logits' log-softmax → chunked, logits made again in the backward (`_KLFromRef`)",
           "ukl", (plain_kl, {}), (contextlib.nullcontext, {})),
    "blur-rows": ("BLUR runs a term over 8 rows as two passes of 4",
                  "each term's 8 rows in one pass → two passes of 4 rows, each weight's gradient added into the "
                  "step's buffer as it arrives (`rows_per_pass: 4`)", "blur-npo",
                  (contextlib.nullcontext, {}), (contextlib.nullcontext, {"rows_per_pass": 4})),
}
# a change measured on another request than batch_of_two: (scenario spec, its name in the table, rounds)
REQUESTS = {"blur-rows": ({"type": "max_degree"}, "`every_hub_edge` request (the hub's 4 edges: batches of 8 "
                          "forget rows), where blur-npo's cell went over the bound in the study", 1)}


def side_by_side(change: str, method: str | None = None, rounds: int = 2):
    """One change's before and after on one method, alternating, ``rounds`` times each, norm recipe
    on: heap, apply time, the final loss (best heap and time of the rounds)."""
    title, what, default, before, after = CHANGES[change]
    spec, request, rounds = REQUESTS.get(change, (None, "`batch_of_two` request (batches of 8 forget rows)", rounds))
    name = method or default
    bench = Bench(spec)
    bound = bench.bound
    cls = get_method(name)
    runs = {"before": [], "after": []}
    for _ in range(rounds):
        for label, (ctx, kw) in (("before", before), ("after", after)):
            fig = bench.apply(cls, cls.Params(**kw), ctx)
            runs[label].append(fig)
            print(change, name, label, fig, flush=True)
    best = {k: {"heap_mib": min(f["heap_mib"] for f in v), "seconds": min(f["seconds"] for f in v),
                "last_loss": v[-1]["last_loss"]} for k, v in runs.items()}
    a, b = best["before"], best["after"]
    md = "\n".join([
        f"## {title} (issue 18)", "",
        f"`{name}` with its defaults on the {request}, SmolLM2 implant, fp32, "
        f"norm recipe on; {what}; one process, alternating, best of {rounds}. Bound: 3 × fp32 weights = "
        f"**{bound:.0f} MiB**.", "",
        "| before → after | value |", "|---|---|",
        f"| heap MiB | {a['heap_mib']:.0f} → {b['heap_mib']:.0f} ({100 * b['heap_mib'] / bound:.1f}% of the bound) |",
        f"| apply s | {a['seconds']:.1f} → {b['seconds']:.1f} ({b['seconds'] / a['seconds']:.2f}×) |",
        f"| last loss | {a['last_loss']:.6f} → {b['last_loss']:.6f} |"])
    out = change.replace("-", "_") + ("" if name == default else "_" + name.replace("-", "_"))
    write(out, md, {"method": name, "bound_mib": bound, "runs": runs, "best": best})


def main():
    if sys.argv[1:2] and sys.argv[1] in CHANGES:
        return side_by_side(sys.argv[1], *sys.argv[2:3])
    names = sys.argv[1:] or ["gd", "ukl", "dpo"]
    bench = Bench()
    bound = bench.bound
    res = {}
    for name in names:
        cls = get_method(name)
        for variant in ("copies", "recipe"):
            fig = bench.apply(cls, cls.Params(), copies if variant == "copies" else contextlib.nullcontext)
            res.setdefault(name, {})[variant] = fig
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
