"""Attacks: ways to pull forgotten knowledge back out of an unlearned model.

An attack is a registered factory ``(model, info, target) -> context manager | None``. ``info``
is what the method chose to expose about its edit (the ``layers``/``directions`` of the
``MethodResult`` its ``apply`` returned, as a dict; the evaluator never imports a method): ``layers`` it
modified and, for steering methods, the ``directions`` (layer → vector it added). ``target``
(:class:`Target`) holds the tokenizer, the forget questions and the retain questions. The
context manager yields the :class:`Target` to score — the model to ask (the same one with hooks,
or an attacked copy) and the forget questions to score on. An attack that does not apply
returns ``None`` and is not reported. The evaluator scores forget ROUGE-1 under each attack; it
never knows which method ran. ``EvalParams.attacks`` picks which attacks run.

* ``reverse_direction`` (LUNAR's code): subtract the method's direction at the output of each
  modified layer, at every position.
* ``layer_skip`` (LUNAR's code): skip the two blocks on each side of each modified layer
  (identity blocks), so a redirection that later layers rely on is bypassed.
* ``quantization``: int8 dynamic quantization of every linear layer (CPU, ``torch.ao``): an
  unlearning that only nudged weights by less than the quantization step can come back.
  (torch 2.13 warns that its quantized tensors are deprecated; torchao is the successor.)
* ``relearn_forget``: a few fine-tuning steps on half of the forget questions (split by
  attribute), then score the *other* half: knowledge that was hidden rather than removed
  returns faster than it could be learnt (compare with the same attack on the base model).
* ``relearn_neighbour``: the same steps on the retain questions of neighbouring contracts
  (sharing an entity), then score the whole forget set.
"""

from __future__ import annotations

import contextlib
import copy
import random
import warnings
from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from .core.registry import Registry


@dataclass(frozen=True)
class AttackInfo:
    name: str
    meaning: str
    factory: Callable


ATTACKS: Registry[AttackInfo] = Registry("attack", group="unlearnbench.attacks")


def register_attack(name: str, meaning: str):
    """An attack factory ``(model, info, target) -> context manager | None``; a name already taken is an error."""
    def deco(fn):
        ATTACKS.register(name, AttackInfo(name, meaning, fn))
        return fn
    return deco


@dataclass
class Target:
    """What an attack works with and what is scored: ``model`` answers ``forget``."""

    model: object
    tokenizer: object
    forget: list = field(default_factory=list)     # direct forget QA (QARecord)
    neighbour: list = field(default_factory=list)  # direct QA of neighbouring contracts
    seed: int = 0


@contextlib.contextmanager
def _hooked(registrations, target: Target):
    """Register forward hooks for the duration of the block: ``[(module, hook, with_kwargs)]``."""
    handles = [m.register_forward_hook(h, with_kwargs=kw) for m, h, kw in registrations]
    try:
        yield target
    finally:
        for h in handles:
            h.remove()


def _blocks(model):
    from .core.arch import blocks

    return blocks(model)


@register_attack("reverse_direction", "forget ROUGE-1 after subtracting the method's steering direction at inference")
def reverse_direction(model, info: dict | None, target: Target):
    if not info or not info.get("directions"):
        return None
    bl = _blocks(model)

    def make(vec):
        def hook(mod, inp, out):
            hs = out[0] if isinstance(out, tuple) else out
            hs = hs - vec.to(hs.device, hs.dtype)
            return (hs, *out[1:]) if isinstance(out, tuple) else hs
        return hook

    return _hooked([(bl[layer], make(vec), False) for layer, vec in info["directions"].items()], target)


@register_attack("layer_skip", "forget ROUGE-1 when the blocks around the modified layers are skipped")
def layer_skip(model, info: dict | None, target: Target):
    if not info or not info.get("layers"):
        return None
    bl = _blocks(model)
    skip = sorted({l + d for l in info["layers"] for d in (-2, -1, 1, 2)} - set(info["layers"]))
    skip = [l for l in skip if 0 <= l < len(bl)]
    if not skip:
        return None

    def identity(mod, args, kwargs, out):
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

    return _hooked([(bl[l], identity, True) for l in skip], target)


def _merged(model):
    """``model`` with any LoRA adapters it carries (``lora.merge: false``) merged into their layers
    and the adapter modules gone: what a deployed model is quantized from."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        return model
    for name, mod in list(model.named_modules()):
        if isinstance(mod, LoraLayer):
            mod.merge()
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, mod.get_base_layer())
    return model


@register_attack("quantization", "forget ROUGE-1 after int8 dynamic quantization of every linear layer (CPU)")
def quantization(model, info: dict | None, target: Target):
    @contextlib.contextmanager
    def run():
        with warnings.catch_warnings():  # torch.ao's quantized tensors are deprecated (see above)
            warnings.simplefilter("ignore", UserWarning)
            q = torch.ao.quantization.quantize_dynamic(_merged(copy.deepcopy(model)).float().cpu(), {torch.nn.Linear},
                                                       dtype=torch.qint8)
        try:
            yield replace(target, model=q)
        finally:
            del q
    return run()


def relearn(model, tokenizer, records, steps: int, lr: float, batch_size: int, seed: int):
    """A copy of ``model`` fine-tuned for ``steps`` AdamW steps on ``records`` (answer NLL), every
    weight trainable (a method may hand back a model with some or all weights frozen); fp32
    weights (a bf16 model's copy trains in fp32 and is rounded back to bf16 for scoring), bf16
    autocast on CUDA, fp32 on CPU (``precision: auto``, as the methods train)."""
    from .core import precision
    from .core.optim import adamw
    from .core.prompts import collate, encode_qa

    dtype = next(model.parameters()).dtype
    m = copy.deepcopy(model).float()
    m.requires_grad_(True)
    m.train()
    device = next(m.parameters()).device
    rows = [encode_qa(tokenizer, r.question, r.answer) for r in records]
    opt = adamw(m.parameters(), lr=lr)
    rng = random.Random(seed)
    for _ in range(steps):
        b = collate(rng.sample(rows, min(batch_size, len(rows))), tokenizer.pad_token_id)
        with precision.autocast("auto", device):
            loss = m(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device),
                     labels=b["labels"].to(device)).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    return m.to(dtype)


RELEARN_STEPS, RELEARN_LR, RELEARN_BATCH = 10, 2e-5, 4


def halves(forget: list, seed: int) -> tuple[list, list]:
    """The forget QA split by attribute into a relearning half and a held-out half."""
    attrs = sorted({r.attribute or r.question for r in forget})
    random.Random(seed).shuffle(attrs)
    first = set(attrs[: len(attrs) // 2])
    return ([r for r in forget if (r.attribute or r.question) in first],
            [r for r in forget if (r.attribute or r.question) not in first])


@register_attack("relearn_forget", f"held-out forget ROUGE-1 after {RELEARN_STEPS} fine-tuning steps on the other half "
                 "of the forget set")
def relearn_forget(model, info: dict | None, target: Target):
    train, held = halves(target.forget, target.seed)
    if not train or not held:
        return None

    @contextlib.contextmanager
    def run():
        m = relearn(model, target.tokenizer, train, RELEARN_STEPS, RELEARN_LR, RELEARN_BATCH, target.seed)
        try:
            yield replace(target, model=m, forget=held)
        finally:
            del m
    return run()


@register_attack("relearn_neighbour", f"forget ROUGE-1 after {RELEARN_STEPS} fine-tuning steps on neighbouring "
                 "contracts' retain questions")
def relearn_neighbour(model, info: dict | None, target: Target):
    if not target.neighbour:
        return None

    @contextlib.contextmanager
    def run():
        m = relearn(model, target.tokenizer, target.neighbour, RELEARN_STEPS, RELEARN_LR, RELEARN_BATCH, target.seed)
        try:
            yield replace(target, model=m)
        finally:
            del m
    return run()
