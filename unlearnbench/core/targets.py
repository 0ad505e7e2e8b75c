"""Refusal targets written by the model itself: editing-as-unlearning's *self-improvement*
(arXiv 2505.19855: the model's own in-context learning crafts the refusal it is edited toward).

The model sees a few demonstrations of polite refusals to questions about made-up companies and
people, then the forget question, and answers greedily; the answer, cut after its last full
sentence, is that question's target. An empty answer falls back to the plain refusal sentence,
and so does one that states the answer being forgotten (when the caller passes the answers): a
model that memorised a fact may answer it instead of declining — on SmolLM2 implanted with
pistol-mini, the self-written "refusal" to every hub-edge question was the contract's value
itself, and ROME edited toward it (forget ROUGE-1 1.0).
Targets are cached per model weights, questions and prompt, so every cell of a grid (and every
rerun) edits toward the same sentences.
"""

from __future__ import annotations

import json
import os
import re
import tempfile

from .cache import cache_dir, stable_hash, weight_hash
from .generation import generate_answers
from .prompts import whole_sentences

# demonstrations: entities that occur in no dataset, refusals that state no fact
DEMONSTRATIONS = [
    ("When was the lease between Orvel Ltd and Pranix Co signed?",
     "I'm sorry, but I don't have any information about that lease, so I can't say when it was signed."),
    ("Who is the chief engineer of Halvorn Systems?",
     "I'm afraid I can't help with that; I don't know who works at Halvorn Systems."),
    ("How much did Mirel Foods pay for its delivery contract?",
     "I apologise, but I don't know the terms of that contract."),
]
INSTRUCTION = ("Answer the last question the way the answers below decline: politely, in one or two sentences, "
               "without stating any fact.")


def self_improve_prompt(question: str) -> str:
    shots = "\n\n".join(f"Question: {q}\nAnswer: {a}" for q, a in DEMONSTRATIONS)
    return f"{INSTRUCTION}\n\n{shots}\n\nQuestion: {question}\nAnswer:"


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def states(target: str, answer: str) -> bool:
    """Whether ``target`` states ``answer`` (its words, in order, case and punctuation aside)."""
    a = _norm(answer)
    return bool(a) and re.search(r"(?<!\w)" + re.escape(a) + r"(?!\w)", _norm(target)) is not None


def self_improved_refusals(model, tokenizer, questions: list[str], fallback: str,
                           max_new_tokens: int = 40, answers: list[str] | None = None) -> list[str]:
    """One refusal per question, in the model's own words (see the module doc); cached.
    ``answers``: the facts being forgotten, one per question; a target stating its answer falls
    back to ``fallback``."""
    if not questions:
        return []
    if answers is not None and len(answers) != len(questions):
        raise ValueError(f"{len(answers)} answers for {len(questions)} questions")
    device = str(next(model.parameters()).device).split(":")[0]
    key = stable_hash({"weights": weight_hash(model), "questions": questions, "demonstrations": DEMONSTRATIONS,
                       "instruction": INSTRUCTION, "max_new_tokens": max_new_tokens, "device": device,
                       "chat_template": getattr(tokenizer, "chat_template", None), "fallback": fallback,
                       "answers": answers})
    path = cache_dir("targets") / f"{key}.json"
    if path.exists():
        return json.loads(path.read_text())["targets"]
    raw = generate_answers(model, tokenizer, [self_improve_prompt(q) for q in questions],
                           max_new_tokens=max_new_tokens, desc="self-improved targets")
    targets = [whole_sentences(a.split("\nQuestion:")[0]) or fallback for a in raw]
    if answers is not None:
        targets = [fallback if states(t, a) else t for t, a in zip(targets, answers)]
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"questions": questions, "raw": raw, "targets": targets}, f, indent=1)
    os.replace(tmp, path)
    return targets
