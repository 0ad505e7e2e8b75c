"""bf16 weights (``weights: bf16``; the default on CUDA): every method runs on a bf16 model and
leaves it bf16, a full fine-tune trains fp32 copies of its tensors (AdamW's steps are below bf16's
resolution), and the grid records the weights' dtype and keeps the shared model bf16 between cells."""

import copy
import json

import pytest
import torch

import methods
from methods.training import GradientMethod
from pistol_data import scenarios
from pistol_data.side_sets import preserve_prompts
from unlearnbench.core import precision
from unlearnbench.models import load


@pytest.fixture(scope="module")
def setup(mini):
    lm = load("tiny-random-llama")
    lm.model.to(torch.bfloat16)
    [split] = scenarios.resolve(mini, {"type": "edge", "edge": "A_B"})
    req = methods.UnlearnRequest(forget=split.request(mini), retain=split.retain(mini), progress=False,
                                 refusal_targets=["I don't know."], refusal_questions=mini.refusal,
                                 preserve=list(preserve_prompts()), reference_model=lambda: copy.deepcopy(lm.model))
    return lm, req


@pytest.mark.parametrize("name,params", [
    ("gd", {"epochs": 1}), ("npo", {"epochs": 1}), ("rmu", {"epochs": 1}),
    ("lunar", {"layers": [1], "epochs": 2}), ("rome", {"v_steps": 3}), ("grace", {"n_iter": 3}),
])
def test_method_runs_on_bf16_and_leaves_it_bf16(setup, name, params):
    lm, req = setup
    model = copy.deepcopy(lm.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cls = methods.get_method(name)
    out = cls().apply(model, lm.tokenizer, req, cls.Params.model_validate(params)).model
    dtypes = {p.dtype for p in out.parameters()}
    assert dtypes == {torch.bfloat16}, f"{name} left {dtypes}"
    after = out.state_dict()
    changed = [k for k in before if k in after and not torch.equal(before[k], after[k])]
    assert changed or name == "grace", f"{name} changed no weight of the bf16 model"
    ids = lm.tokenizer("Who signed the contract?", return_tensors="pt")
    with torch.no_grad():
        assert torch.isfinite(out(**ids).logits.float()).all()


def test_full_finetune_trains_fp32_copies(setup, monkeypatch):
    lm, req = setup
    seen = []
    real = GradientMethod.make_optimizer

    def spy(self, model, params):
        opt = real(self, model, params)
        seen.append({p.dtype for g in opt.param_groups for p in g["params"]})
        return opt

    monkeypatch.setattr(GradientMethod, "make_optimizer", spy)
    model = copy.deepcopy(lm.model)
    cls = methods.get_method("gd")
    cls().apply(model, lm.tokenizer, req, cls.Params(epochs=1))
    assert seen == [{torch.float32}]
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_weights_setting_resolves_by_device_and_refuses_emulated_bf16(grid_config, tmp_path, monkeypatch):
    from unlearnbench.runner import check_precisions

    cfg = grid_config({"model": "tiny-random-llama", "finetune": None, "methods": [{"name": "gd"}],
                       "scenarios": [{"type": "edge", "edge": "A_B"}]}, tmp_path)
    assert check_precisions(cfg, "cpu")["weights"] == "fp32"  # auto: fp32 on any CPU
    monkeypatch.setattr(precision, "native_bf16", lambda device="cpu": True)
    got = check_precisions(cfg, "cuda")
    assert got["weights"] == "bf16" and got["evaluation"] == "bf16" and got["methods"]["gd"] == "bf16"
    monkeypatch.undo()
    monkeypatch.setenv(precision.NO_NATIVE_BF16_ENV, "1")
    monkeypatch.delenv(precision.ALLOW_SLOW_BF16_ENV, raising=False)
    bf = grid_config({"model": "tiny-random-llama", "weights": "bf16", "finetune": None,
                      "methods": [{"name": "gd"}], "scenarios": [{"type": "edge", "edge": "A_B"}]}, tmp_path)
    with pytest.raises(precision.PrecisionError, match="weights"):
        check_precisions(bf, "cpu")


def test_grid_on_bf16_weights(grid_config, tmp_path, monkeypatch):
    from unlearnbench.runner import Runner

    monkeypatch.setenv(precision.ALLOW_SLOW_BF16_ENV, "1")  # the tiny model: emulated bf16 costs nothing
    cfg = grid_config({
        "name": "bf16", "model": "tiny-random-llama", "device": "cpu", "weights": "bf16",
        "data": {"preset": "pistol-mini", "seed": 0},
        "finetune": {"mode": "full", "epochs": 1, "lr": 1.0e-3, "n_anchor": 4, "n_refusal": 8},
        "eval": {"batch_size": 64, "max_new_tokens": 4, "qa_max_new_tokens": 4, "utility_limit": 8,
                 "forms": ["direct"], "attacks": ["quantization", "relearn_forget"]},
        "methods": [{"name": "gd", "params": {"epochs": 1}}, {"name": "rome", "params": {"v_steps": 3}}],
        "scenarios": [{"type": "edge", "edge": "A_B", "name": "hub"}], "seeds": [0]}, tmp_path)
    runner = Runner(cfg, out_dir=tmp_path / "out", progress=False)
    ctx = runner.prepare()
    assert {p.dtype for p in ctx.model.model.parameters()} == {torch.bfloat16}
    runner.run()
    recs = [json.loads(p.read_text()) for p in sorted((tmp_path / "out" / "cells").glob("*.json"))]
    assert {r["row"] for r in recs} >= {"gd", "rome", "none"}
    for r in recs:
        assert r["status"] == "ok", r.get("error")
        assert r["precision"]["weights"] == "bf16" and r["precision"]["evaluation"] == "bf16"
    [gd] = [r for r in recs if r["row"] == "gd"]
    assert set(gd["attacks"]) == {"quantization", "relearn_forget"}  # both run on a bf16 model


def test_the_grid_copies_no_reference_for_memo_methods(grid_config, tmp_path, monkeypatch):
    """NPO/DPO/UKL read the frozen reference once, before their first update: in a grid that is the
    model the cell receives, read as it is (no copy at any size); RMU, which reads it every step,
    copies the model it received (no checkpoint read): the runner's handle is never called."""
    from methods import AsGiven
    from unlearnbench.runner import Runner

    calls = []
    real = AsGiven.__call__
    monkeypatch.setattr(AsGiven, "__call__", lambda self: calls.append(1) or real(self))
    grid = {
        "name": "ref", "model": "tiny-random-llama", "device": "cpu", "data": {"preset": "pistol-mini", "seed": 0},
        "finetune": None, "eval": {"batch_size": 64, "max_new_tokens": 4, "qa_max_new_tokens": 4, "utility_limit": 8,
                                   "forms": ["direct"], "attacks": []},
        "methods": [{"name": "npo", "params": {"epochs": 1}}, {"name": "dpo", "params": {"epochs": 1}}],
        "scenarios": [{"type": "edge", "edge": "A_B", "name": "hub"}], "seeds": [0]}
    Runner(grid_config(grid, tmp_path), out_dir=tmp_path / "a", progress=False).run()
    recs = [json.loads(p.read_text()) for p in (tmp_path / "a" / "cells").glob("*.json")]
    assert {r["row"] for r in recs if r["status"] == "ok"} >= {"npo", "dpo"} and calls == []
    cfg = grid_config({**grid, "methods": [{"name": "rmu", "params": {"epochs": 1}}]}, tmp_path)
    Runner(cfg, out_dir=tmp_path / "b", progress=False).run()
    [rec] = [json.loads(p.read_text()) for p in (tmp_path / "b" / "cells").glob("rmu*.json")]
    assert rec["status"] == "ok" and calls == []
