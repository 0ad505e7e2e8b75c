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
   AdamW (lr 1e-2), exponential LR decay (γ = 0.9) per epoch, 20 epochs, coeff +2.0 (ours: 2.5,
   see the deviations).
   Several layers ⇒ the losses are summed (one optimiser over all of them).
4. **Layer selection** (automatic unless ``layers`` is given): the paper sweeps layers and keeps
   the one where forget answers turn into refusals while retain answers survive. We fit the
   edit at each candidate layer (on at most ``select_max_retain`` retain rows; the winner is
   then refitted on all rows) and score the *trained* edit with one teacher-forced pass on a
   few questions: ``gain(l) = Δ log p(refusal | forget q) − Δ NLL(true answer | retain q)
   − Δ NLL(own answer | everyday q)``;
   the arg-max wins. Candidates: every second layer from a third of the depth up to the second-last layer. (Scoring
   by steering with +coeff·r instead picked layers 11–13 of SmolLM2, where the trained edit
   did not forget at all: PISTOL questions share most tokens, so the fit is a compromise.)
5. **Sequential requests**: ``apply`` again on the already-unlearned model; it starts from the
   current weights and recomputes the direction on that model.

Attacks (``reverse_direction``, ``layer_skip``) live in :mod:`unlearnbench.attacks`; they read the
layer and direction from :meth:`Lunar.attack_info`.

Deviations from the public code:
* Rows are the *question* tokens only: SmolLM2's chat template prepends a system prompt shared
  by every question; identical rows with conflicting targets (forget vs retain) would fight,
  so the shared template prefix is dropped (the issue asks for question tokens).
* The direction is taken at the last prompt token (the code's ``positions=-1``).
* float32 instead of bfloat16 (CPU).
* ``general_retain`` (default 120): everyday prompts, with the model's own greedy answers
  (``general_answer_tokens``), as extra retain rows — question *and* answer tokens, since
  generation runs through the edited layer too. Without them SmolLM2 lost 0.11 of its
  general-knowledge utility (the edit spreads to every prompt); the paper's retain set is the
  retain QA alone.
* Forget rows are repeated until they are ≥ ``forget_share`` (20%) of the rows: with the
  everyday retain rows they would otherwise be ~2% of the MSE and the redirection too weak
  (SmolLM2 hub edge: refusal 0.5). Batch 128 rows instead of 64 (same epochs; 2× fewer steps).
* ``coeff`` 2.5 instead of the code's 2.0. SmolLM2 × pistol-mini, quickstart implant, one seed
  (hub edge: refusal / utility Δ vs the implanted model / DS; independent edge the same):
  coeff 2.0, share 25% → 0.67 / −0.029 / 18.6 and 1.00 / −0.045 / 6.5; 2.25, 25% → 0.67 /
  −0.034 / 21.7; 2.5, 25% → 0.83 / −0.054 / 13.9 and 1.00 / −0.045 / 9.3; **2.5, 20% → 0.83 /
  −0.049 / 13.9 and 1.00 / −0.035 / 9.3**; 2.5, 15% → 0.67 / −0.049 / 21.7. The refusal and
  utility targets of the benchmark (≥ 0.8, within 0.05) are met by the bold setting only,
  with a thin utility margin on the hub edge.
* Layer selection scores trained edits with a teacher-forced proxy instead of generating and
  judging answers, so a method never needs the evaluator.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random

import torch
from pydantic import Field

from unlearnbench.prompts import collate, encode_qa, prompt, template_prefix_len

from .arch import answer_logits, blocks, mlp_out, run_until
from .training import adamw
from .base import Method, MethodParams, UnlearnRequest, register_method

log = logging.getLogger(__name__)


class LunarParams(MethodParams):
    layers: list[int] | None = Field(None, description="layers whose down-projection is trained; None = automatic selection")
    coeff: float = Field(2.5, description="redirection strength: forget targets = MLP output + coeff·r "
                         "(public code: 2.0; 2.5 chosen on SmolLM2, see the module docstring)")
    lr: float = Field(1e-2, gt=0, description="AdamW learning rate (public code default)")
    epochs: int = Field(20, ge=1, description="passes over the activation rows")
    batch_size: int = Field(128, ge=1, description="activation rows per step")
    gamma: float = Field(0.9, gt=0, le=1, description="exponential LR decay per epoch")
    candidate_layers: list[int] | None = Field(None, description="layers the automatic selection sweeps "
                                               "(None: every `layer_stride`-th from a third of the depth to the second-last)")
    layer_stride: int = Field(2, ge=1, description="stride of the default candidate layers")
    select_questions: int = Field(8, ge=1, description="forget and retain questions used to score each candidate")
    max_reference: int = Field(64, ge=1, description="reference (refused) prompts used for the direction")
    general_retain: int = Field(120, ge=0, description="also keep the MLP output unchanged on this many everyday "
                                "prompts (the request's preserve corpus): guards general ability (0 = the "
                                "public code's retain set only; on SmolLM2 that cost 0.11 utility)")
    forget_share: float = Field(0.2, ge=0, lt=1, description="forget rows are repeated until they are at least "
                                "this share of the rows (0 = the public code's plain mix)")
    select_max_retain: int = Field(2000, ge=1, description="layer search: retain rows per candidate fit (subsample); "
                                   "the chosen layer is then refitted on all rows")
    general_answer_tokens: int = Field(32, ge=0, description="greedy answer tokens of each everyday prompt "
                                       "kept as retain rows too (0 = question tokens only)")


# ---- activations -------------------------------------------------------------------------

def _prompt_ids(tokenizer, questions: list[str]) -> list[list[int]]:
    return [tokenizer(prompt(tokenizer, q), add_special_tokens=False)["input_ids"] for q in questions]


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


def directions(model, tokenizer, reference: list[str], forget: list[str], digest: str | None = None) -> torch.Tensor:
    """r_l = mean(reference) − mean(forget), per layer: [n_layers, d] (with the model's weights
    ``digest``, the reference mean is memoised)."""
    ref = _memo(digest, ("reference", tuple(reference)), lambda: mean_last_token_residual(model, tokenizer, reference))
    return ref - mean_last_token_residual(model, tokenizer, forget)


# What LUNAR reads off the model that does not depend on the request (the reference prompts'
# mean residual, the everyday prompts' greedy answers: ~12 s of a 32 s apply on SmolLM2) is kept
# per model weights, so a grid's cells, which all start from the same implanted model, pay once.
_MEMO: dict[tuple, object] = {}
_MEMO_SIZE = 8


def _weights_digest(model) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name, p in model.state_dict().items():
        h.update(name.encode())
        h.update(str(p.dtype).encode())
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _memo(digest: str | None, key: tuple, compute):
    """``compute()``, remembered under (weights digest, key); no digest: not remembered."""
    if digest is None:
        return compute()
    full = (digest, *key)
    if full not in _MEMO:
        if len(_MEMO) >= _MEMO_SIZE:
            _MEMO.pop(next(iter(_MEMO)))
        _MEMO[full] = compute()
    value = _MEMO[full]
    return value.clone() if isinstance(value, torch.Tensor) else list(value)


@torch.no_grad()
def down_proj_rows(model, tokenizer, layers: list[int], questions: list[str], skip: int,
                   batch_size: int = 32, answers: list[str] | None = None) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, (inputs, outputs) of its down-projection at every question token (template prefix
    skipped) and, when ``answers`` are given, at every answer token after it. One forward pass
    serves every layer, so a layer sweep costs one pass, not one per layer."""
    device = next(model.parameters()).device
    ids = _prompt_ids(tokenizer, questions)
    if answers is not None:
        ids = [p + tokenizer(a, add_special_tokens=False)["input_ids"] for p, a in zip(ids, answers)]
    xs = {l: [] for l in layers}
    ys = {l: [] for l in layers}
    cap: dict[int, tuple] = {}
    hooks = [mlp_out(model, l).register_forward_hook(lambda mod, inp, out, l=l: cap.__setitem__(l, (inp[0], out)))
             for l in layers]
    try:
        for i in range(0, len(ids), batch_size):
            chunk = ids[i:i + batch_size]
            t, m = _left_pad(chunk, tokenizer.pad_token_id, device)
            run_until(model, max(layers), input_ids=t, attention_mask=m)
            n = t.shape[1]
            for l in layers:
                x, y = cap[l]
                for j, q in enumerate(chunk):
                    start = n - len(q) + skip
                    xs[l].append(x[j, start:].float())
                    ys[l].append(y[j, start:].float())
    finally:
        for h in hooks:
            h.remove()
    return {l: (torch.cat(xs[l]), torch.cat(ys[l])) for l in layers}


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
    labels = b["labels"][:, 1:]
    mask = labels != -100
    pos = torch.nn.functional.pad(mask, (0, 1))  # logits at position t predict token t + 1
    try:
        logits = answer_logits(model, b["input_ids"], b["attention_mask"], pos).float()
    finally:
        if ctx:
            ctx.__exit__()
    nll = torch.nn.functional.cross_entropy(logits, labels[mask], reduction="none")
    rows = torch.arange(mask.shape[0], device=mask.device)[:, None].expand_as(mask)[mask]
    per_row = torch.zeros(mask.shape[0], device=nll.device).index_add_(0, rows, nll)
    return per_row / mask.sum(1)


def _fit(weights, data, params: LunarParams, seed: int, progress: bool = False) -> list[float]:
    """Train down-projection weights in place: MSE over shuffled rows, AdamW, exponential decay."""
    from tqdm.auto import tqdm

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
    for w in weights:
        w.requires_grad_(False)
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


def select_layer(model, tokenizer, request: UnlearnRequest, r: torch.Tensor, params: LunarParams, skip: int,
                 general: list[tuple[str, str]] = ()):
    """Fit the edit at each candidate layer and keep the one whose *trained* edit best turns forget
    answers into refusals while keeping retain answers and everyday answers: arg-max over layers of
    Δ log p(refusal | forget q) − Δ NLL(true answer | retain q) − Δ NLL(own answer | everyday q),
    one teacher-forced pass each."""
    n = r.shape[0]
    cands = params.candidate_layers or list(range(n - 2, n // 3 - 1, -params.layer_stride))[::-1]
    rng = random.Random(request.seed)
    fq = rng.sample(request.forget, min(params.select_questions, len(request.forget)))
    rq = rng.sample(request.retain, min(params.select_questions, len(request.retain))) if request.retain else []
    refusal = (request.refusal_targets or ["I don't know."])[0]
    f_ref = [(x.question, refusal) for x in fq]
    r_true = [(x.question, x.answer) for x in rq]
    g_own = [(q, a) for q, a in rng.sample(list(general), min(params.select_questions, len(general))) if a]
    base_f = _answer_nll(model, tokenizer, f_ref, skip).mean()
    base_r = _answer_nll(model, tokenizer, r_true, skip).mean() if r_true else torch.tensor(0.0)
    base_g = _answer_nll(model, tokenizer, g_own, skip).mean() if g_own else torch.tensor(0.0)
    forget_q = [x.question for x in request.forget]
    retain_q = [x.question for x in request.retain]
    rows = _rows(model, tokenizer, cands, forget_q, retain_q, r, params.coeff, skip, general)
    scores = {}
    for layer in cands:
        w = mlp_out(model, layer).weight
        original = w.detach().clone()
        _fit([w], [_mix(rows[layer], params.forget_share, request.seed, params.select_max_retain)], params,
             request.seed)
        d_ref = base_f - _answer_nll(model, tokenizer, f_ref, skip).mean()
        d_ret = (_answer_nll(model, tokenizer, r_true, skip).mean() - base_r) if r_true else 0.0
        d_gen = (_answer_nll(model, tokenizer, g_own, skip).mean() - base_g) if g_own else 0.0
        scores[layer] = float(d_ref - d_ret - d_gen)
        with torch.no_grad():
            w.copy_(original)
    best = max(scores, key=scores.get)
    log.info("LUNAR layer scores %s → layer %d", {k: round(v, 3) for k, v in scores.items()}, best)
    return best, scores, rows[best]


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
        digest = _weights_digest(model)
        general = self._general(model, tokenizer, request.preserve, params, digest)
        reference = [x.question for x in request.refusal_questions[: params.max_reference]]
        r = directions(model, tokenizer, reference, forget_q, digest)
        model.requires_grad_(False)
        if params.layers:
            layers = list(params.layers)
            retain_q = [x.question for x in request.retain]
            rows = _rows(model, tokenizer, layers, forget_q, retain_q, r, params.coeff, skip, general)
            self.layer_scores = None
        else:  # the search fits on subsampled retain rows; the winner is refitted on all of them
            best, self.layer_scores, best_rows = select_layer(model, tokenizer, request, r, params, skip, general)
            layers, rows = [best], {best: best_rows}
        data = [_mix(rows[l], params.forget_share, request.seed) for l in layers]
        self.history = _fit([mlp_out(model, l).weight for l in layers], data, params, request.seed, request.progress)
        self.layers, self.direction = layers, {l: r[l].clone() for l in layers}
        self.coeff = params.coeff
        return model

    def report(self) -> dict | None:
        if not getattr(self, "layers", None):
            return None
        return {"layers": list(self.layers), "layer_scores": self.layer_scores,
                "direction_norm": {l: float(v.norm()) for l, v in self.direction.items()}}

    @staticmethod
    def _general(model, tokenizer, preserve: list[str], params: LunarParams,
                 digest: str | None = None) -> list[tuple[str, str]]:
        """Everyday prompts (the request's preserve corpus) with the model's own greedy answers: the
        edit must leave the MLP output unchanged on them, answer tokens included (generation runs
        through the edited layer too)."""
        qs = list(preserve)[: params.general_retain]
        if not qs:
            return []
        if params.general_answer_tokens == 0:
            return [(q, "") for q in qs]
        from unlearnbench.generation import generate_answers

        answers = _memo(digest, ("general", tuple(qs), params.general_answer_tokens),
                        lambda: generate_answers(model, tokenizer, qs, batch_size=128,
                                                 max_new_tokens=params.general_answer_tokens))
        return list(zip(qs, answers))

    def attack_info(self) -> dict | None:
        if not getattr(self, "layers", None):
            return None
        return {"layers": list(self.layers), "directions": {l: self.coeff * self.direction[l] for l in self.layers}}
