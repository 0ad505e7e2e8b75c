"""Gradient baselines: GA, GD and UKL, each a loss over the shared loop in :mod:`methods.training`.

* ``ga`` — gradient ascent on the forget NLL (Jang et al., arXiv 2210.01504).
* ``gd`` — GA plus NLL descent on the retain set (gradient difference; Liu et al., arXiv 2203.12817).
* ``ukl`` — GA plus KL(reference ‖ model) on the retain set (TOFU's "KL" baseline, arXiv 2401.06121).
"""

from __future__ import annotations

from pydantic import Field

from .base import register_method
from .training import GradientMethod, TrainParams, kl_to_reference, nll, retain_nll


class GAParams(TrainParams):
    """Defaults chosen on pistol-mini × SmolLM2 (hub edge): 5 passes at 2e-5 forget the edge;
    10 passes cost 0.3 retain ROUGE-1 for GD."""

    lr: float = Field(2e-5, gt=0, description="AdamW learning rate")
    epochs: int = Field(5, ge=1, description="passes over the forget set")


class RetainParams(GAParams):
    alpha: float = Field(1.0, ge=0, description="weight of the retain term")


@register_method("ga")
class GradientAscent(GradientMethod):
    """Gradient ascent: maximise the NLL of forget answers."""

    Params = GAParams
    forget_mean = "tokens"  # the forget answers' token-mean NLL

    def forget_loss(self, model, batch, ctx):
        return -nll(model, batch["forget"])


class UKLParams(RetainParams):
    rows_per_pass: int | None = Field(4, ge=1, description="at most this many rows in one forward pass: a batch "
                                      "of 8 runs each term as two passes of 4 rows, one's backward before the "
                                      "other's forward (the same gradient up to float rounding). It keeps the "
                                      "cell under 3 × the fp32 weights on full batches (SmolLM2, batch_of_two: "
                                      "1,541-1,564 → 1,418-1,434 MiB of heap for 1.1-1.4× the apply time; "
                                      "benchmarks/notes.md); null: one pass per term, faster, up to 2% over that bound")


@register_method("gd")
class GradientDifference(GradientAscent):
    """GA + NLL descent on retain answers."""

    Params = RetainParams
    retain_mean = "tokens"

    def retain_loss(self, model, batch, ctx):
        return retain_nll(model, batch, ctx["params"].alpha)


@register_method("ukl")
class GradientAscentKL(GradientAscent):
    """GA + KL to the frozen reference model on retain answers."""

    Params = UKLParams
    needs_reference = True
    retain_mean = "tokens"  # the KL averaged over the retain answers' tokens

    def reference_outputs(self, params):
        return {"retain": "log_softmax"}

    def retain_loss(self, model, batch, ctx):
        a = ctx["params"].alpha
        return a * kl_to_reference(model, ctx["ref"], batch["retain"]) if a else None
