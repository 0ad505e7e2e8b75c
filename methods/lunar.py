"""LUNAR: unlearning by neural activation redirection (Shen et al., arXiv 2502.07218;
public code facebookresearch/LUNAR).

Algorithm, as the public code does it:

1. **Direction** r_l, for each layer l: the mean residual-stream activation after block l at the
   last post-instruction token over a *reference* set of prompts the model refuses (here the
   refusal-calibration questions: contracts between entities that do not exist), minus the same
   mean over the forget questions. Prompts are questions only, in the chat template. Not normalised.
2. **Targets** at the chosen layer: rows are the inputs of that layer's MLP down-projection at
   every question token; the target is the original down-projection output, plus ``coeff · r``
   for forget rows.
3. **Training**: only that layer's down-projection weight, MSE over shuffled forget+retain rows,
   AdamW (lr 1e-2), exponential LR decay (γ = 0.9) per epoch, 20 epochs, coeff +2.0.
   Several layers ⇒ the losses are summed (one optimiser over all of them).
4. **Layer selection** (automatic unless ``layers`` is given): the paper sweeps layers and keeps
   the one where forget answers turn into refusals while retain answers survive. We fit the
   edit at each candidate layer and score the *trained* edit with one teacher-forced pass on a
   few questions: ``gain(l) = Δ log p(refusal | forget q) − Δ NLL(true answer | retain q)``;
   the arg-max wins. Candidates: every second layer from a third of the depth up to the second-last layer. (Scoring
   by steering with +coeff·r instead picked layers 11–13 of SmolLM2, where the trained edit
   did not forget at all: PISTOL questions share most tokens, so the fit is a compromise.)
5. **Sequential requests**: ``apply`` again on the already-unlearned model; it starts from the
   current weights and recomputes the direction on that model.

Attacks (``reverse_direction``, ``layer_skip``) live in :mod:`methods.lunar_attacks`.

Deviations from the public code:
* Rows are the *question* tokens only: SmolLM2's chat template prepends a system prompt shared
  by every question; identical rows with conflicting targets (forget vs retain) would fight,
  so the shared template prefix is dropped (the issue asks for question tokens).
* The direction is taken at the last prompt token (the code's ``positions=-1``).
* float32 instead of bfloat16 (CPU).
* Optional (``general_retain``): everyday prompts as extra retain rows, to hold general ability.
* Layer selection scores trained edits with a teacher-forced proxy instead of generating and
  judging answers, so a method never needs the evaluator.
"""

from __future__ import annotations

import logging
import random

import torch
from pydantic import Field

from pistol_data.side_sets import anchor_questions
from unlearnbench.prompts import collate, encode_qa, prompt

from .arch import blocks, mlp_out
from .base import Method, MethodParams, UnlearnRequest, register_method

log = logging.getLogger(__name__)


class LunarParams(MethodParams):
    layers: list[int] | None = Field(None, description="layers whose down-projection is trained; None = automatic selection")
    coeff: float = Field(2.0, description="redirection strength: forget targets = MLP output + coeff·r")
    lr: float = Field(1e-2, gt=0, description="AdamW learning rate (public code default)")
    epochs: int = Field(20, ge=1, description="passes over the activation rows")
    batch_size: int = Field(64, ge=1, description="activation rows per step")
    gamma: float = Field(0.9, gt=0, le=1, description="exponential LR decay per epoch")
    candidate_layers: list[int] | None = Field(None, description="layers the automatic selection sweeps "
                                               "(None: every `layer_stride`-th from a third of the depth to the second-last)")
    layer_stride: int = Field(2, ge=1, description="stride of the default candidate layers")
    select_questions: int = Field(8, ge=1, description="forget and retain questions used to score each candidate")
    max_reference: int = Field(64, ge=1, description="reference (refused) prompts used for the direction")
    general_retain: int = Field(0, ge=0, description="also keep the MLP output unchanged on this many everyday "
                                "prompts (pistol_data anchor questions): guards general ability")


# ---- activations -------------------------------------------------------------------------

def _prompt_ids(tokenizer, questions: list[str]) -> list[list[int]]:
    return [tokenizer(prompt(tokenizer, q), add_special_tokens=False)["input_ids"] for q in questions]


def template_prefix_len(tokenizer) -> int:
    """Tokens every prompt shares before the question (system prompt, role markers)."""
    a, b = _prompt_ids(tokenizer, ["Alpha question here?", "Zebra query there?"])
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _left_pad(ids: list[list[int]], pad: int, device):
    n = max(len(x) for x in ids)
    t = torch.tensor([[pad] * (n - len(x)) + x for x in ids], device=device)
    m = torch.tensor([[0] * (n - len(x)) + [1] * len(x) for x in ids], device=device)
    return t, m


@torch.no_grad()
def mean_last_token_residual(model, tokenizer, questions: list[str], batch_size: int = 32) -> torch.Tensor:
    """[n_layers, d] mean residual stream after each block at the last prompt token."""
    device = next(model.parameters()).device
    ids = _prompt_ids(tokenizer, questions)
    total = None
    for i in range(0, len(ids), batch_size):
        t, m = _left_pad(ids[i:i + batch_size], tokenizer.pad_token_id, device)
        hs = model(input_ids=t, attention_mask=m, output_hidden_states=True).hidden_states
        # hidden_states[l + 1] is block l's output (the last entry has the final norm applied)
        last = torch.stack([h[:, -1] for h in hs[1:]], 1).double().sum(0)
        total = last if total is None else total + last
    return (total / len(ids)).float()


def directions(model, tokenizer, reference: list[str], forget: list[str]) -> torch.Tensor:
    """r_l = mean(reference) − mean(forget), per layer: [n_layers, d]."""
    return mean_last_token_residual(model, tokenizer, reference) - mean_last_token_residual(model, tokenizer, forget)


@torch.no_grad()
def down_proj_rows(model, tokenizer, layer: int, questions: list[str], skip: int, batch_size: int = 32):
    """(inputs, outputs) of the layer's down-projection at every question token (template prefix skipped)."""
    device = next(model.parameters()).device
    module = mlp_out(model, layer)
    ids = _prompt_ids(tokenizer, questions)
    xs, ys, cap = [], [], {}
    h = module.register_forward_hook(lambda mod, inp, out: cap.update(x=inp[0], y=out))
    try:
        for i in range(0, len(ids), batch_size):
            chunk = ids[i:i + batch_size]
            t, m = _left_pad(chunk, tokenizer.pad_token_id, device)
            model(input_ids=t, attention_mask=m)
            n = t.shape[1]
            for j, x in enumerate(chunk):
                start = n - len(x) + skip
                xs.append(cap["x"][j, start:].float())
                ys.append(cap["y"][j, start:].float())
    finally:
        h.remove()
    return torch.cat(xs), torch.cat(ys)


# ---- steering (selection and attacks) ----------------------------------------------------------

class steer:
    """Context manager adding ``vec`` to block ``layer``'s output at positions ≥ ``start`` (per row)."""

    def __init__(self, model, layer: int, vec: torch.Tensor, start: torch.Tensor | None = None):
        self.block, self.vec, self.start = blocks(model)[layer], vec, start

    def _hook(self, mod, inp, out):
        hs = out[0] if isinstance(out, tuple) else out
        add = self.vec.to(hs.dtype)
        if self.start is None:
            hs = hs + add
        else:
            pos = torch.arange(hs.shape[1], device=hs.device)[None, :, None]
            hs = hs + add * (pos >= self.start[:, None, None]).to(hs.dtype)
        return (hs, *out[1:]) if isinstance(out, tuple) else hs

    def __enter__(self):
        self.h = self.block.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self.h.remove()


@torch.no_grad()
def _answer_nll(model, tokenizer, pairs, skip, steer_layer=None, vec=None) -> torch.Tensor:
    """Per-example mean NLL of the answer, optionally steering the question tokens."""
    rows = [encode_qa(tokenizer, q, a) for q, a in pairs]
    b = collate([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows], tokenizer.pad_token_id)
    device = next(model.parameters()).device
    b = {k: v.to(device) for k, v in b.items()}
    start = torch.full((len(rows),), skip, device=device)
    ctx = steer(model, steer_layer, vec, start) if steer_layer is not None else None
    if ctx:
        ctx.__enter__()
    try:
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].float()
    finally:
        if ctx:
            ctx.__exit__()
    labels = b["labels"][:, 1:]
    mask = labels != -100
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
    return (nll * mask).sum(1) / mask.sum(1)


def _fit(weights, data, params: LunarParams, seed: int, progress: bool = False) -> list[float]:
    """Train down-projection weights in place: MSE over shuffled rows, AdamW, exponential decay."""
    from tqdm.auto import tqdm

    for w in weights:
        w.requires_grad_(True)
    opt = torch.optim.AdamW(weights, lr=params.lr)
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
    for w in weights:
        w.requires_grad_(False)
    return history


def _rows(model, tokenizer, layer, forget_q, retain_q, r, coeff, skip):
    fx, fy = down_proj_rows(model, tokenizer, layer, forget_q, skip)
    fy = fy + coeff * r[layer]
    rx, ry = down_proj_rows(model, tokenizer, layer, retain_q, skip) if retain_q else (fx[:0], fy[:0])
    return torch.cat([fx, rx]), torch.cat([fy, ry])


def select_layer(model, tokenizer, request: UnlearnRequest, r: torch.Tensor, params: LunarParams, skip: int,
                 general: list[str] = ()):
    """Fit the edit at each candidate layer and keep the one whose *trained* edit best turns forget
    answers into refusals while keeping retain answers: arg-max over layers of
    Δ log p(refusal | forget q) − Δ NLL(true answer | retain q), one teacher-forced pass each."""
    n = r.shape[0]
    cands = params.candidate_layers or list(range(n - 2, n // 3 - 1, -params.layer_stride))[::-1]
    rng = random.Random(request.seed)
    fq = rng.sample(request.forget, min(params.select_questions, len(request.forget)))
    rq = rng.sample(request.retain, min(params.select_questions, len(request.retain))) if request.retain else []
    refusal = (request.refusal_targets or ["I don't know."])[0]
    f_ref = [(x.question, refusal) for x in fq]
    r_true = [(x.question, x.answer) for x in rq]
    base_f = _answer_nll(model, tokenizer, f_ref, skip).mean()
    base_r = _answer_nll(model, tokenizer, r_true, skip).mean() if r_true else torch.tensor(0.0)
    forget_q = [x.question for x in request.forget]
    retain_q = [x.question for x in request.retain] + list(general)
    scores, fitted = {}, {}
    for layer in cands:
        w = mlp_out(model, layer).weight
        original = w.detach().clone()
        _fit([w], [_rows(model, tokenizer, layer, forget_q, retain_q, r, params.coeff, skip)], params, request.seed)
        d_ref = base_f - _answer_nll(model, tokenizer, f_ref, skip).mean()
        d_ret = (_answer_nll(model, tokenizer, r_true, skip).mean() - base_r) if r_true else 0.0
        scores[layer] = float(d_ref - d_ret)
        fitted[layer] = w.detach().clone()
        with torch.no_grad():
            w.copy_(original)
    best = max(scores, key=scores.get)
    log.info("LUNAR layer scores %s → layer %d", {k: round(v, 3) for k, v in scores.items()}, best)
    return best, scores, fitted[best]


@register_method("lunar")
class Lunar(Method):
    """Redirect forget activations toward the refusal region by training one MLP down-projection."""

    kind = "steer"
    Params = LunarParams

    def apply(self, model, tokenizer, request: UnlearnRequest, params: LunarParams):

        if not request.forget:
            raise ValueError("the request has an empty forget set")
        if not request.refusal_questions:
            raise ValueError("LUNAR needs reference prompts the model refuses (request.refusal_questions)")
        torch.manual_seed(request.seed)
        model.eval()
        n_layers = len(blocks(model))
        bad = [l for l in params.layers or [] if not 0 <= l < n_layers]
        if bad:
            raise ValueError(f"LUNAR layers {bad} out of range 0..{n_layers - 1}")
        skip = template_prefix_len(tokenizer)
        forget_q = [x.question for x in request.forget]
        general = list(anchor_questions())[: params.general_retain]
        reference = [x.question for x in request.refusal_questions[: params.max_reference]]
        r = directions(model, tokenizer, reference, forget_q)
        model.requires_grad_(False)
        if params.layers:
            layers = list(params.layers)
            retain_q = [x.question for x in request.retain] + general
            data = [_rows(model, tokenizer, l, forget_q, retain_q, r, params.coeff, skip) for l in layers]
            self.history = _fit([mlp_out(model, l).weight for l in layers], data, params, request.seed,
                                request.progress)
            self.layer_scores = None
        else:
            best, self.layer_scores, weight = select_layer(model, tokenizer, request, r, params, skip, general)
            layers = [best]
            with torch.no_grad():
                mlp_out(model, best).weight.copy_(weight)
        self.layers, self.direction = layers, {l: r[l].clone() for l in layers}
        self.coeff = params.coeff
        return model

    def attack_info(self) -> dict | None:
        if not getattr(self, "layers", None):
            return None
        return {"layers": list(self.layers), "directions": {l: self.coeff * self.direction[l] for l in self.layers}}
