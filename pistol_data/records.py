"""The QA record: a superset of the original PISTOL record ``{question, answer, edge}``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

Form = Literal["direct", "paraphrase", "reverse"]
FORMS: tuple[str, ...] = ("direct", "paraphrase", "reverse")


@dataclass(frozen=True)
class QARecord:
    """One question about one attribute of one contract (edge).

    ``form`` is ``direct`` for the phrasing used by the knowledge implant, ``paraphrase`` and
    ``reverse`` for held-out phrasings. Records read from original PISTOL files carry
    ``form="direct"``, ``template_id="pistol-original"`` and the attribute inferred from the
    question's position within its edge (``None`` when it cannot be inferred).
    """

    question: str
    answer: str
    edge: str
    attribute: str | None = None
    form: str = "direct"
    template_id: str = "pistol-original"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "QARecord":
        missing = [k for k in ("question", "answer", "edge") if k not in d]
        if missing:
            raise ValueError(f"QA record is missing field(s) {missing}: {d!r}")
        return cls(
            question=str(d["question"]),
            answer=str(d["answer"]),
            edge=str(d["edge"]),
            attribute=d.get("attribute"),
            form=d.get("form", "direct"),
            template_id=d.get("template_id", "pistol-original"),
        )
