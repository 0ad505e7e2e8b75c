"""Less activation memory for the same numbers: the lean MLP / RMSNorm forwards give bit-identical
losses and gradients, the LM head's gold log-probabilities without vocabulary-sized activations
equal the log-softmax's, and the shared prefix's backward, cut off and run after the rows', adds
the same gradient."""

import contextlib
import gc

import pytest
import torch

from unlearnbench.core.lean import grouped_kv_attention, lean_mlp
from unlearnbench.core.lm import _GoldLogprob, _KLFromRef, answer_logits, split_prefix_backward
from unlearnbench.core.prompts import IGNORE, collate
from unlearnbench.models import tiny_random_llama


def _batch(prefix_len=10, seed=0, vocab=1000):
    g = torch.Generator().manual_seed(seed)
    prefix = torch.randint(5, vocab, (prefix_len,), generator=g).tolist()
    rows = []
    for q_len, a_len in ((5, 3), (9, 6), (3, 2), (7, 4), (2, 5)):
        q = torch.randint(5, vocab, (q_len,), generator=g).tolist()
        a = torch.randint(5, vocab, (a_len,), generator=g).tolist()
        rows.append({"input_ids": prefix + q + a, "labels": [IGNORE] * (prefix_len + q_len) + a})
    return collate(rows, pad_id=0)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("shape", [(8, 50), (1, 7), (3, 33)])
def test_lean_mlp_and_norms_give_the_same_bits(shape):
    model, _ = tiny_random_llama(seed=1, layers=2, hidden=96)
    model.train()
    ids = torch.randint(0, 500, shape, generator=torch.Generator().manual_seed(sum(shape)))
    out = []
    for lean in (False, True):
        model.zero_grad(set_to_none=True)
        if lean:
            with lean_mlp(model) as n:
                assert n == 2 + 2 * 2 + 1  # two MLPs, two norms per block, the final norm
                loss = model(input_ids=ids, labels=ids).loss
            assert not any("forward" in m.__dict__ for m in model.modules())  # the stock forwards are back
        else:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        out.append((loss.detach(), _grads(model)))
    (l0, g0), (l1, g1) = out
    assert torch.equal(l0, l1) and g0.keys() == g1.keys() and len(g0) > 10
    assert all(torch.equal(g0[k], g1[k]) for k in g0)


def test_lean_mlp_keeps_fewer_activations_and_leaves_what_it_cannot_replace():
    model, _ = tiny_random_llama(seed=1, layers=2, hidden=96)
    model.train()
    ids = torch.randint(0, 500, (4, 40), generator=torch.Generator().manual_seed(0))
    params = {p.data_ptr() for p in model.parameters()}

    def saved_bytes():
        seen = {}

        def pack(t):
            if t.data_ptr() not in params:
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=ids).logits.sum()
        return sum(seen.values())

    stock = saved_bytes()
    with lean_mlp(model):
        lean = saved_bytes()
    assert lean < 0.85 * stock
    # a hooked MLP output (the editors' key capture) runs its stock forward
    h = model.model.layers[0].mlp.down_proj.register_forward_hook(lambda *a: None)
    try:
        with lean_mlp(model) as n:
            assert n == 2 * 2 + 1 + 1  # the norms and the unhooked MLP
    finally:
        h.remove()
    with torch.no_grad(), lean_mlp(model):  # no graph: the stock path
        model(input_ids=ids)


def test_norm_outputs_are_recomputed_for_the_backward_not_kept(monkeypatch):
    """The layers reading a norm's output keep a recipe, not a copy: the graph holds one hidden-width
    tensor per token and norm less (glibc's count of live bytes), for the same bits."""
    from unlearnbench.core import lean
    from unlearnbench.runner import heap_in_use

    if heap_in_use() is None:
        pytest.skip("needs glibc's mallinfo2")
    layers, hidden, shape = 2, 256, (8, 96)
    model, _ = tiny_random_llama(seed=3, layers=layers, hidden=hidden)
    model.train()
    ids = torch.randint(0, 500, shape, generator=torch.Generator().manual_seed(0))

    def run():
        model.zero_grad(set_to_none=True)
        with lean_mlp(model):
            gc.collect()
            h0 = heap_in_use()
            loss = model(input_ids=ids, labels=ids).loss
            held = heap_in_use() - h0
        loss.backward()
        return held, loss.detach(), _grads(model)

    run()  # first-call allocations (caches the model builds once) out of the measured runs
    held, loss, grads = run()
    with monkeypatch.context() as mp:
        mp.setattr(lean._NormOutputs, "pack", lambda self, t: t)  # every norm output kept as a copy
        held_kept, loss_kept, grads_kept = run()
    norm_outputs = 2 * layers * shape[0] * shape[1] * hidden * 4  # bytes: two norms per block
    assert held_kept - held >= 0.95 * norm_outputs
    assert torch.equal(loss, loss_kept) and grads.keys() == grads_kept.keys()
    assert all(torch.equal(grads[k], grads_kept[k]) for k in grads)


def test_a_norm_input_changed_in_place_is_refused():
    model, _ = tiny_random_llama(seed=3, layers=1, hidden=64)
    model.train()
    norm = model.model.layers[0].post_attention_layernorm
    x = torch.randn(2, 5, 64, requires_grad=True).clone()
    with lean_mlp(model):
        y = model.model.layers[0].mlp.up_proj(norm(x))  # a reader of the norm's output: it keeps a recipe
    with torch.no_grad():
        x.add_(1.0)
    with pytest.raises(RuntimeError, match="modified in place"):
        y.sum().backward()


def test_gold_logprobs_without_the_logits_equal_the_log_softmax():
    g = torch.Generator().manual_seed(0)
    vocab, d, n = 300_000, 8, 20  # 6 rows per chunk: the rows span four chunks
    assert len(_GoldLogprob._chunks(n, vocab)) == 4
    h = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    w = (0.3 * torch.randn(vocab, d, generator=g, dtype=torch.float64)).requires_grad_()
    b = (0.1 * torch.randn(vocab, generator=g, dtype=torch.float64)).requires_grad_()
    gold = torch.randint(0, vocab, (n,), generator=g)
    coef = torch.randn(n, generator=g, dtype=torch.float64)
    want = torch.log_softmax(torch.nn.functional.linear(h, w, b), -1).gather(-1, gold[:, None]).squeeze(-1)
    want_grads = torch.autograd.grad((want * coef).sum(), (h, w, b))
    got = _GoldLogprob.apply(h, w, b, gold)
    got_grads = torch.autograd.grad((got * coef).sum(), (h, w, b))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for x, y in zip(got_grads, want_grads):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


def test_kl_to_a_reference_without_the_logits_equals_kl_div():
    """The chunked KL(p_ref ‖ softmax(h Wᵀ + b)) and its gradients equal ``F.kl_div`` over the
    log-softmax (what ukl's retain term computed), and it keeps only h for the backward."""
    g = torch.Generator().manual_seed(1)
    vocab, d, n = 300_000, 8, 20  # the rows span four chunks
    h = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    w = (0.3 * torch.randn(vocab, d, generator=g, dtype=torch.float64)).requires_grad_()
    b = (0.1 * torch.randn(vocab, generator=g, dtype=torch.float64)).requires_grad_()
    ref = torch.log_softmax(torch.randn(n, vocab, generator=g, dtype=torch.float64), -1)
    coef = torch.randn(n, generator=g, dtype=torch.float64)
    logq = torch.log_softmax(torch.nn.functional.linear(h, w, b), -1)
    want = torch.nn.functional.kl_div(logq, ref, log_target=True, reduction="none").sum(-1)
    want_grads = torch.autograd.grad((want * coef).sum(), (h, w, b))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        got = _KLFromRef.apply(h, w, b, ref)
    assert sum(saved) == h.numel() + w.numel() + b.numel() + ref.numel()  # inputs only: no N × V activation
    got_grads = torch.autograd.grad((got * coef).sum(), (h, w, b))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for x, y in zip(got_grads, want_grads):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("train_head", [False, True])
def test_lean_head_answer_logits_equal_the_kept_columns(train_head):
    model, _ = tiny_random_llama(seed=2)
    model = model.double().train()
    model.lm_head.weight.requires_grad_(train_head)
    b = _batch()
    res = []
    for lean in (False, True):
        model.zero_grad(set_to_none=True)
        a = answer_logits(model, b, lean_head=lean)
        lp, nll = a.logprobs(), a.nll()
        (nll + 0.3 * a.per_row_sum(lp).pow(2).mean()).backward()
        res.append((lp.detach(), nll.detach(), _grads(model), a))
    (lp0, n0, g0, a0), (lp1, n1, g1, a1) = res
    assert a1._logits is None and a1.hidden.shape == (len(a1.gold), model.config.hidden_size)  # no logits made
    assert torch.equal(a0.gold, a1.gold) and torch.equal(a0.row, a1.row)
    torch.testing.assert_close(lp1, lp0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(n1, n0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(a1.logits, a0.logits.detach(), rtol=1e-6, atol=1e-6)  # made when read
    assert g0.keys() == g1.keys() and ("lm_head.weight" in g0) == train_head
    for k in g0:  # RMSNorm computes in float32 inside the float64 model
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-5, atol=1e-6 * float(g0[k].abs().max()), msg=k)


def _accumulations(model, split: bool, loss_fn) -> tuple[int, dict, float]:
    """One backward from empty gradients: how many times a weight's ``.grad`` was accumulated
    into, every gradient, the loss."""
    weight = model.model.layers[1].mlp.down_proj.weight
    model.zero_grad(set_to_none=True)
    calls = []
    h = weight.register_post_accumulate_grad_hook(lambda p: calls.append(1))
    with split_prefix_backward(split):
        loss = loss_fn()
    loss.backward()
    h.remove()
    return len(calls), _grads(model), loss.item()


def test_split_prefix_backward_adds_the_same_gradient_in_two_parts():
    """Cut off, the prefix's share of each weight's gradient arrives after the rows' (each weight's
    gradient is accumulated twice, not buffered until the end); the sum is the same, bit for bit
    when the step starts from empty gradients."""
    model, _ = tiny_random_llama(seed=5)
    model.train()
    b = _batch(12)
    (c0, g0, _), (c1, g1, _) = [_accumulations(model, split, lambda: answer_logits(model, b, lean_head=True).nll())
                                for split in (False, True)]
    assert (c0, c1) == (1, 2)
    assert g0.keys() == g1.keys() and all(torch.equal(g0[k], g1[k]) for k in g0)
    with split_prefix_backward():  # without a graph nothing is cut
        with torch.no_grad():
            answer_logits(model, b)


def test_dpo_runs_each_answers_backward_apart_with_the_same_gradient():
    """IdK-DPO's loss reads two forward passes (refusal and true answer): inside the split, each
    pass's share goes into ``.grad`` on its own (four accumulations per weight: two passes, each
    rows and prefix) instead of one buffered sum; the gradient is the same up to float rounding."""
    from types import SimpleNamespace

    from methods.preference import IdkDPO

    model, _ = tiny_random_llama(seed=6)
    model.train()
    batch = {"forget": _batch(12, seed=1), "forget_idk": _batch(12, seed=2)}
    ref, _ = tiny_random_llama(seed=7)
    for recompute in (False, True):
        ctx = {"params": SimpleNamespace(beta=0.1, recompute_preferred=recompute), "ref": ref.eval()}
        (c0, g0, l0), (c1, g1, l1) = [_accumulations(model, split, lambda: IdkDPO().forget_loss(model, batch, ctx))
                                      for split in (False, True)]
        assert (c0, c1) == (1, 4)
        assert l1 == pytest.approx(l0, rel=1e-6, abs=1e-7)
        assert g0.keys() == g1.keys()
        for k in g0:
            torch.testing.assert_close(g1[k], g0[k], rtol=1e-5, atol=1e-7)


def test_dpo_keeps_one_answers_activations_at_a_time():
    """With ``recompute_preferred`` the preferred answer's pass keeps nothing for the backward: the
    activations alive when the backward starts are the rejected answer's alone (about half), and the
    step runs one more forward pass."""
    from types import SimpleNamespace

    from methods.preference import IdkDPO

    model, _ = tiny_random_llama(seed=6, layers=2, hidden=96)
    model.train()
    batch = {"forget": _batch(12, seed=1), "forget_idk": _batch(12, seed=2)}
    ref, _ = tiny_random_llama(seed=7, layers=2, hidden=96)
    params = {p.data_ptr() for p in model.parameters()}
    out = {}
    for recompute in (False, True):
        ctx = {"params": SimpleNamespace(beta=0.1, recompute_preferred=recompute), "ref": ref.eval()}
        saved, forwards = [], []
        h = model.model.register_forward_hook(lambda *a: forwards.append(1))  # the decoder: prefix, rows

        def pack(t):
            if t.data_ptr() not in params:
                saved.append(t.numel() * t.element_size())
            return t

        model.zero_grad(set_to_none=True)
        with split_prefix_backward(True), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = IdkDPO().forget_loss(model, batch, ctx)
            alive = sum(saved)
            loss.backward()
        h.remove()
        out[recompute] = (alive, len(forwards), _grads(model))
    (a0, f0, g0), (a1, f1, g1) = out[False], out[True]
    assert a1 < 0.6 * a0
    assert f1 == f0 + 2  # the preferred answer's pass again (its prefix and its rows)
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-5, atol=1e-7)


def test_the_implant_is_bit_identical_without_the_savings(monkeypatch, mini, tmp_path):
    """The implant uses the lean forwards and the split prefix backward; each of its steps starts
    from empty gradients, so the weights it writes are the same bits as without them (an implant
    cached before them stays valid: same key, same weights)."""
    import contextlib

    import unlearnbench.finetune as ft
    from unlearnbench.models import load

    p = ft.FinetuneParams(epochs=1, n_anchor=4, direct_repeats=1, n_refusal=4)
    lean, _ = ft.finetune(load("tiny-random-llama"), mini, p, out_dir=tmp_path / "lean", progress=False)
    monkeypatch.setattr(ft, "lean_mlp", lambda m: contextlib.nullcontext(0))
    monkeypatch.setattr(ft, "split_prefix_backward", lambda on=True: contextlib.nullcontext())
    stock, _ = ft.finetune(load("tiny-random-llama"), mini, p, out_dir=tmp_path / "stock", progress=False)
    a, b = lean.model.state_dict(), stock.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_autograd_grad_through_the_lean_mlp_gives_gradients_laid_out_as_the_weights():
    """BLUR differentiates with torch.autograd.grad and hands the result to the fused AdamW, which
    reads a gradient in its weight's layout: a transposed view of the right values made every second
    down-projection update the wrong element (blur-npo's DS on the quickstart moved by 15 points)."""
    model, _ = tiny_random_llama(seed=1, layers=2, hidden=96)
    ids = torch.randint(0, 500, (3, 20), generator=torch.Generator().manual_seed(0))
    params = list(model.parameters())
    stock = torch.autograd.grad(model(input_ids=ids, labels=ids).loss, params)
    with lean_mlp(model):
        lean = torch.autograd.grad(model(input_ids=ids, labels=ids).loss, params)
    for p, a, b in zip(params, stock, lean):
        assert b.stride() == p.stride() and torch.equal(a, b)


def test_grouped_kv_attention_keeps_the_key_value_heads_once(monkeypatch):
    """Under a padding mask transformers repeats each key/value head to its query heads and the
    backward keeps the copies; inside the block the attention reads them as they are: fewer saved
    bytes, the same loss and gradients up to rounding, and the environment put back."""
    import os

    monkeypatch.delenv("TRANSFORMERS_SDPA_FORCE_GQA", raising=False)
    model, _ = tiny_random_llama(seed=3, layers=2, hidden=96)  # 4 query heads, 2 key/value heads
    model.train()
    b = _batch(12)
    params = {p.data_ptr() for p in model.parameters()}
    out = []
    for grouped in (False, True):
        saved = []

        def pack(t):
            if t.data_ptr() not in params:
                saved.append(t.numel())
            return t

        model.zero_grad(set_to_none=True)
        with grouped_kv_attention() if grouped else contextlib.nullcontext():
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = answer_logits(model, b).nll()
        assert "TRANSFORMERS_SDPA_FORCE_GQA" not in os.environ
        loss.backward()
        out.append((loss.item(), sum(saved), _grads(model)))
    (l0, s0, g0), (l1, s1, g1) = out
    assert l1 == pytest.approx(l0, rel=1e-6)
    q_kv = b["input_ids"].shape[1] * b["input_ids"].shape[0] * 2 * 2 * 96 // 4  # k and v: 2 of 4 heads per layer
    assert s0 - s1 >= q_kv
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-5, atol=1e-7)


def test_each_norm_output_is_recomputed_once_for_all_its_readers(monkeypatch):
    """q, k and v (and gate and up) keep the same norm output: the backward recomputes it once for
    them all (plus the norm's own checkpoint), and the gradients stay the same bits."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    model, _ = tiny_random_llama(seed=1, layers=2, hidden=96)
    model.train()
    ids = torch.randint(0, 500, (3, 20), generator=torch.Generator().manual_seed(0))
    model.zero_grad(set_to_none=True)
    model(input_ids=ids, labels=ids).loss.backward()
    stock = _grads(model)

    calls = []
    forward = LlamaRMSNorm.forward
    monkeypatch.setattr(LlamaRMSNorm, "forward", lambda self, x: calls.append(1) or forward(self, x))
    model.zero_grad(set_to_none=True)
    with lean_mlp(model):
        loss = model(input_ids=ids, labels=ids).loss
        calls.clear()
        loss.backward()
    layers = len(model.model.layers)
    # per block: each norm once for its checkpoint, once for its readers; the final norm the same
    assert len(calls) == 2 * (2 * layers + 1)
    lean = _grads(model)
    assert all(torch.equal(stock[k], lean[k]) for k in stock)


def _loop_step(method, model, batch, ctx):
    """One step of the shared loop's terms, each forward and backward alone inside the split:
    (the summed loss, the gradients, the most activation bytes alive at once)."""
    params = {p.data_ptr() for p in model.parameters()}
    model.zero_grad(set_to_none=True)
    total, peak = 0.0, 0
    for term in method.loss_terms(model, batch, ctx):
        saved = []

        def pack(t):
            if t.data_ptr() not in params:
                saved.append(t.numel() * t.element_size())
            return t

        with split_prefix_backward(True), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            part = term()
            peak = max(peak, sum(saved))
            if part is not None:
                part.backward()
                total += part.item()
    return total, _grads(model), peak


@pytest.mark.parametrize("name", ["dpo", "npo", "gd", "ukl"])
def test_rows_per_pass_gives_the_same_step_with_one_chunks_activations(name):
    """``rows_per_pass`` runs a term over 5 rows as passes of 2, 2 and 1 rows (weighted by their
    share of the rows or of the answer tokens, as the term averages): the step's loss and
    gradient are the whole batch's up to float rounding, and at most one chunk's activations are
    alive at a time."""
    from methods import get_method

    cls = get_method(name)
    model, _ = tiny_random_llama(seed=6, layers=2, hidden=96)
    model.train()
    ref, _ = tiny_random_llama(seed=7, layers=2, hidden=96)
    batch = {"forget": _batch(12, seed=1), "forget_idk": _batch(12, seed=2), "retain": _batch(12, seed=3)}
    out = {}
    for rows in (None, 2):
        ctx = {"params": cls.Params(rows_per_pass=rows), "ref": ref.eval()}
        method = cls()
        out[rows] = _loop_step(method, model, batch, ctx), len(method.loss_terms(model, batch, ctx))
    ((l0, g0, p0), n0), ((l1, g1, p1), n1) = out[None], out[2]
    assert (n0, n1) == (2, 6)  # forget and retain terms, each in three chunks
    assert l1 == pytest.approx(l0, rel=1e-5, abs=1e-6)
    assert g0.keys() == g1.keys() and len(g0) > 10
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-4, atol=1e-6)
    assert p1 < 0.7 * p0


def test_row_chunks_weights_and_trimmed_padding():
    from methods.training import row_chunks

    b = _batch(4)  # answer tokens per row: 3, 6, 2, 4, 5
    whole = {"forget": b, "other": "kept"}
    assert row_chunks(whole, ("forget",), "tokens", None) == [(whole, 1.0)]
    assert row_chunks(whole, ("forget",), None, 2) == [(whole, 1.0)]
    tok = row_chunks(whole, ("forget",), "tokens", 2)
    assert [w for _, w in tok] == pytest.approx([9 / 20, 6 / 20, 5 / 20])
    assert [w for _, w in row_chunks(whole, ("forget",), "rows", 2)] == pytest.approx([2 / 5, 2 / 5, 1 / 5])
    first = tok[0][0]
    assert first["other"] == "kept" and first["forget"]["input_ids"].shape == (2, 4 + 9 + 6)  # row 2's length
    assert torch.equal(first["forget"]["labels"], b["labels"][:2, :19])


def test_rows_per_pass_is_refused_where_a_method_cannot_split():
    from methods import get_method, validate_params

    assert get_method("dpo").Params().rows_per_pass == 4 and get_method("ukl").Params().rows_per_pass == 4
    assert get_method("gd").Params().rows_per_pass is None and get_method("npo").Params().rows_per_pass is None
    with pytest.raises(ValueError, match="rows_per_pass"):
        validate_params("rmu", {"rows_per_pass": 4})
    for name in ("blur-npo", "blur-ga"):  # BLUR splits its terms itself (tests/test_blur_rmu.py)
        assert get_method(name).Params().rows_per_pass is None
        validate_params(name, {"rows_per_pass": 4})
