"""The editing mode's evaluator: did the new value take, does it generalise, what else moved.

Given the edit cases (:mod:`pistol_data.edits`), one batched generation over every question
involved and one over the general-knowledge set give per-example values; the edit metrics
(defined and registered in :mod:`unlearnbench.metrics`, each with its direction) are means
over them:

* ``efficacy`` — the edited (direct) question is answered with the new value;
* ``old_answer_rate`` — ... or still with the old one;
* ``generalisation`` — paraphrases answered with the new value and reverse questions that
  name the new value answered with the right party (``generalisation_paraphrase``/``_reverse``);
* ``specificity_edge`` — ROUGE-1 on the *other* attributes of an edited contract;
* ``specificity_neighbour`` — ROUGE-1 on contracts that share an entity with an edited one;
* ``specificity_far`` — ROUGE-1 on every other contract;
* ``utility`` — ROUGE-1 on general knowledge; ``fluency`` — ROME's generation entropy
  (weighted bi-/tri-gram entropy, arXiv 2202.05262 §4) of the general-knowledge answers.

"Answered with" means the value occurs in the answer as whole words, case-insensitive.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from pistol_data import PistolDataset, general_knowledge
from pistol_data.edits import EditCase

from .core.generation import generate_answers
from .evaluate import EvalParams
from .metrics import EDIT_METRICS, ngram_entropy, rouge_recall  # noqa: F401  (ngram_entropy: re-exported)


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s-]", " ", text.lower()).split())


def says(generation: str, value: str) -> bool:
    """Whether ``value`` (an answer like "The State of Texas.") occurs in ``generation`` as whole words."""
    v = _norm(value)
    return bool(v) and re.search(r"(?<!\w)" + re.escape(v) + r"(?!\w)", _norm(generation)) is not None


@dataclass
class EditEval:
    rows: list[dict]       # one per question: role, question, gold, generation, scores
    utility: list[dict]
    seconds: float = 0.0

    def role(self, role: str) -> list[dict]:
        return [r for r in self.rows if r["role"] == role]


class EditEvaluator:
    def __init__(self, ds: PistolDataset, cases: list[EditCase], params: EvalParams | None = None):
        self.ds, self.cases = ds, cases
        self.params = params or EvalParams()
        self.gk = general_knowledge(self.params.utility_limit)
        edited = {(c.edge, c.attribute) for c in cases}
        edges = {c.edge for c in cases}
        ends = ds.edge_endpoints
        touched = {n for e in edges for n in ends[e]}
        self.items: list[dict] = []
        for c in cases:
            self.items.append({"role": "efficacy", "record": c.request, "old": c.old, "new": c.new})
            for r in c.form("paraphrase"):
                self.items.append({"role": "paraphrase", "record": r})
            for r in c.form("reverse"):
                self.items.append({"role": "reverse", "record": r})
        for r in ds.direct():
            if (r.edge, r.attribute) in edited:
                continue
            role = ("edge_other" if r.edge in edges else
                    "neighbour" if set(ends[r.edge]) & touched else "far")
            self.items.append({"role": role, "record": r})

    def run(self, model, tokenizer, desc: str = "evaluate edits") -> EditEval:
        p = self.params
        t0 = time.perf_counter()
        gens = generate_answers(model, tokenizer, [it["record"].question for it in self.items],
                                batch_size=p.batch_size, max_new_tokens=p.qa_max_new_tokens,
                                progress=p.progress, desc=desc)
        util = generate_answers(model, tokenizer, [r.question for r in self.gk], batch_size=p.batch_size,
                                max_new_tokens=p.max_new_tokens, progress=p.progress, desc=f"{desc} (utility)")
        rows = []
        for it, g in zip(self.items, gens):
            r = it["record"]
            row = {"role": it["role"], "edge": r.edge, "attribute": r.attribute, "form": r.form,
                   "question": r.question, "answer": r.answer, "generation": g,
                   "rouge1": rouge_recall(g, r.answer)[0], "says_answer": says(g, r.answer)}
            if it["role"] == "efficacy":
                row["old"], row["says_old"] = it["old"], says(g, it["old"])
            rows.append(row)
        util_rows = [{"question": r.question, "answer": r.answer, "generation": g,
                      "rouge1": rouge_recall(g, r.answer)[0], "entropy": ngram_entropy(g)} for r, g in zip(self.gk, util)]
        return EditEval(rows, util_rows, time.perf_counter() - t0)


def score_edits(ev: EditEval) -> dict[str, float]:
    return {name: float(m.fn(ev)) for name, m in EDIT_METRICS.items()}
