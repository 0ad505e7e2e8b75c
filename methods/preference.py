"""Preference-based unlearning: IdK-DPO and NPO over the shared loop.

* ``dpo`` — DPO (Rafailov et al., arXiv 2305.18290) with the refusal as the preferred answer
  and the true answer as the rejected one, as TOFU's "IdK" variant (arXiv 2401.06121);
  β = 0.1; plus retain NLL weighted by ``alpha`` (open-unlearning's default form).
* ``npo`` — Negative Preference Optimisation (Zhang et al., arXiv 2404.05868):
  L = −(2/β)·log σ(−β·(log π(y|x) − log π_ref(y|x))) on forget answers, + ``alpha``·retain NLL.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from unlearnbench.core.lm import backward_apart, recompute_apart

from .base import register_method
from .training import GradientMethod, TrainParams, retain_nll, sequence_logprob


class PrefParams(TrainParams):
    lr: float = Field(2e-5, gt=0, description="AdamW learning rate")
    epochs: int = Field(5, ge=1, description="passes over the forget set")
    beta: float = Field(0.1, gt=0, description="inverse temperature of the preference loss")
    alpha: float = Field(1.0, ge=0, description="weight of the retain NLL term")


def _log_ratio(model, ref, b, per_token: bool = False, apart=None):
    """log π(y|x) − log π_ref(y|x) per sequence (``per_token``: averaged over its answer tokens);
    the reference is never differentiated. ``apart(fn)``, if given, computes the model's term from
    ``fn`` (core.lm's backward_apart or recompute_apart)."""
    with torch.no_grad():
        ref_lp = sequence_logprob(ref, b, per_token)

    def policy():
        return sequence_logprob(model, b, per_token)

    return (policy() if apart is None else apart(policy)) - ref_lp


def npo_loss(model, ref, b, beta: float, per_token: bool = False) -> torch.Tensor:
    """NPO's forget loss −(2/β)·mean log σ(−β·log-ratio), per sequence; ``per_token`` uses the
    length-normalised log-ratio (the scale of a per-token NLL)."""
    return -(2.0 / beta) * F.logsigmoid(-beta * _log_ratio(model, ref, b, per_token)).mean()


class DPOParams(PrefParams):
    lr: float = Field(1e-5, gt=0, description="AdamW learning rate (2e-5 over-refused retain questions on SmolLM2)")
    target: Literal["refusal", "self_improve"] = Field("refusal", description="the preferred answer: the request's "
                                                       "refusal sentences, or self_improve — a refusal the model "
                                                       "writes itself per question (arXiv 2505.19855), cached")
    recompute_preferred: bool = Field(True, description="keep one answer's activations at a time: the preferred "
                                      "answer's pass runs without a graph and again in the backward, after the "
                                      "rejected one's graph is released (one more forward pass on forget rows; the "
                                      "same gradient up to float rounding)")
    rows_per_pass: int | None = Field(4, ge=1, description="at most this many rows in one forward pass: a batch "
                                      "of 8 runs each term as two passes of 4 rows, one's backward before the "
                                      "other's forward (the same gradient up to float rounding). With "
                                      "recompute_preferred it keeps the cell under 3 × the fp32 weights on full "
                                      "batches (SmolLM2, batch_of_two: 1,584-1,621 → 1,433-1,439 MiB of heap for "
                                      "1.3-1.4× the apply time; benchmarks/notes.md); null and false: one pass each, "
                                      "faster, 1-5% over that bound")


@register_method("dpo")
class IdkDPO(GradientMethod):
    """DPO preferring a refusal over the true answer on forget questions."""

    Params = DPOParams
    needs_reference = True
    forget_mean, retain_mean = "rows", "tokens"  # the loss per (forget, refusal) pair; the retain NLL

    def reference_outputs(self, params):
        return {"forget": "logprobs", "forget_idk": "logprobs"}

    def refusals(self, model, tokenizer, request, params):
        if params.target != "self_improve":
            return None
        from unlearnbench.core.prompts import DEFAULT_REFUSAL
        from unlearnbench.core.targets import self_improved_refusals

        fallback = request.refusal_targets[0] if request.refusal_targets else DEFAULT_REFUSAL
        return self_improved_refusals(model, tokenizer, [r.question for r in request.forget], fallback,
                                      answers=[r.answer for r in request.forget])

    def forget_loss(self, model, batch, ctx):
        p, ref = ctx["params"], ctx["ref"]
        win, lose = batch["forget_idk"], batch["forget"]
        # the preferred answer's backward apart from the rejected one's: no buffered second set of
        # weight gradients (core.lm.backward_apart); with recompute_preferred its activations are not
        # kept either but made again in the backward, after the rejected answer's are released
        apart = (lambda fn: recompute_apart(model, fn)) if p.recompute_preferred else \
            (lambda fn: backward_apart(model, fn()))
        margin = _log_ratio(model, ref, win, apart=apart) - _log_ratio(model, ref, lose)
        return -F.logsigmoid(p.beta * margin).mean()

    def retain_loss(self, model, batch, ctx):
        return retain_nll(model, batch, ctx["params"].alpha)


@register_method("npo")
class NPO(GradientMethod):
    """Negative preference optimisation on forget answers + retain NLL."""

    Params = PrefParams
    needs_reference = True
    forget_mean, retain_mean = "rows", "tokens"

    def reference_outputs(self, params):
        return {"forget": "logprobs"}

    def forget_loss(self, model, batch, ctx):
        return npo_loss(model, ctx["ref"], batch["forget"], ctx["params"].beta)

    def retain_loss(self, model, batch, ctx):
        return retain_nll(model, batch, ctx["params"].alpha)
