"""Less activation memory in training, for the same numbers: a gated MLP that keeps 2 of its 4
wide activations for the backward pass, and RMSNorms that keep only their input.

A Llama-family MLP computes ``down(silu(gate(x)) * up(x))``. Autograd keeps, per token, four
tensors of the MLP's width for the backward pass: ``g = gate(x)`` (for SiLU's gradient),
``silu(g)`` and ``u = up(x)`` (for the product's), and the product itself (for ``down``'s weight
gradient) — about half of a SmolLM2 block's saved activations. :class:`_GatedDown` keeps only
``g`` and ``u`` and recomputes ``silu(g)`` and the product in the backward pass (two elementwise
operations per token, no matmul). Forward and backward run the same kernels on the same values
as autograd does (``silu``, ``silu_backward``, the products, ``down``'s two ``mm``), so losses and
gradients are bit-identical (``tests/test_lean.py``). Each RMSNorm runs under a non-reentrant
checkpoint of itself alone: its normalised copy is recomputed from the kept input, the same ops.
An 8-row SmolLM2 sub-batch's forward activations: 414 → 329 MiB.

A norm's output is also kept by the layers that read it — the attention's q/k/v projections and
the MLP's gate/up projections keep their input for their weight gradients — one hidden-width copy
per token per norm, while the norm's input is kept anyway. Within :func:`lean_mlp`,
saved-tensor hooks (:class:`_NormOutputs`) keep a recipe instead of such a copy (the norm and its
input) and recompute the output when the backward pass reads it: the same op on the same input, so
the same bits, for one elementwise pass per norm output (its readers share the recomputed output
until the last one has read it).

:func:`lean_mlp` swaps it in for a block of code. It leaves alone every MLP it cannot replace
exactly: another activation, a ``down`` that is not a plain ``nn.Linear`` (LoRA, GRACE, WISE) or
has hooks, and every MLP while autocast is on (the recomputation would not see the forward's
casts): those run as before.
"""

from __future__ import annotations

import os
import weakref
from contextlib import ExitStack, contextmanager

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


class _GatedDown(torch.autograd.Function):
    """``down(silu(g) * u)`` with only ``g`` and ``u`` saved (and ``down``'s weight, a parameter)."""

    @staticmethod
    def forward(ctx, g, u, weight, bias):
        ctx.save_for_backward(g, u, weight)
        ctx.has_bias = bias is not None
        return F.linear(F.silu(g) * u, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        g, u, weight = ctx.saved_tensors
        s = F.silu(g)
        p = s * u                                         # down's input, recomputed
        out, width = weight.shape
        grad2 = grad.reshape(-1, out)
        grad_p = grad2.mm(weight).view(*grad.shape[:-1], width)  # as linear's backward: grad @ W
        grad_w = grad_b = None
        if ctx.needs_input_grad[2]:
            # as autograd's mm backward computes it for x @ Wᵀ: laid out like W (a transposed view would
            # reach torch.autograd.grad's caller as is, and a fused optimiser reads a gradient in W's layout)
            grad_w = grad2.t().mm(p.reshape(-1, width))
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_b = grad2.sum(0)
        grad_g = torch.ops.aten.silu_backward(grad_p * u, g) if ctx.needs_input_grad[0] else None
        grad_u = grad_p * s if ctx.needs_input_grad[1] else None
        return grad_g, grad_u, grad_w, grad_b


def _replaceable(mlp: torch.nn.Module) -> bool:
    names = ("gate_proj", "up_proj", "down_proj", "act_fn")
    if not all(hasattr(mlp, n) for n in names):
        return False
    down = mlp.down_proj
    act = mlp.act_fn
    silu = isinstance(act, torch.nn.SiLU) or getattr(act, "__name__", "") == "silu" or type(act).__name__ == "SiLUActivation"
    return (silu and type(down) is torch.nn.Linear and type(mlp.gate_proj) is torch.nn.Linear
            and type(mlp.up_proj) is torch.nn.Linear
            and not (down._forward_hooks or down._forward_pre_hooks or mlp._forward_hooks
                     or mlp._forward_pre_hooks or down._backward_hooks))


def _lean_forward(mlp):
    stock = mlp.forward

    def forward(x):
        if not torch.is_grad_enabled() or torch.is_autocast_enabled(x.device.type) or not _replaceable(mlp):
            return stock(x)
        return _GatedDown.apply(mlp.gate_proj(x), mlp.up_proj(x), mlp.down_proj.weight, mlp.down_proj.bias)
    return forward


def _is_rms_norm(m: torch.nn.Module) -> bool:
    return type(m).__name__.endswith("RMSNorm") and isinstance(getattr(m, "weight", None), torch.Tensor) \
        and not (m._forward_hooks or m._forward_pre_hooks)


class _Output:
    """One norm output's rebuild, shared by every saved view of it (the attention's q/k/v
    projections save the same input norm output three times): its stock forward and input, and,
    from the first read until every view packed so far has been read, the recomputed output — one
    recomputation per norm output, not one per reading layer."""

    __slots__ = ("stock", "x", "version", "pending", "y", "__weakref__")

    def __init__(self, stock, x):
        self.stock, self.x, self.version, self.pending, self.y = stock, x.detach(), x._version, 0, None

    def read(self, view) -> torch.Tensor:
        if self.x._version != self.version:
            raise RuntimeError("lean_mlp: a norm's input was modified in place after its forward; "
                               "its output cannot be recomputed for the backward pass")
        y = self.y
        if y is None:
            with torch.no_grad():
                y = self.stock(self.x)
        self.pending -= 1
        self.y = y if self.pending > 0 else None  # the last reader lets it go
        return y.as_strided(*view)


class _Recipe:
    """A saved view of a norm output: the shared :class:`_Output` and the view (size, stride,
    offset)."""

    __slots__ = ("out", "view")

    def __init__(self, out: _Output, view):
        self.out, self.view = out, view
        out.pending += 1


class _NormOutputs:
    """Saved-tensor hooks: a saved tensor that views a live norm output (the lean norms register
    theirs, by storage) is kept as a :class:`_Recipe` and recomputed when read; every other
    tensor is kept as is."""

    def __init__(self):
        # storage address -> [weak refs to the output and the input, stock forward, weak ref to the
        # shared rebuild once a view is packed]: weak, so that the registry keeps nothing alive; a
        # recipe (made while both live) keeps the rebuild, which keeps the input
        self.live: dict[int, list] = {}

    def add(self, y: torch.Tensor, stock, x: torch.Tensor) -> None:
        if len(self.live) > 4096:  # forget the outputs of finished forwards
            self.live = {k: e for k, e in self.live.items() if e[0]() is not None}
        self.live[y.untyped_storage().data_ptr()] = [weakref.ref(y), weakref.ref(x), stock, None]

    def pack(self, t: torch.Tensor):
        entry = self.live.get(t.untyped_storage().data_ptr())
        if entry is not None:
            y, x = entry[0](), entry[1]()  # y alive: the address is still its storage's
            if y is not None and x is not None and y.dtype == t.dtype and y.device == t.device:
                out = entry[3]() if entry[3] is not None else None
                if out is None:
                    out = _Output(entry[2], x)
                    entry[3] = weakref.ref(out)
                return _Recipe(out, (t.size(), t.stride(), t.storage_offset()))
        return t

    @staticmethod
    def unpack(p):
        return p.out.read(p.view) if isinstance(p, _Recipe) else p


def _lean_norm_forward(norm, outputs: _NormOutputs):
    stock = norm.forward

    def forward(x):
        if not torch.is_grad_enabled() or torch.is_autocast_enabled(x.device.type):
            return stock(x)
        # its input kept, the normalised copy and 1/rms recomputed in the backward pass (the same ops)
        y = checkpoint(stock, x, use_reentrant=False, preserve_rng_state=False)
        outputs.add(y, stock, x)
        return y
    return forward


@contextmanager
def lean_mlp(model: torch.nn.Module):
    """Within the block, every gated-SiLU MLP of ``model`` that :func:`_replaceable` accepts saves
    ``g`` and ``u`` only, every RMSNorm only its input, and the layers reading a norm's output a
    recipe for it (see the module doc); the stock forwards are back afterwards. Saved-tensor hooks
    entered inside the block take the place of its own (as ``torch.autograd.graph`` nests them)."""
    swapped = []
    outputs = _NormOutputs()
    for m in model.modules():
        if "forward" in m.__dict__:
            continue
        if _replaceable(m):
            m.forward = _lean_forward(m)
            swapped.append(m)
        elif _is_rms_norm(m):
            m.forward = _lean_norm_forward(m, outputs)
            swapped.append(m)
    try:
        with ExitStack() as stack:
            if any(_is_rms_norm(m) for m in swapped):
                stack.enter_context(torch.autograd.graph.saved_tensors_hooks(outputs.pack, outputs.unpack))
            yield len(swapped)
    finally:
        outputs.live.clear()
        for m in swapped:
            m.__dict__.pop("forward", None)


_FORCE_GQA = "TRANSFORMERS_SDPA_FORCE_GQA"


@contextmanager
def grouped_kv_attention():
    """Within the block, transformers' SDPA attention reads a grouped-query model's key/value heads
    as they are (``enable_gqa``), under a padding mask too, instead of copies repeated to every query
    head — copies the backward pass keeps (SmolLM2: 3 key/value heads for 9 query heads, so two
    576-wide tensors per token and layer instead of two 192-wide). The same attention, up to float
    rounding (the kernel reads each key/value head for its group of query heads). transformers reads
    ``TRANSFORMERS_SDPA_FORCE_GQA`` at each call; the block sets it and puts it back afterwards."""
    before = os.environ.get(_FORCE_GQA)
    os.environ[_FORCE_GQA] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(_FORCE_GQA, None)
        else:
            os.environ[_FORCE_GQA] = before
