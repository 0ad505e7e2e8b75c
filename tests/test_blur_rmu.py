"""BLUR's bi-level direction and RMU's footprint, on the tiny model."""

import contextlib
import copy

import pytest
import torch

import methods
from methods.blur import BlurNPO, bilevel_direction
from methods.preference import npo_loss
from methods.rmu import RMU
from methods.training import build_batches
from pistol_data import scenarios
from unlearnbench.models import load


class _OneProcess:
    """The bits of an Accelerator the bi-level backward uses, for driving it by hand."""

    num_processes = 1

    def __init__(self, sync=True):
        self.sync_gradients = sync

    def unwrap_model(self, m):
        return m

    def autocast(self):
        return contextlib.nullcontext()


@pytest.fixture(scope="module")
def setup(mini):
    lm = load("tiny-random-llama")
    [split] = scenarios.resolve(mini, {"type": "edge", "edge": "A_B"})
    frozen = copy.deepcopy(lm.model).eval()
    req = methods.UnlearnRequest(forget=split.request(mini), retain=split.retain(mini), progress=False,
                                 refusal_targets=["I don't know."], reference_model=lambda: frozen)
    return lm, req, frozen


def _perturbed(model):
    """A copy whose weights differ from the reference, so NPO's gradient is not degenerate."""
    m = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return m


def _direction(method, model, batches, ctx, acc_sync_last=True):
    """Run loss+backward over micro-batches; return the gradient the optimiser would see."""
    params = [p for p in model.parameters()]
    for p in params:
        p.requires_grad_(True)
        p.grad = None
    for i, b in enumerate(batches):
        acc = _OneProcess(sync=(i == len(batches) - 1) and acc_sync_last)
        ctx["accelerator"] = acc
        if i == 0:
            method.start(model, ctx)  # as the shared loop does before the first step
        for term in method.loss_terms(model, b, ctx):  # as the shared loop runs them
            method.backward(acc, model, term(), b, ctx)
        if acc.sync_gradients:
            method.finish_gradients(acc, model, ctx)
    return [p.grad.clone() for p in params]


def _slice(batch, sl):
    return {k: {kk: vv[sl] for kk, vv in v.items()} for k, v in batch.items()}


@pytest.mark.parametrize("low_memory", [True, False])
def test_direction_keeps_forget_descent_rate(setup, low_memory):
    lm, req, frozen = setup
    model = _perturbed(lm.model)
    batch = next(iter(build_batches(lm.tokenizer, req, 4)))
    params = BlurNPO.Params(gamma=0.7, low_memory=low_memory)
    d = _direction(BlurNPO(), model, [batch], {"ref": frozen, "params": params})
    # g_f and g_r computed independently of BLUR's code
    gf = torch.autograd.grad(npo_loss(model, frozen, batch["forget"], params.beta, params.forget_per_token),
                             list(model.parameters()),
                             allow_unused=True)
    gf = [torch.zeros_like(p) if g is None else g for p, g in zip(model.parameters(), gf)]
    from methods.training import sequence_mean_nll

    gr = torch.autograd.grad(sequence_mean_nll(model, batch["retain"]), list(model.parameters()))
    dot = lambda a, b: sum(float((x.double() * y.double()).sum()) for x, y in zip(a, b))  # noqa: E731
    ff = dot(gf, gf)
    assert ff > 0
    assert dot(d, gf) == pytest.approx(params.gamma * ff, rel=1e-4)
    assert abs(dot(gr, gf) - params.gamma * ff) > 1e-3 * ff  # the projection had work to do
    # d − g_r is parallel to g_f
    resid = [a - b for a, b in zip(d, gr)]
    c = dot(resid, gf) / ff
    assert max(float((r - c * f).abs().max()) for r, f in zip(resid, gf)) < 1e-5


def test_zero_forget_gradient_falls_back_to_retain():
    gr = [torch.tensor([1.0, 2.0])]
    assert torch.equal(bilevel_direction([torch.zeros(2)], gr, 1.0)[0], gr[0])


@pytest.mark.parametrize("low_memory", [True, False])
def test_accumulated_micro_batches_equal_one_big_batch(setup, low_memory):
    lm, req, frozen = setup
    model = _perturbed(lm.model)
    batch = next(iter(build_batches(lm.tokenizer, req, 4)))
    params = BlurNPO.Params(low_memory=low_memory)
    big = _direction(BlurNPO(), model, [batch], {"ref": frozen, "params": params})
    micro = _direction(BlurNPO(), model, [_slice(batch, slice(0, 2)), _slice(batch, slice(2, 4))],
                       {"ref": frozen, "params": params})
    for a, b in zip(big, micro):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    # projecting each micro-batch separately and averaging is NOT the same thing
    halves = [_direction(BlurNPO(), model, [_slice(batch, sl)], {"ref": frozen, "params": params})
              for sl in (slice(0, 2), slice(2, 4))]
    naive = [(a + b) / 2 for a, b in zip(*halves)]
    assert max(float((a - b).abs().max()) for a, b in zip(big, naive)) > 1e-4


def test_low_memory_gives_the_same_direction_without_holding_the_retain_gradient(setup):
    """``low_memory`` runs the retain backward twice and consumes each weight's gradient as it
    arrives: the same d as holding g_f and g_r (up to float rounding), and at no point more than one
    weight's retain gradient alive."""
    lm, req, frozen = setup
    model = _perturbed(lm.model)
    batch = next(iter(build_batches(lm.tokenizer, req, 4)))

    class Probe(BlurNPO):
        live: list = []

        def _retain_backward(self, accelerator, model, batches, ctx, take):
            def probe(i, g):
                Probe.live.append(sum(p.grad is not None for p in self._params))
                take(i, g)
            return super()._retain_backward(accelerator, model, batches, ctx, probe)

    for micro in ([batch], [_slice(batch, slice(0, 2)), _slice(batch, slice(2, 4))]):
        Probe.live.clear()
        both = _direction(BlurNPO(), model, micro, {"ref": frozen, "params": BlurNPO.Params(low_memory=False)})
        lean = _direction(Probe(), model, micro, {"ref": frozen, "params": BlurNPO.Params(low_memory=True)})
        scale = max(float(a.abs().max()) for a in both)
        assert max(float((a - b).abs().max()) for a, b in zip(both, lean)) < 1e-5 * scale
        # two passes, every trained weight's gradient at least once each, and one alive at a time
        assert len(Probe.live) >= 2 * len(both) and max(Probe.live) == 1


@pytest.mark.parametrize("low_memory,retain_loss", [(True, "nll"), (False, "nll"), (True, "kl")])
def test_rows_per_pass_gives_the_same_direction_a_row_at_a_time(setup, low_memory, retain_loss):
    """``rows_per_pass: 1``: each term as passes of one row (weighted by its share of the rows or of
    the retain answer tokens), each weight's gradient added into the step's buffer as it arrives:
    the same d as one pass per term, for one micro-batch and for two (accumulated)."""
    lm, req, frozen = setup
    model = _perturbed(lm.model)
    batch = next(iter(build_batches(lm.tokenizer, req, 4)))
    rows = batch["forget"]["input_ids"].shape[0] + batch["retain"]["input_ids"].shape[0]
    assert rows >= 4

    class Count(BlurNPO):
        passes = 0

        def _consume_backward(self, loss, take):
            Count.passes += 1
            return super()._consume_backward(loss, take)

    for micro in ([batch], [_slice(batch, slice(0, 2)), _slice(batch, slice(2, 4))]):
        whole = _direction(BlurNPO(), model, micro, {"ref": frozen, "params": BlurNPO.Params(
            low_memory=low_memory, retain_loss=retain_loss)})
        Count.passes = 0
        split = _direction(Count(), model, micro, {"ref": frozen, "params": BlurNPO.Params(
            low_memory=low_memory, retain_loss=retain_loss, rows_per_pass=1)})
        # a pass per row of each term (the retain rows twice with low_memory)
        assert Count.passes == rows + (batch["retain"]["input_ids"].shape[0] if low_memory else 0)
        scale = max(float(a.abs().max()) for a in whole)
        assert scale > 0 and max(float((a - b).abs().max()) for a, b in zip(whole, split)) < 1e-5 * scale


def test_low_memory_trains_as_holding_both(setup):
    """The loop with ``low_memory`` on and off: the same weights and the same logged losses (the
    retain loss the method runs itself is added to the step's)."""
    lm, req, frozen = setup
    out, hist = {}, {}
    for low in (True, False):
        m = BlurNPO()
        out[low] = m.apply(copy.deepcopy(lm.model), lm.tokenizer, req,
                           BlurNPO.Params(lr=1e-3, epochs=2, batch_size=2, low_memory=low)).model
        hist[low] = m.history
    assert hist[True] == pytest.approx(hist[False], rel=1e-5) and len(hist[True]) > 1
    for a, b in zip(out[True].parameters(), out[False].parameters()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def _forget_nll(model, tok, recs):
    from methods.training import nll
    from unlearnbench.core.prompts import collate, encode_qa

    b = collate([{k: v for k, v in encode_qa(tok, r.question, r.answer).items() if k != "prompt_len"} for r in recs],
                tok.pad_token_id)
    with torch.no_grad():
        return nll(model, b).item()


def test_blur_npo_runs_in_the_loop_and_forgets(setup):
    lm, req, frozen = setup
    before = _forget_nll(lm.model, lm.tokenizer, req.forget)
    out = BlurNPO().apply(copy.deepcopy(lm.model), lm.tokenizer, req,
                          BlurNPO.Params(lr=1e-3, epochs=3, batch_size=2, grad_accum=2)).model
    assert _forget_nll(out, lm.tokenizer, req.forget) > before + 0.05


def test_rmu_changes_only_its_down_projections(setup):
    lm, req, frozen = setup
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    rmu = RMU()
    res = rmu.apply(copy.deepcopy(lm.model), lm.tokenizer, req, RMU.Params(layer=2, n_update_layers=2, lr=3e-2,
                                                                             epochs=5, alpha=0.0))
    out = res.model
    changed = sorted(k for k, v in out.state_dict().items() if not torch.equal(before[k], v))
    assert changed == ["model.layers.1.mlp.down_proj.weight", "model.layers.2.mlp.down_proj.weight"]
    # forget activations at the steered layer moved toward c·u
    from unlearnbench.core.prompts import template_prefix_len

    b = next(iter(build_batches(lm.tokenizer, req, 64)))["forget"]
    mask = b["attention_mask"].clone()
    mask[:, :template_prefix_len(lm.tokenizer)] = 0

    def dist(m):
        with torch.no_grad():
            h = m(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True)
            return float(((h.hidden_states[3] - rmu.target).norm(dim=-1) * mask).sum() / mask.sum())

    assert dist(out) < 0.9 * dist(lm.model)
    assert res.attack_info() == {"layers": [1, 2]}
    assert res.info["layers"] == [1, 2] and res.info["steering_coeff"] == pytest.approx(float(rmu.target.norm()))
    assert res.info["steps"] == len(rmu.history) and res.info["last_loss"] == rmu.history[-1]
    with pytest.raises(ValueError, match="out of range"):
        RMU().apply(copy.deepcopy(lm.model), lm.tokenizer, req, RMU.Params(layer=9))
