"""What the shared training loop trains. LoRA: adapters only are trained and merged back, the
frozen reference is the model itself (no copy), and a failing run leaves the model's structure as
it was. Full fine-tuning: the embeddings stay fixed unless asked (no gradient, no optimiser state),
and ``plan`` counts what is trained."""

import copy

import pytest
import torch

import methods
from methods.training import DivergenceError, GradientMethod
from pistol_data import scenarios
from unlearnbench.models import load


@pytest.fixture(scope="module")
def setup(mini):
    lm = load("tiny-random-llama")
    [split] = scenarios.resolve(mini, {"type": "edge", "edge": "A_B"})

    def no_copy():
        raise AssertionError("under LoRA the reference is the model itself: no copy may be asked for")

    req = methods.UnlearnRequest(forget=split.request(mini), retain=split.retain(mini), progress=False,
                                 refusal_targets=["I don't know."], reference_model=no_copy)
    return lm, req


def _optimised(monkeypatch):
    """Records the tensors each optimiser built by the loop updates."""
    seen = []
    real = GradientMethod.make_optimizer

    def spy(self, model, params):
        opt = real(self, model, params)
        seen.append([p for g in opt.param_groups for p in g["params"]])
        return opt

    monkeypatch.setattr(GradientMethod, "make_optimizer", spy)
    return seen


@pytest.mark.parametrize("name", ["gd", "npo"])
def test_lora_trains_adapters_only_and_merges_them(setup, monkeypatch, name):
    lm, req = setup
    seen = _optimised(monkeypatch)
    cls = methods.get_method(name)
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    model = copy.deepcopy(lm.model)
    res = cls().apply(model, lm.tokenizer, req, cls.Params(lr=5e-3, epochs=2, batch_size=4,
                                                           lora={"r": 4, "alpha": 8}))
    out = res.model
    assert out is model  # changed in place, as without LoRA
    # optimiser state only for the adapters: 2 × r × (d_in + d_out) per adapted linear layer
    n_adapter = sum(p.numel() for p in seen[0])
    lin = [m for n, m in lm.model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"]
    assert n_adapter == sum(4 * (m.in_features + m.out_features) for m in lin) == res.info["lora"]["trainable_parameters"]
    assert n_adapter < 0.2 * sum(p.numel() for p in lm.model.parameters())
    # merged: the same module structure and tensor names, no adapter left
    assert list(out.state_dict()) == list(before) and not any("lora" in n for n, _ in out.named_modules())
    changed = {k for k, v in out.state_dict().items() if not torch.equal(before[k], v)}
    assert changed and all(k.endswith("proj.weight") for k in changed)  # embeddings, norms, head untouched
    assert res.info["lora"]["merged"] is True and res.info["lora"]["r"] == 4
    # the merged model computes what it was trained to: the forget loss went up
    from methods.training import nll
    from unlearnbench.core.prompts import collate, encode_qa

    b = collate([{k: v for k, v in encode_qa(lm.tokenizer, r.question, r.answer).items() if k != "prompt_len"}
                 for r in req.forget], lm.tokenizer.pad_token_id)
    with torch.no_grad():
        assert nll(out, b).item() > nll(lm.model, b).item() + 0.05


def test_lora_follows_a_method_that_trains_some_weights(setup):
    lm, req = setup
    rmu = methods.get_method("rmu")
    frozen = copy.deepcopy(lm.model).eval()
    req2 = methods.UnlearnRequest(forget=req.forget, retain=req.retain, progress=False,
                                  refusal_targets=req.refusal_targets, reference_model=lambda: frozen)
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    res = rmu().apply(copy.deepcopy(lm.model), lm.tokenizer, req2,
                      rmu.Params(layer=2, n_update_layers=2, lr=3e-2, epochs=3, lora={"r": 2, "alpha": 4}))
    assert res.info["lora"]["targets"] == ["model.layers.1.mlp.down_proj", "model.layers.2.mlp.down_proj"]
    changed = sorted(k for k, v in res.model.state_dict().items() if not torch.equal(before[k], v))
    assert changed == ["model.layers.1.mlp.down_proj.weight", "model.layers.2.mlp.down_proj.weight"]


def test_lora_adapters_are_removed_when_training_fails(setup, monkeypatch):
    lm, req = setup
    gd = methods.get_method("gd")

    def boom(self, *a, **k):
        raise DivergenceError("simulated")

    monkeypatch.setattr(gd, "backward", boom)
    model = copy.deepcopy(lm.model)
    names = [n for n, _ in model.named_modules()]
    with pytest.raises(DivergenceError):
        gd().apply(model, lm.tokenizer, req, gd.Params(epochs=1, lora={"r": 2}))
    assert [n for n, _ in model.named_modules()] == names  # no adapter module left behind


def test_lora_config_is_validated():
    gd = methods.get_method("gd")
    with pytest.raises(Exception, match="r"):
        gd.Params(lora={"r": 0})
    with pytest.raises(Exception, match="extra"):
        gd.Params(lora={"rank": 8})


@pytest.mark.parametrize("lora", [None, {"r": 4}])
def test_gradient_checkpointing_trains_to_the_same_weights(setup, lora):
    lm, req = setup
    gd = methods.get_method("gd")
    frozen = copy.deepcopy(lm.model).eval()
    req2 = methods.UnlearnRequest(forget=req.forget, retain=req.retain, progress=False,
                                  refusal_targets=req.refusal_targets, reference_model=lambda: frozen)
    outs = []
    for ckpt in (False, True):
        model = copy.deepcopy(lm.model)
        outs.append(gd().apply(model, lm.tokenizer, req2, gd.Params(lr=1e-3, epochs=2, batch_size=4, lora=lora,
                                                                     gradient_checkpointing=ckpt)).model)
        assert not any(getattr(m, "gradient_checkpointing", False) for m in model.modules())  # off again
    plain, ckpt = (dict(m.state_dict()) for m in outs)
    moved = max((plain[k] - lm.model.state_dict()[k]).abs().max().item() for k in plain)
    assert moved > 1e-4  # it trained
    # recomputed activations, unshared prefix: the same update up to float rounding (AdamW's
    # normalised steps carry a gradient's last-bit differences into the weights)
    assert max((ckpt[k] - plain[k]).abs().max().item() for k in plain) < 0.01 * moved


def test_kept_adapters_are_evaluated_saved_and_removed(tmp_path, grid_config, monkeypatch):
    """lora.merge: false — the cell is scored with the adapters on, --save-models writes the adapter
    (peft format), and the shared model comes back without adapter modules and with its weights."""
    from unlearnbench.runner import Runner

    cfg = grid_config({
        "name": "kept", "model": "tiny-random-llama", "device": "cpu", "data": {"preset": "pistol-mini", "seed": 0},
        "finetune": {"mode": "full", "epochs": 1, "lr": 1.0e-3, "n_anchor": 4, "n_refusal": 8},
        "eval": {"batch_size": 64, "max_new_tokens": 4, "qa_max_new_tokens": 4, "utility_limit": 8,
                 "forms": ["direct"], "attacks": ["quantization"]},  # quantizes the adapters merged
        "methods": [{"name": "gd", "label": "kept", "params": {"epochs": 2, "lr": 1e-2, "lora": {"r": 4, "merge": False}}},
                    {"name": "gd", "label": "merged", "params": {"epochs": 2, "lr": 1e-2, "lora": {"r": 4}}}],
        "scenarios": [{"type": "edge", "edge": "A_B", "name": "hub"}], "seeds": [0]}, tmp_path)
    seen = {}
    real = Runner.prepare

    def prepare(self, **kw):  # the grid's own context: its shared model is what the cells change
        seen["ctx"] = ctx = real(self, **kw)
        seen["before"] = {k: v.clone() for k, v in ctx.model.model.state_dict().items()}
        return ctx

    monkeypatch.setattr(Runner, "prepare", prepare)
    runner = Runner(cfg, out_dir=tmp_path / "out", progress=False, save_models=tmp_path / "models")
    runner.run()
    import json
    from pathlib import Path

    recs = {r["row"]: r for r in (json.loads(p.read_text()) for p in (tmp_path / "out" / "cells").glob("*.json"))}
    kept, merged = recs["kept"], recs["merged"]
    assert kept["status"] == merged["status"] == "ok"
    assert set(kept["attacks"]) == {"quantization"}
    assert kept["method_info"]["lora"]["merged"] is False and merged["method_info"]["lora"]["merged"] is True
    assert kept["method_info"]["saved_model"]["format"] == "peft-adapter"
    saved = Path(kept["method_info"]["saved_model"]["path"])
    assert saved.parent == tmp_path / "models"
    assert (saved / "adapter_config.json").exists() and not (saved / "config.json").exists()
    # the adapter on the implanted model is the cell's model: its losses are the cell's
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from unlearnbench.core.generation import teacher_forced_stats
    from unlearnbench.models import tiny_tokenizer

    base = AutoModelForCausalLM.from_pretrained(seen["ctx"].model.path, dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, str(saved)).eval()
    qa = kept["per_example"]["qa"]
    stats = teacher_forced_stats(reloaded, tiny_tokenizer(), [(q["question"], q["answer"]) for q in qa])
    assert [x["nll"] for x in stats] == pytest.approx([q["nll"] for q in qa], abs=1e-4)
    # the same training, merged or not: the scores agree (merging is exact up to float rounding)
    assert kept["metrics"]["forget_rouge1"]["value"] == pytest.approx(merged["metrics"]["forget_rouge1"]["value"], abs=0.1)
    # the grid's shared model afterwards: no adapter module, the implant's weights, bit for bit
    after = seen["ctx"].model.model.state_dict()
    assert not any("lora_" in k for k in after) and set(after) == set(seen["before"])
    assert all(torch.equal(after[k], v) for k, v in seen["before"].items())


# ---- full fine-tuning: the embeddings stay fixed by default ----------------------------------

@pytest.fixture(scope="module")
def with_reference(mini):
    lm = load("tiny-random-llama")
    [split] = scenarios.resolve(mini, {"type": "edge", "edge": "A_B"})
    req = methods.UnlearnRequest(forget=split.request(mini), retain=split.retain(mini), progress=False,
                                 refusal_targets=["I don't know."], reference_model=lambda: copy.deepcopy(lm.model))
    return lm, req


@pytest.mark.parametrize("name", ["gd", "npo", "blur-npo"])
def test_embeddings_stay_fixed_by_default(with_reference, monkeypatch, name):
    lm, req = with_reference
    seen = _optimised(monkeypatch)
    cls = methods.get_method(name)
    model = copy.deepcopy(lm.model)
    emb = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = cls().apply(model, lm.tokenizer, req, cls.Params(lr=5e-3, epochs=1, batch_size=4)).model
    ids = {id(p) for p in seen[0]}
    assert not ids & emb  # no gradient and no AdamW state for them
    assert len(ids) == sum(1 for p in model.parameters() if id(p) not in emb)
    after = out.state_dict()
    assert torch.equal(after["model.embed_tokens.weight"], before["model.embed_tokens.weight"])
    assert torch.equal(after["lm_head.weight"], before["lm_head.weight"])
    assert any(not torch.equal(after[k], before[k]) for k in before if ".layers." in k)  # the blocks trained


def test_freeze_embeddings_false_trains_every_weight(with_reference, monkeypatch):
    lm, req = with_reference
    seen = _optimised(monkeypatch)
    gd = methods.get_method("gd")
    model = copy.deepcopy(lm.model)
    before = model.get_input_embeddings().weight.clone()
    gd().apply(model, lm.tokenizer, req, gd.Params(lr=5e-3, epochs=1, batch_size=4, freeze_embeddings=False))
    assert len(seen[0]) == sum(1 for _ in model.parameters())
    assert not torch.equal(model.get_input_embeddings().weight, before)


def test_plan_counts_frozen_embeddings_out():
    from unlearnbench.evaluate import EvalParams
    from unlearnbench.plan import Tokens, plan_cell, shape_of

    shape = shape_of("tiny-random-llama")
    assert 0 < shape.embedding < shape.n_params
    gd = methods.get_method("gd")
    t = Tokens(forget_rows=6, retain_rows=30, longest=40, forget_tokens=200, retain_tokens=1000,
               eval_rows=50, eval_prompt=30, eval_prompt_tokens=1200)
    fixed = plan_cell("gd", gd.Params(), shape, t, EvalParams())
    full = plan_cell("gd", gd.Params(freeze_embeddings=False), shape, t, EvalParams())
    # two AdamW moments per embedding value less (and its gradients)
    assert full.parts["optimizer"] - fixed.parts["optimizer"] == 8 * shape.embedding
    assert full.parts["grads"] > fixed.parts["grads"]
