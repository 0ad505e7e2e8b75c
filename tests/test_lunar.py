"""LUNAR on the tiny model: what it changes, its direction, sequential requests."""

import copy

import pytest
import torch

import methods
from methods.lunar import Lunar, directions, mean_last_token_residual, template_prefix_len
from pistol_data import scenarios
from pistol_data.side_sets import preserve_prompts
from unlearnbench.models import load


@pytest.fixture(scope="module")
def setup(mini):
    lm = load("tiny-random-llama")
    [split] = scenarios.resolve(mini, {"type": "edge", "edge": "A_B"})
    req = methods.UnlearnRequest(forget=split.request(mini), retain=split.retain(mini),
                                 refusal_targets=["I don't know."], refusal_questions=mini.refusal, progress=False,
                                 preserve=list(preserve_prompts()))
    return lm, req, mini


def test_only_the_chosen_down_proj_changes(setup):
    lm, req, _ = setup
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    m = Lunar().apply(copy.deepcopy(lm.model), lm.tokenizer, req, Lunar.Params(layers=[2], epochs=3)).model
    after = m.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == ["model.layers.2.mlp.down_proj.weight"]


def test_direction_is_difference_of_means(setup):
    lm, req, _ = setup
    ref = [x.question for x in req.refusal_questions[:10]]
    fq = [x.question for x in req.forget]
    r = directions(lm.model, lm.tokenizer, ref, fq)
    assert r.shape == (4, lm.model.config.hidden_size)
    # by hand for layer 1: residual after block 1 = hidden_states[2] at the last prompt token
    from unlearnbench.core.prompts import prompt

    def mean_h(qs):
        out = []
        for q in qs:
            ids = lm.tokenizer(prompt(lm.tokenizer, q), add_special_tokens=False, return_tensors="pt")["input_ids"]
            with torch.no_grad():
                out.append(lm.model(ids, output_hidden_states=True).hidden_states[2][0, -1])
        return torch.stack(out).mean(0)

    assert torch.allclose(r[1], mean_h(ref) - mean_h(fq), atol=1e-4)
    assert torch.allclose(mean_last_token_residual(lm.model, lm.tokenizer, fq)[1], mean_h(fq), atol=1e-4)


def test_forget_rows_move_along_direction(setup):
    lm, req, _ = setup
    lunar = Lunar()
    params = Lunar.Params(layers=[1], epochs=20, lr=1e-2, general_retain=0)
    m = lunar.apply(copy.deepcopy(lm.model), lm.tokenizer, req, params).model
    from methods.lunar import down_proj_rows

    skip = template_prefix_len(lm.tokenizer)
    fq = [x.question for x in req.forget]
    _, y0 = down_proj_rows(lm.model, lm.tokenizer, [1], fq, skip)[1]
    _, y1 = down_proj_rows(m, lm.tokenizer, [1], fq, skip)[1]
    r = lunar.direction[1]
    shift = ((y1 - y0) @ r / r.norm() ** 2).mean()
    assert shift > 0.5  # forget outputs moved most of the way (coeff 2.5) along r
    assert lunar.history[-1] < lunar.history[0]


def test_sequential_requests_compose(setup, mini):
    lm, req, _ = setup
    [s2] = scenarios.resolve(mini, {"type": "edge", "edge": "E1_F1"})
    req2 = methods.UnlearnRequest(forget=s2.request(mini), retain=s2.retain(mini), refusal_questions=mini.refusal,
                                  progress=False)
    p = Lunar.Params(layers=[2], epochs=2)
    m1 = Lunar().apply(copy.deepcopy(lm.model), lm.tokenizer, req, p).model
    w1 = m1.model.layers[2].mlp.down_proj.weight.clone()
    m2 = Lunar().apply(m1, lm.tokenizer, req2, p).model
    w2 = m2.model.layers[2].mlp.down_proj.weight
    w0 = lm.model.model.layers[2].mlp.down_proj.weight
    assert not torch.equal(w1, w0) and not torch.equal(w2, w1)
    # the second request started from the first one's weights, not from the original ones
    fresh = Lunar().apply(copy.deepcopy(lm.model), lm.tokenizer, req2, p).model.model.layers[2].mlp.down_proj.weight
    assert not torch.allclose(w2, fresh)


def test_automatic_layer_selection(setup):
    lm, req, _ = setup
    lunar = Lunar()
    res = lunar.apply(copy.deepcopy(lm.model), lm.tokenizer, req, Lunar.Params(epochs=1))
    assert len(lunar.layers) == 1 and 1 <= lunar.layers[0] <= 2
    assert res.layers == lunar.layers and res.info["layers"] == lunar.layers and res.info["layer_scores"]
    with pytest.raises(ValueError, match="out of range"):
        Lunar().apply(copy.deepcopy(lm.model), lm.tokenizer, req, Lunar.Params(layers=[9]))


def test_attacks_run_and_change_outputs(setup):
    from unlearnbench.attacks import ATTACKS, Target
    from unlearnbench.evaluate import EvalParams, Evaluator, attack_scores

    lm, req, mini = setup
    lunar = Lunar()
    res = lunar.apply(copy.deepcopy(lm.model), lm.tokenizer, req, Lunar.Params(layers=[1], epochs=5, coeff=8.0))
    m, info = res.model, res.attack_info()
    assert info["layers"] == [1] and torch.allclose(info["directions"][1], 8.0 * lunar.direction[1])
    ids = torch.tensor([[1, 30, 40, 50, 60]])
    with torch.no_grad():
        plain = m(ids).logits
        for name in ("reverse_direction", "layer_skip"):
            with ATTACKS[name].factory(m, info, Target(m, lm.tokenizer)) as t:
                assert t.model is m
                attacked = m(ids).logits
            assert not torch.allclose(plain, attacked), name
        assert torch.equal(m(ids).logits, plain)  # hooks are removed afterwards
    [split] = scenarios.resolve(mini, {"type": "edge", "edge": "A_B"})
    ev = Evaluator(mini, EvalParams(max_new_tokens=4, progress=False))
    res = attack_scores(ev, m, lm.tokenizer, split, info)
    assert set(res) == {"reverse_direction", "layer_skip"} and 0 <= res["layer_skip"]["forget_rouge1"] <= 1
    assert attack_scores(ev, m, lm.tokenizer, split, None) == {}  # nothing exposed, nothing attacked


def test_request_independent_reads_are_memoised_per_weights(setup, monkeypatch):
    """The everyday prompts' answers and the reference mean are computed once per model weights:
    a second request on the same weights reuses them (same edit), changed weights recompute."""
    import methods.lunar.activations as lunar_mod
    import unlearnbench.core.generation as gen

    lm, req, _ = setup
    calls = []
    real = gen.generate_answers
    monkeypatch.setattr(gen, "generate_answers", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(lunar_mod, "_MEMO", {})
    p = Lunar.Params(layers=[1], epochs=2, general_retain=5, general_answer_tokens=3)
    a = Lunar().apply(copy.deepcopy(lm.model), lm.tokenizer, req, p)
    b = Lunar().apply(copy.deepcopy(lm.model), lm.tokenizer, req, p)
    assert len(calls) == 1 and len(lunar_mod._MEMO) == 2  # general answers + reference mean
    assert torch.equal(a.model.model.layers[1].mlp.down_proj.weight, b.model.model.layers[1].mlp.down_proj.weight)
    Lunar().apply(a.model, lm.tokenizer, req, p)  # a sequential request: the weights changed
    assert len(calls) == 2 and len(lunar_mod._MEMO) == 4
