"""The weight-level attacks (quantization, relearning) on the tiny model: each runs and changes what it should."""

import copy

import pytest
import torch

from pistol_data import scenarios
from unlearnbench.attacks import ATTACKS, Target, halves, relearn
from unlearnbench.evaluate import EvalParams, Evaluator, attack_scores
from unlearnbench.models import load


@pytest.fixture(scope="module")
def setup(mini):
    lm = load("tiny-random-llama")
    [split] = scenarios.resolve(mini, {"type": "edge", "edge": "A_B"})
    forget = mini.for_edges(split.forget_edges, ("direct",))
    neighbour = mini.for_edges(split.neighbour_edges, ("direct",))
    return lm, mini, split, Target(lm.model, lm.tokenizer, forget, neighbour, seed=0)


def test_quantization_attack_uses_an_int8_copy(setup):
    lm, _, _, target = setup
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    with ATTACKS["quantization"].factory(lm.model, None, target) as t:
        assert t.model is not lm.model
        qlinear = torch.ao.nn.quantized.dynamic.Linear
        linears = [m for m in t.model.modules() if isinstance(m, (torch.nn.Linear, qlinear))]
        assert linears and all(isinstance(m, qlinear) for m in linears)
        ids = torch.tensor([[1, 30, 40, 50]])
        with torch.no_grad():
            diff = (t.model(ids).logits - lm.model(ids).logits).abs().max()
        assert 0 < diff < 1.0  # close to the fp32 model, not equal
    assert all(torch.equal(before[k], v) for k, v in lm.model.state_dict().items())  # the model is untouched


def test_relearning_splits_and_trains_a_copy(setup):
    lm, _, _, target = setup
    train, held = halves(target.forget, seed=0)
    assert train and held and not {r.attribute for r in train} & {r.attribute for r in held}
    assert len(train) + len(held) == len(target.forget)
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    m = relearn(lm.model, lm.tokenizer, train, steps=5, lr=1e-3, batch_size=4, seed=0)
    assert all(torch.equal(before[k], v) for k, v in lm.model.state_dict().items())
    from unlearnbench.core.prompts import collate, encode_qa

    b = collate([encode_qa(lm.tokenizer, r.question, r.answer) for r in train], lm.tokenizer.pad_token_id)
    with torch.no_grad():
        assert m(**b).loss < lm.model(**b).loss  # it learnt the half it trained on
    with ATTACKS["relearn_forget"].factory(lm.model, None, target) as t:
        assert [r.question for r in t.forget] == [r.question for r in held]  # scored on the other half
    with ATTACKS["relearn_neighbour"].factory(lm.model, None, target) as t:
        assert t.model is not lm.model and t.forget == target.forget


def test_attack_scores_runs_the_configured_attacks(setup):
    lm, mini, split, _ = setup
    ev = Evaluator(mini, EvalParams(max_new_tokens=4, qa_max_new_tokens=4, progress=False,
                                    attacks=("quantization", "relearn_forget", "relearn_neighbour", "layer_skip")))
    res = attack_scores(ev, copy.deepcopy(lm.model), lm.tokenizer, split, None)
    assert set(res) == {"quantization", "relearn_forget", "relearn_neighbour"}  # layer_skip needs layers
    assert res["relearn_forget"]["n"] < res["quantization"]["n"] == 6
    # a score is the forget ROUGE-1 of the attacked model's own answers: redo the int8 one by hand
    from unlearnbench.core.generation import generate_answers
    from unlearnbench.metrics import rouge_recall

    with ATTACKS["quantization"].factory(lm.model, None, Target(lm.model, lm.tokenizer, split.forget(mini), [])) as t:
        gens = generate_answers(t.model, lm.tokenizer, [r.question for r in t.forget], batch_size=128, max_new_tokens=4)
    want = sum(rouge_recall(g, r.answer)[0] for g, r in zip(gens, t.forget)) / len(gens)
    assert res["quantization"]["forget_rouge1"] == pytest.approx(want)
    assert [e["generation"] for e in res["quantization"]["examples"]] == gens[:3]
    with pytest.raises(ValueError, match="unknown attack"):
        attack_scores(Evaluator(mini, EvalParams(attacks=("nope",), progress=False)), lm.model, lm.tokenizer, split, None)


def test_editing_methods_expose_their_layers(setup):
    """What attacks may use comes back from apply, in its result: the edited layers."""
    from methods import MethodResult
    from methods.memit import Memit
    from methods.rome import Rome

    lm = setup[0]
    assert Memit().result(lm.model, {"layers": [4, 5], "edits": 2}).attack_info() == {"layers": [4, 5]}
    assert Rome().result(lm.model, {"layer": 3, "edits": 1}).attack_info() == {"layers": [3]}
    assert MethodResult.of(lm.model).attack_info() is None  # a bare model exposes nothing


def test_model_after_bf16_training_runs_in_fp32_and_quantizes(setup, mini, monkeypatch):
    """A gradient method trained under bf16 autocast hands back a plain fp32 model: accelerate's
    autocast forward wrapper would otherwise stay on it (evaluation in bf16, int8 attack failing)."""
    import methods

    monkeypatch.setenv("UNLEARNBENCH_ALLOW_SLOW_BF16", "1")  # bf16 on purpose, on any CPU
    lm, _, split, target = setup
    model = copy.deepcopy(lm.model)
    req = methods.UnlearnRequest(forget=split.request(mini), retain=split.retain(mini), progress=False)
    cls = methods.get_method("ga")
    model = cls().apply(model, lm.tokenizer, req, cls.Params(epochs=1, precision="bf16")).model
    dtypes = []
    h = model.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    with torch.no_grad():
        model(torch.tensor([[1, 30, 40, 50]]))
    h.remove()
    assert dtypes == [torch.float32]
    quantized = ATTACKS["quantization"].factory(model, None, Target(model, lm.tokenizer, target.forget))
    with quantized as t, torch.no_grad():
        assert torch.isfinite(t.model(torch.tensor([[1, 30, 40, 50]])).logits).all()


def test_relearning_trains_every_weight_of_a_frozen_model(setup):
    """LUNAR and RMU hand back models with frozen weights; relearning must still train all of them
    (it failed with 'empty parameter list' on LUNAR's models, and trained only RMU's layers)."""
    lm, _, _, target = setup
    frozen = copy.deepcopy(lm.model).requires_grad_(False)
    frozen.model.layers[1].mlp.down_proj.weight.requires_grad_(True)  # as RMU/LUNAR leave it
    m = relearn(frozen, lm.tokenizer, target.forget, steps=2, lr=1e-3, batch_size=4, seed=0)
    changed = {k for k, v in m.state_dict().items() if not torch.equal(v, frozen.state_dict()[k])}
    assert {"model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight",
            "model.layers.1.mlp.up_proj.weight"} <= changed


def test_bf16_evaluation_scores_a_copy_and_attacks_compare_like_with_like(setup, monkeypatch):
    """``precision: bf16`` evaluates a bf16 copy (the model stays fp32 for attacks and later
    requests); the attacks' unattacked reference is then re-read from the fp32 model itself."""
    monkeypatch.setenv("UNLEARNBENCH_ALLOW_SLOW_BF16", "1")  # bf16 on purpose, on any CPU
    lm, mini, split, _ = setup
    kw = dict(max_new_tokens=4, qa_max_new_tokens=4, utility_limit=5, progress=False, attacks=("quantization",))
    ev16, ev32 = Evaluator(mini, EvalParams(precision="bf16", **kw)), Evaluator(mini, EvalParams(**kw))
    model = copy.deepcopy(lm.model)
    seen = []
    h = model.model.layers[0].mlp.down_proj.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    e16 = ev16.run(model, lm.tokenizer, heldout_edges=split.forget_edges)
    h.remove()
    assert seen and set(seen) == {torch.bfloat16}  # a bf16 copy ran (deepcopy keeps the hook)
    assert next(model.parameters()).dtype == torch.float32 and ev16.casts(model) and not ev32.casts(model)
    e32 = ev32.run(model, lm.tokenizer, heldout_edges=split.forget_edges)
    assert [r["question"] for r in e16.qa] == [r["question"] for r in e32.qa]
    mrr16, mrr32 = (torch.tensor([r["mrr"] for r in e.qa]) for e in (e16, e32))
    assert not torch.equal(mrr16, mrr32) and (mrr16 - mrr32).abs().max() < 0.2  # bf16 rounding, not another model
    # tamper with the bf16 evaluation's forget scores: a like-for-like reference must ignore them
    fake = copy.deepcopy(e16)
    for r in fake.qa:
        r["rouge1"] = 7.0
    a16 = attack_scores(ev16, model, lm.tokenizer, split, None, before=fake)["quantization"]
    a32 = attack_scores(ev32, model, lm.tokenizer, split, None, before=e32)["quantization"]
    assert a16["before_forget_rouge1"] == pytest.approx(a32["before_forget_rouge1"])
    assert a32["before_forget_rouge1"] <= 1.0
    assert attack_scores(ev32, model, lm.tokenizer, split, None, before=fake)["quantization"][
        "before_forget_rouge1"] == 7.0  # fp32 evaluation: reused as is
