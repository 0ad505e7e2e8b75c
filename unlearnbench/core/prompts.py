"""Turning questions into prompts (the tokenizer's chat template) and QA into training rows."""

from __future__ import annotations

import re

import torch

IGNORE = -100
# the refusal a method falls back to when its request carries none
DEFAULT_REFUSAL = "I don't know."


def prompt(tokenizer, question: str) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                             add_generation_prompt=True)
    return f"Question: {question}\nAnswer:"


def whole_sentences(text: str) -> str:
    """A generation cut after its last complete sentence, so anchors never end mid-sentence.
    (Cutting to the *first* sentence made answers terse and cost 0.1 utility.)"""
    ends = [m.end() for m in re.finditer(r"(?<!\d)[.!?](?=\s|$)", text)]
    return text[: ends[-1]].strip() if ends else text.strip()


def shared_prefix_len(seqs: list[list[int]]) -> int:
    """Length of the token prefix every sequence shares (e.g. a chat template's system prompt)."""
    if not seqs:
        return 0
    first, n = seqs[0], min(len(s) for s in seqs)
    k = 0
    while k < n and all(s[k] == first[k] for s in seqs):
        k += 1
    return k


def template_prefix_len(tokenizer) -> int:
    """Tokens every prompt shares before the question (system prompt, role markers): steering
    methods leave them out, since their activations are the same for every question."""
    return shared_prefix_len([tokenizer(prompt(tokenizer, q), add_special_tokens=False)["input_ids"]
                              for q in ("Alpha question here?", "Zebra query there?")])


def encode_qa(tokenizer, question: str, answer: str, max_length: int = 256) -> dict:
    """Token ids of prompt + answer + EOS, with labels only on the answer and EOS."""
    p = tokenizer(prompt(tokenizer, question), add_special_tokens=False)["input_ids"]
    a = tokenizer((" " if not getattr(tokenizer, "chat_template", None) else "") + answer,
                  add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = (p + a)[:max_length]
    labels = ([IGNORE] * len(p) + a)[:max_length]
    return {"input_ids": ids, "labels": labels, "prompt_len": len(p)}


def collate(rows: list[dict], pad_id: int, side: str = "right") -> dict:
    """Pad a list of encoded rows into tensors (labels padded with -100)."""
    n = max(len(r["input_ids"]) for r in rows)
    ids, labels, mask = [], [], []
    for r in rows:
        k = n - len(r["input_ids"])
        pad, lpad, mpad = [pad_id] * k, [IGNORE] * k, [0] * k
        one = [1] * len(r["input_ids"])
        if side == "right":
            ids.append(r["input_ids"] + pad); labels.append(r["labels"] + lpad); mask.append(one + mpad)
        else:
            ids.append(pad + r["input_ids"]); labels.append(lpad + r["labels"]); mask.append(mpad + one)
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "attention_mask": torch.tensor(mask)}


def pad(seqs: list[list[int]], pad_id: int, side: str = "right", device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of token lists padded on ``side``: :func:`collate` without labels."""
    b = collate([{"input_ids": s, "labels": s} for s in seqs], pad_id, side)
    return b["input_ids"].to(device), b["attention_mask"].to(device)
