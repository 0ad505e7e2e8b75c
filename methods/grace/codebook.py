"""GRACE's codebook: a wrapper around one layer's MLP down-projection (see the package doc)."""

from __future__ import annotations

import torch


class GraceCodebook(torch.nn.Module):
    """Keys (the wrapped layer's inputs at edited prompts' last tokens), deferral radii and values.

    Inference: each token whose input lies within the radius of its *nearest* key gets that key's
    value as the layer's output; every other token gets the layer's own output, bit for bit.
    ``slot`` (set only while a value is trained) forces one position's output to a tensor.
    """

    def __init__(self, layer: torch.nn.Module, d_in: int, d_out: int):
        super().__init__()
        self.layer = layer
        w = next(layer.parameters())
        self.register_buffer("keys", torch.zeros(0, d_in, dtype=torch.float32, device=w.device))
        self.register_buffer("eps", torch.zeros(0, dtype=torch.float32, device=w.device))
        self.values = torch.nn.Parameter(torch.zeros(0, d_out, dtype=w.dtype, device=w.device), requires_grad=False)
        self.labels: list[tuple[int, ...]] = []
        self.slot: tuple[int, int, torch.Tensor] | None = None  # (row, position, value) while training

    def nearest(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(distance to the nearest key, its index) for every token of ``x`` [..., d_in]."""
        d = torch.cdist(x.reshape(-1, x.shape[-1]).float(), self.keys.float())
        dist, idx = d.min(-1)
        return dist.view(x.shape[:-1]), idx.view(x.shape[:-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer(x)
        if len(self.keys):
            dist, idx = self.nearest(x)
            hit = dist <= self.eps[idx]
            if bool(hit.any()):
                out = torch.where(hit[..., None], self.values[idx].to(out.dtype), out)
        if self.slot is not None:
            row, pos, value = self.slot
            out = out.clone()
            out[row, pos] = value.to(out.dtype)
        return out

    @torch.no_grad()
    def place(self, query: torch.Tensor, label: tuple[int, ...], eps: float, expand: str) -> tuple[int, str]:
        """Where the edit with this ``query`` [d_in] and target ``label`` goes (the paper's Alg. 1):
        a new key when no key is within ε_init + ε_nearest; the nearest key, its radius widened to
        the query, when the labels agree; otherwise a new key, the two radii split at half the
        distance. Returns (index of the key whose value is trained, "add" | "expand" | "split")."""
        query = query.float()
        if len(self.keys):
            dist, idx = self.nearest(query[None])
            dist, i = float(dist[0]), int(idx[0])
            if dist <= eps + float(self.eps[i]):
                if self.labels[i] == label:
                    if dist > float(self.eps[i]):
                        self.eps[i] = dist
                        if expand == "moving_average":
                            self.keys[i] = 0.5 * self.keys[i] + 0.5 * query
                    return i, "expand"
                self._add(query, label, dist / 2)
                self.eps[i] = dist / 2 - 1e-5
                return len(self.keys) - 1, "split"
        self._add(query, label, eps)
        return len(self.keys) - 1, "add"

    def _add(self, query: torch.Tensor, label: tuple[int, ...], eps: float) -> None:
        self.keys = torch.cat([self.keys, query[None]])
        self.eps = torch.cat([self.eps, torch.tensor([eps], dtype=self.eps.dtype, device=self.eps.device)])
        self.values = torch.nn.Parameter(torch.cat([self.values.data, self.values.new_zeros(1, self.values.shape[1])]),
                                         requires_grad=False)
        self.labels.append(label)
