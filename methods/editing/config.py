"""The editing family's parameters (pure data): ROME, MEMIT and AlphaEdit extend :class:`EditParams`;
GRACE and WISE, which share only the request → facts step, extend :class:`FactParams`."""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import Field

from ..base import MethodParams

log = logging.getLogger(__name__)


class FactParams(MethodParams):
    """What every editing method (locate-then-edit, GRACE, WISE) reads to turn a request into facts."""

    query_merge: int = Field(1, ge=1, description="editing-as-unlearning's query merging (arXiv 2505.19855): "
                             "this many questions of one subject pair are joined into one edit request "
                             "(1 = off)")
    refusal: str | None = Field(None, description="the refusal target in unlearning mode "
                                "(None: the request's first refusal sentence)")
    target: Literal["refusal", "self_improve"] = Field("refusal", description="unlearning mode's target: the "
                                                       "refusal sentence, or self_improve — a refusal the model "
                                                       "writes itself for each question from a few in-context "
                                                       "examples (arXiv 2505.19855), cached")


class EditParams(FactParams):
    """Hyper-parameters every locate-then-edit method shares (ROME's / EasyEdit's Llama defaults)."""

    v_lr: float = Field(0.5, gt=0, description="Adam learning rate of the value residual δ")
    v_steps: int = Field(25, ge=1, description="optimisation steps for δ")
    v_weight_decay: float = Field(1e-3, ge=0, description="weight of ‖δ‖²/‖v₀‖² in the value loss (EasyEdit's "
                                  "Llama value; ROME used 0.5 on GPT-2 XL, which left SmolLM2 edits unfinished)")
    clamp_norm_factor: float = Field(4.0, gt=0, description="‖δ‖ ≤ this × ‖v₀‖")
    kl_factor: float = Field(0.0625, ge=0, description="weight of the KL term on '{subject} is a'")
    v_chunk_tokens: int | None = Field(1024, ge=1, description="MEMIT/AlphaEdit's batched value optimisation "
                                       "runs its facts in groups of at most this many token positions, "
                                       "gradients summed per step: the same δ, one group's activations in "
                                       "memory (~1 MiB a position on SmolLM2-135M; None: every fact in one batch)")
    n_prefixes: int = Field(5, ge=0, description="context prefixes sampled from the model (keys and values "
                            "are averaged over them and the bare question)")
    stats_samples: int = Field(64, ge=0, description="texts sampled from the model for the key statistics")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="bf16 autocast for the value "
                                                       "optimisation's forward passes (auto: bf16 on CUDA, fp32 on CPU)")
    fact_token: Literal["subject_last", "last"] = Field("subject_last", description="where keys are read and "
                                                        "δ is added: the subject's last token (ROME) or the prompt's last token")
