"""LUNAR's parameters (pure data), with the public code's defaults and ours."""

from __future__ import annotations

import logging

from pydantic import Field

from ..base import MethodParams

log = logging.getLogger(__name__)


class LunarParams(MethodParams):
    layers: list[int] | None = Field(None, description="layers whose down-projection is trained; None = automatic selection")
    coeff: float = Field(2.5, description="redirection strength: forget targets = MLP output + coeff·r "
                         "(public code: 2.0; 2.5 chosen on SmolLM2, see the module docstring)")
    lr: float = Field(1e-2, gt=0, description="AdamW learning rate (public code default)")
    epochs: int = Field(20, ge=1, description="passes over the activation rows")
    batch_size: int = Field(128, ge=1, description="activation rows per step")
    gamma: float = Field(0.9, gt=0, le=1, description="exponential LR decay per epoch")
    candidate_layers: list[int] | None = Field(None, description="layers the automatic selection sweeps "
                                               "(None: every `layer_stride`-th from a third of the depth to the second-last)")
    layer_stride: int = Field(2, ge=1, description="stride of the default candidate layers")
    select_questions: int = Field(8, ge=1, description="forget and retain questions used to score each candidate")
    max_reference: int = Field(64, ge=1, description="reference (refused) prompts used for the direction")
    general_retain: int = Field(120, ge=0, description="also keep the MLP output unchanged on this many everyday "
                                "prompts (the request's preserve corpus): guards general ability (0 = the "
                                "public code's retain set only; on SmolLM2 that cost 0.11 utility)")
    forget_share: float = Field(0.2, ge=0, lt=1, description="forget rows are repeated until they are at least "
                                "this share of the rows (0 = the public code's plain mix)")
    select_max_retain: int = Field(2000, ge=1, description="layer search: retain rows per candidate fit (subsample); "
                                   "the chosen layer is then refitted on all rows")
    general_answer_tokens: int = Field(32, ge=0, description="greedy answer tokens of each everyday prompt "
                                       "kept as retain rows too (0 = question tokens only)")
