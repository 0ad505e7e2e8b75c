"""The teacher-forced pass every loss and metric makes, doing only the work that is read.

A training or scoring row is ``prompt · answer``; only the answer's next-token distributions
are ever read, and every prompt starts with the same chat-template tokens (SmolLM2: a 20-token
system prompt, ~40% of a PISTOL row). :func:`answer_logits` therefore

* runs the prefix all rows share **once** (batch 1) and lets every row attend to its key/value
  cache — a causal model's activations on a prefix do not depend on what follows, and the
  gradient that flows into the shared cache is the sum over rows, exactly what the batched pass
  computes;
* applies the LM head only at the positions that predict an answer token (the head is ~20% of
  SmolLM2's FLOPs and a vocabulary-sized row per position of memory).

The result is the same as ``model(...).logits`` at those positions up to float rounding (other
matmul shapes), for values and gradients (``tests/test_lm.py``). The shared prefix is skipped
under DistributedDataParallel (two forward calls per backward) and where it would leave a row
without an input token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .prompts import IGNORE


def upcast(t: torch.Tensor) -> torch.Tensor:
    """At least float32 for a softmax (bf16 logits are upcast; float64 stays float64)."""
    return t if t.dtype == torch.float64 else t.float()


@dataclass
class AnswerLogits:
    """``logits`` [N, V] at the N positions that predict an answer token, ``gold`` [N] those tokens,
    ``row`` [N] the batch row of each, ``n_rows`` the batch size."""

    logits: torch.Tensor
    gold: torch.Tensor
    row: torch.Tensor
    n_rows: int

    def logprobs(self) -> torch.Tensor:
        """log p(gold) per answer token, [N] (at least float32)."""
        return torch.log_softmax(upcast(self.logits), -1).gather(-1, self.gold[:, None]).squeeze(-1)

    def per_row_sum(self, values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(self.n_rows, dtype=values.dtype, device=values.device).index_add(0, self.row, values)

    def per_row_count(self) -> torch.Tensor:
        return self.per_row_sum(torch.ones_like(self.gold, dtype=torch.float32))


def _shared_prefix(ids: torch.Tensor, mask: torch.Tensor, limit: int) -> int:
    """Columns every row shares, unpadded, up to ``limit``."""
    if ids.shape[0] < 2 or limit <= 0:
        return 0
    same = (ids == ids[:1]).all(0) & (mask == 1).all(0)
    diff = (~same[:limit]).nonzero()
    return int(diff[0]) if diff.numel() else limit


def _is_ddp(model) -> bool:
    return isinstance(model, torch.nn.parallel.DistributedDataParallel)


def _checkpointing(model) -> bool:
    """Activation checkpointing on and training: the backward pass re-runs each block's forward,
    which would append the rows' keys to a shared prefix cache a second time."""
    return model.training and any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


def answer_logits(model, batch: dict, share_prefix: bool = True) -> AnswerLogits:
    """Logits at the answer positions of a right-padded batch (``input_ids``, ``attention_mask``,
    ``labels`` with ``IGNORE`` outside answers): see the module doc."""
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    device = ids.device
    target = labels[:, 1:]                      # logits at t predict token t + 1
    r, t = (target != IGNORE).nonzero(as_tuple=True)
    first = int(t.min()) if t.numel() else ids.shape[1] - 1
    k = _shared_prefix(ids, mask, first) if share_prefix and not _is_ddp(model) and not _checkpointing(model) else 0
    cols = torch.unique(t)                      # positions read in some row, sorted
    kw = {}
    if k > 0:
        cache = model(input_ids=ids[:1, :k], attention_mask=mask[:1, :k], use_cache=True).past_key_values
        cache.batch_repeat_interleave(ids.shape[0])
        kw = {"past_key_values": cache, "use_cache": True}
    out = model(input_ids=ids[:, k:], attention_mask=mask, logits_to_keep=(cols - k).to(device), **kw)
    where = torch.searchsorted(cols, t)         # column of each (row, t) among the kept ones
    return AnswerLogits(out.logits[r, where], target[r, t], r, ids.shape[0])


def answer_nll(model, batch: dict) -> torch.Tensor:
    """Mean next-token NLL over every answer token of the batch (what ``model(..., labels=).loss`` is)."""
    a = answer_logits(model, batch)
    return torch.nn.functional.cross_entropy(upcast(a.logits), a.gold)


def logits_at(model, input_ids, attention_mask, positions: torch.Tensor) -> torch.Tensor:
    """Logits only where they are needed (``positions``: a boolean [batch, seq] mask): the base
    model's hidden states, then the LM head on the selected positions — not on every token."""
    h = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return model.get_output_embeddings()(h[positions])
