"""Where one evaluation's time goes, call by call, against the machine's fp32 matmul peak.

``bench_phases.py`` puts one evaluation (the quickstart's: 56 PISTOL questions, 100 general-
knowledge items, 42 holdout questions, the teacher-forced passes and the truth ratios) at about
half the fp32 matmul peak. This script splits it, in one process, on the quickstart's implanted
SmolLM2 (fp32, the hub edge's held-out forms):

1. the fp32 matmul peak (2048³, best of 10);
2. each model call ``Evaluator.run`` makes (two generations that also teacher-force the gold and
   perturbed answers from their prompts' cache, and the utility generation), timed
   in a second evaluation after a warm-up one, with its FLOPs (``torch.utils.flop_counter``,
   counted in a third) and its share of the peak;
3. for the generations: the answer tokens computed (a row leaves the batch at its end token) vs
   the rows × steps a batch that kept every row to its longest answer (``generate``) computes;
4. one evaluation under ``torch.profiler``: self time of the matrix products, attention, the
   key/value cache's copies (``cat``), everything else, and the time outside any op.

    python benchmarks/bench_eval_profile.py
"""

from __future__ import annotations

import time
from collections import Counter

from common import implanted, matmul_peak, write
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from pistol_data import scenarios
from unlearnbench import evaluate as ev_mod
from unlearnbench.evaluate import EvalParams, Evaluator

_MM = {"aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul"}


class _Calls:
    """Wraps the evaluator's model calls: seconds (and, when counting, FLOPs) per call."""

    def __init__(self):
        self.rows: list[dict] = []
        self.count = False
        self.orig = (ev_mod.generate_answers, ev_mod.generate_and_score)

    def __enter__(self):
        gen, both = self.orig

        def wrap(fn, kind):
            def call(model, tok, items, *args, **kw):
                desc = kw.get("desc", "generate")
                fc = FlopCounterMode(display=False) if self.count else None
                t = time.perf_counter()
                if fc is not None:
                    with fc:
                        out = fn(model, tok, items, *args, **kw)
                else:
                    out = fn(model, tok, items, *args, **kw)
                self.rows.append({"kind": kind, "desc": desc, "n": len(items), "seconds": time.perf_counter() - t,
                                  "flops": fc.get_total_flops() if fc is not None else None,
                                  "budget": kw.get("max_new_tokens"),
                                  "out": out[0] if kind != "generate" else out,
                                  "pairs": len(args[0]) if args else 0})
                return out
            return call

        ev_mod.generate_answers = wrap(gen, "generate")
        ev_mod.generate_and_score = wrap(both, "generate + teacher-forced")
        return self

    def __exit__(self, *exc):
        ev_mod.generate_answers, ev_mod.generate_and_score = self.orig


def main():
    peak = matmul_peak()["float32"]
    lm, ds = implanted()
    model, tok = lm.model, lm.tokenizer
    [split] = scenarios.resolve(ds, {"type": "edge", "edge": "A_B"})
    evaluator = Evaluator(ds, EvalParams(max_new_tokens=24, utility_limit=100, progress=False))

    def run():
        return evaluator.run(model, tok, heldout_edges=split.forget_edges)

    run()  # warm-up
    with _Calls() as timed:
        t = time.perf_counter()
        run()
        total = time.perf_counter() - t
    with _Calls() as counted:
        counted.count = True
        run()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        run()
        prof_wall = time.perf_counter() - t
    self_us, other = Counter(), Counter()
    for e in prof.key_averages():
        key = "products" if e.key in _MM else "attention" if "attention" in e.key \
            else "cache copies" if e.key in ("aten::cat", "aten::index_select") else "other"
        self_us[key] += e.self_cpu_time_total
        if key == "other":
            other[e.key] += e.self_cpu_time_total
    in_ops = sum(self_us.values()) / 1e6

    calls = []
    for a, b in zip(timed.rows, counted.rows):
        row = {"call": f"{a['kind']} · {a['desc']}", "n": a["n"], "pairs": a["pairs"], "seconds": a["seconds"],
               "gflop": b["flops"] / 1e9, "fraction": b["flops"] / a["seconds"] / 1e9 / peak}
        if a["kind"].startswith("generate"):
            lens = [len(tok(g, add_special_tokens=False)["input_ids"]) + 1 for g in a["out"]]
            lens = [min(x, a["budget"]) for x in lens]
            row["read_tokens"] = sum(lens)
            row["computed_rows_x_steps"] = len(lens) * max(lens)
        calls.append(row)
    flops = sum(c["gflop"] for c in calls)
    res = {"peak_gflops": peak, "evaluation_seconds": total, "evaluation_gflop": flops,
           "evaluation_fraction": flops / total / peak, "calls": calls,
           "profile_wall_seconds": prof_wall, "profile_in_ops_seconds": in_ops,
           "profile_self_seconds": {k: v / 1e6 for k, v in self_us.items()},
           "top_other_seconds": [(k, v / 1e6) for k, v in other.most_common(12)]}
    print(res, flush=True)
    lines = ["## One evaluation, call by call", "",
             "The quickstart's evaluation of the implanted SmolLM2 on the hub edge (fp32; 56 PISTOL questions, "
             f"100 GK items, 42 holdout questions, teacher-forced passes, truth ratios); fp32 matmul peak (2048³) "
             f"**{peak:.0f} GFLOP/s**. Whole evaluation **{total:.1f} s, {flops:.0f} GFLOP, "
             f"{100 * res['evaluation_fraction']:.0f}% of peak**.", "",
             "| call | questions | teacher-forced answers | s | GFLOP | % of peak | answer tokens computed / "
             "rows × steps if stopped rows stayed |",
             "|---|---|---|---|---|---|---|"]
    for c in calls:
        gen = f"{c['read_tokens']} / {c['computed_rows_x_steps']}" if "read_tokens" in c else "—"
        lines.append(f"| {c['call']} | {c['n']} | {c['pairs'] or '—'} | {c['seconds']:.2f} | {c['gflop']:.0f} | "
                     f"{100 * c['fraction']:.0f}% | {gen} |")
    s = res["profile_self_seconds"]
    lines += ["", f"Profiled evaluation {prof_wall:.1f} s wall, {in_ops:.1f} s inside ops: " + ", ".join(
        f"{k} {v:.1f} s" for k, v in sorted(s.items(), key=lambda kv: -kv[1])) +
        f"; outside any op (Python, dispatch) ≈ {prof_wall - in_ops:.1f} s.", "",
        "Largest other ops (self s): " + "; ".join(f"{k} {v:.2f}" for k, v in res["top_other_seconds"])]
    write("eval_profile", "\n".join(lines), res)


if __name__ == "__main__":
    main()
