"""RMU — Representation Misdirection for Unlearning (Li et al., the WMDP paper, arXiv 2403.03218),
over the shared loop of :mod:`methods.training`.

At one layer ℓ, forget-set activations are steered toward a fixed random direction of large norm,
c·u (u uniform in [0, 1)^d, normalised), while retain-set activations are held at the frozen
model's: L = MSE(h_ℓ(x_f), c·u) + α·MSE(h_ℓ(x_r), h_ℓ^frozen(x_r)). Only the MLP output
projections of layers ℓ−2, ℓ−1, ℓ are updated (the WMDP code's ``param_ids=[6]`` = down_proj).
It is the standard representation-level baseline that LUNAR is compared with: where LUNAR moves
forget activations toward the *refusal* region, RMU scrambles them, so the model babbles.

Deviations from the WMDP code:
* ``steering_coeff`` (c) is set relative to the layer's activation scale by default —
  c = ``coeff_scale`` × mean ‖h_ℓ‖ of forget tokens on the frozen model — because the absolute
  value must be re-tuned per model (WMDP: 6.5 for Zephyr-7B, 300 for Mixtral); give
  ``steering_coeff`` to use an absolute value.
* Activations are taken on the question and answer tokens only: the chat template's shared
  system-prompt prefix has identical activations for every question, and forget and retain
  targets on it would contradict each other.
* The layer defaults to 22% of the depth (WMDP: layer 7 of 32).
"""

from __future__ import annotations

import torch
from pydantic import Field

from unlearnbench.core.arch import blocks, mlp_out, run_until
from unlearnbench.core.prompts import template_prefix_len

from .base import register_method
from .training import GradientMethod, TrainParams


class RMUParams(TrainParams):
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate")
    epochs: int = Field(20, ge=1, description="passes over the forget set (WMDP: 80 steps; PISTOL forget sets are small)")
    batch_size: int = Field(4, ge=1, description="forget examples per step (retain batch has the same size)")
    rows_per_pass: None = Field(None, description="not available: the steering coefficient is read off the first "
                                "whole forget batch")
    layer: int | None = Field(None, description="steered layer ℓ; None = round(0.22 × depth) as WMDP's 7 of 32")
    n_update_layers: int = Field(3, ge=1, description="down_proj of layers ℓ−n+1 … ℓ are trained")
    steering_coeff: float | None = Field(None, gt=0, description="absolute c; None = coeff_scale × mean ‖h_ℓ‖")
    coeff_scale: float = Field(2.0, gt=0, description="c relative to the forget activations' mean norm")
    alpha: float = Field(100.0, ge=0, description="weight of the retain activation-matching term")


def _masked_mse(h: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    per_token = ((h.float() - target.float()) ** 2).mean(-1)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


@register_method("rmu")
class RMU(GradientMethod):
    """Steer forget activations at one layer to a scaled random vector; hold retain activations."""

    Params = RMUParams
    needs_reference = True

    def _layer(self, model, params: RMUParams) -> int:
        n = len(blocks(model))
        layer = round(0.22 * n) if params.layer is None else params.layer
        if not 0 <= layer < n:
            raise ValueError(f"RMU layer {layer} out of range 0..{n - 1}")
        return layer

    def apply(self, model, tokenizer, request, params: RMUParams):
        # the steered layer ℓ and the updated layers are fixed per request, before the loop
        self.layer = self._layer(model, params)
        self.layers = list(range(max(0, self.layer - params.n_update_layers + 1), self.layer + 1))
        return super().apply(model, tokenizer, request, params)

    def trainable_parameters(self, model, params: RMUParams):
        return [mlp_out(model, l).weight for l in self.layers]

    def _acts(self, model, b, layer):
        """Block ℓ's output. The forward pass stops there: the later blocks and the 49k-way LM head
        would be computed for nothing (on SmolLM2, ℓ = 7 of 30 layers: ~4× less work)."""
        box = {}
        h = blocks(model)[layer].register_forward_hook(
            lambda mod, inp, out: box.__setitem__("h", out[0] if isinstance(out, tuple) else out))
        try:
            run_until(model, layer, input_ids=b["input_ids"], attention_mask=b["attention_mask"])
        finally:
            h.remove()
        return box["h"]

    def _mask(self, b, skip):
        mask = b["attention_mask"].float().clone()
        mask[:, :skip] = 0  # right-padded rows: the template prefix is at the start
        return mask

    def start(self, model, ctx) -> None:
        self._skip = template_prefix_len(ctx["tokenizer"])
        self._target = None  # c·u, fixed on the first forget batch

    def forget_loss(self, model, batch, ctx):
        p, ref = ctx["params"], ctx["ref"]
        net = ctx["accelerator"].unwrap_model(model)
        layer = self.layer
        if self._target is None:
            g = torch.Generator().manual_seed(ctx["seed"])
            u = torch.rand(net.config.hidden_size, generator=g)
            u = u / u.norm()
            c = p.steering_coeff
            if c is None:
                with torch.no_grad():
                    h = self._acts(ref, batch["forget"], layer).float()
                    m = self._mask(batch["forget"], self._skip)
                    c = p.coeff_scale * float((h.norm(dim=-1) * m).sum() / m.sum().clamp(min=1))
            self.steering_coeff = c
            self.target = c * u
            self._target = self.target.to(next(net.parameters()).device)
        f = batch["forget"]
        return _masked_mse(self._acts(model, f, layer), self._target, self._mask(f, self._skip))

    def retain_loss(self, model, batch, ctx):
        p, r = ctx["params"], batch["retain"]
        if not p.alpha:
            return None
        with torch.no_grad():
            frozen = self._acts(ctx["ref"], r, self.layer)
        return p.alpha * _masked_mse(self._acts(model, r, self.layer), frozen, self._mask(r, self._skip))

    def result(self, model):
        out = super().result(model)
        if out.info is not None:
            out.info.update(layers=list(self.layers), steering_coeff=self.steering_coeff)
        out.layers = list(self.layers)
        return out
