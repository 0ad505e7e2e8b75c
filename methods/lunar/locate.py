"""Layer selection: fit the edit at each candidate layer and score it with one teacher-forced pass."""

from __future__ import annotations

import logging
import random

import torch

from unlearnbench.core.arch import mlp_out
from unlearnbench.core.lm import logits_at
from unlearnbench.core.prompts import DEFAULT_REFUSAL, collate, encode_qa

from ..base import UnlearnRequest
from .config import LunarParams
from .update import _fit, _mix, _rows

log = logging.getLogger(__name__)


@torch.no_grad()
def _answer_nll(model, tokenizer, pairs, skip) -> torch.Tensor:
    """Per-example mean NLL of the answer (``skip``: the shared template prefix, kept for the caller's symmetry)."""
    rows = [encode_qa(tokenizer, q, a) for q, a in pairs]
    b = collate([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows], tokenizer.pad_token_id)
    device = next(model.parameters()).device
    b = {k: v.to(device) for k, v in b.items()}
    labels = b["labels"][:, 1:]
    mask = labels != -100
    pos = torch.nn.functional.pad(mask, (0, 1))  # logits at position t predict token t + 1
    logits = logits_at(model, b["input_ids"], b["attention_mask"], pos).float()
    nll = torch.nn.functional.cross_entropy(logits, labels[mask], reduction="none")
    rows = torch.arange(mask.shape[0], device=mask.device)[:, None].expand_as(mask)[mask]
    per_row = torch.zeros(mask.shape[0], device=nll.device).index_add_(0, rows, nll)
    return per_row / mask.sum(1)


def select_layer(model, tokenizer, request: UnlearnRequest, r: torch.Tensor, params: LunarParams, skip: int,
                 general: list[tuple[str, str]] = ()):
    """Fit the edit at each candidate layer and keep the one whose *trained* edit best turns forget
    answers into refusals while keeping retain answers and everyday answers: arg-max over layers of
    Δ log p(refusal | forget q) − Δ NLL(true answer | retain q) − Δ NLL(own answer | everyday q),
    one teacher-forced pass each."""
    n = r.shape[0]
    cands = params.candidate_layers or list(range(n - 2, n // 3 - 1, -params.layer_stride))[::-1]
    rng = random.Random(request.seed)
    fq = rng.sample(request.forget, min(params.select_questions, len(request.forget)))
    rq = rng.sample(request.retain, min(params.select_questions, len(request.retain))) if request.retain else []
    refusal = (request.refusal_targets or [DEFAULT_REFUSAL])[0]
    f_ref = [(x.question, refusal) for x in fq]
    r_true = [(x.question, x.answer) for x in rq]
    g_own = [(q, a) for q, a in rng.sample(list(general), min(params.select_questions, len(general))) if a]
    base_f = _answer_nll(model, tokenizer, f_ref, skip).mean()
    base_r = _answer_nll(model, tokenizer, r_true, skip).mean() if r_true else torch.tensor(0.0)
    base_g = _answer_nll(model, tokenizer, g_own, skip).mean() if g_own else torch.tensor(0.0)
    forget_q = [x.question for x in request.forget]
    retain_q = [x.question for x in request.retain]
    rows = _rows(model, tokenizer, cands, forget_q, retain_q, r, params.coeff, skip, general)
    scores = {}
    for layer in cands:
        w = mlp_out(model, layer).weight
        original = w.detach().clone()
        _fit([w], [_mix(rows[layer], params.forget_share, request.seed, params.select_max_retain)], params,
             request.seed)
        d_ref = base_f - _answer_nll(model, tokenizer, f_ref, skip).mean()
        d_ret = (_answer_nll(model, tokenizer, r_true, skip).mean() - base_r) if r_true else 0.0
        d_gen = (_answer_nll(model, tokenizer, g_own, skip).mean() - base_g) if g_own else 0.0
        scores[layer] = float(d_ref - d_ret - d_gen)
        with torch.no_grad():
            w.copy_(original)
    best = max(scores, key=scores.get)
    log.info("LUNAR layer scores %s → layer %d", {k: round(v, 3) for k, v in scores.items()}, best)
    return best, scores, rows[best]
