"""One evaluation with each prompt run once, side by side with the separate passes it replaced.

Until 2026-12-07 ``Evaluator.run`` generated an answer to every question, then ran a separate
teacher-forced pass over ``prompt · gold answer`` (MRR, NLL, the membership scores) and another
over ``prompt · perturbed answer`` for the truth ratio: the same prompt went through the model
up to five times. ``core.generation.generate_and_score`` teacher-forces every answer from the
generation's own prompt cache, so only the answer tokens run again. This script measures, in one
process on the quickstart's implanted SmolLM2 (fp32), for the quickstart's two scenarios:

1. the fp32 matmul peak (2048³, best of 10);
2. the evaluation both ways — ``separate`` (the previous ``Evaluator.run``, rebuilt here from
   ``generate_answers`` and ``teacher_forced_stats``) and ``shared`` (the current one) — timed in
   alternation (best of 3 after a warm-up of each), FLOPs counted by ``torch.utils.flop_counter``;
3. what changes in the numbers: the generations (must be equal, token for token), every metric of
   ``score`` on the scenario, and the largest difference of each per-question statistic.

    python benchmarks/bench_eval_shared_prompt.py
"""

from __future__ import annotations

import math
import time

from common import implanted, matmul_peak, write
from torch.utils.flop_counter import FlopCounterMode

from pistol_data import scenarios
from unlearnbench.core.generation import generate_answers, teacher_forced_stats
from unlearnbench.evaluate import EvalParams, Evaluator, ModelEval, score, truth_ratio
from unlearnbench.metrics import is_refusal, rouge_recall

STATS = ("mrr", "thr", "es", "nll", "mink", "minkpp", "zlib", "tr")


def separate(ev: Evaluator, model, tok, heldout_edges) -> ModelEval:
    """The evaluation as it was before the prompts were shared: three generations, then a
    teacher-forced pass per example set and one for the truth ratios' perturbed answers."""
    p, keep = ev.params, set(heldout_edges)
    t0 = time.perf_counter()
    qa = [r for r in ev.qa if r.form == "direct" or r.edge in keep]
    gens = generate_answers(model, tok, [r.question for r in qa], batch_size=p.batch_size,
                            max_new_tokens=p.qa_max_new_tokens)
    util = generate_answers(model, tok, [r.question for r in ev.gk], batch_size=p.batch_size,
                            max_new_tokens=p.max_new_tokens)
    tf = teacher_forced_stats(model, tok, [(r.question, r.answer) for r in qa], batch_size=p.tf_batch_size)
    rows = []
    for r, g, t in zip(qa, gens, tf):
        r1, rl = rouge_recall(g, r.answer)
        rows.append({**r.to_dict(), "generation": g, "rouge1": r1, "rougeL": rl, "refusal": is_refusal(g), **t})
    util_rows = [{"question": r.question, "answer": r.answer, "category": r.attribute, "generation": g,
                  **dict(zip(("rouge1", "rougeL"), rouge_recall(g, r.answer)))} for r, g in zip(ev.gk, util)]
    hold_gens = generate_answers(model, tok, [r.question for r in ev.holdout], batch_size=p.batch_size,
                                 max_new_tokens=p.qa_max_new_tokens)
    hold_tf = teacher_forced_stats(model, tok, [(r.question, r.answer) for r in ev.holdout],
                                   batch_size=p.tf_batch_size)
    hold = [{**r.to_dict(), "generation": g, "rouge1": rouge_recall(g, r.answer)[0], **t}
            for r, g, t in zip(ev.holdout, hold_gens, hold_tf)]
    forget = [x for x in rows if x["form"] == "direct" and x["edge"] in keep]
    pairs, owner = [], []
    for i, x in enumerate(forget):
        for a in ev.perturbed.get((x["edge"], x["attribute"]), []):
            pairs.append((x["question"], a))
            owner.append(i)
    wrong: dict[int, list[float]] = {}
    for i, t in zip(owner, teacher_forced_stats(model, tok, pairs, batch_size=p.tf_batch_size)):
        wrong.setdefault(i, []).append(t["nll"])
    for i, x in enumerate(forget):
        x["tr"] = truth_ratio(x["nll"], wrong.get(i, []))
    return ModelEval(rows, util_rows, seconds=time.perf_counter() - t0, holdout=hold)


def _diff(a: float, b: float) -> float:
    if math.isnan(a) and math.isnan(b):
        return 0.0
    return abs(a - b)


def main():
    peak = matmul_peak()["float32"]
    lm, ds = implanted()
    model, tok = lm.model, lm.tokenizer
    evaluator = Evaluator(ds, EvalParams(max_new_tokens=24, utility_limit=100, progress=False))
    out = {"peak_gflops": peak, "scenarios": []}
    lines = ["## One evaluation with each prompt run once (`generate_and_score`)", "",
             "The quickstart's evaluation of its implanted SmolLM2 (fp32; 56 PISTOL questions with the scenario's "
             "held-out forms, 100 GK items, 42 holdout questions, truth ratios over 3 perturbed answers), the "
             "previous separate passes against the shared prompts, alternated in one process (best of 3 after a "
             f"warm-up each); fp32 matmul peak (2048³) **{peak:.0f} GFLOP/s**.", "",
             "| scenario | way | s (best of 3) | GFLOP | % of peak | generations equal | metrics changed "
             "(of all) | largest change of a metric |",
             "|---|---|---|---|---|---|---|---|"]
    for spec in ({"type": "edge", "edge": "A_B", "name": "hub_edge"},
                 {"type": "independent_edge", "edge": "E1_F1", "name": "independent_edge"}):
        [split] = scenarios.resolve(ds, spec)
        ways = {"separate": lambda: separate(evaluator, model, tok, split.forget_edges),
                "shared": lambda: evaluator.run(model, tok, heldout_edges=split.forget_edges)}
        res, secs, flops = {}, {k: [] for k in ways}, {}
        for k, fn in ways.items():
            res[k] = fn()  # warm-up
        for _ in range(3):
            for k, fn in ways.items():
                t = time.perf_counter()
                fn()
                secs[k].append(time.perf_counter() - t)
        for k, fn in ways.items():
            fc = FlopCounterMode(display=False)
            with fc:
                fn()
            flops[k] = fc.get_total_flops() / 1e9
        a, b = res["separate"], res["shared"]
        same_gen = [x["generation"] for x in a.qa + a.utility + a.holdout] == \
                   [x["generation"] for x in b.qa + b.utility + b.holdout]
        sa, sb = score(a, split), score(b, split)
        changed = {m: _diff(sa[m], sb[m]) for m in sa if _diff(sa[m], sb[m]) > 0}
        stat_diff = {}
        for key in STATS:
            pairs = [(x[key], y[key]) for x, y in zip(a.qa + a.holdout, b.qa + b.holdout) if key in x and key in y]
            stat_diff[key] = max((_diff(u, v) for u, v in pairs), default=0.0)
        big = max(changed.items(), key=lambda kv: kv[1]) if changed else None
        row = {"scenario": spec["name"], "seconds": {k: min(v) for k, v in secs.items()},
               "all_seconds": secs, "gflop": flops, "generations_equal": same_gen,
               "metrics_changed": changed, "n_metrics": len(sa), "scores": {"separate": sa, "shared": sb},
               "largest_stat_difference": stat_diff}
        out["scenarios"].append(row)
        for k in ways:
            s = min(secs[k])
            lines.append(f"| {spec['name']} | {k} | {s:.2f} | {flops[k]:.0f} | {100 * flops[k] / s / peak:.0f}% | "
                         + ("—" if k == "separate" else f"{'yes' if same_gen else '**no**'}") + " | "
                         + ("—" if k == "separate" else f"{len(changed)} of {len(sa)}") + " | "
                         + ("—" if k == "separate" else (f"{big[0]} {big[1]:.2g}" if big else "none")) + " |")
        print(row, flush=True)
    lines += ["", "Largest difference of a per-question statistic (float rounding: other matmul shapes), "
              "over both scenarios: " + ", ".join(
                  f"{k} {max(r['largest_stat_difference'][k] for r in out['scenarios']):.2g}" for k in STATS) + ".",
              "", "Speed-up (separate ÷ shared, best times): " + ", ".join(
                  f"{r['scenario']} {r['seconds']['separate'] / r['seconds']['shared']:.2f}× time, "
                  f"{r['gflop']['separate'] / r['gflop']['shared']:.2f}× fewer FLOPs" for r in out["scenarios"]) + "."]
    write("eval_shared_prompt", "\n".join(lines), out)


if __name__ == "__main__":
    main()
