"""Batched greedy generation and one teacher-forced pass, the two model calls the evaluator makes.

Both sort examples by length so padding is minimal, run under ``torch.inference_mode`` and
return results in the caller's order.
"""

from __future__ import annotations

import zlib

import torch
from tqdm.auto import tqdm

from .kv import cache_of, with_cache
from .lm import answer_logits
from .prompts import collate, encode_qa, prompt, shared_prefix_len


def _batches(order: list[int], size: int):
    for i in range(0, len(order), size):
        yield order[i:i + size]


@torch.inference_mode()
def generate_answers(model, tokenizer, questions: list[str], *, batch_size: int = 32,
                     max_new_tokens: int = 32, progress: bool = False, desc: str = "generate",
                     share_prefix: bool = True, drop_finished: bool = True) -> list[str]:
    """Greedy answers, batched and length-sorted; each stops at its own EOS.

    With ``share_prefix`` the prompt tokens every question shares (SmolLM2's template puts a
    20-token system prompt before each question, ~40% of the prompt) are run once and their
    KV cache reused by every batch: each row is ``prefix · padding · question``, the padding
    masked out, so positions and attention are those of the unpadded prompt.

    With ``drop_finished`` a row that has produced its EOS leaves the batch (its keys and values
    with it): only the answers still being written are computed. ``transformers``' ``generate``
    runs every row until the batch's longest answer ends — on PISTOL's short answers about two
    thirds of its rows × steps are rows that have already stopped. Without it the same loop runs
    every row to the end, as ``generate`` does (``tests/test_core.py``: token for token equal).
    """
    if not questions:
        return []
    unique = list(dict.fromkeys(questions))
    if len(unique) < len(questions):  # greedy: a repeated question gets the same answer, generate it once
        answers = dict(zip(unique, generate_answers(model, tokenizer, unique, batch_size=batch_size,
                                                    max_new_tokens=max_new_tokens, progress=progress, desc=desc,
                                                    share_prefix=share_prefix, drop_finished=drop_finished)))
        return [answers[q] for q in questions]
    import copy

    device = next(model.parameters()).device
    prompts = [prompt(tokenizer, q) for q in questions]
    enc = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    # keep at least one token of every prompt out of the shared cache (generate needs new input)
    k = min(shared_prefix_len(enc), min(len(e) for e in enc) - 1) if share_prefix and len(enc) > 1 else 0
    prefix_cache = None
    if k > 0:
        prefix_cache = cache_of(model(input_ids=torch.tensor([enc[0][:k]], device=device), use_cache=True))
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
    out: list[str | None] = [None] * len(enc)
    pad = tokenizer.pad_token_id
    for idx in tqdm(list(_batches(order, batch_size)), desc=desc, disable=not progress, leave=False):
        n = max(len(enc[i]) for i in idx)
        ids = [enc[i][:k] + [pad] * (n - len(enc[i])) + enc[i][k:] for i in idx]
        mask = [[1] * k + [0] * (n - len(enc[i])) + [1] * (len(enc[i]) - k) for i in idx]
        kw = {}
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(len(idx))
            kw = with_cache(cache)
        gen = greedy_tokens(model, torch.tensor(ids, device=device), torch.tensor(mask, device=device),
                            skip=k, cache=kw, max_new_tokens=max_new_tokens, eos=tokenizer.eos_token_id,
                            drop_finished=drop_finished)
        for j, i in enumerate(idx):
            out[i] = tokenizer.decode(gen[j], skip_special_tokens=True).strip()
    return out  # type: ignore[return-value]


def _keeps_logits(model) -> bool:
    """Whether the model's forward takes ``logits_to_keep`` (generate passes 1 where it does)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper forwards it
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def greedy_tokens(model, ids: torch.Tensor, mask: torch.Tensor, *, skip: int = 0, cache: dict | None = None,
                  max_new_tokens: int, eos: int | None, drop_finished: bool = True) -> list[list[int]]:
    """Greedy continuation of each row of ``ids`` [B, n] (``mask`` marks its real tokens), up to and
    including its EOS or ``max_new_tokens`` tokens: the new tokens per row.

    The same arithmetic as ``model.generate(do_sample=False)`` with a key/value cache: positions
    from the mask (a padded column takes no position), the first ``skip`` columns already in
    ``cache`` (``{keyword: cache}``, see :mod:`.kv`), one forward per step with the LM head on the
    last position only and the arg-max over float32 logits. ``drop_finished`` takes a row out of
    the batch once it has written its EOS."""
    B = ids.shape[0]
    pos = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    kw = dict(cache or {})
    step_ids, step_pos = ids[:, skip:], pos[:, skip:]
    live = torch.arange(B, device=ids.device)  # batch rows still writing, as indices into the caller's rows
    new: list[list[int]] = [[] for _ in range(B)]
    last = {"logits_to_keep": 1} if _keeps_logits(model) else {}
    done = torch.zeros(B, dtype=torch.bool, device=ids.device)  # rows that have written their EOS
    for step in range(max_new_tokens):
        o = model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos, use_cache=True, **last, **kw)
        nxt = o.logits[:, -1].float().argmax(-1)
        toks = nxt.tolist()
        for r, t in zip(live.tolist(), toks):
            new[r].append(t)
        if step == max_new_tokens - 1:
            break
        if eos is not None:
            done = done | (nxt == eos)
        kw = with_cache(cache_of(o))
        if bool(done.all()):
            break
        if drop_finished and bool(done.any()):
            keep = (~done).nonzero().squeeze(-1)
            kw[next(iter(kw))].batch_select_indices(keep)
            live, nxt, mask, step_pos, done = live[keep], nxt[keep], mask[keep], step_pos[keep], done[keep]
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], -1)
        step_pos = step_pos[:, -1:] + 1
        step_ids = nxt[:, None]
    for t in new:  # what follows a row's EOS (rows kept in the batch) is not part of its answer
        if eos is not None and eos in t:
            del t[t.index(eos) + 1:]
    return new


@torch.inference_mode()
def teacher_forced_stats(model, tokenizer, pairs: list[tuple[str, str]], *, batch_size: int = 16,
                         top_k: int = 100, min_k: float = 0.4, progress: bool = False) -> list[dict]:
    """Per example, from one forward pass over prompt + gold answer:

    * ``mrr`` — mean over gold answer tokens of 1/rank of the gold token in the next-token
      distribution (rank 1 = the model's top choice; ties count against the gold token);
    * ``thr`` — the fraction of gold tokens whose rank is ≤ ``top_k``;
    * ``es``  — extraction strength 1 − k/L, with k the shortest gold prefix after which
      greedy decoding reproduces the rest. Greedy decoding continues a prefix with the gold
      token exactly when the gold token is the arg-max there, so k is one past the last
      position whose arg-max differs from the gold token — exact, with no extra decoding;
    * ``nll`` — mean negative log-likelihood of the gold tokens;
    * ``mink`` — Min-K% (Shi et al., arXiv 2310.16789): the mean of the lowest ``min_k`` fraction
      of the gold tokens' log-probabilities;
    * ``minkpp`` — Min-K%++ (Zhang et al., arXiv 2404.02936): the same over each token's
      log-probability standardised by the next-token distribution's mean μ = E_z[log p(z)] and
      deviation σ = √(E_z[log² p(z)] − μ²);
    * ``zlib`` — ``nll`` × answer tokens ÷ zlib-compressed length of the answer text (Carlini et
      al., arXiv 2012.07805: the loss relative to the text's own entropy).

    The last three are membership-inference scores: higher ``mink``/``minkpp`` and lower
    ``zlib`` say "seen in training".
    """
    if not pairs:
        return []
    device = next(model.parameters()).device
    rows = []
    for q, a in pairs:
        r = encode_qa(tokenizer, q, a)
        r["input_ids"], r["labels"] = r["input_ids"][:-1], r["labels"][:-1]  # answer tokens, no EOS
        rows.append(r)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    out: list[dict | None] = [None] * len(rows)
    for idx in tqdm(list(_batches(order, batch_size)), desc="teacher-forced", disable=not progress, leave=False):
        b = {k: v.to(device) for k, v in collate([rows[i] for i in idx], tokenizer.pad_token_id).items()}
        a = answer_logits(model, b)
        lg = a.logits.float()
        ranks = (lg > lg.gather(-1, a.gold[:, None])).sum(-1) + 1
        match = lg.argmax(-1) == a.gold
        nll_tok = torch.nn.functional.cross_entropy(lg, a.gold, reduction="none")
        # Min-K%++'s mean and deviation of log p over the vocabulary, in float64 and two-pass
        # (E[(log p − μ)²]): E[log² p] − μ² cancels badly in float32
        logp = torch.log_softmax(lg.double(), -1)
        mu = (logp.exp() * logp).sum(-1)
        sigma = (logp.exp() * (logp - mu[:, None]).square()).sum(-1).clamp_min(1e-24).sqrt()
        z = ((-nll_tok.double() - mu) / sigma).float()
        del logp
        for j, i in enumerate(idx):
            sel = a.row == j  # this row's answer positions, in order
            if not bool(sel.any()):
                nan = float("nan")
                out[i] = {"mrr": 0.0, "thr": 0.0, "es": 0.0, "nll": nan, "mink": nan, "minkpp": nan, "zlib": nan}
                continue
            rk, m = ranks[sel], match[sel].tolist()
            L = len(m)
            k = L
            while k > 0 and m[k - 1]:
                k -= 1
            n_low = max(1, int(min_k * L))
            nll = nll_tok[sel].mean().item()
            out[i] = {"mrr": (1.0 / rk.float()).mean().item(), "thr": (rk <= top_k).float().mean().item(),
                      "es": 1.0 - k / L, "nll": nll,
                      "mink": torch.sort(-nll_tok[sel]).values[:n_low].mean().item(),
                      "minkpp": torch.sort(z[sel]).values[:n_low].mean().item(),
                      "zlib": nll * L / len(zlib.compress(pairs[i][1].encode("utf-8")))}
    return out  # type: ignore[return-value]
