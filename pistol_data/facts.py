"""Pretrained knowledge: short factual QA the *base* model answers before any implant.

Every other forget set of the suite is knowledge the implant put in. ``pretrained_facts()``
is the other kind, the one the editing-as-unlearning study (arXiv 2505.19855) finds hardest:
facts the model learned in pre-training. ``data/pretrained_facts.tsv`` holds short factual
questions written for this project, each with a held-out paraphrase, its category and its
subject (the span the editing methods edit at). They are disjoint from the general-knowledge
(utility) set, the anchor/preserve prompts and the PISTOL contracts: no fact shares a question
or an answer's subject with them (candidates that did — "the Nile", "Marie Curie", "Leonardo da
Vinci" — were dropped). Every fact is answered correctly by SmolLM2-135M-Instruct, greedy, with
the evaluator's 16-token budget (ROUGE-1 recall 1.0 on the direct question): 43 of 80 written
candidates passed ``benchmarks/check_pretrained_facts.py`` (34 of them on the paraphrase too);
another base model's ``base``/``none`` rows show which it knows.

The facts form an opaque dataset (no contract graph): each fact is one group (its id is the
``edge`` of its QA, the category its ``attribute``), the subjects are the dataset's entity names
(isolated graph nodes), and the refusal-calibration rows are the main dataset's, so a method
reads the same refusal data whichever dataset it forgets from. Perturbed answers for the truth
ratio are other facts' answers of the same category.
"""

from __future__ import annotations

import csv
from functools import lru_cache

import networkx as nx

from .dataset import PistolDataset
from .records import QARecord

PRESET = "pretrained-facts"


@lru_cache(maxsize=1)
def _rows() -> tuple[dict, ...]:
    from importlib import resources

    path = resources.files("pistol_data").joinpath("data").joinpath("pretrained_facts.tsv")
    with path.open(encoding="utf-8") as f:
        return tuple(csv.DictReader(f, delimiter="\t"))


def fact_ids() -> list[str]:
    return [r["id"] for r in _rows()]


def categories() -> dict[str, str]:
    """Fact id → category."""
    return {r["id"]: r["category"] for r in _rows()}


def default_forget(n: int) -> list[str]:
    """``n`` facts spread over the categories: the first fact of each category in file order,
    then the second of each, and so on (deterministic)."""
    by_cat: dict[str, list[str]] = {}
    for r in _rows():
        by_cat.setdefault(r["category"], []).append(r["id"])
    out: list[str] = []
    depth = 0
    while len(out) < n and any(len(v) > depth for v in by_cat.values()):
        out += [v[depth] for v in by_cat.values() if len(v) > depth][: n - len(out)]
        depth += 1
    return out


def pretrained_facts(refusal: list[QARecord] | None = None) -> PistolDataset:
    """The facts as a dataset: a direct and a paraphrased question per fact; ``refusal``: the
    refusal-calibration rows to carry (the main dataset's)."""
    g = nx.MultiGraph()
    qa: list[QARecord] = []
    for r in _rows():
        g.add_node(f"subject:{r['subject']}", kind="subject", name=r["subject"])
        for form in ("direct", "paraphrase"):
            qa.append(QARecord(question=r["question" if form == "direct" else "paraphrase"], answer=r["answer"],
                               edge=r["id"], attribute=r["category"], form=form, template_id=PRESET))
    return PistolDataset(graph=g, qa=qa, preset=PRESET, seed=None, refusal=list(refusal or []), source=PRESET)
