"""Does the base model know the pretrained facts? (``pistol_data/data/pretrained_facts.tsv``)

The ``pretrained_facts`` scenario forgets facts the *base* model answers correctly. This script
asks SmolLM2-135M-Instruct (or the model given) every fact's direct question and paraphrase,
greedy, with the evaluator's answer budget, and writes which it answers (ROUGE-1 recall of the
gold answer = 1.0 on the direct question), so the file keeps only known facts:

    python benchmarks/check_pretrained_facts.py [MODEL] [--candidates FILE.tsv]

``--candidates`` checks a candidate file of the same columns instead of the shipped one.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from common import write

from unlearnbench.core.generation import generate_answers
from unlearnbench.evaluate import EvalParams
from unlearnbench.metrics import rouge_recall
from unlearnbench.models import load


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default="smollm2-135m-instruct")
    ap.add_argument("--candidates", default=None)
    a = ap.parse_args()
    path = Path(a.candidates) if a.candidates else Path(__file__).resolve().parents[1] / "pistol_data/data/pretrained_facts.tsv"
    rows = list(csv.DictReader(path.open(encoding="utf-8"), delimiter="\t"))
    lm = load(a.model)
    budget = EvalParams().qa_max_new_tokens
    qs = [r["question"] for r in rows] + [r["paraphrase"] for r in rows]
    gens = generate_answers(lm.model, lm.tokenizer, qs, max_new_tokens=budget)
    out = []
    for i, r in enumerate(rows):
        d, p = gens[i], gens[len(rows) + i]
        out.append({"id": r["id"], "answer": r["answer"], "direct": d, "paraphrase": p,
                    "direct_r1": rouge_recall(d, r["answer"])[0], "paraphrase_r1": rouge_recall(p, r["answer"])[0]})
    known = [o for o in out if o["direct_r1"] == 1.0]
    lines = ["## Pretrained facts: what the base model knows", "",
             f"{a.model}, greedy, {budget} new tokens, fp32; {path.name}: {len(rows)} facts, "
             f"**{len(known)} answered on the direct question** (ROUGE-1 recall 1.0), "
             f"{sum(o['paraphrase_r1'] == 1.0 for o in known)} of those also on the paraphrase.", "",
             "| fact | gold | direct answer | R1 | paraphrase R1 |", "|---|---|---|---|---|"]
    for o in out:
        lines.append(f"| {o['id']} | {o['answer']} | {o['direct'][:60]!r} | {o['direct_r1']:.2f} | "
                     f"{o['paraphrase_r1']:.2f} |")
    print("\n".join(lines[:3]))
    print("not known:", [o["id"] for o in out if o["direct_r1"] < 1.0])
    if not a.candidates:
        write("pretrained_facts", "\n".join(lines), {"model": a.model, "facts": out})


if __name__ == "__main__":
    main()
