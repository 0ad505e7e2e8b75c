"""Greedy generation: rows that have stopped taken out of the batch vs kept to the end.

``generate_answers`` runs its own greedy loop (``unlearnbench.core.generation.greedy_tokens``);
with ``drop_finished=False`` every row is computed until the batch's longest answer ends, as
``transformers``' ``generate`` does (``tests/test_core.py`` checks the two token for token). This
script measures, in one process and alternating the two settings (best of 2 each):

* the evaluator's three generation calls (56 PISTOL questions of the hub edge's evaluation at 16
  tokens, 100 general-knowledge items at 24, 42 holdout questions at 16) on the base SmolLM2 and on
  the quickstart's implanted model: seconds, rows × steps computed, and whether every answer is
  the same;
* the implant's anchor answers of the base model (the cached file the implant trains on) generated
  again with rows dropped: the same answers as the cache holds?

    python benchmarks/bench_generation.py
"""

from __future__ import annotations

import json
import time

import torch
from common import implanted, write

from pistol_data import general_knowledge, scenarios
from unlearnbench.core import generation as gen
from unlearnbench.core.cache import cache_dir
from unlearnbench.models import load


def _rows_steps(model, tok, questions, budget, drop):
    """(seconds, rows × steps computed, answers) of one ``generate_answers`` call."""
    steps = []
    real = gen.greedy_tokens

    def counted(m, ids, mask, **kw):
        out = real(m, ids, mask, **kw)
        lengths = sorted(len(t) for t in out)
        # rows × steps: every row to the longest answer when rows are kept; each row's own length when dropped
        steps.append(sum(lengths) if kw.get("drop_finished", True) else len(lengths) * lengths[-1])
        return out

    gen.greedy_tokens = counted
    try:
        t = time.perf_counter()
        answers = gen.generate_answers(model, tok, questions, batch_size=128, max_new_tokens=budget,
                                       drop_finished=drop)
        secs = time.perf_counter() - t
    finally:
        gen.greedy_tokens = real
    return secs, sum(steps), answers


def main():
    torch.manual_seed(0)
    lm, ds = implanted()
    base = load("smollm2-135m-instruct")
    [split] = scenarios.resolve(ds, {"type": "edge", "edge": "A_B"})
    keep = set(split.forget_edges)
    qa = [r.question for r in ds.qa if r.form == "direct" or r.edge in keep]
    calls = [("PISTOL QA", qa, 16), ("general knowledge", [r.question for r in general_knowledge(100)], 24),
             ("holdout", [r.question for r in ds.holdout], 16)]
    rows, res = [], {"calls": []}
    for name, m in (("base", base.model), ("implanted", lm.model)):
        m.eval()
        gen.generate_answers(m, lm.tokenizer, qa[:8], max_new_tokens=4)  # warm-up
        for call, qs, budget in calls:
            best = {True: float("inf"), False: float("inf")}
            answers, work = {}, {}
            for _ in range(2):
                for drop in (False, True):
                    s, w, a = _rows_steps(m, lm.tokenizer, qs, budget, drop)
                    best[drop] = min(best[drop], s)
                    answers[drop], work[drop] = a, w
            same = sum(a == b for a, b in zip(answers[False], answers[True]))
            r = {"model": name, "call": call, "n": len(qs), "budget": budget, "kept_s": best[False],
                 "dropped_s": best[True], "kept_rows_steps": work[False], "dropped_rows_steps": work[True],
                 "same_answers": same, "different": [(q, a, b) for q, a, b in zip(qs, answers[False], answers[True])
                                                     if a != b][:5]}
            print(r, flush=True)
            res["calls"].append(r)
            rows.append(r)

    # the anchor answers the cached implant was trained on, generated again with rows dropped
    anchors = []
    for f in sorted(cache_dir("anchors").glob("*.json")):
        d = json.loads(f.read_text())
        if d.get("model") != base.spec:
            continue
        t = time.perf_counter()
        again = gen.generate_answers(base.model, base.tokenizer, d["questions"], max_new_tokens=d["max_new_tokens"])
        anchors.append({"file": f.name, "n": len(d["questions"]), "same": sum(a == b for a, b in
                                                                             zip(again, d["answers"])),
                        "seconds": time.perf_counter() - t})
    res["anchors"] = anchors
    kept = sum(r["kept_s"] for r in rows)
    dropped = sum(r["dropped_s"] for r in rows)
    res.update({"kept_s": kept, "dropped_s": dropped})
    lines = ["## Greedy generation: stopped rows taken out of the batch", "",
             "The evaluator's three generation calls (hub edge; fp32), each setting best of 2, alternating in one "
             f"process. All calls: **{kept:.1f} s kept → {dropped:.1f} s dropped** "
             f"({kept / dropped:.2f}×).", "",
             "| model | call | items | budget | rows kept: s | rows dropped: s | rows × steps kept → dropped | "
             "same answers |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['call']} | {r['n']} | {r['budget']} | {r['kept_s']:.2f} | "
                     f"{r['dropped_s']:.2f} | {r['kept_rows_steps']} → {r['dropped_rows_steps']} | "
                     f"{r['same_answers']} / {r['n']} |")
    for a in anchors:
        lines.append(f"\nAnchor answers in the cache ({a['file']}): generated again with rows dropped, "
                     f"**{a['same']} of {a['n']} the same** ({a['seconds']:.1f} s).")
    write("generation", "\n".join(lines), res)


if __name__ == "__main__":
    main()
