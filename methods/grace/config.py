"""GRACE's parameters (pure data): EasyEdit's Llama defaults (hparams/GRACE/llama*.yaml)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..editing.config import FactParams


class GraceParams(FactParams):
    layer: int | None = Field(None, ge=0, description="the block whose MLP down-projection the codebook wraps "
                              "(None: 27/32 of the depth, EasyEdit's Llama layer; SmolLM2-135M: 25 of 30)")
    eps: float = Field(1.0, gt=0, description="initial deferral radius ε of a new key (Euclidean distance "
                       "between down-projection inputs)")
    edit_lr: float = Field(1.0, gt=0, description="Adam learning rate of a value")
    n_iter: int = Field(50, ge=1, description="value training steps per edit")
    stop_nll: float = Field(0.05, ge=0, description="stop training a value once the target's NLL is below this")
    value_init: Literal["cold", "warm"] = Field("cold", description="cold: uniform random; warm: the layer's "
                                                "own output at the key token")
    eps_expand: Literal["coverage", "moving_average"] = Field("coverage", description="a same-label query "
                                                              "near a key widens its radius to reach it; "
                                                              "moving_average also moves the key halfway")
