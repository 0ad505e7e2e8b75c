"""The teacher-forced pass every loss and metric makes, doing only the work that is read.

A training or scoring row is ``prompt · answer``; only the answer's next-token distributions
are ever read, and every prompt starts with the same chat-template tokens (SmolLM2: a 20-token
system prompt, ~40% of a PISTOL row). :func:`answer_logits` therefore

* runs the prefix all rows share **once** (batch 1) and lets every row attend to its key/value
  cache — a causal model's activations on a prefix do not depend on what follows, and the
  gradient that flows into the shared cache is the sum over rows, exactly what the batched pass
  computes;
* applies the LM head only at the positions that predict an answer token (the head is ~20% of
  SmolLM2's FLOPs and a vocabulary-sized row per position of memory).

The result is the same as ``model(...).logits`` at those positions up to float rounding (other
matmul shapes), for values and gradients (``tests/test_lm.py``). The shared prefix is skipped
under DistributedDataParallel (two forward calls per backward) and where it would leave a row
without an input token.

For training (``tests/test_lean.py``):

* ``lean_head=True`` runs the LM head on the answer positions' final hidden states only (not on
  every kept column of every row) and computes log p(gold) without keeping the N × V logits for
  the backward pass (:class:`_GoldLogprob`), and a KL to a reference's distribution without them
  either (:meth:`AnswerLogits.kl_from`); the logits are made only if a loss reads them;
* inside :func:`split_prefix_backward` the prefix's backward runs after the rows' instead of
  holding a second copy of every weight's gradient until the end (:class:`_PrefixBoundary`);
  :func:`backward_apart` does the same for a loss over two forward passes, and
  :func:`recompute_apart` also keeps only one of the two passes' activations at a time (DPO's two
  answers: one more forward pass).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from .kv import cache_of, with_cache
from .prompts import IGNORE


def upcast(t: torch.Tensor) -> torch.Tensor:
    """At least float32 for a softmax (bf16 logits are upcast; float64 stays float64)."""
    return t if t.dtype == torch.float64 else t.float()


class AnswerLogits:
    """``logits`` [N, V] at the N positions that predict an answer token, ``gold`` [N] those tokens,
    ``row`` [N] the batch row of each, ``n_rows`` the batch size.

    Built from the final hidden states at those positions and the LM head (``lean_head``), the
    logits are only made when read: :meth:`logprobs` then never holds a vocabulary-sized row per
    position for the backward pass (:class:`_GoldLogprob`)."""

    def __init__(self, gold: torch.Tensor, row: torch.Tensor, n_rows: int, logits: torch.Tensor | None = None,
                 hidden: torch.Tensor | None = None, head: torch.nn.Linear | None = None):
        self.gold, self.row, self.n_rows = gold, row, n_rows
        self._logits, self.hidden, self.head = logits, hidden, head

    @property
    def logits(self) -> torch.Tensor:
        if self._logits is None:
            self._logits = self.head(self.hidden)
        return self._logits

    def _from_hidden(self) -> bool:
        """The logits not made yet and computable chunk by chunk from the hidden states (not under
        autocast, whose casts the recomputation in the backward would not see)."""
        return self._logits is None and self.hidden is not None and \
            not torch.is_autocast_enabled(self.hidden.device.type)

    def logprobs(self) -> torch.Tensor:
        """log p(gold) per answer token, [N] (at least float32)."""
        if self._from_hidden():
            return _GoldLogprob.apply(self.hidden, self.head.weight, self.head.bias, self.gold)
        return torch.log_softmax(upcast(self.logits), -1).gather(-1, self.gold[:, None]).squeeze(-1)

    def nll(self) -> torch.Tensor:
        """Mean NLL over the answer tokens (``cross_entropy``'s value)."""
        if self._from_hidden():
            return -self.logprobs().mean()
        return torch.nn.functional.cross_entropy(upcast(self.logits), self.gold)

    def kl_from(self, ref_logp: torch.Tensor) -> torch.Tensor:
        """KL(p_ref ‖ p) per answer position, [N] (at least float32), from the reference's
        log-softmax [N, V]; built from hidden states, without keeping the N × V logits, their
        log-softmax or the KL's terms for the backward pass (:class:`_KLFromRef`)."""
        if self._from_hidden():
            return _KLFromRef.apply(self.hidden, self.head.weight, self.head.bias, ref_logp)
        return F.kl_div(torch.log_softmax(upcast(self.logits), -1), ref_logp, log_target=True,
                        reduction="none").sum(-1)

    def per_row_sum(self, values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(self.n_rows, dtype=values.dtype, device=values.device).index_add(0, self.row, values)

    def per_row_count(self) -> torch.Tensor:
        return self.per_row_sum(torch.ones_like(self.gold, dtype=torch.float32))


class _GoldLogprob(torch.autograd.Function):
    """log_softmax(h Wᵀ + b)[gold] per row, computed in chunks of rows and again in the backward
    pass: only ``h`` is kept (N × d), not the N × V logits and their log-softmax (192 KiB per
    answer position and tensor with SmolLM2's 49,152-token vocabulary)."""

    @staticmethod
    def _chunks(n: int, vocab: int):
        step = max(1, (1 << 21) // max(vocab, 1))  # 2 M values (8 MiB in fp32) per chunk
        return [(i, min(n, i + step)) for i in range(0, n, step)]

    @staticmethod
    def forward(ctx, hidden, weight, bias, gold):
        ctx.save_for_backward(hidden, weight, bias, gold)
        return _head_forward(hidden, weight, bias,
                             lambda a, b, logp: logp.gather(-1, gold[a:b, None]).squeeze(-1))

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, bias, gold = ctx.saved_tensors

        def chunk_grad(a, b, logits):
            g = torch.log_softmax(upcast(logits), -1).exp_()      # d log p(gold) / d logits = onehot - softmax
            gc = grad[a:b].to(g.dtype)
            g.mul_(-gc[:, None])
            g[torch.arange(b - a, device=g.device), gold[a:b]] += gc
            return g

        return (*_head_backward(ctx.needs_input_grad[:3], hidden, weight, bias, chunk_grad), None)


def _head_forward(hidden, weight, bias, chunk_value):
    """A per-row value of the log-softmax of h Wᵀ + b, chunk by chunk of rows (no N × V tensor
    whole): ``chunk_value(a, b, logp)`` reduces rows a:b's log-softmax (at least float32) to [b − a]."""
    out = hidden.new_empty(hidden.shape[0], dtype=torch.float64 if hidden.dtype == torch.float64 else torch.float32)
    for a, b in _GoldLogprob._chunks(hidden.shape[0], weight.shape[0]):
        out[a:b] = chunk_value(a, b, torch.log_softmax(upcast(F.linear(hidden[a:b], weight, bias)), -1))
    return out


def _head_backward(needs, hidden, weight, bias, chunk_grad):
    """The backward pass of a loss on the logits h Wᵀ + b, made again chunk by chunk of rows:
    ``chunk_grad(a, b, logits)`` gives d loss / d logits for rows a:b; returns the gradients to h, W
    and b (None where ``needs`` says so)."""
    need_h, need_w, need_b = needs
    gh = torch.empty_like(hidden) if need_h else None
    gw = torch.zeros_like(weight) if need_w else None
    gb = torch.zeros_like(bias) if need_b and bias is not None else None
    for a, b in _GoldLogprob._chunks(hidden.shape[0], weight.shape[0]):
        g = chunk_grad(a, b, F.linear(hidden[a:b], weight, bias)).to(hidden.dtype)
        if need_h:
            gh[a:b] = g.mm(weight)
        if need_w:
            gw.add_(g.t().mm(hidden[a:b]))
        if gb is not None:
            gb.add_(g.sum(0))
    return gh, gw, gb


class _KLFromRef(torch.autograd.Function):
    """Σ_v p_ref · (log p_ref − log_softmax(h Wᵀ + b)) per row, in chunks of rows, the chunk's logits
    made again in the backward pass: only ``h`` (N × d) is kept besides the reference's log-softmax
    the caller holds anyway — not the logits, their log-softmax and the KL's elementwise terms
    (four N × V tensors for ``F.kl_div`` over a log-softmax). The gradient is log-softmax's and
    kl_div's own: g_logq = −p_ref · g, g_z = g_logq − softmax(z) · Σ_v g_logq."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, ref_logp):
        ctx.save_for_backward(hidden, weight, bias, ref_logp)
        return _head_forward(hidden, weight, bias, lambda a, b, logq: F.kl_div(
            logq, ref_logp[a:b].to(logq.dtype), log_target=True, reduction="none").sum(-1))

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, bias, ref_logp = ctx.saved_tensors
        if ctx.needs_input_grad[3]:
            raise RuntimeError("the KL's gradient to the reference's log-softmax is not computed (a frozen reference)")

        def chunk_grad(a, b, logits):
            q = torch.log_softmax(upcast(logits), -1).exp_()
            g_logq = ref_logp[a:b].to(q.dtype).exp().mul_(-grad[a:b].to(q.dtype)[:, None])
            return g_logq.sub_(q.mul_(g_logq.sum(-1, keepdim=True)))

        return (*_head_backward(ctx.needs_input_grad[:3], hidden, weight, bias, chunk_grad), None)


def _shared_prefix(ids: torch.Tensor, mask: torch.Tensor, limit: int) -> int:
    """Columns every row shares, unpadded, up to ``limit``."""
    if ids.shape[0] < 2 or limit <= 0:
        return 0
    same = (ids == ids[:1]).all(0) & (mask == 1).all(0)
    diff = (~same[:limit]).nonzero()
    return int(diff[0]) if diff.numel() else limit


def _is_ddp(model) -> bool:
    return isinstance(model, torch.nn.parallel.DistributedDataParallel)


def _checkpointing(model) -> bool:
    """Activation checkpointing on and training: the backward pass re-runs each block's forward,
    which would append the rows' keys to a shared prefix cache a second time."""
    return model.training and any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())


_SPLIT = [False]


@contextmanager
def split_prefix_backward(on: bool = True):
    """Within the block, a shared prefix's backward pass runs after the rows' (see
    :class:`_PrefixBoundary`): for a loop that calls ``loss.backward()`` on what
    :func:`answer_logits` returns, not for ``torch.autograd.grad`` (the prefix's share would go into
    ``.grad``, as with reentrant checkpointing)."""
    before, _SPLIT[0] = _SPLIT[0], on
    try:
        yield
    finally:
        _SPLIT[0] = before


class _PrefixBoundary(torch.autograd.Function):
    """The shared prefix's keys and values as the rows' pass sees them, with the prefix's own graph
    cut off and run from this node's backward.

    With one graph, every trained weight is used twice (prefix and rows) and autograd holds each
    weight's gradient from the rows' pass in a buffer until the prefix's share arrives, at the very
    end: a second set of weight gradients (405 MiB for SmolLM2's blocks) builds up beside ``.grad``
    while the activations are released, and memory grew through the backward instead of falling
    (measured: +128 MiB over the end of the forward in a gd step). Cut here, each weight's share from the rows is
    added to ``.grad`` as soon as it is computed; when every layer's key/value gradient is in,
    this node runs the prefix's backward (a reentrant ``torch.autograd.backward``, as reentrant
    checkpointing does), which adds the prefix's share. Same gradient, up to the order of two
    float additions per weight."""

    @staticmethod
    def forward(ctx, anchor, kv: list):
        # the prefix's outputs with their graph, passed inside a list: not inputs of this node, so
        # the two graphs stay apart
        ctx.kv = kv
        return tuple(t.detach().clone() for t in kv)

    @staticmethod
    def backward(ctx, *grads):
        pairs = [(t, g) for t, g in zip(ctx.kv, grads) if g is not None and t.requires_grad]
        if pairs:
            torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])
        ctx.kv = None
        return None, None


def backward_apart(model, t: torch.Tensor) -> torch.Tensor:
    """``t`` for a loss that also reads another forward pass of ``model`` (DPO: the preferred and
    the rejected answers), with ``t``'s own graph cut off and run from its own node inside
    :func:`split_prefix_backward` (:class:`_PrefixBoundary`): each weight's share from each pass
    goes into ``.grad`` as it is computed, instead of autograd buffering a whole set of weight
    gradients from one pass until the other's arrives. The same gradient up to the order of the
    float additions per weight; outside the block, under DDP, or without a graph: ``t`` as is."""
    if not (_SPLIT[0] and torch.is_grad_enabled() and t.requires_grad) or _is_ddp(model):
        return t
    return _PrefixBoundary.apply(torch.empty(0, requires_grad=True), [t])[0]


class _Recomputed(torch.autograd.Function):
    """The value of ``fn()`` from a pass that kept no activations; its backward runs ``fn`` again
    with a graph (inside :func:`split_prefix_backward`, as the first call was, with its autocast
    and random state) and back-propagates through it at once, adding each weight's share to
    ``.grad``."""

    @staticmethod
    def forward(ctx, anchor, fn, value, state):
        ctx.fn, ctx.state = fn, state
        return value.clone()

    @staticmethod
    def backward(ctx, grad):
        autocasts, rng = ctx.state
        with torch.random.fork_rng(devices=[], enabled=True), torch.enable_grad():
            torch.set_rng_state(rng)
            with split_prefix_backward(True), _autocasts(autocasts):
                t = ctx.fn()
            torch.autograd.backward(t, grad)
        ctx.fn = ctx.state = None
        return None, None, None, None


@contextmanager
def _autocasts(states):
    from contextlib import ExitStack

    with ExitStack() as stack:
        for device, dtype in states:
            stack.enter_context(torch.autocast(device, dtype=dtype))
        yield


def recompute_apart(model, fn) -> torch.Tensor:
    """``fn()`` — one forward pass of ``model`` to a small tensor — for a loss that also reads
    another pass (DPO: the preferred and the rejected answers), so that only one pass's activations
    are alive at a time. The value comes from a pass under ``no_grad``; in the backward, after the
    other pass's graph (built later, so run first) has been released, ``fn`` runs again with a graph
    and its backward adds each weight's share to ``.grad`` (as :func:`backward_apart`). One more
    forward pass for one fewer set of activations; the gradient is the same up to float rounding
    (the pass with a graph may pick other kernels than the one without). Inside
    :func:`split_prefix_backward` only (a loop that calls ``loss.backward()``); otherwise, under
    DDP, or without grad: ``fn()`` as is. ``fn`` must compute the same function when called again
    (the model's weights unchanged until the backward; the CPU random state is restored)."""
    if not (_SPLIT[0] and torch.is_grad_enabled()) or _is_ddp(model):
        return fn()
    autocasts = [(d, torch.get_autocast_dtype(d)) for d in ("cpu", "cuda") if torch.is_autocast_enabled(d)]
    rng = torch.get_rng_state()
    with torch.no_grad():
        value = fn()
    return _Recomputed.apply(torch.empty(0, requires_grad=True), fn, value, (autocasts, rng))


def _cut_prefix_graph(cache) -> None:
    layers = getattr(cache, "layers", None)
    if not layers or not all(hasattr(lay, "keys") and hasattr(lay, "values") for lay in layers):
        return  # another cache layout: one graph, as before
    kv = [t for lay in layers for t in (lay.keys, lay.values)]
    if not any(t.requires_grad for t in kv):
        return
    anchor = torch.empty(0, requires_grad=True)  # makes the boundary part of the rows' graph
    out = _PrefixBoundary.apply(anchor, kv)
    for i, lay in enumerate(layers):
        lay.keys, lay.values = out[2 * i], out[2 * i + 1]


def _decoder_and_head(model):
    """(the model's blocks, its LM head) when the logits are exactly ``head(blocks(...).last_hidden_state)``
    (Llama, Mistral, Qwen2: a plain linear head, no soft-capping or scaling), else None."""
    if _is_ddp(model):  # the wrapper's forward must run (its gradient hooks)
        return None
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
    if getattr(inner.config, "model_type", None) not in ("llama", "mistral", "qwen2"):
        return None
    head = inner.get_output_embeddings()
    decoder = getattr(inner, "model", None)
    if type(head) is not torch.nn.Linear or decoder is None:
        return None
    return decoder, head


def answer_logits(model, batch: dict, share_prefix: bool = True, lean_head: bool = False) -> AnswerLogits:
    """Logits at the answer positions of a right-padded batch (``input_ids``, ``attention_mask``,
    ``labels`` with ``IGNORE`` outside answers): see the module doc. ``lean_head``: the LM head runs
    on the answer positions' hidden states only (not on every kept column of every row), and
    :meth:`AnswerLogits.logprobs` keeps no vocabulary-sized activations (same values up to float
    rounding: other matmul shapes)."""
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    device = ids.device
    target = labels[:, 1:]                      # logits at t predict token t + 1
    r, t = (target != IGNORE).nonzero(as_tuple=True)
    first = int(t.min()) if t.numel() else ids.shape[1] - 1
    k = _shared_prefix(ids, mask, first) if share_prefix and not _is_ddp(model) and not _checkpointing(model) else 0
    parts = _decoder_and_head(model) if lean_head else None
    cols = torch.unique(t)                      # positions read in some row, sorted
    kw = {}
    if k > 0:
        run = parts[0] if parts else model      # the prefix's hidden states are never read: no LM head
        cache = cache_of(run(input_ids=ids[:1, :k], attention_mask=mask[:1, :k], use_cache=True))
        if _SPLIT[0] and torch.is_grad_enabled():
            _cut_prefix_graph(cache)
        cache.batch_repeat_interleave(ids.shape[0])
        kw = {**with_cache(cache), "use_cache": True}
    if parts:
        h = parts[0](input_ids=ids[:, k:], attention_mask=mask, **kw).last_hidden_state
        return AnswerLogits(target[r, t], r, ids.shape[0], hidden=h[r, t - k], head=parts[1])
    out = model(input_ids=ids[:, k:], attention_mask=mask, logits_to_keep=(cols - k).to(device), **kw)
    where = torch.searchsorted(cols, t)         # column of each (row, t) among the kept ones
    return AnswerLogits(target[r, t], r, ids.shape[0], logits=out.logits[r, where])


def answer_nll(model, batch: dict, lean_head: bool = False) -> torch.Tensor:
    """Mean next-token NLL over every answer token of the batch (what ``model(..., labels=).loss`` is)."""
    return answer_logits(model, batch, lean_head=lean_head).nll()


def logits_at(model, input_ids, attention_mask, positions: torch.Tensor) -> torch.Tensor:
    """Logits only where they are needed (``positions``: a boolean [batch, seq] mask): the base
    model's hidden states, then the LM head on the selected positions — not on every token."""
    h = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return model.get_output_embeddings()(h[positions])
