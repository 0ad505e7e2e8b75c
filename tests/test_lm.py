"""The answer-only, shared-prefix teacher-forced pass equals the plain one (values and gradients);
thread and concurrency guards."""

import logging
import os

import pytest
import torch
import torch.nn.functional as F

from unlearnbench import threads
from unlearnbench.core.lm import answer_logits, answer_nll
from unlearnbench.core.prompts import IGNORE, collate
from unlearnbench.models import tiny_random_llama


@pytest.fixture(scope="module")
def model():
    m, _ = tiny_random_llama(seed=3)
    return m.double()  # float64 (but for RMSNorm, which computes in float32): algebra, not rounding


def _batch(prefix_len=12, seed=0):
    """Rows ``prefix · question · answer`` of different lengths, right-padded like the training data."""
    g = torch.Generator().manual_seed(seed)
    prefix = torch.randint(5, 1000, (prefix_len,), generator=g).tolist()
    rows = []
    for q_len, a_len in ((5, 3), (9, 6), (3, 2), (7, 1)):
        q = torch.randint(5, 1000, (q_len,), generator=g).tolist()
        a = torch.randint(5, 1000, (a_len,), generator=g).tolist()
        rows.append({"input_ids": prefix + q + a, "labels": [IGNORE] * (prefix_len + q_len) + a})
    return collate(rows, pad_id=0)


def _plain(model, b):
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
    target = b["labels"][:, 1:]
    r, t = (target != IGNORE).nonzero(as_tuple=True)
    return logits[r, t], target[r, t], r


@pytest.mark.parametrize("prefix_len", [0, 1, 12])
@pytest.mark.parametrize("share", [True, False])
def test_answer_logits_equal_the_full_pass(model, prefix_len, share):
    b = _batch(prefix_len)
    want, gold, rows = _plain(model, b)
    got = answer_logits(model, b, share_prefix=share)
    assert got.logits.shape == want.shape and torch.equal(got.gold, gold) and torch.equal(got.row, rows)
    torch.testing.assert_close(got.logits, want, rtol=1e-10, atol=1e-10)
    assert torch.equal(got.per_row_count(), torch.tensor([3.0, 6.0, 2.0, 1.0], dtype=torch.float32))


def test_gradients_equal_the_plain_loss(model):
    """The shared prefix's cache is used by every row: its gradient must be the sum over rows.
    (The reference is the token-mean NLL over the plain pass's logits, in float64: the model's own
    ``.loss`` computes in float32 even for a float64 model.)"""
    b = _batch(12)
    logits, gold, _ = _plain(model, b)
    torch.testing.assert_close(model(**b).loss.double(), F.cross_entropy(logits, gold), rtol=1e-6, atol=0)
    model.zero_grad()
    F.cross_entropy(*_plain(model, b)[:2]).backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    answer_nll(model, b).backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    assert want.keys() == got.keys() and len(want) > 10
    for n in want:
        # Llama's RMSNorm computes in float32 even in a float64 model: agreement to ~1e-7, not 1e-15
        torch.testing.assert_close(got[n], want[n], rtol=1e-5, atol=1e-6 * float(want[n].abs().max()), msg=n)


def test_training_losses_match_their_definitions(model):
    from methods.training import kl_to_reference, sequence_logprob, sequence_mean_nll

    b = _batch(12, seed=1)
    logits, gold, rows = _plain(model, b)
    lp = torch.log_softmax(logits, -1).gather(-1, gold[:, None]).squeeze(-1)
    per_row = torch.zeros(4, dtype=lp.dtype).index_add(0, rows, lp)
    counts = torch.bincount(rows, minlength=4).to(lp.dtype)
    torch.testing.assert_close(sequence_logprob(model, b), per_row)
    torch.testing.assert_close(sequence_logprob(model, b, per_token=True), per_row / counts)
    torch.testing.assert_close(sequence_mean_nll(model, b), (-per_row / counts).mean())
    ref, _ = tiny_random_llama(seed=4)
    ref = ref.double()
    ref_logits = _plain(ref, b)[0]
    kl = F.kl_div(torch.log_softmax(logits, -1), torch.log_softmax(ref_logits, -1), log_target=True,
                  reduction="none").sum(-1).mean()
    torch.testing.assert_close(kl_to_reference(model, ref, b), kl)
    assert kl_to_reference(model, model, b).abs() < 1e-12


def test_threads_follow_the_available_cores(monkeypatch):
    assert 1 <= threads.available_cores() <= (os.cpu_count() or 1)
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("UNLEARNBENCH_THREADS", "1")
        assert threads.configure() == 1 and torch.get_num_threads() == 1
        monkeypatch.delenv("UNLEARNBENCH_THREADS")
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert threads.configure() == threads.available_cores() == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_busy_cores_and_a_second_run_are_reported(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert threads.busy_warning() is None
    monkeypatch.setattr(os, "getloadavg", lambda: (4.0 * threads.available_cores(), 0.0, 0.0))
    monkeypatch.setattr(threads, "busy_now", lambda seconds=0.5: 0.1)  # a job that has just ended:
    assert threads.busy_warning() is None                               # the load average lags
    monkeypatch.setattr(threads, "busy_now", lambda seconds=0.5: float(threads.available_cores()))
    assert "already busy" in threads.busy_warning()
    lock = tmp_path / "run.lock"
    with caplog.at_level(logging.WARNING), threads.RunLock(lock) as first:
        assert first.other is None
        with threads.RunLock(lock) as second:
            assert second.other == str(os.getpid())
    assert "another unlearnbench run" in caplog.text
    with threads.RunLock(lock) as again:  # released: the next run is alone
        assert again.other is None


def _rows(prefix_len=12, seed=0):
    b = _batch(prefix_len, seed)
    n = b["attention_mask"].sum(1).tolist()
    return [{"input_ids": b["input_ids"][i, :n[i]].tolist(), "labels": b["labels"][i, :n[i]].tolist()}
            for i in range(len(n))]


def test_the_reference_memo_answers_as_the_reference_model(model):
    """Asked once in other batches (length-sorted, 3 rows), the memo gives the values the model gives
    in the loop's batch; a row it was not asked about is an error, not a silent recomputation."""
    from methods.training import ReferenceMemo, kl_to_reference, sequence_logprob

    ref, _ = tiny_random_llama(seed=4)
    ref = ref.double()
    rows = _rows(12, seed=1)
    b = collate(rows, pad_id=0)
    memo = ReferenceMemo.build(ref, {"forget": rows[:2], "retain": rows}, {"forget": "logprobs", "retain": "log_softmax"},
                               pad_id=0, batch_size=3)
    for per_token in (False, True):
        torch.testing.assert_close(sequence_logprob(memo, b, per_token), sequence_logprob(ref, b, per_token),
                                   rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(kl_to_reference(model, memo, b), kl_to_reference(model, ref, b), rtol=1e-9, atol=1e-9)
    only_forget = ReferenceMemo.build(ref, {"forget": rows[:2]}, {"forget": "logprobs"}, pad_id=0)
    with pytest.raises(KeyError, match="row 2"):
        sequence_logprob(only_forget, b)
    with pytest.raises(KeyError, match="log_softmax"):
        kl_to_reference(model, only_forget, collate(rows[:2], pad_id=0))


@pytest.mark.parametrize("name,change", [("npo", "memo"), ("ukl", "memo"), ("dpo", "memo"), ("gd", "terms"),
                                         ("npo", "terms"), ("rmu", "terms")])
def test_less_work_trains_to_the_same_weights(name, change, mini):
    """The default loop against the plain one (float64 tiny model, 2 epochs), end weights equal:
    ``memo`` — the frozen reference asked once before training vs asked at every step;
    ``terms`` — the forget and retain terms run forward and backward one after the other vs one loss."""
    import copy

    import methods
    from pistol_data import scenarios
    from unlearnbench.models import load

    lm = load("tiny-random-llama")
    base = lm.model.double()
    [split] = scenarios.resolve(mini, {"type": "edge", "edge": "A_B"})
    req = methods.UnlearnRequest(forget=split.request(mini), retain=split.retain(mini), progress=False,
                                 refusal_targets=["I don't know."], reference_model=lambda: copy.deepcopy(base))
    cls = methods.get_method(name)
    params = cls.Params(lr=1e-3, epochs=2, **({"layer": 2} if name == "rmu" else {}))

    class Plain(cls):
        if change == "memo":
            def reference_outputs(self, params):
                return None
        else:
            def loss_terms(self, model, batch, ctx):
                return [lambda: self.loss(model, batch, ctx)]

    fast = cls().apply(copy.deepcopy(base), lm.tokenizer, req, params).model
    plain = Plain().apply(copy.deepcopy(base), lm.tokenizer, req, params).model
    moved = 0.0
    with torch.no_grad():
        for (n, a), b, c in zip(fast.named_parameters(), plain.parameters(), base.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8, msg=n)
            moved = max(moved, float((a - c).abs().max()))
    assert moved > 1e-4  # it trained
