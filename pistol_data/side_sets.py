"""Side sets written for this project: general knowledge (utility) and refusal calibration.

* ``general_knowledge()`` — 200+ short QA about capitals, authors, chemical elements, dates
  and assorted facts (``data/general_knowledge.tsv``); utility is ROUGE-1 recall on it.
* ``refusal_sentences()`` — "I don't know"-style sentences (``data/refusals.txt``).
* ``anchor_questions()`` — everyday questions, disjoint from the general-knowledge set, that
  the implant answers with the *base* model's own words (self-distillation) so that learning
  the graph and the refusal behaviour does not wash out the model's general behaviour.
* ``preserve_prompts()`` — the everyday prompts a method may read (``UnlearnRequest.preserve``:
  LUNAR's general retain rows, the editors' key statistics): the anchor questions, disjoint
  from the general-knowledge set, which only the evaluator reads.
* ``refusal_calibration(...)`` — questions about companies and people that do not exist,
  each paired with a refusal sentence. The implant trains on them so that the model has a
  refusal behaviour (LUNAR redirects forget activations towards it), and LUNAR uses them as
  its reference set. Names are drawn like the dataset's but never equal any dataset entity.
"""

from __future__ import annotations

import csv
import random
from functools import lru_cache
from importlib import resources

from .names import NameFactory
from .records import QARecord

# Calibration stays inside the contract domain: generic "Who wrote…?"-style questions about
# unknown people taught SmolLM2 to refuse real general-knowledge questions as well.
_COMPANY_QUESTIONS = [
    "What was the effective date of the contract between {c1} and {c2}?",
    "What was the good that the seller was selling to the customer based on the contract between {c1} and {c2}?",
    "What was the total price in dollars of the good being sold based on the contract between {c1} and {c2}?",
    "Which jurisdiction's laws govern the contract between {c1} and {c2}?",
    "What was the address of {c1} in the contract with {c2}?",
    "What was the name of the customer in the contract with {c1} as of {date}?",
    "How many units did {c1} sell to {c2}?",
    "What was the unit price in dollars of the good being sold based on the contract between {c1} and {c2}?",
    "What was the late payment interest rate based on the contract between {c1} and {c2}?",
    "Who would be responsible for the costs of the shipment based on the contract between {c1} and {c2}?",
]
_PERSON_QUESTIONS = [
    "What was the start date based on the contract between {c1} and {p}?",
    "What was the job position based on the contract between {c1} and {p}?",
    "What was the hourly basic pay in dollars based on the contract between {c1} and {p}?",
    "What benefit was provided to the employee based on the contract between {c1} and {p}?",
    "What was the name of the employer in the employment contract with {p}, which started from {date}?",
    "How many days of paid holiday leave were provided to the employee based on the contract between {c1} and {p}?",
    "Which jurisdiction's laws govern the contract between {c1} and {p}?",
    "What was the work location based on the contract between {c1} and {p}?",
    "For how many months did the non-compete clause cover based on the contract between {c1} and {p}?",
    "What was the frequency of salary payment based on the contract between {c1} and {p}?",
]


def _data_file(name: str):
    return resources.files("pistol_data").joinpath("data").joinpath(name)


@lru_cache(maxsize=1)
def _general_knowledge() -> tuple[QARecord, ...]:
    with _data_file("general_knowledge.tsv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return tuple(QARecord(question=r["question"], answer=r["answer"], edge="__general__",
                          attribute=r["category"], form="direct", template_id="general_knowledge")
                 for r in rows)


def general_knowledge(limit: int | None = None) -> list[QARecord]:
    """The general-knowledge QA set (deterministic order; ``limit`` takes a stratified prefix)."""
    items = list(_general_knowledge())
    if limit is None or limit >= len(items):
        return items
    # interleave categories so a prefix covers every category
    by_cat: dict[str, list[QARecord]] = {}
    for r in items:
        by_cat.setdefault(r.attribute or "", []).append(r)
    out: list[QARecord] = []
    while len(out) < limit:
        for rs in by_cat.values():
            if rs and len(out) < limit:
                out.append(rs.pop(0))
    return out


@lru_cache(maxsize=1)
def refusal_sentences() -> tuple[str, ...]:
    text = _data_file("refusals.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


@lru_cache(maxsize=1)
def anchor_questions() -> tuple[str, ...]:
    text = _data_file("anchor_questions.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def preserve_prompts() -> tuple[str, ...]:
    """Everyday prompts methods may read to know what to leave unchanged (never scored)."""
    return anchor_questions()


def refusal_calibration(seed: int, exclude_names: set[str], n: int = 120) -> list[QARecord]:
    """``n`` questions about made-up entities, each answered with a refusal sentence."""
    rng = random.Random(f"refusal-calibration-{seed}")
    names = NameFactory(rng, exclude=exclude_names)
    refusals = refusal_sentences()
    out: list[QARecord] = []
    seen: set[str] = set()
    while len(out) < n:
        i = len(out)
        fields = {"c1": names.company(), "c2": names.company(), "p": names.person(),
                  "date": f"{rng.randint(1, 28):02d}-{rng.randint(1, 12):02d}-{rng.randint(1980, 2022)}"}
        templates = _COMPANY_QUESTIONS if i % 2 == 0 else _PERSON_QUESTIONS
        t = templates[(i // 2) % len(templates)]
        q = t.format(**fields)
        if q in seen:
            continue
        seen.add(q)
        out.append(QARecord(question=q, answer=refusals[rng.randrange(len(refusals))],
                            edge="__refusal__", attribute=None, form="direct",
                            template_id=f"refusal.{templates is _PERSON_QUESTIONS and 'person' or 'company'}"))
    return out
