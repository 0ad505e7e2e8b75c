"""WISE's parameters (pure data): EasyEdit's Llama defaults (hparams/WISE/llama*.yaml)."""

from __future__ import annotations

from pydantic import Field

from ..editing.config import FactParams


class WiseParams(FactParams):
    layer: int | None = Field(None, ge=0, description="the block whose MLP down-projection gets a side memory "
                              "(None: 27/32 of the depth, EasyEdit's Llama layer; SmolLM2-135M: 25 of 30)")
    edit_lr: float = Field(1.0, gt=0, description="SGD learning rate of the side memory")
    weight_decay: float = Field(1e-5, ge=0, description="SGD weight decay of the side memory")
    n_iter: int = Field(70, ge=1, description="training steps per edit")
    stop_loss: float = Field(0.02, ge=0, description="stop an edit's training once its loss is below this")
    norm_constraint: float | None = Field(1.0, gt=0, description="side-memory weights stay within ± this of "
                                          "the main memory's (elementwise; None: unconstrained)")
    alpha: float = Field(5.0, ge=0, description="routing margin: out-of-scope activation score ≤ alpha")
    beta: float = Field(20.0, ge=0, description="routing margin: in-scope activation score ≥ beta")
    gamma: float = Field(10.0, ge=0, description="routing margin: in-scope − out-of-scope score ≥ gamma")
    act_ratio: float = Field(0.88, gt=0, description="routing threshold ε = act_ratio × the smallest in-scope "
                             "score a memory reached in training")
    mask_ratio: float = Field(0.2, gt=0, le=1, description="knowledge sharding: the share of the side "
                              "memory's entries a shard's random gradient mask lets train")
    save_freq: int = Field(500, ge=1, description="edits per shard (a new random mask after each)")
    merge_freq: int = Field(1000, ge=1, description="every this many edits the finished shards are merged "
                            "with TIES (a multiple of save_freq)")
    density: float = Field(0.53, gt=0, le=1, description="TIES: the share of each shard's largest changes kept")
    retrieve: bool = Field(True, description="WISE-Retrieve: keep the merged memories apart and route each "
                           "input to the one it activates most; False: WISE-Merge, one merged side memory")
    preserve_rows: int = Field(64, ge=1, description="out-of-scope prompts (the request's preserve corpus) an "
                               "edit is paired with, one per edit, cycling")
