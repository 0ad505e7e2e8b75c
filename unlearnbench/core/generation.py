"""Batched greedy generation and teacher-forced statistics, the model calls the evaluator makes.

:func:`generate_and_score` does both from one run of each prompt (the evaluator's call);
:func:`generate_answers` and :func:`teacher_forced_stats` do one each. All sort examples by length
so padding is minimal, run under ``torch.inference_mode`` and return results in the caller's order.
"""

from __future__ import annotations

import zlib

import torch
from tqdm.auto import tqdm

from .kv import cache_of, select_rows, with_cache
from .lm import answer_logits
from .prompts import collate, encode_qa, pad, prompt, shared_prefix_len


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
    unique = list(dict.fromkeys(questions))  # greedy: a repeated question gets the same answer, generate it once
    answers = dict(zip(unique, _generate(model, tokenizer, unique, batch_size=batch_size,
                                         max_new_tokens=max_new_tokens, progress=progress, desc=desc,
                                         share_prefix=share_prefix, drop_finished=drop_finished)))
    return [answers[q] for q in questions]


def _generate(model, tokenizer, questions: list[str], *, batch_size: int, max_new_tokens: int, progress: bool,
              desc: str, share_prefix: bool = True, drop_finished: bool = True, on_prompt=None) -> list[str]:
    """:func:`generate_answers` over distinct questions. ``on_prompt(idx, output, mask, positions)``
    is called once per batch (``idx``: the batch's indices into ``questions``, in its row order)
    with the prompt's forward, before any answer token is decoded (see :func:`greedy_tokens`)."""
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
        hook = None if on_prompt is None else (lambda o, m, p, idx=idx: on_prompt(idx, o, m, p))
        gen = greedy_tokens(model, torch.tensor(ids, device=device), torch.tensor(mask, device=device),
                            skip=k, cache=kw, max_new_tokens=max_new_tokens, eos=tokenizer.eos_token_id,
                            drop_finished=drop_finished, on_prompt=hook)
        for j, i in enumerate(idx):
            out[i] = tokenizer.decode(gen[j], skip_special_tokens=True).strip()
    return out  # type: ignore[return-value]


@torch.inference_mode()
def generate_and_score(model, tokenizer, questions: list[str], pairs: list[tuple[int, str]], *,
                       batch_size: int = 32, tf_batch_size: int = 16, max_new_tokens: int = 32,
                       progress: bool = False, desc: str = "generate", top_k: int = 100,
                       min_k: float = 0.4) -> tuple[list[str], list[dict]]:
    """:func:`generate_answers` of ``questions`` and :func:`teacher_forced_stats` of each pair
    ``(i, answer)`` (``questions[i]`` answered with ``answer``), with each prompt run once.

    A teacher-forced row is ``prompt · answer``; its prompt is the one generation runs anyway. So
    the answers are teacher-forced from the generation's prompt cache (one row per answer, a
    question's cache repeated for each of its answers), and the first answer token's distribution
    is the one the generation's first step computes: only the answer tokens are run again. The
    answers are token for token those of :func:`generate_answers`; the statistics equal
    :func:`teacher_forced_stats`'s up to float rounding (other matmul shapes; ``tests/test_core.py``).
    """
    if not questions:
        return [], []
    unique = list(dict.fromkeys(questions))
    where = {q: i for i, q in enumerate(unique)}
    owner = [where[questions[i]] for i, _ in pairs]
    by_question: dict[int, list[int]] = {}
    for j, u in enumerate(owner):
        by_question.setdefault(u, []).append(j)
    prefix_space = "" if getattr(tokenizer, "chat_template", None) else " "  # as encode_qa
    gold = [tokenizer(prefix_space + a, add_special_tokens=False)["input_ids"] for _, a in pairs]
    stats: list[dict | None] = [None] * len(pairs)

    def on_prompt(idx, o, mask, pos):
        rows = {u: r for r, u in enumerate(idx)}
        todo = sorted((j for u in idx for j in by_question.get(u, [])), key=lambda j: len(gold[j]))
        cache = cache_of(o)
        first = o.logits[:, -1]
        for sub in _batches(todo, tf_batch_size):
            dev = mask.device
            qrow = torch.tensor([rows[owner[j]] for j in sub], device=dev)
            fed = None
            if max(len(gold[j]) for j in sub) > 1:  # the last gold token is predicted, never fed
                ids, amask = pad([gold[j][:-1] for j in sub], tokenizer.pad_token_id, "right", dev)
                n = ids.shape[1]
                fed = model(input_ids=ids, attention_mask=torch.cat([mask[qrow], amask], -1),
                            position_ids=pos[qrow, -1:] + 1 + torch.arange(n, device=dev), use_cache=True,
                            **with_cache(select_rows(cache, qrow))).logits
            # per row: the prompt's last position predicts the first gold token, each fed token the next
            lg, gl, rl = [], [], []
            for r, j in enumerate(sub):
                if not gold[j]:
                    continue
                lg.append(first[qrow[r]][None])
                if len(gold[j]) > 1:
                    lg.append(fed[r, :len(gold[j]) - 1])
                gl += gold[j]
                rl += [r] * len(gold[j])
            if not lg:  # only empty answers
                lg = [first.new_zeros(0, first.shape[-1])]
            _stats(torch.cat(lg), torch.tensor(gl, dtype=torch.long, device=dev), torch.tensor(rl, device=dev),
                   sub, [pairs[j][1] for j in sub], stats, top_k, min_k)

    answers = dict(zip(unique, _generate(model, tokenizer, unique, batch_size=batch_size,
                                         max_new_tokens=max_new_tokens, progress=progress, desc=desc,
                                         on_prompt=on_prompt)))
    return [answers[q] for q in questions], stats  # type: ignore[return-value]


def _keeps_logits(model) -> bool:
    """Whether the model's forward takes ``logits_to_keep`` (generate passes 1 where it does)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper forwards it
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def greedy_tokens(model, ids: torch.Tensor, mask: torch.Tensor, *, skip: int = 0, cache: dict | None = None,
                  max_new_tokens: int, eos: int | None, drop_finished: bool = True,
                  on_prompt=None) -> list[list[int]]:
    """Greedy continuation of each row of ``ids`` [B, n] (``mask`` marks its real tokens), up to and
    including its EOS or ``max_new_tokens`` tokens: the new tokens per row.

    The same arithmetic as ``model.generate(do_sample=False)`` with a key/value cache: positions
    from the mask (a padded column takes no position), the first ``skip`` columns already in
    ``cache`` (``{keyword: cache}``, see :mod:`.kv`), one forward per step with the LM head on the
    last position only and the arg-max over float32 logits. ``drop_finished`` takes a row out of
    the batch once it has written its EOS. ``on_prompt(output, mask, positions)``, if given, is called
    with the prompt's forward output (its cache holds the whole prompt, the next-token logits are at
    ``output.logits[:, -1]``) before any token is decoded; it must leave the cache as it is."""
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
        if step == 0 and on_prompt is not None:
            on_prompt(o, mask, pos)
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
        _stats(a.logits, a.gold, a.row, idx, [pairs[i][1] for i in idx], out, top_k, min_k)
    return out  # type: ignore[return-value]


def _stats(logits: torch.Tensor, gold: torch.Tensor, row: torch.Tensor, idx: list[int], answers: list[str],
           out: list, top_k: int, min_k: float) -> None:
    """:func:`teacher_forced_stats`'s values of batch row ``j`` into ``out[idx[j]]``, from the logits
    [N, V] at the N answer positions, their ``gold`` tokens and batch ``row``s (``answers``: the
    answers' texts, for ``zlib``)."""
    lg = logits.float()
    ranks = (lg > lg.gather(-1, gold[:, None])).sum(-1) + 1
    match = lg.argmax(-1) == gold
    nll_tok = torch.nn.functional.cross_entropy(lg, gold, reduction="none")
    # Min-K%++'s mean and deviation of log p over the vocabulary, in float64 and two-pass
    # (E[(log p − μ)²]): E[log² p] − μ² cancels badly in float32
    logp = torch.log_softmax(lg.double(), -1)
    mu = (logp.exp() * logp).sum(-1)
    sigma = (logp.exp() * (logp - mu[:, None]).square()).sum(-1).clamp_min(1e-24).sqrt()
    z = ((-nll_tok.double() - mu) / sigma).float()
    del logp
    for j, i in enumerate(idx):
        sel = row == j  # this row's answer positions, in order
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
                  "zlib": nll * L / len(zlib.compress(answers[j].encode("utf-8")))}
