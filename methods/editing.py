"""The locate-then-edit core shared by ROME, MEMIT and AlphaEdit.

A fact is (question, subject, target answer). The editing family treats an MLP down-projection
W as a linear key→value memory: the *key* k is W's input at the subject's last token, the
*value* is W's output there. An edit finds a value that makes the model say the target
(``compute_values``: gradient descent on a residual δ at that position) and then changes W in
closed form so that W k ≈ value, disturbing other keys as little as their second moment C
(``key_second_moment``, cached on disk) allows. ROME, MEMIT and AlphaEdit differ only in the
closed-form step; they live in ``rome.py``, ``memit.py`` and ``alphaedit.py``.

**Subjects.** PISTOL questions name entities. The subject of a question is the span from the
first to the end of the last entity name in it: "...the contract between Bumun Inc and Jugu
Inc?" → "Bumun Inc and Jugu Inc", so the key (read at the last token of the span) is specific to
the *pair* and to the attribute asked before it, not to one party (a hub company appears in many
contracts; keying on it alone would rewrite all of them). A one-entity question's subject is that
name. A question that names no known entity is an error (:class:`SubjectError`); a dataset with
no entity names at all (opaque groups) uses the whole question as its subject.

**Keys and values**, after ROME (arXiv 2202.05262) §3.1 and MEMIT (arXiv 2210.07229) §4.3:
keys are averaged over the question itself and ``n_prefixes`` short texts sampled from the
model and put before the question (ROME's context templates); the value residual δ is optimised
with Adam on the target's NLL averaged over the same contexts, plus ``kl_factor`` × KL of the
next-token distribution on "{subject} is a" (keeping the subject's essence) and a weight decay
``‖δ‖²/‖v₀‖²``, with ‖δ‖ clamped to ``clamp_norm_factor``·‖v₀‖. All facts of a request are
optimised in one batch (each has its own δ; the losses are independent, so this equals one
optimisation per fact, with one forward pass per step instead of one per fact).

**Key statistics** C = E[k kᵀ] over every token of a local corpus that always exists here:
the retain QA of the request, the request's ``preserve`` prompts (everyday questions, disjoint
from everything the evaluator scores) and ``stats_samples`` texts sampled from the model itself. Cached under ``$UNLEARNBENCH_CACHE/stats`` by (model fingerprint, layer,
corpus); the fingerprint hashes every weight *except* the MLP down-projections, so statistics
are computed once on the unedited model and reused by later (sequential) edits, as MEMIT and
AlphaEdit do.

``fact_token = "last"`` (an option, as in EasyEdit) reads keys and adds δ at the prompt's last
token instead of the subject's.

Deviations shared by the family: prompts are the chat-template rendering of the question
(context prefixes go inside the user turn); the target ends with EOS so generation stops after
it; the corpus is the project's own local text instead of Wikipedia; the batched δ optimisation
stops when every fact's NLL is below 0.05 (ROME stops per fact).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import re
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field
from tqdm.auto import tqdm

from unlearnbench.cache import cache_dir, stable_hash
from unlearnbench.prompts import collate, prompt

from .arch import arch_of, blocks, mlp_out, residual_before, run_until, starting_at
from .base import Method, MethodParams, UnlearnRequest

log = logging.getLogger(__name__)


class SubjectError(ValueError):
    """A question in which no known entity name can be found."""


@dataclass(frozen=True)
class Fact:
    question: str
    subject: str
    target: str


class EditParams(MethodParams):
    """Hyper-parameters every locate-then-edit method shares (ROME's / EasyEdit's Llama defaults)."""

    v_lr: float = Field(0.5, gt=0, description="Adam learning rate of the value residual δ")
    v_steps: int = Field(25, ge=1, description="optimisation steps for δ")
    v_weight_decay: float = Field(1e-3, ge=0, description="weight of ‖δ‖²/‖v₀‖² in the value loss (EasyEdit's "
                                  "Llama value; ROME used 0.5 on GPT-2 XL, which left SmolLM2 edits unfinished)")
    clamp_norm_factor: float = Field(4.0, gt=0, description="‖δ‖ ≤ this × ‖v₀‖")
    kl_factor: float = Field(0.0625, ge=0, description="weight of the KL term on '{subject} is a'")
    n_prefixes: int = Field(5, ge=0, description="context prefixes sampled from the model (keys and values "
                            "are averaged over them and the bare question)")
    stats_samples: int = Field(64, ge=0, description="texts sampled from the model for the key statistics")
    query_merge: int = Field(1, ge=1, description="editing-as-unlearning's query merging (arXiv 2505.19855): "
                             "this many questions of one subject pair are joined into one edit request "
                             "(1 = off)")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="bf16 autocast for the value "
                                                       "optimisation's forward passes (auto: bf16 on CUDA, fp32 on CPU)")
    fact_token: Literal["subject_last", "last"] = Field("subject_last", description="where keys are read and "
                                                        "δ is added: the subject's last token (ROME) or the prompt's last token")
    refusal: str | None = Field(None, description="the refusal target in unlearning mode "
                                "(None: the request's first refusal sentence)")


class EditMethod(Method):
    """Base of the editing family: kind ``edit``; ``apply`` fills ``_info`` for :meth:`report`."""

    kind = "edit"

    def __init__(self):
        self._info: dict | None = None

    def report(self) -> dict | None:
        return self._info

    def attack_info(self) -> dict | None:
        """The edited layers (LUNAR's layer-skip attack applies to any weight edit)."""
        if not self._info:
            return None
        return {"layers": self._info.get("layers") or [self._info["layer"]]}


# ---- subjects and facts --------------------------------------------------------------------

def find_subject(question: str, entities) -> str:
    """The span from the first entity name to the end of the last one (see the module doc). A
    dataset without entity names (an opaque original file) has no subjects: the whole question is
    the subject, so keys are read at its last token."""
    if not entities:
        return question
    spans = []
    for name in sorted(set(entities), key=len, reverse=True):
        for m in re.finditer(r"(?<!\w)" + re.escape(name) + r"(?!\w)", question):
            if not any(s <= m.start() and m.end() <= e for s, e in spans):
                spans.append((m.start(), m.end()))
    if not spans:
        raise SubjectError(f"no subject in question {question!r}: it names none of the "
                           f"{len(set(entities))} known entities (the editing methods need the entity "
                           "names of the dataset; pass them in UnlearnRequest.entities)")
    return question[min(s for s, _ in spans):max(e for _, e in spans)]


def request_facts(request: UnlearnRequest, params: EditParams) -> list[Fact]:
    """Edit mode: each edit record's question → its (new) answer. Unlearning: each forget
    question → the refusal sentence, questions of one subject merged ``query_merge`` at a time."""
    if request.edits:
        return [Fact(r.question, find_subject(r.question, request.entities), r.answer) for r in request.edits]
    refusal = params.refusal or (request.refusal_targets[0] if request.refusal_targets else "I don't know.")
    facts = [Fact(r.question, find_subject(r.question, request.entities), refusal) for r in request.forget]
    if params.query_merge == 1:
        return facts
    by_edge: dict[str, list[Fact]] = {}
    for r, f in zip(request.forget, facts):
        by_edge.setdefault(r.edge, []).append(f)
    merged = []
    for group in by_edge.values():
        for i in range(0, len(group), params.query_merge):
            part = group[i:i + params.query_merge]
            # the merged query ends with the last question, whose subject's last token is the key
            merged.append(Fact(" ".join(f.question for f in part), part[-1].subject, refusal))
    return merged


# ---- token positions ----------------------------------------------------------------------

def _render(tokenizer, context: str, question: str) -> str:
    return prompt(tokenizer, f"{context} {question}".strip())


def _lookup(tokenizer, text: str, subject: str, fact_token: str = "subject_last") -> int:
    """Where keys are read and δ is added: the subject's last token in ``text`` (ROME's rule:
    tokenise the text up to the end of the subject's last occurrence), or with ``fact_token =
    "last"`` the text's last token."""
    if fact_token == "last":
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) - 1
    end = text.rfind(subject)
    if end < 0:
        raise SubjectError(f"subject {subject!r} not in {text!r}")
    return len(tokenizer(text[:end + len(subject)], add_special_tokens=False)["input_ids"]) - 1


def _pad_right(seqs: list[list[int]], pad: int, device):
    """(input_ids, attention_mask), right-padded: :func:`unlearnbench.prompts.collate` without labels."""
    b = collate([{"input_ids": s, "labels": s} for s in seqs], pad)
    return b["input_ids"].to(device), b["attention_mask"].to(device)


@torch.no_grad()
def context_prefixes(model, tokenizer, n: int, seed: int) -> list[str]:
    """``n`` short texts sampled from the model (half 5, half 10 tokens; ROME's context
    templates), prepended to questions when keys and values are computed. Always starts with ''."""
    if n == 0:
        return [""]
    device = next(model.parameters()).device
    starters = ["The", "Therefore", "Because", "I", "You", "It", "When", "In", "We", "This"]
    out = [""]
    g = torch.Generator(device="cpu").manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # sampling must not move the caller's RNG
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
        for length, k in ((5, n - n // 2), (10, n // 2)):
            if k == 0:
                continue
            seqs = [tokenizer(starters[i % len(starters)], add_special_tokens=False)["input_ids"] for i in range(k)]
            n_max = max(len(s) for s in seqs)
            ids = torch.tensor([[tokenizer.pad_token_id] * (n_max - len(s)) + s for s in seqs], device=device)
            mask = (torch.arange(n_max)[None] >= torch.tensor([n_max - len(s) for s in seqs])[:, None]).long()
            gen = model.generate(input_ids=ids, attention_mask=mask.to(device), max_new_tokens=length,
                                 do_sample=True, top_k=5, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=None, temperature=1.0, top_p=None)
            for row in gen:
                text = tokenizer.decode(row, skip_special_tokens=True).replace("{", "").replace("}", "")
                out.append(" ".join(text.split()) + ".")
    return out


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
            ids, mask = _pad_right([r[1] for r in chunk], tokenizer.pad_token_id, device)
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

def compute_values(model, tokenizer, facts: list[Fact], layer: int, where: str, prefixes: list[str],
                   params: EditParams, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimise one residual δ per fact, added at the subject's last token to the output of
    ``where`` ("mlp": layer's down-projection — ROME; "block": the whole block — MEMIT), so that
    the model answers the fact's target. Returns (v₀, v₀ + δ), each [n_facts, d]: v₀ is the
    original output there on the bare question."""
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    targets = [tokenizer(f.target, add_special_tokens=False)["input_ids"] + [eos] for f in facts]
    seqs, lookup, fact_of, tgt_pos = [], [], [], []
    for i, p, pos in _subject_rows(tokenizer, facts, prefixes, params.fact_token):
        seqs.append(p + targets[i])
        lookup.append(pos)
        fact_of.append(i)
        tgt_pos.append((len(p), targets[i]))
    n_rw = len(seqs)
    kl_seqs, kl_look = [], []
    for f in facts:  # KL prompts: "{subject} is a"
        text = f"{f.subject} is a"
        kl_seqs.append(tokenizer(text, add_special_tokens=False)["input_ids"])
        kl_look.append(_lookup(tokenizer, text, f.subject, params.fact_token))
    # Positions before the one δ is added at never change (causal attention): the columns every
    # rewrite row has before its earliest lookup are run once into a key/value cache, each step
    # runs only the rest (exact up to float rounding; ~1/3 of the tokens on SmolLM2's template).
    s0 = min(lookup)
    ids, mask = _pad_right(seqs, tokenizer.pad_token_id, device)
    kl_ids, kl_mask = _pad_right(kl_seqs, tokenizer.pad_token_id, device)
    # answer positions: logits at t−1 predict token t
    lab_r, lab_c, lab_y, lab_f = [], [], [], []
    for r, (start, tgt) in enumerate(tgt_pos):
        for j, t in enumerate(tgt):
            lab_r.append(r); lab_c.append(start + j - 1 - s0); lab_y.append(t); lab_f.append(fact_of[r])
    lab_r, lab_c, lab_y = (torch.tensor(x, device=device) for x in (lab_r, lab_c, lab_y))
    lab_f = torch.tensor(lab_f, device=device)
    kl_last = kl_mask.sum(1) - 1
    module = mlp_out(model, layer) if where == "mlp" else blocks(model)[layer]
    head = model.get_output_embeddings()
    d = model.config.hidden_size
    delta = torch.zeros(len(facts), d, device=device, requires_grad=True)
    # where the hook adds δ in the current call: (rows, positions, fact of each row)
    rw_at = (torch.arange(n_rw, device=device), torch.tensor(lookup, device=device) - s0,
             torch.tensor(fact_of, device=device))
    kl_at = (torch.arange(len(facts), device=device), torch.tensor(kl_look, device=device),
             torch.arange(len(facts), device=device))
    state: dict = {}

    def hook(mod, inp, out):
        hs = out[0] if isinstance(out, tuple) else out
        rows, look, fidx = state["at"]
        if "v0" not in state:
            state["v0"] = hs[rows, look].detach().float()
        hs = hs + torch.zeros_like(hs).index_put((rows, look), delta[fidx].to(hs.dtype))
        return (hs,) + tuple(out[1:]) if isinstance(out, tuple) else hs

    # per-fact counts for averaging the NLL over each fact's target tokens (all contexts)
    n_tok = torch.zeros(len(facts), device=device).index_add_(0, lab_f, torch.ones_like(lab_f, dtype=torch.float))
    saved = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    # blocks before the edited one never change either: run them once, then only the rest per step
    skip = layer > 0 and arch_of(model).embeds_enter_residual
    with torch.no_grad():
        prefix_cache = (model.base_model(input_ids=ids[:, :s0], attention_mask=mask[:, :s0], use_cache=True)
                        .past_key_values if s0 > 0 else None)
    rw_inputs = {"attention_mask": mask}
    kl_inputs = {"attention_mask": kl_mask}
    if skip:
        rw_inputs["inputs_embeds"] = residual_before(
            model, layer, input_ids=ids[:, s0:], attention_mask=mask,
            **({"past_key_values": copy.deepcopy(prefix_cache)} if prefix_cache is not None else {}))
        kl_inputs["inputs_embeds"] = residual_before(model, layer, input_ids=kl_ids, attention_mask=kl_mask)
    else:
        rw_inputs["input_ids"], kl_inputs["input_ids"] = ids[:, s0:], kl_ids
    from unlearnbench import precision

    precision.check(params.precision, device, "the editing value optimisation")
    autocast = precision.autocast(params.precision, device)
    h = module.register_forward_hook(hook)
    opt = torch.optim.Adam([delta], lr=params.v_lr)
    kl_ref = None
    try:
        for step in tqdm(range(params.v_steps), desc="value δ", disable=not progress, leave=False):
            with (starting_at(model, layer) if skip else nullcontext()), autocast:
                state["at"] = rw_at
                cache = {"past_key_values": copy.deepcopy(prefix_cache)} if prefix_cache is not None else {}
                hs = model.base_model(**rw_inputs, **cache).last_hidden_state
                ans_logits = head(hs[lab_r, lab_c])
                state["at"] = kl_at
                kl_hs = model.base_model(**kl_inputs).last_hidden_state
                kl_logits = head(kl_hs[kl_at[0], kl_last])
            logp = torch.log_softmax(ans_logits.float(), -1)
            nll_tok = -logp.gather(-1, lab_y[:, None]).squeeze(-1)
            nll = torch.zeros(len(facts), device=device).index_add(0, lab_f, nll_tok) / n_tok
            kl_logp = torch.log_softmax(kl_logits.float(), -1)
            if kl_ref is None:
                kl_ref = kl_logp.detach()  # δ = 0 on the first step: the unedited distribution
            kl = torch.nn.functional.kl_div(kl_logp, kl_ref, log_target=True, reduction="none").sum(-1)
            v0 = state["v0"]
            v0_norm = v0.view(len(facts), len(prefixes), d)[:, 0].norm(dim=-1)
            wd = params.v_weight_decay * delta.norm(dim=-1) ** 2 / v0_norm ** 2
            loss = (nll + params.kl_factor * kl + wd).sum()
            if nll.max().item() < 5e-2:
                break
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                max_norm = params.clamp_norm_factor * v0_norm
                scale = (max_norm / delta.norm(dim=-1).clamp_min(1e-12)).clamp(max=1.0)
                delta.mul_(scale[:, None])
    finally:
        h.remove()
        for p, s in zip(model.parameters(), saved):
            p.requires_grad_(s)
    log.info("value optimisation: %d steps, final NLL max %.3f", step + 1, nll.max().item())
    v0 = state["v0"].view(len(facts), len(prefixes), d)[:, 0].float()
    return v0, v0 + delta.detach()


# ---- weights -------------------------------------------------------------------------------

def out_weight(model, layer: int) -> torch.Tensor:
    """The down-projection as [out = hidden, in = d_ff] (a view; GPT-2's Conv1D is transposed)."""
    w = mlp_out(model, layer).weight
    return w.T if arch_of(model).mlp_out_transposed else w


@torch.no_grad()
def add_to_weight(model, layer: int, delta_w: torch.Tensor) -> None:
    """W += ΔW, with ΔW as [hidden, d_ff]."""
    out_weight(model, layer).add_(delta_w.to(out_weight(model, layer).dtype))


# ---- key statistics ------------------------------------------------------------------------

def model_fingerprint(model) -> str:
    """Hash of every weight except the MLP down-projections (which the editors change)."""
    a = arch_of(model)
    h = hashlib.blake2b(digest_size=12)
    h.update(str(model.config.model_type).encode())
    for name, p in sorted(model.named_parameters()):
        if name.endswith((a.mlp_out + ".weight", a.mlp_out + ".bias")):
            continue
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _corpus_spec(request: UnlearnRequest, params: EditParams) -> dict:
    edited = {r.question for r in request.edits}
    retain = [(r.question, r.answer) for r in request.retain if r.question not in edited]
    return {"retain": stable_hash(retain), "preserve": stable_hash(list(request.preserve)),
            "samples": params.stats_samples, "seed": 1234}


@torch.no_grad()
def _corpus_texts(model, tokenizer, request: UnlearnRequest, params: EditParams) -> list[str]:
    edited = {r.question for r in request.edits}
    qa = [(r.question, r.answer) for r in request.retain if r.question not in edited]
    texts = [prompt(tokenizer, q) + a for q, a in qa] + [prompt(tokenizer, q) for q in request.preserve]
    if params.stats_samples:
        device = next(model.parameters()).device
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ids = torch.full((params.stats_samples, 1), bos, device=device)
        with torch.random.fork_rng(devices=[]):  # a fixed corpus, and the caller's RNG untouched
            torch.manual_seed(1234)
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=48,
                                 do_sample=True, top_k=50, pad_token_id=tokenizer.pad_token_id, temperature=1.0)
        texts += [tokenizer.decode(g[1:], skip_special_tokens=True) for g in gen]
    return texts


@torch.no_grad()
def key_second_moment(model, tokenizer, layers: list[int], request: UnlearnRequest, params: EditParams,
                      batch_size: int = 32, progress: bool = False) -> dict[int, torch.Tensor]:
    """Per layer, C = E[k kᵀ] ([d_ff, d_ff], float64) of the down-projection input over every token
    of the local corpus; cached on disk per (model fingerprint, layer, corpus)."""
    key = stable_hash({"model": model_fingerprint(model), "corpus": _corpus_spec(request, params)})
    root = cache_dir("stats")
    paths = {l: root / f"{key}_layer{l}.pt" for l in layers}
    out = {l: torch.load(p) for l, p in paths.items() if p.exists()}
    todo = [l for l in layers if l not in out]
    if not todo:
        log.info("key statistics for layers %s loaded from the cache", layers)
        return out
    device = next(model.parameters()).device
    texts = _corpus_texts(model, tokenizer, request, params)
    enc = sorted((tokenizer(t, add_special_tokens=False)["input_ids"][:256] for t in texts), key=len)
    cap: dict = {}
    hooks = [_mlp_in_out(model, l, cap, l) for l in todo]
    sums = {l: None for l in todo}
    n = 0
    try:
        for b in tqdm(range(0, len(enc), batch_size), desc="key statistics", disable=not progress, leave=False):
            ids, mask = _pad_right(enc[b:b + batch_size], tokenizer.pad_token_id, device)
            run_until(model, max(todo), input_ids=ids, attention_mask=mask)
            m = mask.bool()
            n += int(m.sum())
            for l in todo:
                k = cap[l][0][m].double()
                s = k.T @ k
                sums[l] = s if sums[l] is None else sums[l] + s
    finally:
        for h in hooks:
            h.remove()
    for l in todo:
        out[l] = (sums[l] / n).cpu()
        tmp = paths[l].with_suffix(".tmp")
        torch.save(out[l], tmp)
        tmp.replace(paths[l])
    log.info("key statistics for layers %s: %d texts, %d tokens", todo, len(texts), n)
    return out


def default_layers(model, fraction: float, count: int) -> list[int]:
    """``count`` consecutive layers ending at ``fraction`` of the depth (SmolLM2: 30 layers)."""
    n = len(blocks(model))
    count = min(count, n)
    last = max(count - 1, min(n - 1, round(fraction * n)))
    return list(range(last - count + 1, last + 1))
