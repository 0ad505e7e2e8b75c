"""What the editors lose by no longer reading the utility set: key statistics with vs without it.

Until "Same numbers anywhere" the editing family's key statistics C = E[k kᵀ] were computed over
the request's retain QA **plus the general-knowledge set** — the very questions ``utility``
scores — and AlphaEdit projected its update away from those keys. Now they use the retain QA
and the request's ``preserve`` prompts (everyday questions disjoint from the utility set).
This script edits the quickstart's hub edge with ROME, MEMIT and AlphaEdit both ways, in one
process, and scores each result with the quickstart's evaluator:

* ``preserve`` — the request as the runner builds it (today's behaviour);
* ``general knowledge`` — the same request with the 207 general-knowledge QA appended to its
  retain set and no preserve prompts: exactly the old corpus (retain QA + GK QA + samples).

    python benchmarks/bench_editing_stats.py
"""

from __future__ import annotations

import copy
import dataclasses
import time

from common import implanted, write

from methods import get_method
from pistol_data import general_knowledge, scenarios
from pistol_data.scenarios import ScenarioSpec
from unlearnbench.evaluate import EvalParams, Evaluator, score
from unlearnbench.runner import build_request


def main():
    lm, ds = implanted()
    split = scenarios.resolve(ds, ScenarioSpec(type="edge", edge="A_B"))[-1]
    evaluator = Evaluator(ds, EvalParams(max_new_tokens=24, utility_limit=100, progress=False))
    base = score(evaluator.run(lm.model, lm.tokenizer, heldout_edges=split.forget_edges), split)
    request = build_request(ds, split, 0, "cpu", progress=False)
    variants = {"preserve": request,
                "general knowledge": dataclasses.replace(request, retain=list(request.retain) + general_knowledge(),
                                                         preserve=[])}
    res = {}
    for name in ("rome", "memit", "alphaedit"):
        cls = get_method(name)
        for label, req in variants.items():
            t = time.perf_counter()
            edited = cls().apply(copy.deepcopy(lm.model), lm.tokenizer, req, cls.Params()).model
            sec = time.perf_counter() - t
            m = score(evaluator.run(edited, lm.tokenizer, heldout_edges=split.forget_edges), split)
            res[f"{name} / {label}"] = {**{k: m[k] for k in ("ds", "forget_rouge1", "retain_rouge1", "utility")},
                                        "apply_seconds": sec}
            print(name, label, res[f"{name} / {label}"], flush=True)
            del edited
    lines = ["## 6. Editors' key statistics without the utility set", "",
             "Hub edge of the quickstart (SmolLM2 implant, fp32), each editor with its defaults; key statistics "
             "over retain QA + preserve prompts (now) vs retain QA + the general-knowledge set that `utility` "
             f"scores (before). Implanted model before editing: utility {base['utility']:.3f}.", "",
             "| method / statistics corpus | DS ↓ | forget R1 ↓ | retain R1 ↑ | utility ↑ | apply s |",
             "|---|---|---|---|---|---|"]
    for k, r in res.items():
        lines.append(f"| {k} | {r['ds']:.1f} | {r['forget_rouge1']:.3f} | {r['retain_rouge1']:.3f} | "
                     f"{r['utility']:.3f} | {r['apply_seconds']:.0f} |")
    write("editing_stats", "\n".join(lines), {"implanted": base, "results": res})


if __name__ == "__main__":
    main()
