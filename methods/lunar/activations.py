"""What LUNAR reads off the model: mean last-token residuals, the redirection directions r_l,
and the down-projection input rows; request-independent reads are memoised per weights."""

from __future__ import annotations

import logging

import torch

from unlearnbench.core.arch import mlp_out, run_until
from unlearnbench.core.prompts import pad, prompt

log = logging.getLogger(__name__)


# ---- activations -------------------------------------------------------------------------

def _prompt_ids(tokenizer, questions: list[str]) -> list[list[int]]:
    return [tokenizer(prompt(tokenizer, q), add_special_tokens=False)["input_ids"] for q in questions]


@torch.no_grad()
def mean_last_token_residual(model, tokenizer, questions: list[str], batch_size: int = 32) -> torch.Tensor:
    """[n_layers, d] mean residual stream after each block at the last prompt token."""
    device = next(model.parameters()).device
    ids = _prompt_ids(tokenizer, questions)
    total = None
    for i in range(0, len(ids), batch_size):
        t, m = pad(ids[i:i + batch_size], tokenizer.pad_token_id, "left", device)
        hs = model(input_ids=t, attention_mask=m, output_hidden_states=True).hidden_states
        # hidden_states[l + 1] is block l's output (the last entry has the final norm applied)
        last = torch.stack([h[:, -1] for h in hs[1:]], 1).double().sum(0)
        total = last if total is None else total + last
    return (total / len(ids)).float()


def directions(model, tokenizer, reference: list[str], forget: list[str], digest: str | None = None) -> torch.Tensor:
    """r_l = mean(reference) − mean(forget), per layer: [n_layers, d] (with the model's weights
    ``digest``, the reference mean is memoised)."""
    ref = _memo(digest, ("reference", tuple(reference)), lambda: mean_last_token_residual(model, tokenizer, reference))
    return ref - mean_last_token_residual(model, tokenizer, forget)


# What LUNAR reads off the model that does not depend on the request (the reference prompts'
# mean residual, the everyday prompts' greedy answers: a third of an apply on SmolLM2) is kept
# per model weights, so a grid's cells, which all start from the same implanted model, pay once.
_MEMO: dict[tuple, object] = {}
_MEMO_SIZE = 8


def _memo(digest: str | None, key: tuple, compute):
    """``compute()``, remembered under (weights digest, key); no digest: not remembered."""
    if digest is None:
        return compute()
    full = (digest, *key)
    if full not in _MEMO:
        if len(_MEMO) >= _MEMO_SIZE:
            _MEMO.pop(next(iter(_MEMO)))
        _MEMO[full] = compute()
    value = _MEMO[full]
    return value.clone() if isinstance(value, torch.Tensor) else list(value)


@torch.no_grad()
def down_proj_rows(model, tokenizer, layers: list[int], questions: list[str], skip: int,
                   batch_size: int = 32, answers: list[str] | None = None) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, (inputs, outputs) of its down-projection at every question token (template prefix
    skipped) and, when ``answers`` are given, at every answer token after it. One forward pass
    serves every layer, so a layer sweep costs one pass, not one per layer."""
    device = next(model.parameters()).device
    ids = _prompt_ids(tokenizer, questions)
    if answers is not None:
        ids = [p + tokenizer(a, add_special_tokens=False)["input_ids"] for p, a in zip(ids, answers)]
    xs = {l: [] for l in layers}
    ys = {l: [] for l in layers}
    cap: dict[int, tuple] = {}
    hooks = [mlp_out(model, l).register_forward_hook(lambda mod, inp, out, l=l: cap.__setitem__(l, (inp[0], out)))
             for l in layers]
    try:
        for i in range(0, len(ids), batch_size):
            chunk = ids[i:i + batch_size]
            t, m = pad(chunk, tokenizer.pad_token_id, "left", device)
            run_until(model, max(layers), input_ids=t, attention_mask=m)
            n = t.shape[1]
            for l in layers:
                x, y = cap[l]
                for j, q in enumerate(chunk):
                    start = n - len(q) + skip
                    xs[l].append(x[j, start:].float())
                    ys[l].append(y[j, start:].float())
    finally:
        for h in hooks:
            h.remove()
    return {l: (torch.cat(xs[l]), torch.cat(ys[l])) for l in layers}
