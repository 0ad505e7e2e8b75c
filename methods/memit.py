"""MEMIT: Mass-Editing Memory in a Transformer (Meng et al., arXiv 2210.07229; code kmeng01/memit).

All facts at once, the change spread over a range of layers R = {l₁..L}:

1. z_i = h_L + δ_i: the residual stream after block L at fact i's subject token, plus a residual
   optimised so the model says the target (:func:`~methods.editing.compute_values`, δ on the block
   output);
2. for each l in R, in order: keys K_l (down-projection inputs at the subject tokens, averaged
   over context prefixes, on the model as already edited at the earlier layers), the remaining
   residual R_l = (z − h_L) / (L − l + 1), and

       ΔW_l = R_l K_lᵀ (λ C_l + K_l K_lᵀ)⁻¹

   with C_l the key second moment and λ = ``mom2_update_weight``.

:class:`methods.alphaedit.AlphaEdit` reuses this loop with a projected update (``_solve``).

Deviations: default layers are the five ending at 27% of the depth (SmolLM2-135M: 4–8, as
EasyEdit's Llama configs), δ clamp 4 and weight decay 1e-3 (EasyEdit's Llama values); λ = 150
instead of 15000. C here is the second moment over a small in-domain corpus whose retain
questions share every template with the edited ones, so their keys point almost the same way as
the edited keys: with λ = 15000 the preservation term won and MEMIT wrote 3 of 10 counterfactual
edits on SmolLM2 (λ = 1500: 8/10, λ = 150: 10/10, with general-knowledge utility −0.02).
Shared deviations in :mod:`methods.editing`.
"""

from __future__ import annotations

import logging

import torch
from pydantic import Field

from .base import UnlearnRequest, register_method
from .editing import (
    EditMethod,
    EditParams,
    add_to_weight,
    compute_keys,
    compute_values,
    context_prefixes,
    default_layers,
    key_second_moment,
)

log = logging.getLogger(__name__)


class MemitParams(EditParams):
    layers: list[int] | None = Field(None, description="edited layers, ascending (None: five ending at 27% of depth)")
    mom2_update_weight: float = Field(150.0, gt=0, description="λ: weight of the preserved keys' second moment "
                                      "(the paper's 15000 wrote 3 of 10 SmolLM2 edits; see the module doc)")


@register_method("memit")
class Memit(EditMethod):
    """MEMIT: many facts at once, a least-squares update spread over several layers."""

    Params = MemitParams

    def _layers(self, model, params) -> list[int]:
        layers = sorted(params.layers) if params.layers else default_layers(model, 0.27, 5)
        return layers

    def _solve(self, layer: int, keys: torch.Tensor, resid: torch.Tensor, c: torch.Tensor, params) -> torch.Tensor:
        """ΔW [hidden, d_ff] from keys [n, d_ff] and residuals [n, hidden] (float64)."""
        a = params.mom2_update_weight * c + keys.T @ keys
        return torch.linalg.solve(a, keys.T @ resid).T

    def _after(self, layer: int, keys: torch.Tensor) -> None:
        """Hook for sequential-editing state (AlphaEdit's cache of earlier keys)."""

    def apply(self, model, tokenizer, request: UnlearnRequest, params: MemitParams):
        layers = self._layers(model, params)
        facts = self.facts(model, tokenizer, request, params)
        prefixes = context_prefixes(model, tokenizer, params.n_prefixes, request.seed)
        stats = key_second_moment(model, tokenizer, layers, request, params, progress=request.progress)
        _, z = compute_values(model, tokenizer, facts, layers[-1], "block", prefixes, params,
                              progress=request.progress)
        z = z.double().cpu()
        norms = []
        for i, layer in enumerate(layers):
            keys, cur = compute_keys(model, tokenizer, [layer], facts, prefixes, residual_layer=layers[-1],
                                     fact_token=params.fact_token)
            keys, cur = keys[layer].double().cpu(), cur.double().cpu()
            resid = (z - cur) / (len(layers) - i)
            dw = self._solve(layer, keys, resid, stats[layer].double(), params)
            add_to_weight(model, layer, dw)
            self._after(layer, keys)
            norms.append(float(dw.norm()))
        log.info("%s: %d facts over layers %s", self.name, len(facts), layers)
        return self.result(model, {"layers": layers, "edits": len(facts), "update_norms": norms})
