"""Inference-time attacks: ways to pull forgotten knowledge back out of an unlearned model.

An attack is a registered factory ``(model, info) -> context manager | None``. ``info`` is what
the method chose to expose about its edit (``Method.attack_info()``): ``layers`` it modified and,
for steering methods, the ``directions`` (layer → vector it added). An attack that does not
apply to what a method exposes returns ``None`` and is not reported. The evaluator scores the
forget set under each attack; it never knows which method ran.

* ``reverse_direction`` (LUNAR's code): subtract the method's direction at the output of each
  modified layer, at every position.
* ``layer_skip`` (LUNAR's code): skip the two blocks on each side of each modified layer
  (identity blocks), so a redirection that later layers rely on is bypassed.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

ATTACKS: dict[str, "AttackInfo"] = {}


@dataclass(frozen=True)
class AttackInfo:
    name: str
    meaning: str
    factory: Callable


def register_attack(name: str, meaning: str):
    def deco(fn):
        ATTACKS[name] = AttackInfo(name, meaning, fn)
        return fn
    return deco


@contextlib.contextmanager
def _hooked(registrations):
    """Register forward hooks for the duration of the block: ``[(module, hook, with_kwargs)]``."""
    handles = [m.register_forward_hook(h, with_kwargs=kw) for m, h, kw in registrations]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _blocks(model):
    from methods.arch import blocks

    return blocks(model)


@register_attack("reverse_direction", "forget ROUGE-1 after subtracting the method's steering direction at inference")
def reverse_direction(model, info: dict | None):
    if not info or not info.get("directions"):
        return None
    bl = _blocks(model)

    def make(vec):
        def hook(mod, inp, out):
            hs = out[0] if isinstance(out, tuple) else out
            hs = hs - vec.to(hs.device, hs.dtype)
            return (hs, *out[1:]) if isinstance(out, tuple) else hs
        return hook

    return _hooked([(bl[layer], make(vec), False) for layer, vec in info["directions"].items()])


@register_attack("layer_skip", "forget ROUGE-1 when the blocks around the modified layers are skipped")
def layer_skip(model, info: dict | None):
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

    return _hooked([(bl[l], identity, True) for l in skip])
