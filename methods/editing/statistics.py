"""Key statistics C = E[k kᵀ] over a local corpus, cached on disk per (weights, layer, corpus)."""

from __future__ import annotations

import logging

import torch
from tqdm.auto import tqdm

from unlearnbench.core.arch import arch_of, run_until
from unlearnbench.core.cache import cache_dir, stable_hash, weight_hash
from unlearnbench.core.prompts import pad, prompt

from ..base import UnlearnRequest
from .config import EditParams
from .update import _mlp_in_out

log = logging.getLogger(__name__)


# ---- key statistics ------------------------------------------------------------------------

def model_fingerprint(model) -> str:
    """Hash of every weight except the MLP down-projections (which the editors change)."""
    a = arch_of(model)
    return weight_hash(model, skip=(a.mlp_out + ".weight", a.mlp_out + ".bias"))


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
            ids, mask = pad(enc[b:b + batch_size], tokenizer.pad_token_id, device=device)
            run_until(model, max(todo), input_ids=ids, attention_mask=mask)
            m = mask.bool()
            n += int(m.sum())
            for l in todo:
                k = cap[l][0][m].double()
                s = k.T @ k
                # in place: the same sums without a third d_ff² float64 matrix per batch
                sums[l] = s if sums[l] is None else sums[l].add_(s)
    finally:
        for h in hooks:
            h.remove()
    for l in todo:
        out[l] = sums[l].div_(n).cpu()
        tmp = paths[l].with_suffix(".tmp")
        torch.save(out[l], tmp)
        tmp.replace(paths[l])
    log.info("key statistics for layers %s: %d texts, %d tokens", todo, len(texts), n)
    return out
