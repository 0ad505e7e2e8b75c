"""Where things live in each architecture: one entry per model family.

Methods that touch specific modules (LUNAR's down-projection, the editing family's MLP output
matrices) look them up here, so a new architecture is one entry.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ArchMap:
    layers: str        # the ModuleList of transformer blocks
    mlp_out: str       # within a block: the MLP's output projection (rows = hidden size)
    mlp_out_transposed: bool = False  # GPT-2's Conv1D stores weight as (in, out)
    embeds_enter_residual: bool = True  # inputs_embeds *are* the residual stream entering block 0
    # (False for GPT-2, which adds position embeddings, and Gemma, which scales them)


ARCH: dict[str, ArchMap] = {
    "llama": ArchMap("model.layers", "mlp.down_proj"),
    "mistral": ArchMap("model.layers", "mlp.down_proj"),
    "qwen2": ArchMap("model.layers", "mlp.down_proj"),
    "gemma": ArchMap("model.layers", "mlp.down_proj", embeds_enter_residual=False),
    "gpt2": ArchMap("transformer.h", "mlp.c_proj", mlp_out_transposed=True, embeds_enter_residual=False),
}


def arch_of(model) -> ArchMap:
    kind = getattr(model.config, "model_type", None)
    if kind not in ARCH:
        raise ValueError(f"no module map for model_type {kind!r}; known: {sorted(ARCH)} (add one to unlearnbench/core/arch.py)")
    return ARCH[kind]


def embedding_weights(model) -> list[torch.nn.Parameter]:
    """The token embedding and the LM head's weight, each once (one tensor when they are tied)."""
    found = {}
    for m in (model.get_input_embeddings(), model.get_output_embeddings()):
        w = getattr(m, "weight", None) if m is not None else None
        if w is not None:
            found.setdefault(id(w), w)
    return list(found.values())


def blocks(model) -> torch.nn.ModuleList:
    return model.get_submodule(arch_of(model).layers)


def mlp_out(model, layer: int) -> torch.nn.Module:
    return blocks(model)[layer].get_submodule(arch_of(model).mlp_out)


def set_mlp_out(model, layer: int, module: torch.nn.Module) -> None:
    """Put ``module`` where block ``layer``'s MLP output projection is (GRACE's codebook and WISE's
    side memory wrap it)."""
    parent, _, attr = arch_of(model).mlp_out.rpartition(".")
    setattr(blocks(model)[layer].get_submodule(parent) if parent else blocks(model)[layer], attr, module)


def mlp_out_name(model, layer: int) -> str:
    a = arch_of(model)
    return f"{a.layers}.{layer}.{a.mlp_out}"


class _StopForward(Exception):
    pass


def run_until(model, layer: int, **inputs) -> None:
    """Run the forward pass only up to block ``layer`` (inclusive), for callers that read
    activations with hooks: the later blocks and the vocabulary-sized LM head are skipped."""
    def stop(mod, inp, out):
        raise _StopForward

    _forward_until_stopped(model, blocks(model)[layer].register_forward_hook(stop), inputs)


def _forward_until_stopped(model, handle, inputs: dict) -> None:
    """Run ``model`` until the hook behind ``handle`` raises :class:`_StopForward`, then remove it."""
    try:
        model(**inputs)
    except _StopForward:
        pass
    finally:
        handle.remove()


@torch.no_grad()
def residual_before(model, layer: int, **inputs) -> torch.Tensor:
    """The residual stream entering block ``layer`` (blocks from ``layer`` on are not run)."""
    cap = {}

    def grab(mod, args, kwargs):
        cap["h"] = args[0] if args else kwargs["hidden_states"]
        raise _StopForward

    _forward_until_stopped(model, blocks(model)[layer].register_forward_pre_hook(grab, with_kwargs=True), inputs)
    return cap["h"]


@contextmanager
def starting_at(model, layer: int):
    """Within the block, the base model runs blocks ``layer``.. only, fed ``inputs_embeds`` =
    :func:`residual_before` — for loops that re-run a model whose first blocks do not change
    (the editing family's value optimisation). Needs ``embeds_enter_residual``."""
    a = arch_of(model)
    if not a.embeds_enter_residual:
        raise ValueError(f"{model.config.model_type}: inputs_embeds are not the residual stream")
    parent_name, _, attr = a.layers.rpartition(".")
    parent = model.get_submodule(parent_name)
    full = getattr(parent, attr)
    setattr(parent, attr, torch.nn.ModuleList(list(full)[layer:]))
    try:
        yield
    finally:
        setattr(parent, attr, full)
