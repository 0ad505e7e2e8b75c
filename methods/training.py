"""The one training loop every gradient-based method shares.

A gradient method subclasses :class:`GradientMethod` and writes ``loss(model, batch, ctx)`` (or
``forget_loss`` + ``retain_loss``, each run forward and backward alone);
the loop (data, optimiser, schedule, clipping, ``accelerate`` for several processes/devices,
progress bar, divergence check) lives here once. Each step sees a *forget* batch, the same
questions with refusal answers (*forget_idk*, for preference methods) and a *retain* batch
drawn cyclically from the retain set. Under ``accelerate launch`` every process gets its shard
of the forget set and gradients are all-reduced by DDP.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import random
from types import MappingProxyType
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from unlearnbench.core.arch import embedding_weights
from unlearnbench.core.lean import grouped_kv_attention, lean_mlp
from unlearnbench.core.lm import answer_logits, answer_nll, split_prefix_backward, upcast
from unlearnbench.core.optim import adamw
from unlearnbench.core.prompts import DEFAULT_REFUSAL, IGNORE, collate, encode_qa

from .base import AsGiven, Method, MethodParams, MethodResult, UnlearnRequest

log = logging.getLogger(__name__)


class LoraSpec(BaseModel):
    """LoRA adapters (Hu et al., arXiv 2106.09685, via ``peft``) trained in place of the weights."""

    model_config = ConfigDict(extra="forbid")
    r: int = Field(16, ge=1, description="adapter rank")
    alpha: float = Field(32.0, gt=0, description="scaling numerator (update = alpha / r · B A)")
    targets: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="module names (suffixes) that get adapters; all-linear = every linear layer "
                                  "but the LM head. A method that trains only some weights (RMU) adapts only those")
    merge: bool = Field(True, description="write W + (alpha / r) B A into the weights after training (the cell's "
                        "model has the base architecture); false = keep the adapters: the model is evaluated "
                        "with them, --save-models writes the adapter (peft format), and they are removed after "
                        "the cell (the base weights never change). One request only (not with sequences)")


class TrainParams(MethodParams):
    lr: float = Field(1e-5, gt=0, description="AdamW learning rate (constant after a short warm-up)")
    epochs: int = Field(5, ge=1, description="passes over the forget set")
    batch_size: int = Field(8, ge=1, description="forget examples per step (retain batch has the same size)")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimiser step")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    warmup_steps: int = Field(0, ge=0)
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="bf16 autocast for the forward passes "
                                                       "(fp32 weights and optimiser): auto = bf16 on CUDA, fp32 on CPU")
    gradient_checkpointing: bool = Field(False, description="recompute each block's activations in the backward "
                                                           "pass instead of keeping them (less memory, ~1/3 more "
                                                           "compute; the shared prompt prefix is then not cached)")
    freeze_embeddings: bool = Field(True, description="keep the token embeddings (and a tied or untied LM head) "
                                    "fixed, as the implant does: the knowledge was written into the blocks; "
                                    "saves a gradient and two AdamW moments per embedding value (21% of "
                                    "SmolLM2's weights). false = every weight trains")
    lora: LoraSpec | None = Field(None, description="train LoRA adapters instead of the weights (gradients and "
                                                    "AdamW state only for the adapters), merged into the weights "
                                                    "after training; null = full fine-tuning")
    rows_per_pass: int | None = Field(None, ge=1, description="at most this many rows in one forward pass: a loss "
                                      "term over more rows runs as several passes, each one's backward before the "
                                      "next one's forward, so one chunk's activations are alive at a time (the "
                                      "same gradient up to float rounding; the shared prompt prefix is run once "
                                      "per chunk). null = a term's whole batch in one pass")


class DivergenceError(RuntimeError):
    """The loss became NaN/inf; the runner records the cell as failed."""


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, forget, forget_idk, retain):
        self.forget, self.forget_idk, self.retain = forget, forget_idk, retain

    def __len__(self):
        return len(self.forget)

    def __getitem__(self, i):
        return {"forget": self.forget[i], "forget_idk": self.forget_idk[i],
                "retain": self.retain[i % len(self.retain)] if self.retain else None}


def _strip(r: dict) -> dict:
    return {"input_ids": r["input_ids"], "labels": r["labels"]}


def build_batches(tokenizer, request: UnlearnRequest, batch_size: int, refusals: list[str] | None = None):
    """A DataLoader over (forget, forget→refusal, retain) triples; the refusal of each forget
    question is ``refusals[i]`` when given, else one of the request's refusal sentences."""
    rng = random.Random(request.seed)
    targets = request.refusal_targets or [DEFAULT_REFUSAL]
    forget = [_strip(encode_qa(tokenizer, r.question, r.answer)) for r in request.forget]
    picked = [targets[rng.randrange(len(targets))] for _ in request.forget]
    idk = [_strip(encode_qa(tokenizer, r.question, t)) for r, t in zip(request.forget, refusals or picked)]
    retain_recs = list(request.retain)
    rng.shuffle(retain_recs)
    retain = [_strip(encode_qa(tokenizer, r.question, r.answer)) for r in retain_recs]
    pad = tokenizer.pad_token_id

    def coll(items):
        out = {"forget": collate([x["forget"] for x in items], pad),
               "forget_idk": collate([x["forget_idk"] for x in items], pad)}
        if items[0]["retain"] is not None:
            out["retain"] = collate([x["retain"] for x in items], pad)
        return out

    g = torch.Generator().manual_seed(request.seed)
    return torch.utils.data.DataLoader(_Pairs(forget, idk, retain), batch_size=batch_size, shuffle=True,
                                       collate_fn=coll, generator=g)


# ---- loss building blocks (logits at answer positions only, shared prompt prefix run once) --

def nll(model, b: dict) -> torch.Tensor:
    """Mean next-token NLL over answer tokens (the batch's token mean, as ``model(labels=).loss``)."""
    return answer_nll(model, b, lean_head=True)


def sequence_logprob(model, b: dict, per_token: bool = False) -> torch.Tensor:
    """Sum of answer-token log-probabilities, one value per sequence (``per_token``: their mean).
    ``model`` may be a :class:`ReferenceMemo` (the frozen reference's values, looked up)."""
    if isinstance(model, ReferenceMemo):
        return model.sequence_logprob(b, per_token)
    a = answer_logits(model, b, lean_head=True)
    total = a.per_row_sum(a.logprobs())
    return total / a.per_row_count().clamp(min=1) if per_token else total


def sequence_mean_nll(model, b: dict) -> torch.Tensor:
    """Mean over sequences of each sequence's mean answer-token NLL. Unlike the batch token mean,
    accumulating equal-sized micro-batches gives exactly the large-batch value."""
    a = answer_logits(model, b, lean_head=True)
    return (-a.per_row_sum(a.logprobs()) / a.per_row_count().clamp(min=1)).mean()


def retain_nll(model, batch: dict, alpha: float) -> torch.Tensor | None:
    """``alpha · NLL(retain)`` (the usual retain term); None when the step has no retain batch or alpha is 0."""
    return alpha * nll(model, batch["retain"]) if "retain" in batch and alpha else None


def kl_to_reference(model, ref, b: dict) -> torch.Tensor:
    """KL(p_ref ‖ p_model) averaged over answer tokens."""
    a = answer_logits(model, b, lean_head=True)
    if isinstance(ref, ReferenceMemo):
        ref_logp = ref.log_softmax(b)
    else:
        with torch.no_grad():
            ref_logp = torch.log_softmax(upcast(answer_logits(ref, b).logits), -1)
    kl = a.kl_from(ref_logp)
    return kl.mean() if kl.numel() else kl.sum()


# ---- the frozen reference, asked once ----------------------------------------------------

def _row_key(ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> tuple:
    """A row's identity: its unpadded tokens and where its answer starts."""
    keep = mask.bool()
    answer = (labels != IGNORE).nonzero()
    return tuple(ids[keep].tolist()) + (int(answer[0]) if answer.numel() else -1,)


class ReferenceMemo:
    """A frozen reference model's answer-token outputs on every row the loop will show it,
    computed once before training, so the reference model is gone before the optimiser state
    exists (one model copy less at the cell's peak) and is not run again each epoch (on the
    same rows every epoch: NPO's reference pass was 1 of its 7 passes per step).

    ``outputs`` maps a sub-batch (``forget``, ``forget_idk``, ``retain``) to what the loss reads
    of it: ``logprobs`` (log p(gold) per answer token) or ``log_softmax`` (the whole next-token
    distribution at answer positions, for a KL). A frozen model's value on a row does not depend
    on the loop; the memo computes rows in length-sorted batches, so values match the in-loop
    ones up to float rounding (other padding and batch shapes).
    """

    def __init__(self):
        self._rows: dict[tuple, dict[str, torch.Tensor]] = {}

    @classmethod
    @torch.no_grad()
    def build(cls, ref, rows_by_name: dict[str, list[dict]], outputs: dict[str, str], pad_id: int,
              batch_size: int = 16) -> "ReferenceMemo":
        device = next(ref.parameters()).device
        memo = cls()
        want: dict[tuple, tuple[dict, set]] = {}
        for name, what in outputs.items():
            if what not in ("logprobs", "log_softmax"):
                raise ValueError(f"unknown reference output {what!r} (logprobs or log_softmax)")
            rows = rows_by_name.get(name) or []
            if not rows:
                continue
            b = collate(rows, pad_id)  # keyed as the loop's batches will be looked up
            for i, r in enumerate(rows):
                key = _row_key(b["input_ids"][i], b["attention_mask"][i], b["labels"][i])
                want.setdefault(key, (r, set()))[1].add(what)
        order = sorted(want, key=lambda k: len(k))  # similar lengths together: little padding
        for i in range(0, len(order), batch_size):
            keys = order[i:i + batch_size]
            b = {k: v.to(device) for k, v in collate([want[k][0] for k in keys], pad_id).items()}
            a = answer_logits(ref, b)
            logp = torch.log_softmax(upcast(a.logits), -1)
            lp = logp.gather(-1, a.gold[:, None]).squeeze(-1)
            for j, key in enumerate(keys):
                sel = a.row == j
                entry = {"logprobs": lp[sel]}
                if "log_softmax" in want[key][1]:
                    entry["log_softmax"] = logp[sel]
                memo._rows[key] = entry
        return memo

    def _entries(self, b: dict, what: str) -> list[torch.Tensor]:
        ids, mask, labels = (b[k].cpu() for k in ("input_ids", "attention_mask", "labels"))
        out = []
        for i in range(ids.shape[0]):
            entry = self._rows.get(_row_key(ids[i], mask[i], labels[i]))
            if entry is None or what not in entry:
                raise KeyError(f"the reference memo has no {what} for batch row {i}: the loop showed a row "
                               "the method did not declare in reference_outputs")
            out.append(entry[what])
        return out

    def sequence_logprob(self, b: dict, per_token: bool = False) -> torch.Tensor:
        vals = self._entries(b, "logprobs")
        tot = torch.stack([v.sum() for v in vals])
        if per_token:
            tot = tot / torch.tensor([max(len(v), 1) for v in vals], dtype=tot.dtype, device=tot.device)
        return tot.to(b["input_ids"].device)

    def log_softmax(self, b: dict) -> torch.Tensor:
        """[N, V] at the batch's answer positions, in :func:`answer_logits`'s order (row-major)."""
        return torch.cat(self._entries(b, "log_softmax")).to(b["input_ids"].device)


def _row_slice(b: dict, lo: int, hi: int) -> dict:
    """Rows ``lo:hi`` of a collated sub-batch, without the padding columns no kept row reaches."""
    mask = b["attention_mask"][lo:hi]
    width = int(mask.any(0).nonzero().max()) + 1 if mask.any() else mask.shape[1]
    return {k: v[lo:hi, :width] if torch.is_tensor(v) and v.dim() == 2 else v[lo:hi] for k, v in b.items()}


def row_chunks(batch: dict, keys: tuple[str, ...], mean: str | None, rows: int | None) -> list[tuple[dict, float]]:
    """``batch`` as (chunk, weight) pairs with at most ``rows`` rows of the sub-batches ``keys`` each
    (sliced alike: a forget row and its refusal row stay together; other sub-batches whole), such
    that Σ weight · term(chunk) is term(batch) for a term that is a mean over the rows of
    ``keys[0]`` (``mean="rows"``) or over its answer tokens (``"tokens"``). One pair — the batch
    itself — when it is small enough, ``mean`` is None or the batch has no answer token."""
    present = [k for k in keys if k in batch]
    if not rows or mean is None or not present:
        return [(batch, 1.0)]
    lead = batch[present[0]]
    n = lead["input_ids"].shape[0]
    if n <= rows:
        return [(batch, 1.0)]
    counts = (lead["labels"][:, 1:] != IGNORE).sum(1) if mean == "tokens" else torch.ones(n, dtype=torch.long)
    total = int(counts.sum())
    if total == 0:
        return [(batch, 1.0)]
    out = []
    for lo in range(0, n, rows):
        hi = min(n, lo + rows)
        chunk = dict(batch)
        for k in present:
            chunk[k] = _row_slice(batch[k], lo, hi)
        out.append((chunk, int(counts[lo:hi].sum()) / total))
    return out


def _weighted(fn, chunk: dict, weight: float):
    def term():
        t = fn(chunk)
        return t if t is None or weight == 1.0 else t * weight
    return term


def _sum_terms(terms) -> torch.Tensor | None:
    parts = [x for x in (t() for t in terms) if x is not None]
    return sum(parts[1:], parts[0]) if parts else None


class GradientMethod(Method):
    """Base of gradient methods. A subclass writes its objective either as :meth:`loss` (one
    expression) or as :meth:`forget_loss` + :meth:`retain_loss`: then the loop runs each term's
    forward and backward alone, so only one sub-batch's activations are alive at a time (the
    activations of a 16-row step were ~0.6 GB of gd's ~2.7 GB cell on SmolLM2), for the same
    gradient (a sum of the same two contributions per weight)."""

    kind = "unlearn"
    Params = TrainParams
    needs_reference = False
    # how forget_loss and retain_loss average over their sub-batch ("rows": a mean over the rows of
    # batch["forget"] / batch["retain"]; "tokens": over their answer tokens; None: neither), so that
    # the loop can run a term in chunks of TrainParams.rows_per_pass rows for the same gradient
    forget_mean: Literal["rows", "tokens"] | None = None
    retain_mean: Literal["rows", "tokens"] | None = None
    # True: backward() builds the update itself (no DDP reduction to respect; it may use
    # torch.autograd.grad, so the shared prefix's backward is not split off: core.lm.split_prefix_backward)
    own_gradients = False
    # True: loss_terms() splits its terms by TrainParams.rows_per_pass itself
    own_row_chunks = False

    def forget_loss(self, model, batch: dict, ctx: dict) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} defines neither loss() nor forget_loss()")

    def retain_loss(self, model, batch: dict, ctx: dict) -> torch.Tensor | None:
        """The retain term (already weighted), or None; called only when the step has a retain batch."""
        return None

    def loss(self, model, batch: dict, ctx: dict) -> torch.Tensor:
        """The whole objective: forget term + retain term."""
        total = self.forget_loss(model, batch, ctx)
        r = self.retain_loss(model, batch, ctx) if "retain" in batch else None
        return total if r is None else total + r

    def loss_terms(self, model, batch: dict, ctx: dict) -> list:
        """Callables whose values sum to the loss; each is run forward and backward on its own."""
        if type(self).loss is not GradientMethod.loss:  # written as one expression
            return [lambda: self.loss(model, batch, ctx)]
        rows = getattr(ctx["params"], "rows_per_pass", None)
        terms = [_weighted(lambda b: self.forget_loss(model, b, ctx), chunk, w)
                 for chunk, w in row_chunks(batch, ("forget", "forget_idk"), self.forget_mean, rows)]
        if "retain" in batch:
            terms += [_weighted(lambda b: self.retain_loss(model, b, ctx), chunk, w)
                      for chunk, w in row_chunks(batch, ("retain",), self.retain_mean, rows)]
        return terms

    def start(self, model, ctx) -> None:
        """Hook before the first step (after the model is prepared): reset the method's own state."""

    def finish_gradients(self, accelerator, model, ctx) -> float | None:
        """Hook after the last backward of an optimiser step (before clipping); default: nothing.
        Returns the value of any loss term it ran itself (added to the step's logged loss), or None."""

    def reference_outputs(self, params: TrainParams) -> dict[str, str] | None:
        """What the loss reads of the frozen reference, per sub-batch (see :class:`ReferenceMemo`):
        then ``ctx["ref"]`` is a memo filled before training and the reference model is dropped
        (``{}``: nothing, no reference is made). None (default): ``ctx["ref"]`` is the reference
        model itself, for a method that reads more of it than answer-token outputs."""
        return None

    def refusals(self, model, tokenizer, request: UnlearnRequest, params: TrainParams) -> list[str] | None:
        """Per forget question, the refusal a preference method prefers (None: the request's sentences)."""
        return None

    def trainable_parameters(self, model, params: TrainParams) -> list[torch.nn.Parameter]:
        """What the method updates (default: every weight but, with ``freeze_embeddings``, the token
        embeddings and the LM head). Everything else is frozen."""
        if not getattr(params, "freeze_embeddings", False):
            return list(model.parameters())
        fixed = {id(w) for w in embedding_weights(model)}
        return [p for p in model.parameters() if id(p) not in fixed]

    def make_optimizer(self, model, params: TrainParams):
        if getattr(self, "_lora", None) is not None:  # the adapters only (peft froze everything else)
            trainable = [p for n, p in model.named_parameters() if "lora_" in n]
        else:
            model.requires_grad_(False)
            trainable = self.trainable_parameters(model, params)
        for p in trainable:
            p.requires_grad_(True)
            if p.dtype in (torch.bfloat16, torch.float16):
                # AdamW's steps (~lr) are below bf16's resolution at a weight's size: a trained tensor of
                # a half-precision model is held in fp32 while it trains and rounded back afterwards
                self._upcast.append((p, p.dtype))
                p.data = p.data.float()
        return adamw(trainable, lr=params.lr, weight_decay=params.weight_decay)

    def _add_lora(self, model, params: TrainParams) -> None:
        """Inject LoRA adapters into ``model`` in place (``peft``); kept on ``self._lora`` (the peft
        wrapper) for the merge. A method that trains only some weights gets adapters on exactly the
        linear layers that hold them."""
        from peft import LoraConfig, get_peft_model

        spec = params.lora
        chosen = {id(p) for p in self.trainable_parameters(model, params)}
        linear = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        if chosen != {id(p) for p in GradientMethod.trainable_parameters(self, model, params)}:
            # a method that trains a restricted set of its own (RMU): adapters on exactly its linear layers
            targets = sorted(n for n in linear if id(model.get_submodule(n).weight) in chosen)
            if spec.targets != "all-linear":
                targets = [n for n in targets if any(n == t or n.endswith("." + t) for t in spec.targets)]
        else:
            targets = spec.targets
        if not targets:
            raise ValueError(f"{self.name}: lora.targets {spec.targets} matches no linear layer the method trains")
        self._lora = get_peft_model(model, LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=0.0,
                                                      target_modules=targets, bias="none"))
        n = sum(p.numel() for nm, p in model.named_parameters() if "lora_" in nm)
        self._lora_info = {"r": spec.r, "alpha": spec.alpha, "targets": targets, "merged": spec.merge,
                           "trainable_parameters": n}

    def apply(self, model, tokenizer, request: UnlearnRequest, params: TrainParams):
        from tqdm.auto import tqdm

        if not request.forget:
            raise ValueError("the request has an empty forget set")
        if getattr(params, "rows_per_pass", None) and not self.own_row_chunks and (
                type(self).loss_terms is not GradientMethod.loss_terms or type(self).loss is not GradientMethod.loss
                or (self.forget_mean is None and self.retain_mean is None)):
            raise ValueError(f"method {self.name!r} cannot split its loss terms by rows: rows_per_pass must be null")
        torch.manual_seed(request.seed)
        from unlearnbench.core import precision

        mp = precision.check(params.precision, request.device, f"method {self.name!r}")
        if next(model.parameters()).dtype == torch.bfloat16:
            mp = "bf16"  # a bf16 model computes in bf16 (its trained tensors in fp32 under autocast)
        self._upcast = []
        accelerator = precision.fresh_accelerator(cpu=request.device == "cpu",
                                                  gradient_accumulation_steps=params.grad_accum,
                                                  mixed_precision="bf16" if mp == "bf16" else "no")
        refusals = self.refusals(model, tokenizer, request, params)  # written before any update
        self.targets = dict(zip((r.question for r in request.forget), refusals)) if refusals else None
        loader = build_batches(tokenizer, request, params.batch_size, refusals)
        ref = None
        outputs = self.reference_outputs(params)
        self._lora = self._lora_info = None
        if self.needs_reference and outputs != {}:
            if request.reference_model is None:
                raise ValueError(f"method {self.name!r} needs a reference model")
            as_given = isinstance(request.reference_model, AsGiven)
            if outputs and (as_given or params.lora is not None):
                # the memo is filled before any update (and LoRA adapters start at zero): the reference
                # is this model as it is now, no copy
                ref = model.eval()
            elif as_given:  # read every step while the model changes (RMU): a copy of it as it is now
                ref = copy.deepcopy(model).eval()
            else:
                ref = request.reference_model().to(accelerator.device).eval()  # used under no_grad only
            if outputs:  # ask it once, then let it go before the optimiser state exists
                pairs = loader.dataset
                rows = {"forget": pairs.forget, "forget_idk": pairs.forget_idk,
                        "retain": [pairs[i]["retain"] for i in range(len(pairs))] if pairs.retain else []}
                with accelerator.autocast():
                    ref = ReferenceMemo.build(ref, rows, outputs, tokenizer.pad_token_id, params.batch_size)
        if params.lora is not None:
            if any("lora_" in n for n, _ in model.named_parameters()):
                raise ValueError(f"{self.name}: the model still carries LoRA adapters of an earlier request "
                                 "(lora.merge: false takes one request, not a sequence)")
            self._add_lora(model, params)
        checkpointing = model if params.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable") \
            else None
        if checkpointing is not None:
            if hasattr(model, "activation_checkpointing_enable"):  # transformers ≥ 5's name
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        lean = contextlib.ExitStack()
        try:
            model.train()
            opt = self.make_optimizer(model, params)
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: min(1.0, (s + 1) / params.warmup_steps) if params.warmup_steps else 1.0)
            model, opt, loader, sched = accelerator.prepare(model, opt, loader, sched)
            # read-only: what a step may read; a method's own state lives on the method (see start())
            ctx = MappingProxyType({"ref": ref, "params": params, "accelerator": accelerator, "tokenizer": tokenizer,
                                    "seed": request.seed})
            self.start(model, ctx)
            total = params.epochs * len(loader)
            bar = tqdm(total=total, desc=f"{self.name}", disable=not request.progress or not accelerator.is_main_process,
                       leave=False)
            history = []
            lean.enter_context(lean_mlp(model))  # the MLPs keep 2 of their 4 wide activations: same gradients
            lean.enter_context(grouped_kv_attention())  # no repeated key/value heads kept for the backward
            for epoch in range(params.epochs):
                for batch in loader:
                    with accelerator.accumulate(model):
                        terms = self.loss_terms(model, batch, ctx)
                        if len(terms) > 1 and accelerator.num_processes > 1 and not self.own_gradients:
                            terms = [lambda terms=terms: _sum_terms(terms)]  # DDP reduces once per backward
                        loss = 0.0
                        for term in terms:
                            # a plain backward: the shared prefix's backward after the rows' (less memory)
                            with accelerator.autocast(), split_prefix_backward(not self.own_gradients):
                                part = term()  # (the autocast covers the reference model's forward passes too)
                            if part is None:
                                continue
                            if not torch.isfinite(part):
                                raise DivergenceError(f"{self.name}: loss became {part.item()} at epoch {epoch}")
                            self.backward(accelerator, model, part, batch, ctx)
                            loss += part.item()
                        if accelerator.sync_gradients:
                            extra = self.finish_gradients(accelerator, model, ctx)
                            if extra is not None:  # a term the method ran itself (BLUR's low_memory retain)
                                loss += extra
                            accelerator.clip_grad_norm_(model.parameters(), params.max_grad_norm)
                        opt.step()
                        sched.step()
                        opt.zero_grad()
                    history.append(loss)
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.3f}")
            bar.close()
            model = accelerator.unwrap_model(model, keep_fp32_wrapper=False)  # drop the bf16 autocast forward
            kept = None
            if self._lora is not None and not params.lora.merge:  # evaluated with the adapters; removed after
                kept, self._lora = self._lora, None
            if self._lora is not None:  # W + (alpha / r) B A written into the weights, the adapter modules gone
                merged = self._lora.merge_and_unload()
                if merged is not model:
                    raise RuntimeError("peft returned another model object from merge_and_unload")
                self._lora = None
            model.eval()
        except BaseException:
            if self._lora is not None:  # the adapters out again: the model's structure as it came in
                self._lora.unload()
                self._lora = None
            raise
        finally:
            lean.close()
            for p, dtype in self._upcast:  # the model's own dtype again
                p.data = p.data.to(dtype)
            self._upcast = []
            if checkpointing is not None:
                off = getattr(checkpointing, "activation_checkpointing_disable", None) or \
                    checkpointing.gradient_checkpointing_disable
                off()
        self.history = history
        out = self.result(model)
        out.adapter = kept
        return out

    def result(self, model) -> MethodResult:
        """What :meth:`apply` returns: the model and the loss history's ends (a subclass adds its facts)."""
        h = self.history
        info = {"steps": len(h), "first_loss": h[0], "last_loss": h[-1]} if h else None
        if h and getattr(self, "targets", None):
            info["targets"] = self.targets
        if h and getattr(self, "_lora_info", None):
            info["lora"] = self._lora_info
        return MethodResult(model, info=info)

    def backward(self, accelerator, model, loss, batch, ctx) -> None:
        """Hook for methods that shape the update (e.g. bi-level projection); default: plain backward."""
        accelerator.backward(loss)

