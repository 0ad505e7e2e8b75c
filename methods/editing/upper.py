"""Methods that live inside one layer (GRACE's codebook, WISE's side memory): the wrapper put
around the layer's MLP output projection, and rows optimised above that layer — the blocks below
``layer`` run once, every step runs the rest.

GRACE's value and WISE's side memory sit in block ``layer``; nothing below it changes while they
are trained, so the residual stream entering ``layer`` is computed once (no gradient) and each
optimisation step runs blocks ``layer``.. only (:func:`~unlearnbench.core.arch.starting_at`). The
NLL is read at answer positions only (the LM head is not applied to prompt tokens).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from unlearnbench.core.arch import arch_of, mlp_out, residual_before, set_mlp_out, starting_at
from unlearnbench.core.prompts import IGNORE, collate


def wrapped_mlp_out(model, layer: int, kind: type, make):
    """Block ``layer``'s MLP output projection wrapped in ``kind``: the wrapper already there (a
    sequential request keeps growing it), or ``make(projection)`` put in its place."""
    mod = mlp_out(model, layer)
    if isinstance(mod, kind):
        return mod
    wrapper = make(mod)
    set_mlp_out(model, layer, wrapper)
    return wrapper


class UpperRows:
    """Encoded rows (``input_ids``, ``labels``; right-padded here) prepared for steps above ``layer``."""

    def __init__(self, model, layer: int, rows: list[dict], pad_id: int):
        device = next(model.parameters()).device
        batch = collate([{k: r[k] for k in ("input_ids", "labels")} for r in rows], pad_id)
        ids, mask, labels = (batch[k].to(device) for k in ("input_ids", "attention_mask", "labels"))
        self.model, self.layer = model, layer
        self.skip = layer > 0 and arch_of(model).embeds_enter_residual
        if self.skip:
            self.inputs = {"inputs_embeds": residual_before(model, layer, input_ids=ids, attention_mask=mask),
                           "attention_mask": mask}
        else:
            self.inputs = {"input_ids": ids, "attention_mask": mask}
        target = labels[:, 1:]                  # the logits at t predict token t + 1
        self.r, self.t = (target != IGNORE).nonzero(as_tuple=True)
        self.gold = target[self.r, self.t]
        self.n = len(rows)

    def hidden(self) -> torch.Tensor:
        """The last hidden states of every row (blocks ``layer``.. run now)."""
        with starting_at(self.model, self.layer) if self.skip else nullcontext():
            return self.model.base_model(**self.inputs).last_hidden_state

    def nll(self) -> torch.Tensor:
        """Per-row mean NLL of the answer tokens ([n]; rows without answer tokens give 0)."""
        h = self.hidden()
        logits = self.model.get_output_embeddings()(h[self.r, self.t]).float()
        tok = torch.nn.functional.cross_entropy(logits, self.gold, reduction="none")
        total = torch.zeros(self.n, device=tok.device).index_add(0, self.r, tok)
        count = torch.zeros(self.n, device=tok.device).index_add(0, self.r, torch.ones_like(tok))
        return total / count.clamp(min=1)
