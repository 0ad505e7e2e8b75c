"""The edit: activation rows and their targets, the forget/retain mix, and the down-projection fit."""

from __future__ import annotations

import logging
import math

import torch

from unlearnbench.core.optim import adamw

from .activations import down_proj_rows
from .config import LunarParams

log = logging.getLogger(__name__)


def _fit(weights, data, params: LunarParams, seed: int, progress: bool = False) -> list[float]:
    """Train down-projection weights in place: MSE over shuffled rows, AdamW, exponential decay. A
    half-precision weight (a bf16 model) trains as an fp32 copy, written back rounded at the end."""
    from tqdm.auto import tqdm

    model_weights = weights
    weights = [w if w.dtype == torch.float32 else w.detach().float() for w in weights]
    for w in weights:
        w.requires_grad_(True)
    opt = adamw(weights, lr=params.lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=params.gamma)
    g = torch.Generator().manual_seed(seed)
    n_rows = data[0][0].shape[0]
    history = []
    bar = tqdm(range(params.epochs), desc="lunar", disable=not progress, leave=False)
    for _ in bar:
        perm = torch.randperm(n_rows, generator=g)
        for i in range(0, n_rows, params.batch_size):
            idx = perm[i:i + params.batch_size]
            loss = sum(torch.nn.functional.mse_loss(x[idx] @ w.T, y[idx]) for (x, y), w in zip(data, weights))
            opt.zero_grad()
            loss.backward()
            opt.step()
            history.append(loss.item())
        sched.step()
        bar.set_postfix(loss=f"{history[-1]:.4f}")
    for w, mw in zip(weights, model_weights):
        w.requires_grad_(False)
        if w is not mw:
            with torch.no_grad():
                mw.copy_(w)
    return history


def _rows(model, tokenizer, layers, forget_q, retain_q, r, coeff, skip, general=()) -> dict[int, tuple]:
    """Training rows per layer: forget rows target output + coeff·r_l; retain rows (retain questions,
    and everyday prompts with the model's own answers) their own output."""
    f = down_proj_rows(model, tokenizer, layers, forget_q, skip)
    parts = [f]
    if retain_q:
        parts.append(down_proj_rows(model, tokenizer, layers, retain_q, skip))
    if general:
        qs, answers = zip(*general)
        parts.append(down_proj_rows(model, tokenizer, layers, list(qs), skip, answers=list(answers)))
    out = {}
    for l in layers:
        fx, fy = f[l]
        rx = torch.cat([fx[:0]] + [p[l][0] for p in parts[1:]])
        ry = torch.cat([fy[:0]] + [p[l][1] for p in parts[1:]])
        out[l] = (fx, fy + coeff * r[l], rx, ry)
    return out


def _mix(rows: tuple, forget_share: float, seed: int, max_retain: int | None = None) -> tuple:
    """One (X, Y) table from forget and retain rows. Forget rows are repeated until they make up
    at least ``forget_share`` of the table; ``max_retain`` subsamples the retain rows."""
    fx, fy, rx, ry = rows
    g = torch.Generator().manual_seed(seed)
    if max_retain is not None and rx.shape[0] > max_retain:
        keep = torch.randperm(rx.shape[0], generator=g)[:max_retain]
        rx, ry = rx[keep], ry[keep]
    reps = 1
    if forget_share > 0 and fx.shape[0]:
        need = forget_share / (1 - forget_share) * rx.shape[0]
        reps = max(1, int(math.ceil(need / fx.shape[0])))
    return torch.cat([fx.repeat(reps, 1), rx]), torch.cat([fy.repeat(reps, 1), ry])
