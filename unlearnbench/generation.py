"""Batched greedy generation and one teacher-forced pass, the two model calls the evaluator makes.

Both sort examples by length so padding is minimal, run under ``torch.inference_mode`` and
return results in the caller's order.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .prompts import IGNORE, collate, encode_qa, prompt


def _batches(order: list[int], size: int):
    for i in range(0, len(order), size):
        yield order[i:i + size]


@torch.inference_mode()
def generate_answers(model, tokenizer, questions: list[str], *, batch_size: int = 32,
                     max_new_tokens: int = 32, progress: bool = False, desc: str = "generate") -> list[str]:
    """Greedy answers, batched with left padding; each stops at its own EOS."""
    if not questions:
        return []
    device = next(model.parameters()).device
    prompts = [prompt(tokenizer, q) for q in questions]
    enc = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
    out: list[str | None] = [None] * len(enc)
    pad = tokenizer.pad_token_id
    for idx in tqdm(list(_batches(order, batch_size)), desc=desc, disable=not progress, leave=False):
        n = max(len(enc[i]) for i in idx)
        ids = torch.tensor([[pad] * (n - len(enc[i])) + enc[i] for i in idx], device=device)
        mask = torch.tensor([[0] * (n - len(enc[i])) + [1] * len(enc[i]) for i in idx], device=device)
        gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id,
                             temperature=None, top_p=None, top_k=None)
        for j, i in enumerate(idx):
            out[i] = tokenizer.decode(gen[j, n:], skip_special_tokens=True).strip()
    return out  # type: ignore[return-value]


@torch.inference_mode()
def teacher_forced_stats(model, tokenizer, pairs: list[tuple[str, str]], *, batch_size: int = 16,
                         top_k: int = 100, progress: bool = False) -> list[dict]:
    """Per example, from one forward pass over prompt + gold answer:

    * ``mrr`` — mean over gold answer tokens of 1/rank of the gold token in the next-token
      distribution (rank 1 = the model's top choice; ties count against the gold token);
    * ``thr`` — the fraction of gold tokens whose rank is ≤ ``top_k``;
    * ``es``  — extraction strength 1 − k/L, with k the shortest gold prefix after which
      greedy decoding reproduces the rest. Greedy decoding continues a prefix with the gold
      token exactly when the gold token is the arg-max there, so k is one past the last
      position whose arg-max differs from the gold token — exact, with no extra decoding;
    * ``nll`` — mean negative log-likelihood of the gold tokens.
    """
    if not pairs:
        return []
    device = next(model.parameters()).device
    rows = []
    for q, a in pairs:
        r = encode_qa(tokenizer, q, a)
        r["input_ids"], r["labels"] = r["input_ids"][:-1], r["labels"][:-1]  # answer tokens, no EOS
        rows.append(r)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    out: list[dict | None] = [None] * len(rows)
    for idx in tqdm(list(_batches(order, batch_size)), desc="teacher-forced", disable=not progress, leave=False):
        b = collate([rows[i] for i in idx], tokenizer.pad_token_id)
        logits = model(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device)).logits
        logits = logits[:, :-1].float()
        labels = b["labels"][:, 1:].to(device)
        for j, i in enumerate(idx):
            pos = (labels[j] != IGNORE).nonzero().squeeze(-1)
            if pos.numel() == 0:
                out[i] = {"mrr": 0.0, "thr": 0.0, "es": 0.0, "nll": float("nan")}
                continue
            lg = logits[j, pos]
            gold = labels[j, pos]
            gold_logit = lg.gather(-1, gold[:, None])
            ranks = (lg > gold_logit).sum(-1) + 1
            match = (lg.argmax(-1) == gold).tolist()
            L = len(match)
            k = L
            while k > 0 and match[k - 1]:
                k -= 1
            nll = torch.nn.functional.cross_entropy(lg, gold).item()
            out[i] = {"mrr": (1.0 / ranks.float()).mean().item(),
                      "thr": (ranks <= top_k).float().mean().item(),
                      "es": 1.0 - k / L, "nll": nll}
    return out  # type: ignore[return-value]
