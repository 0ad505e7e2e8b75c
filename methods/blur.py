"""BLUR — Bi-Level UnleaRning (Reisizadeh et al., arXiv 2506.08164; public code
OptimAI-Lab/BLURLLMUnlearning), over the shared loop of :mod:`methods.training`.

The forget problem has priority (lower level), the retain problem is solved within it (upper
level). Every optimiser step computes the forget gradient g_f and the retain gradient g_r
(two backward passes) and steps along

    d = g_r + (γ − ⟨g_r, g_f⟩ / ‖g_f‖²) · g_f          (d = g_r when ‖g_f‖ = 0)

so ⟨d, g_f⟩ = γ‖g_f‖² whatever g_r says: the forget loss always falls at the rate γ sets, and
d is the point of that hyperplane closest to g_r (retain progress is kept where it does not
fight forgetting). Inner products run over all trainable parameters at once.

* ``blur-npo`` — forget loss NPO (the paper's main variant), retain loss NLL (or KL).
* ``blur-ga`` — forget loss −NLL (gradient ascent), retain loss NLL (or KL).

Two things done on purpose differently from the public code:
* g_f and g_r are accumulated over every micro-batch of a gradient-accumulation step, and the
  projection is applied once to the accumulated gradients (projecting per micro-batch and
  summing is not the projection of the sum).
* With several processes both are all-reduced (averaged) *before* the inner products: the losses
  run on the unwrapped module so DDP's own gradient averaging (which would average d, not
  project the averaged gradients) is bypassed.

Deviations: the NLL terms are the mean over sequences of per-sequence mean token NLL (so
micro-batch accumulation equals one large batch exactly); NPO's log-ratio is formed from
answer log-probabilities (the public code forms it from raw logits); gradient clipping
(``max_grad_norm``) applies to d.

Memory (``low_memory``, default on). Holding g_f and g_r at once is a fourth copy of the trained
weights beside AdamW's two moments and the step's gradient. The step needs g_r only through the
scalar ⟨g_r, g_f⟩ and the sum d, both linear in g_r, so with ``low_memory`` the retain term's
backward runs twice with hooks on the trained weights that consume each weight's gradient as it
arrives and free it: the first pass adds up ⟨g_r, g_f⟩ (g_r never held), then g_f's buffers are
scaled by c = γ − ⟨g_r, g_f⟩/‖g_f‖² and the second pass adds g_r into them, leaving d. The same d
(up to float rounding) in three copies of the trained weights instead of four, for one more
forward and backward of the retain batch per step. ``rows_per_pass`` (default null) runs each term
as passes of that many rows, each weight's gradient added into the step's buffer as it arrives
(the shared prefix's share split off): SmolLM2, the hub's four edges, blur-npo 1,544 → 1,495 MiB
of heap (under 3 × the fp32 weights) for 1.74× the apply time with ``rows_per_pass: 4``, the same DS
(``benchmarks/notes.md``, 2026-12-07 night; ``benchmarks/results/blur_rows.md``).

Scale of the forget loss. γ compares ⟨g_r, g_f⟩ with ‖g_f‖², so what γ = 1 means depends on
how large g_f is next to g_r. NPO on *summed* sequence log-probabilities (as ``npo``) has a
gradient about answer-length times that of the per-token retain NLL, and BLUR's step is then
NPO's step plus a small retain term: on SmolLM2 × pistol-mini, γ = 1 gave exactly npo's DS
(75.0 / 63.9, hub / independent edge). ``blur-npo`` therefore uses NPO on the per-token mean
log-ratio by default (``forget_per_token``; the public code's NPO term and retain NLL are both
token means too), and lr 1e-5. Sweep on the hub / independent edge (one seed, DS):
lr 2e-5 sequence-sum 72.2 / 63.9 (= npo) · lr 2e-5 per-token 66.7 / 60.7 · lr 1e-5
sequence-sum 44.4 / 42.3 · lr 1e-5 per-token **27.8 / 32.4** · 3 epochs 50.0 / 44.9 ·
retain KL 75.0 / 63.9; ``npo`` itself at lr 1e-5: 47.2 / 42.3. ``blur-ga`` keeps the shared
defaults (its GA loss is a per-token mean already).
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch
from pydantic import Field

from unlearnbench.core.lm import split_prefix_backward

from .base import register_method
from .preference import PrefParams, npo_loss
from .training import DivergenceError, GradientMethod, kl_to_reference, row_chunks, sequence_mean_nll


class BLURParams(PrefParams):
    gamma: float = Field(1.0, gt=0, description="forget-descent rate: ⟨d, g_f⟩ = γ‖g_f‖²")
    retain_loss: Literal["nll", "kl"] = Field("nll", description="retain objective: NLL of retain answers, "
                                              "or KL to the frozen model on them")
    alpha: float = Field(1.0, ge=0, description="unused by BLUR (no weighted sum); kept for a common "
                         "parameter set with npo")
    low_memory: bool = Field(True, description="never hold g_r: the retain backward runs twice, first for "
                             "<g_r, g_f>, then adding g_r into g_f's scaled buffers (three copies of the trained "
                             "weights with AdamW instead of four; one more retain forward and backward a step)")
    rows_per_pass: int | None = Field(None, ge=1, description="at most this many rows in one forward pass: each "
                                      "term runs as passes of this many rows, each weight's gradient added into "
                                      "the step's buffer as it arrives (no second set of gradients alive), so one "
                                      "chunk's activations are alive at a time (the same d up to float rounding). "
                                      "null = each term's whole batch in one pass")


class BlurNPOParams(BLURParams):
    """Defaults chosen on pistol-mini × SmolLM2 (sweep in the module docstring)."""

    lr: float = Field(1e-5, gt=0, description="AdamW learning rate (2e-5 over-forgot: retain R1 0.33 on the hub edge)")
    forget_per_token: bool = Field(True, description="NPO on the per-token mean log-ratio (False: the sequence sum, "
                                   "as npo); puts the forget loss on the retain NLL's per-token scale, so γ = 1 "
                                   "weighs the two alike")


def _dot(a: torch.Tensor, b: torch.Tensor, chunk: int = 1 << 22) -> float:
    """⟨a, b⟩ with float64 products and sums, in chunks (no tensor-sized float64 copies)."""
    a, b = a.reshape(-1), b.reshape(-1)
    return sum(float((a[i:i + chunk].double() * b[i:i + chunk].double()).sum()) for i in range(0, a.numel(), chunk))


def bilevel_direction(gf: list[torch.Tensor], gr: list[torch.Tensor], gamma: float) -> list[torch.Tensor]:
    """d = g_r + (γ − ⟨g_r, g_f⟩/‖g_f‖²)·g_f over lists of per-parameter gradients, written into
    ``gr``'s tensors (one gradient-sized buffer less at the step's peak); returns them."""
    ff = sum(_dot(f, f) for f in gf)
    if ff == 0.0:
        return gr
    c = gamma - sum(_dot(r, f) for r, f in zip(gr, gf)) / ff
    for r, f in zip(gr, gf):
        r.add_(c * f)  # r + (c·f), as the out-of-place form rounds it
    return gr


class _BiLevel(GradientMethod):
    Params = BLURParams
    needs_reference = True
    own_gradients = True
    own_row_chunks = True

    def reference_outputs(self, params):
        return {"retain": "log_softmax"} if params.retain_loss == "kl" else {}

    def forget_loss(self, model, batch, ctx) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def retain_loss(self, model, batch, ctx) -> torch.Tensor:
        if ctx["params"].retain_loss == "kl":
            return kl_to_reference(model, ctx["ref"], batch["retain"])
        return sequence_mean_nll(model, batch["retain"])

    def loss_terms(self, model, batch, ctx):
        """g_f and g_r are separate gradients: each term is run (on the unwrapped module: DDP's own
        averaging would average d) and differentiated alone, one sub-batch's activations at a time."""
        net, params = ctx["accelerator"].unwrap_model(model), ctx["params"]
        self._n += 1  # micro-batches of the optimiser step (chunks of one are not counted apart)

        # chunks go through loss.backward() (backward()): the shared prefix's share split off, so no
        # second set of weight gradients is buffered until it arrives (core.lm._PrefixBoundary)
        split = split_prefix_backward if params.rows_per_pass else contextlib.nullcontext

        def part(name, fn, chunk, weight):
            def run():
                self._part = name
                with split():
                    out = fn(net, chunk, ctx)
                return out if weight == 1.0 else out * weight
            return run

        forget = [part("gf", self.forget_loss, c, w) for c, w in row_chunks(batch, ("forget",), "rows",
                                                                             params.rows_per_pass)]
        if "retain" not in batch:
            return forget
        retain = row_chunks(batch, ("retain",), self._retain_mean(params), params.rows_per_pass)
        if params.low_memory:  # run twice once g_f is complete (finish_gradients)
            self._retain.extend(retain)
            return forget
        return forget + [part("gr", self.retain_loss, c, w) for c, w in retain]

    @staticmethod
    def _retain_mean(params) -> str:
        return "tokens" if params.retain_loss == "kl" else "rows"  # kl_to_reference / sequence_mean_nll

    def start(self, model, ctx) -> None:
        self._part, self._acc = None, None  # which term runs; g_f / g_r accumulated over a step
        self._retain = []  # low_memory: the step's retain (chunk, weight) pairs, run in finish_gradients
        self._n = 0  # micro-batches in the step so far
        self._params = [p for p in ctx["accelerator"].unwrap_model(model).parameters() if p.requires_grad]

    def backward(self, accelerator, model, loss, batch, ctx) -> None:
        """Accumulates g_f or g_r (over the micro-batches of an optimiser step)."""
        which, self._part = self._part, None
        params = self._params
        if self._acc is None:
            self._acc = {"gf": None, "gr": None}
        acc = self._acc
        if ctx["params"].rows_per_pass:  # chunks: added up weight by weight, never a second set alive
            bufs = acc[which] if acc[which] is not None else [None] * len(params)

            def add(i, g):
                if bufs[i] is None:
                    bufs[i] = g if g.is_contiguous() else g.contiguous()
                else:
                    bufs[i].add_(g)

            for p in params:
                p.grad = None
            self._consume_backward(loss, add)
            acc[which] = [torch.zeros_like(p) if b is None else b for p, b in zip(params, bufs)]
            return
        gs = torch.autograd.grad(loss, params, allow_unused=True)
        # laid out as the weights (autograd.grad hands back what the last node made; the fused AdamW
        # reads a gradient in its weight's layout)
        gs = [torch.zeros_like(p) if g is None else g.contiguous() for p, g in zip(params, gs)]
        if acc[which] is None:
            acc[which] = gs
        else:
            for a, g in zip(acc[which], gs):
                a.add_(g)

    def _consume_backward(self, loss: torch.Tensor, take) -> None:
        """``loss.backward()`` with each trained weight's gradient handed to ``take(i, grad)`` as it
        arrives (a weight used by a split-off shared prefix and the rows arrives in two shares) and
        freed from the weight."""
        def hook(i):
            def consume(p):
                take(i, p.grad)
                p.grad = None
            return consume

        handles = [p.register_post_accumulate_grad_hook(hook(i)) for i, p in enumerate(self._params)]
        try:
            loss.backward()
        finally:
            for h in handles:
                h.remove()

    def _retain_backward(self, accelerator, model, batches: list, ctx, take) -> float:
        """The retain term's forward and backward on each (chunk, weight) pair of the step, each trained
        weight's gradient handed to ``take(i, grad)`` as it arrives and freed: no set of g_r is ever
        held. Returns the summed (weighted) loss."""
        net = accelerator.unwrap_model(model)
        total = 0.0
        for batch, weight in batches:
            with accelerator.autocast(), split_prefix_backward():  # each weight's share freed as it comes
                loss = self.retain_loss(net, batch, ctx)
                if weight != 1.0:
                    loss = loss * weight
            if not torch.isfinite(loss):
                raise DivergenceError(f"{self.name}: retain loss became {loss.item()}")
            self._consume_backward(loss, take)
            total += loss.item()
        return total

    def _finish_low_memory(self, accelerator, model, ctx) -> float | None:
        """d = Σg_r + c·Σg_f (then over the micro-batches' count) in g_f's buffers, g_r never held:
        c from ⟨Σg_r, Σg_f⟩ (first retain pass, per weight in parameter order), then the second pass
        adds g_r into the scaled buffers. Returns the retain losses of the step."""
        acc, self._acc = self._acc, None
        batches, self._retain = self._retain, []
        params, gf, n = self._params, acc["gf"], self._n
        self._n = 0
        world = accelerator.num_processes
        if world > 1:  # g_f averaged before the inner products, as in the default path
            for g in gf:
                torch.distributed.all_reduce(g)
                g.div_(world)
        ff = sum(_dot(f, f) for f in gf)
        lost = None
        if ff == 0.0:  # d = g_r
            c = 0.0
        else:
            dots = [0.0] * len(params)

            def dot(i, g):
                dots[i] += _dot(g, gf[i])

            lost = self._retain_backward(accelerator, model, batches, ctx, dot) if batches else None
            rf = sum(dots)
            if world > 1:
                t = torch.tensor(rf, dtype=torch.float64, device=gf[0].device)
                torch.distributed.all_reduce(t)
                rf = float(t) / world
            c = ctx["params"].gamma - rf / ff
        for f in gf:
            f.mul_(c)
        if batches:
            def add(i, g):
                gf[i].add_(g)

            second = self._retain_backward(accelerator, model, batches, ctx, add)
            lost = second if lost is None else lost
            if world > 1:
                for g in gf:
                    torch.distributed.all_reduce(g)
                    g.div_(world)
        if n > 1:
            for g in gf:
                g.div_(n)
        for p, g in zip(params, gf):
            p.grad = g
        return lost

    def finish_gradients(self, accelerator, model, ctx) -> float | None:
        """The step's direction d from the accumulated (and, over processes, averaged) g_f and g_r,
        written into g_r's buffers (``low_memory``: g_f's) and handed to the optimiser as the gradient."""
        if ctx["params"].low_memory:
            return self._finish_low_memory(accelerator, model, ctx)
        acc, self._acc = self._acc, None
        params = self._params
        gf = acc["gf"]
        gr = acc["gr"] if acc["gr"] is not None else [torch.zeros_like(p) for p in params]
        n, self._n = self._n, 0
        if n > 1:
            for g in gf + gr:
                g.div_(n)
        if accelerator.num_processes > 1:
            for g in gf + gr:
                torch.distributed.all_reduce(g)
                g.div_(accelerator.num_processes)
        d = bilevel_direction(gf, gr, ctx["params"].gamma)
        del gf, acc
        for p, g in zip(params, d):
            p.grad = g


@register_method("blur-npo")
class BlurNPO(_BiLevel):
    """Bi-level unlearning with the NPO forget loss (the paper's main variant)."""

    Params = BlurNPOParams

    def reference_outputs(self, params):
        return {**super().reference_outputs(params), "forget": "logprobs"}

    def forget_loss(self, model, batch, ctx):
        return npo_loss(model, ctx["ref"], batch["forget"], ctx["params"].beta, ctx["params"].forget_per_token)


@register_method("blur-ga")
class BlurGA(_BiLevel):
    """Bi-level unlearning with the gradient-ascent forget loss."""

    def forget_loss(self, model, batch, ctx):
        return -sequence_mean_nll(model, batch["forget"])
