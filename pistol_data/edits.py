"""Counterfactual edits for the editing mode: give a contract a new attribute value.

An :class:`EditCase` changes one attribute of one contract (e.g. the governing law of ``A_B``
from Japan to Ontario). The new value is drawn by the attribute's own generator, so it looks
like every other value of that attribute; attributes computed from others (a total price) are
never edited, since the edit would contradict them. Its questions are the attribute's templates
rendered with the new value: direct and paraphrases answer the new value; a reverse question
("Which company bought <new good> from Bumun Inc?") names the new value and keeps its answer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from .attributes import attribute
from .dataset import PistolDataset
from .records import QARecord


@dataclass(frozen=True)
class EditCase:
    edge: str
    attribute: str
    old: str                       # old answer (direct form)
    new: str                       # new answer (direct form)
    records: tuple[QARecord, ...] = field(default=())  # every form, rendered with the new value

    def form(self, form: str) -> list[QARecord]:
        return [r for r in self.records if r.form == form]

    @property
    def request(self) -> QARecord:
        """The edit request: the direct question with its new answer."""
        return self.form("direct")[0]

    def to_dict(self) -> dict:
        return {"edge": self.edge, "attribute": self.attribute, "old": self.old, "new": self.new,
                "request": self.request.question}


def _derived(attr) -> bool:
    try:
        attr.draw(random.Random(0), {})
        return False
    except (KeyError, TypeError):
        return True


def counterfactual_edits(ds: PistolDataset, n: int, seed: int = 0, per_edge: int = 2) -> list[EditCase]:
    """``n`` edits on distinct (edge, attribute) pairs: at most ``per_edge`` on one contract,
    spread over ⌈n / per_edge⌉ contracts (drawn at random), so the other contracts remain to
    measure what an edit does to its neighbours and to the rest of the graph."""
    if n < 1:
        raise ValueError(f"number of edits must be ≥ 1, got {n}")
    rng = random.Random(seed)
    data = {k: d for _, _, k, d in ds.graph.edges(keys=True, data=True)}
    if not data or any("attributes" not in d for d in data.values()):
        raise ValueError("editing mode needs a generated dataset (contract attributes); "
                         "original PISTOL files only carry QA")
    direct = {(r.edge, r.attribute): r for r in ds.direct()}
    options: dict[str, list] = {}
    for e in ds.edge_ids:
        attrs = [attribute(data[e]["type"], a) for (edge, a) in direct if edge == e]
        options[e] = [a for a in attrs if a.draw is not None and not _derived(a)]
        rng.shuffle(options[e])
    if per_edge < 1:
        raise ValueError(f"per_edge must be ≥ 1, got {per_edge}")
    for e in options:
        options[e] = options[e][:per_edge]
    total = sum(len(v) for v in options.values())
    if n > total:
        raise ValueError(f"asked for {n} edits but the dataset has only {total} editable (edge, attribute) pairs "
                         f"at ≤ {per_edge} per contract")
    order = list(ds.edge_ids)
    rng.shuffle(order)
    cases: list[EditCase] = []
    for e in order:
        while options[e] and len(cases) < n:
            attr = options[e].pop()
            c = data[e]["attributes"]
            new_value, tries = c[attr.name], 0
            while str(new_value) == str(c[attr.name]):
                new_value, tries = attr.draw(rng, c), tries + 1
                if tries > 100:
                    raise RuntimeError(f"could not draw a new value for {e}.{attr.name}")
            c2 = {**c, attr.name: new_value}
            kept = {r.template_id for r in ds.for_edges([e]) if r.attribute == attr.name}
            recs = []
            for t in attr.templates:
                if t.id not in kept:
                    continue
                answer = attr.answer(c2) if t.answer_field is None else f"{c2[t.answer_field]}."
                recs.append(QARecord(question=t.text.format(**c2), answer=answer, edge=e,
                                     attribute=attr.name, form=t.form, template_id=t.id))
            cases.append(EditCase(e, attr.name, direct[(e, attr.name)].answer, attr.answer(c2), tuple(recs)))
    return cases
