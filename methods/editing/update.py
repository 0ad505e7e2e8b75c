"""Update: keys (the MLP input at the fact token), values (the optimised residual δ) and the
closed-form weight change's read/write of the down-projection."""

from __future__ import annotations

import copy
import logging
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from unlearnbench.core.arch import arch_of, blocks, mlp_out, residual_before, run_until, starting_at
from unlearnbench.core.kv import cache_of, with_cache
from unlearnbench.core.prompts import pad

from .config import EditParams
from .locate import Fact, _lookup, _render

log = logging.getLogger(__name__)


# ---- keys ----------------------------------------------------------------------------------

def _mlp_in_out(model, layer: int, tensors: dict, key: str):
    """Forward hook storing the down-projection's (input, output) of ``layer``."""
    def hook(mod, inp, out):
        tensors[key] = (inp[0], out)
    return mlp_out(model, layer).register_forward_hook(hook)


def _subject_rows(tokenizer, facts: list[Fact], prefixes: list[str],
                  fact_token: str) -> list[tuple[int, list[int], int]]:
    """(fact index, token ids, lookup position) for every fact × context prefix."""
    rows = []
    for i, f in enumerate(facts):
        for c in prefixes:
            text = _render(tokenizer, c, f.question)
            rows.append((i, tokenizer(text, add_special_tokens=False)["input_ids"],
                         _lookup(tokenizer, text, f.subject, fact_token)))
    return rows


@torch.no_grad()
def compute_keys(model, tokenizer, layers: list[int], facts: list[Fact], prefixes: list[str],
                 residual_layer: int | None = None, fact_token: str = "subject_last", batch_size: int = 64):
    """Per layer, [n_facts, d_ff]: the down-projection input at the subject's last token,
    averaged over the context prefixes. With ``residual_layer`` also returns [n_facts, d]: that
    block's output (the residual stream) at the same positions, averaged the same way
    (MEMIT's current z). One forward pass, stopped after the last layer needed."""
    device = next(model.parameters()).device
    rows = _subject_rows(tokenizer, facts, prefixes, fact_token)
    sums: dict = {}
    cap: dict = {}
    hooks = [_mlp_in_out(model, l, cap, l) for l in layers]
    if residual_layer is not None:
        hooks.append(blocks(model)[residual_layer].register_forward_hook(
            lambda mod, inp, out: cap.__setitem__("z", (out[0] if isinstance(out, tuple) else out, None))))
    names = list(layers) + (["z"] if residual_layer is not None else [])
    try:
        for b in range(0, len(rows), batch_size):
            chunk = rows[b:b + batch_size]
            ids, mask = pad([r[1] for r in chunk], tokenizer.pad_token_id, device=device)
            run_until(model, max(list(layers) + [residual_layer or 0]), input_ids=ids, attention_mask=mask)
            pos = torch.tensor([r[2] for r in chunk], device=device)
            which = torch.tensor([r[0] for r in chunk], device=device)
            for name in names:
                k = cap[name][0][torch.arange(len(chunk), device=device), pos].double()
                s = torch.zeros(len(facts), k.shape[-1], dtype=torch.float64, device=device).index_add_(0, which, k)
                sums[name] = s if name not in sums else sums[name] + s
    finally:
        for h in hooks:
            h.remove()
    keys = {l: (sums[l] / len(prefixes)).float() for l in layers}
    if residual_layer is None:
        return keys
    return keys, (sums["z"] / len(prefixes)).float()


# ---- values --------------------------------------------------------------------------------

@dataclass
class _ValueRows:
    """The value optimisation's inputs: rewrite rows (context · question · target) and KL rows
    ("{subject} is a"), padded; where δ goes (``lookup``); the target tokens' positions."""

    s0: int
    ids: torch.Tensor
    mask: torch.Tensor
    kl_ids: torch.Tensor
    kl_mask: torch.Tensor
    lookup: list[int]
    fact_of: list[int]
    kl_look: list[int]
    lab_r: torch.Tensor
    lab_c: torch.Tensor
    lab_y: torch.Tensor
    lab_f: torch.Tensor
    kl_last: torch.Tensor


def _value_rows(tokenizer, facts: list[Fact], prefixes: list[str], fact_token: str, device) -> _ValueRows:
    eos = tokenizer.eos_token_id
    targets = [tokenizer(f.target, add_special_tokens=False)["input_ids"] + [eos] for f in facts]
    seqs, lookup, fact_of, tgt_pos = [], [], [], []
    for i, p, pos in _subject_rows(tokenizer, facts, prefixes, fact_token):
        seqs.append(p + targets[i])
        lookup.append(pos)
        fact_of.append(i)
        tgt_pos.append((len(p), targets[i]))
    kl_seqs, kl_look = [], []
    for f in facts:  # KL prompts: "{subject} is a"
        text = f"{f.subject} is a"
        kl_seqs.append(tokenizer(text, add_special_tokens=False)["input_ids"])
        kl_look.append(_lookup(tokenizer, text, f.subject, fact_token))
    # Positions before the one δ is added at never change (causal attention): the columns every
    # rewrite row has before its earliest lookup are run once into a key/value cache, each step
    # runs only the rest (exact up to float rounding; ~1/3 of the tokens on SmolLM2's template).
    s0 = min(lookup)
    ids, mask = pad(seqs, tokenizer.pad_token_id, device=device)
    kl_ids, kl_mask = pad(kl_seqs, tokenizer.pad_token_id, device=device)
    # answer positions: logits at t−1 predict token t
    lab_r, lab_c, lab_y, lab_f = [], [], [], []
    for r, (start, tgt) in enumerate(tgt_pos):
        for j, t in enumerate(tgt):
            lab_r.append(r); lab_c.append(start + j - 1 - s0); lab_y.append(t); lab_f.append(fact_of[r])
    lab_r, lab_c, lab_y = (torch.tensor(x, device=device) for x in (lab_r, lab_c, lab_y))
    lab_f = torch.tensor(lab_f, device=device)
    kl_last = kl_mask.sum(1) - 1
    return _ValueRows(s0, ids, mask, kl_ids, kl_mask, lookup, fact_of, kl_look, lab_r, lab_c, lab_y, lab_f, kl_last)


def value_chunks(tokenizer, facts: list[Fact], prefixes: list[str], fact_token: str,
                 chunk_tokens: int | None) -> list[list[int]]:
    """The facts in order, grouped so that each group's rows (padded, after the columns its rows
    share before the earliest lookup) hold at most ``chunk_tokens`` positions — a fact alone may
    exceed it; ``None``: one group. :func:`compute_values` runs one group's forward and backward at
    a time, so the value optimisation's activations are one group's, not every fact's."""
    if chunk_tokens is None or len(facts) <= 1:
        return [list(range(len(facts)))]
    shapes = []  # (rows, padded length, first recomputed column) of each fact alone
    for f in facts:
        r = _value_rows(tokenizer, [f], prefixes, fact_token, "cpu")
        shapes.append((r.ids.shape[0], r.ids.shape[1], r.s0))
    groups, cur = [], []
    n_rows = width = 0
    start = float("inf")  # the group's running totals: rows, longest row, earliest recomputed column
    for i, (r, w, s) in enumerate(shapes):
        if cur and (n_rows + r) * (max(width, w) - min(start, s)) > chunk_tokens:
            groups.append(cur)
            cur, n_rows, width, start = [], 0, 0, float("inf")
        cur.append(i)
        n_rows, width, start = n_rows + r, max(width, w), min(start, s)
    return groups + [cur]


def value_geometry(tokenizer, facts: list[Fact], n_prefixes: int, fact_token: str = "subject_last",
                   chunk_tokens: int | None = None) -> tuple[int, int]:
    """What one step of :func:`compute_values` holds at once for ``facts`` (its largest group of
    facts, :func:`value_chunks`), for planning its memory without a model: the token positions
    after the cached prefix columns (rows × padded columns) and the answer positions the LM head
    reads. The context prefixes stand in as texts of the lengths
    :func:`~methods.editing.locate.context_prefixes` samples (a starter word, then 5 or 10 tokens)."""
    prefixes = [""] + ["The" + " word" * 5 + "."] * (n_prefixes - n_prefixes // 2) + \
        ["The" + " word" * 10 + "."] * (n_prefixes // 2)
    best = (0, 0)
    for group in value_chunks(tokenizer, facts, prefixes, fact_token, chunk_tokens):
        rows = _value_rows(tokenizer, [facts[i] for i in group], prefixes, fact_token, "cpu")
        best = max(best, (rows.ids.shape[0] * (rows.ids.shape[1] - rows.s0), len(rows.lab_r)))
    return best


class _ValueGroup:
    """One group of facts of the value optimisation: its rows, where δ goes (as rows of the whole
    δ), the columns before the earliest lookup run once into a key/value cache, and — when the
    edited block is not the first — the blocks before it run once."""

    def __init__(self, model, tokenizer, facts: list[Fact], index: list[int], layer: int, prefixes: list[str],
                 fact_token: str, skip: bool, device):
        rows = _value_rows(tokenizer, [facts[i] for i in index], prefixes, fact_token, device)
        self.rows, self.n = rows, len(index)
        glob = torch.tensor(index, device=device)
        # where the hook adds δ: (rows, positions, δ's row for each), rewrite rows and KL rows
        self.rw_at = (torch.arange(len(rows.fact_of), device=device), torch.tensor(rows.lookup, device=device) - rows.s0,
                      glob[torch.tensor(rows.fact_of, device=device)])
        self.kl_at = (torch.arange(self.n, device=device), torch.tensor(rows.kl_look, device=device), glob)
        self.index = glob
        # per-fact counts for averaging the NLL over each fact's target tokens (all contexts)
        self.n_tok = torch.zeros(self.n, device=device).index_add_(0, rows.lab_f,
                                                                  torch.ones_like(rows.lab_f, dtype=torch.float))
        ids, mask, s0 = rows.ids, rows.mask, rows.s0
        with torch.no_grad():
            self.prefix_cache = (cache_of(model.base_model(input_ids=ids[:, :s0], attention_mask=mask[:, :s0],
                                                                   use_cache=True)) if s0 > 0 else None)
        self.rw_inputs = {"attention_mask": mask}
        self.kl_inputs = {"attention_mask": rows.kl_mask}
        if skip:
            self.rw_inputs["inputs_embeds"] = residual_before(
                model, layer, input_ids=ids[:, s0:], attention_mask=mask,
                **with_cache(copy.deepcopy(self.prefix_cache)))
            self.kl_inputs["inputs_embeds"] = residual_before(model, layer, input_ids=rows.kl_ids,
                                                              attention_mask=rows.kl_mask)
        else:
            self.rw_inputs["input_ids"], self.kl_inputs["input_ids"] = ids[:, s0:], rows.kl_ids
        self.v0 = self.kl_ref = None


def compute_values(model, tokenizer, facts: list[Fact], layer: int, where: str, prefixes: list[str],
                   params: EditParams, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimise one residual δ per fact, added at the subject's last token to the output of
    ``where`` ("mlp": layer's down-projection — ROME; "block": the whole block — MEMIT), so that
    the model answers the fact's target. Returns (v₀, v₀ + δ), each [n_facts, d]: v₀ is the
    original output there on the bare question.

    The loss is a sum over facts and each fact's term depends on its own δ only, so the facts run
    in groups of at most ``params.v_chunk_tokens`` positions (:func:`value_chunks`), each group's
    backward before the next group's forward, their gradients summed before each Adam step: the
    same δ as one batch (up to float rounding), with one group's activations alive. The stopping
    rule stays joint (every fact's NLL below 0.05); with several groups it is read after the
    step's backwards."""
    device = next(model.parameters()).device
    module = mlp_out(model, layer) if where == "mlp" else blocks(model)[layer]
    head = model.get_output_embeddings()
    d = model.config.hidden_size
    delta = torch.zeros(len(facts), d, device=device, requires_grad=True)
    state: dict = {}

    def hook(mod, inp, out):
        hs = out[0] if isinstance(out, tuple) else out
        group, (rows, look, fidx) = state["group"], state["at"]
        if group.v0 is None:
            group.v0 = hs[rows, look].detach().float()
        hs = hs + torch.zeros_like(hs).index_put((rows, look), delta[fidx].to(hs.dtype))
        return (hs,) + tuple(out[1:]) if isinstance(out, tuple) else hs

    saved = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    # blocks before the edited one never change either: run them once, then only the rest per step
    skip = layer > 0 and arch_of(model).embeds_enter_residual
    # Positions before the one δ is added at never change (causal attention): the columns every
    # rewrite row of a group has before its earliest lookup are run once into a key/value cache,
    # each step runs only the rest (exact up to float rounding; ~1/3 of the tokens on SmolLM2's template).
    groups = [_ValueGroup(model, tokenizer, facts, index, layer, prefixes, params.fact_token, skip, device)
              for index in value_chunks(tokenizer, facts, prefixes, params.fact_token, params.v_chunk_tokens)]
    from unlearnbench.core import precision

    precision.check(params.precision, device, "the editing value optimisation")
    autocast = precision.autocast(params.precision, device)

    def group_loss(g: _ValueGroup):
        r = g.rows
        with (starting_at(model, layer) if skip else nullcontext()), autocast:
            state["group"], state["at"] = g, g.rw_at
            cache = with_cache(copy.deepcopy(g.prefix_cache))
            hs = model.base_model(**g.rw_inputs, **cache).last_hidden_state
            ans_logits = head(hs[r.lab_r, r.lab_c])
            state["at"] = g.kl_at
            kl_hs = model.base_model(**g.kl_inputs).last_hidden_state
            kl_logits = head(kl_hs[g.kl_at[0], r.kl_last])
        logp = torch.log_softmax(ans_logits.float(), -1)
        nll_tok = -logp.gather(-1, r.lab_y[:, None]).squeeze(-1)
        nll = torch.zeros(g.n, device=device).index_add(0, r.lab_f, nll_tok) / g.n_tok
        kl_logp = torch.log_softmax(kl_logits.float(), -1)
        if g.kl_ref is None:
            g.kl_ref = kl_logp.detach()  # δ = 0 on the first step: the unedited distribution
        kl = torch.nn.functional.kl_div(kl_logp, g.kl_ref, log_target=True, reduction="none").sum(-1)
        wd = params.v_weight_decay * delta[g.index].norm(dim=-1) ** 2 / v0_norm(g) ** 2
        return (nll + params.kl_factor * kl + wd).sum(), nll.detach()

    def v0_norm(g: _ValueGroup):
        return g.v0.view(g.n, len(prefixes), d)[:, 0].norm(dim=-1)

    h = module.register_forward_hook(hook)
    opt = torch.optim.Adam([delta], lr=params.v_lr)
    try:
        for step in tqdm(range(params.v_steps), desc="value δ", disable=not progress, leave=False):
            opt.zero_grad()
            nlls = []
            for g in groups:
                loss, nll = group_loss(g)
                nlls.append(nll)
                if len(groups) == 1 and nll.max().item() < 5e-2:
                    break  # one group: stop before its backward, as one batch does
                loss.backward()
            nll = torch.cat(nlls)
            if nll.max().item() < 5e-2:
                break
            opt.step()
            with torch.no_grad():
                max_norm = params.clamp_norm_factor * torch.cat([v0_norm(g) for g in groups])
                scale = (max_norm / delta.norm(dim=-1).clamp_min(1e-12)).clamp(max=1.0)
                delta.mul_(scale[:, None])
    finally:
        h.remove()
        for p, s in zip(model.parameters(), saved):
            p.requires_grad_(s)
    log.info("value optimisation: %d steps in %d group(s), final NLL max %.3f", step + 1, len(groups), nll.max().item())
    v0 = torch.cat([g.v0.view(g.n, len(prefixes), d)[:, 0].float() for g in groups])
    return v0, v0 + delta.detach()


# ---- weights -------------------------------------------------------------------------------

def out_weight(model, layer: int) -> torch.Tensor:
    """The down-projection as [out = hidden, in = d_ff] (a view; GPT-2's Conv1D is transposed)."""
    w = mlp_out(model, layer).weight
    return w.T if arch_of(model).mlp_out_transposed else w


@torch.no_grad()
def add_to_weight(model, layer: int, delta_w: torch.Tensor) -> None:
    """W += ΔW, with ΔW as [hidden, d_ff]."""
    w = out_weight(model, layer)
    w.add_(delta_w.to(device=w.device, dtype=w.dtype))  # solved on the CPU in float64
