"""Locate: facts and their subjects, the token a key is read at, context prefixes, default layers."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import torch

from unlearnbench.core.arch import blocks
from unlearnbench.core.prompts import DEFAULT_REFUSAL, pad, prompt

from ..base import UnlearnRequest
from .config import FactParams

log = logging.getLogger(__name__)


class SubjectError(ValueError):
    """A question in which no known entity name can be found."""


@dataclass(frozen=True)
class Fact:
    question: str
    subject: str
    target: str


# ---- subjects and facts --------------------------------------------------------------------

def find_subject(question: str, entities) -> str:
    """The span from the first entity name to the end of the last one (see the module doc). A
    dataset without entity names (an opaque original file) has no subjects: the whole question is
    the subject, so keys are read at its last token."""
    if not entities:
        return question
    spans = []
    for name in sorted(set(entities), key=len, reverse=True):
        for m in re.finditer(r"(?<!\w)" + re.escape(name) + r"(?!\w)", question):
            if not any(s <= m.start() and m.end() <= e for s, e in spans):
                spans.append((m.start(), m.end()))
    if not spans:
        raise SubjectError(f"no subject in question {question!r}: it names none of the "
                           f"{len(set(entities))} known entities (the editing methods need the entity "
                           "names of the dataset; pass them in UnlearnRequest.entities)")
    return question[min(s for s, _ in spans):max(e for _, e in spans)]


def request_facts(request: UnlearnRequest, params: FactParams, model=None, tokenizer=None) -> list[Fact]:
    """Edit mode: each edit record's question → its (new) answer. Unlearning: each forget
    question → the refusal sentence (``target: self_improve``: the model's own refusal for that
    question, so ``model`` and ``tokenizer`` are needed), questions of one subject merged
    ``query_merge`` at a time (the merged query's target is its last question's)."""
    if request.edits:
        return [Fact(r.question, find_subject(r.question, request.entities), r.answer) for r in request.edits]
    refusal = params.refusal or (request.refusal_targets[0] if request.refusal_targets else DEFAULT_REFUSAL)
    targets = [refusal] * len(request.forget)
    if params.target == "self_improve":
        if model is None or tokenizer is None:
            raise ValueError("target: self_improve needs the model and tokenizer to write the targets")
        from unlearnbench.core.targets import self_improved_refusals

        targets = self_improved_refusals(model, tokenizer, [r.question for r in request.forget], refusal,
                                         answers=[r.answer for r in request.forget])
    facts = [Fact(r.question, find_subject(r.question, request.entities), t) for r, t in zip(request.forget, targets)]
    if params.query_merge == 1:
        return facts
    by_edge: dict[str, list[Fact]] = {}
    for r, f in zip(request.forget, facts):
        by_edge.setdefault(r.edge, []).append(f)
    merged = []
    for group in by_edge.values():
        for i in range(0, len(group), params.query_merge):
            part = group[i:i + params.query_merge]
            # the merged query ends with the last question, whose subject's last token is the key
            merged.append(Fact(" ".join(f.question for f in part), part[-1].subject, part[-1].target))
    return merged


# ---- token positions ----------------------------------------------------------------------

def _render(tokenizer, context: str, question: str) -> str:
    return prompt(tokenizer, f"{context} {question}".strip())


def _lookup(tokenizer, text: str, subject: str, fact_token: str = "subject_last") -> int:
    """Where keys are read and δ is added: the subject's last token in ``text`` (ROME's rule:
    tokenise the text up to the end of the subject's last occurrence), or with ``fact_token =
    "last"`` the text's last token."""
    if fact_token == "last":
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) - 1
    end = text.rfind(subject)
    if end < 0:
        raise SubjectError(f"subject {subject!r} not in {text!r}")
    return len(tokenizer(text[:end + len(subject)], add_special_tokens=False)["input_ids"]) - 1


@torch.no_grad()
def context_prefixes(model, tokenizer, n: int, seed: int) -> list[str]:
    """``n`` short texts sampled from the model (half 5, half 10 tokens; ROME's context
    templates), prepended to questions when keys and values are computed. Always starts with ''."""
    if n == 0:
        return [""]
    device = next(model.parameters()).device
    starters = ["The", "Therefore", "Because", "I", "You", "It", "When", "In", "We", "This"]
    out = [""]
    g = torch.Generator(device="cpu").manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # sampling must not move the caller's RNG
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
        for length, k in ((5, n - n // 2), (10, n // 2)):
            if k == 0:
                continue
            seqs = [tokenizer(starters[i % len(starters)], add_special_tokens=False)["input_ids"] for i in range(k)]
            ids, mask = pad(seqs, tokenizer.pad_token_id, "left", device)
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=length,
                                 do_sample=True, top_k=5, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=None, temperature=1.0, top_p=None)
            for row in gen:
                text = tokenizer.decode(row, skip_special_tokens=True).replace("{", "").replace("}", "")
                out.append(" ".join(text.split()) + ".")
    return out


def default_layers(model, fraction: float, count: int) -> list[int]:
    """``count`` consecutive layers ending at ``fraction`` of the depth (SmolLM2: 30 layers)."""
    n = len(blocks(model))
    count = min(count, n)
    last = max(count - 1, min(n - 1, round(fraction * n)))
    return list(range(last - count + 1, last + 1))
