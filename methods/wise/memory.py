"""WISE's side memory: a wrapper around one layer's MLP down-projection (see the package doc)."""

from __future__ import annotations

import copy

import torch


def activation_score(side: torch.Tensor, main: torch.Tensor) -> torch.Tensor:
    """WISE's Δ_act per token: ‖A(x)(W_side − W_main)‖₂ = the norm of the two outputs' difference."""
    return (side.float() - main.float()).norm(dim=-1)


class SideMemory(torch.nn.Module):
    """The main memory (the original layer, never changed), finished side memories and the one
    being edited.

    Inference routes each token: among the side memories whose activation score at that token
    reaches their threshold (``act_ratio`` × the smallest in-scope score of their edits), the
    one with the highest score gives the output; with none, the main memory does — bit for bit.
    ``editing`` (set while an edit trains): every token reads the current side memory, and the
    per-token scores are kept in ``scores`` for the routing loss.
    """

    def __init__(self, layer: torch.nn.Module, act_ratio: float):
        super().__init__()
        self.layer = layer
        self.memories = torch.nn.ModuleList()   # finished (merged) side memories
        self.min_acts: list[float] = []          # per memory: the smallest in-scope score of its edits
        self.current = copy.deepcopy(layer).requires_grad_(False)
        self.current_acts: list[float] = []      # in-scope scores of the edits in ``current``
        self.shards: list[tuple[torch.Tensor, list[float]]] = []  # finished shards not merged yet
        self.edits = 0
        self.act_ratio = act_ratio
        self.editing = False
        self.scores: torch.Tensor | None = None

    def candidates(self) -> list[tuple[torch.nn.Module, float]]:
        """(side memory, routing threshold) of every memory that holds edits."""
        out = [(m, self.act_ratio * a) for m, a in zip(self.memories, self.min_acts)]
        if self.current_acts:
            out.append((self.current, self.act_ratio * min(self.current_acts)))
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        main = self.layer(x)
        if self.editing:
            side = self.current(x)
            self.scores = activation_score(side, main)
            return side
        out, best = main, None
        for mem, threshold in self.candidates():
            side = mem(x)
            score = activation_score(side, main)
            best = torch.zeros_like(score) if best is None else best
            take = (score >= threshold) & (score > best)
            if bool(take.any()):
                out = torch.where(take[..., None], side, out)
                best = torch.where(take, score, best)
        return out

    # ---- shards: the bookkeeping after each edit --------------------------------------------

    def new_mask(self, ratio: float, generator: torch.Generator) -> None:
        """A shard's random gradient mask: each entry of the side memory trains with probability ``ratio``."""
        w = self.current.weight
        self.mask = (torch.rand(w.shape, generator=generator) < ratio).to(device=w.device, dtype=w.dtype)

    def finish_edit(self, score: float, save_freq: int, merge_freq: int, retrieve: bool, density: float) -> None:
        """Record an edit's in-scope score; close the shard every ``save_freq`` edits and merge
        every ``merge_freq``."""
        self.current_acts.append(score)
        self.edits += 1
        if self.edits % save_freq:
            return
        done = (copy.deepcopy(self.current), list(self.current_acts))
        self.current = copy.deepcopy(self.layer).requires_grad_(False)
        self.current_acts = []
        if retrieve:
            self.memories.append(done[0])
            self.min_acts.append(min(done[1]))
        else:
            self.shards.append(done)
        if self.edits % merge_freq == 0:
            self.merge(retrieve, merge_freq // save_freq, density)

    @torch.no_grad()
    def merge(self, retrieve: bool, count: int, density: float) -> None:
        """TIES-merge side memories (``peft.utils.merge_utils.ties`` on their differences to the
        main memory, equal weights): Retrieve — the last ``count`` memories become one; Merge —
        the merged memory so far and every finished shard become the one side memory."""
        from peft.utils.merge_utils import ties

        if retrieve:
            group, acts = list(self.memories[-count:]), self.min_acts[-count:]
            keep, keep_acts = list(self.memories[:-count]), self.min_acts[:-count]
        else:
            group = list(self.memories) + [m for m, _ in self.shards]
            acts = self.min_acts + [min(a) for _, a in self.shards]
            keep, keep_acts, self.shards = [], [], []
        if not group:
            return
        w0 = self.layer.weight
        merged = copy.deepcopy(self.layer).requires_grad_(False)
        if len(group) > 1:
            tau = ties([m.weight.float() - w0.float() for m in group], torch.ones(len(group), device=w0.device), density)
            merged.weight.copy_((w0.float() + tau).to(w0.dtype))
        else:
            merged.weight.copy_(group[0].weight)
        self.memories = torch.nn.ModuleList(keep + [merged])
        self.min_acts = keep_acts + [min(acts)]
