"""``unlearnbench plan``: shapes from configurations alone, and predictions that move the way the
options move them (the measured-vs-predicted validation lives in benchmarks/)."""

import json
import subprocess
import sys

import pytest
import torch

import methods
from unlearnbench.evaluate import EvalParams
from unlearnbench.plan import GB, Tokens, plan, plan_cell, shape_of

TOKENS = Tokens(forget_rows=6, retain_rows=36, longest=60, forget_tokens=300, retain_tokens=1800,
                eval_rows=600, eval_prompt=50, eval_prompt_tokens=20000)
EVAL = EvalParams(max_new_tokens=24, utility_limit=100)


@pytest.mark.parametrize("spec", ["tiny-random-llama", "random-llama-0.1b"])
def test_shape_counts_the_parameters_of_the_model_that_loads(spec):
    from unlearnbench.models import load

    shape = shape_of(spec)  # meta device: no weights
    model = load(spec).model
    assert shape.n_params == sum(p.numel() for p in model.parameters())
    assert shape.layers == model.config.num_hidden_layers
    r = 4  # what LoRA adds equals peft's count (test_lora checks the same sum on the real adapters)
    assert shape.lora_params(r) == sum(r * (m.in_features + m.out_features) for n, m in model.named_modules()
                                       if isinstance(m, torch.nn.Linear) and n != "lm_head")


def test_paper_scale_presets_have_their_published_sizes():
    assert shape_of("llama-2-7b").n_params == pytest.approx(6.74e9, rel=0.01)
    assert shape_of("llama-3-8b").n_params == pytest.approx(8.03e9, rel=0.01)
    assert shape_of("mistral-7b").n_params == pytest.approx(7.24e9, rel=0.01)


def _cell(name, weights="fp32", device="cpu", **params):
    cls = methods.get_method(name)
    return plan_cell(name, cls.Params(**params), shape_of("llama-3-8b"), TOKENS, EVAL, weights=weights, device=device)


def test_options_move_the_prediction_the_right_way():
    full, lora = _cell("gd"), _cell("gd", lora={"r": 16})
    shape = shape_of("llama-3-8b")
    w = shape.n_params * 4
    t = (shape.n_params - shape.embedding) * 4  # trained: the embeddings and the LM head stay fixed by default
    assert shape.embedding == 2 * 128256 * 4096  # Llama-3-8B: untied embedding and head, 13% of its weights
    # full fine-tuning: a gradient and two AdamW moments per trained weight; a retain term runs its
    # forward beside the forget term's gradients (their sum); gradient ascent alone peaks at the larger
    ga = _cell("ga")
    act = full.parts["activations"]
    assert full.parts["grads"] == t and full.parts["optimizer"] == 2 * t
    assert full.phases["training"] == 3 * t + act
    assert ga.parts["grads"] == t and ga.phases["training"] == 2 * t + max(t, ga.parts["activations"])
    assert _cell("gd", freeze_embeddings=False).parts["optimizer"] == 2 * w
    # the lean MLP (2 of 4 wide activations) and head apply in fp32, not under bf16 autocast
    assert _cell("gd", precision="bf16").parts["activations"] > act
    # a KL retain term reads every logit at the answer positions: chunk by chunk in fp32 (core.lm's
    # _KLFromRef, as gd's log p(gold)), every logit kept under bf16 autocast
    assert _cell("ukl", rows_per_pass=None).parts["activations"] == act
    assert (_cell("ukl", rows_per_pass=None, precision="bf16").parts["activations"]
            > _cell("gd", precision="bf16").parts["activations"])
    # ukl's default rows_per_pass (4) runs a batch of 8 as two passes: one pass's activations alive
    assert _cell("ukl").parts["activations"] < 0.6 * act
    assert lora.peak_bytes < 0.1 * full.peak_bytes and lora.flops < full.flops
    ckpt = _cell("gd", lora={"r": 16}, gradient_checkpointing=True)
    assert ckpt.parts["activations"] < 0.2 * lora.parts["activations"]
    # BLUR holding g_f and g_r keeps a second gradient; with low_memory (default) it peaks as gd, for
    # one more retain pass; NPO reads the model itself before its first update (no copy), RMU holds a
    # frozen copy
    blur = _cell("blur-npo", low_memory=False)
    assert blur.parts["grads"] == 2 * t and blur.phases["training"] == 3 * t + max(t, blur.parts["activations"])
    lean_blur = _cell("blur-npo")
    assert lean_blur.parts["grads"] == t and lean_blur.phases["training"] == 3 * t + lean_blur.parts["activations"]
    assert lean_blur.flops > blur.flops
    assert "copy" not in _cell("npo").parts and "reference" not in _cell("npo").phases
    assert _cell("rmu").parts["copy"] == w
    # the editors hold statistics, not optimiser state; GRACE/WISE a copy of the model
    assert "optimizer" not in _cell("rome").parts and _cell("memit").parts["statistics"] > _cell("rome").parts["statistics"]
    assert _cell("grace").parts["copy"] == w


def test_bf16_weights_halve_the_model_and_train_fp32_copies():
    shape = shape_of("llama-3-8b")
    n = shape.n_params
    fp32, bf16 = _cell("gd"), _cell("gd", weights="bf16", device="cuda")
    assert bf16.resident_bytes == 2 * n and fp32.resident_bytes == 4 * n
    # trained tensors held in fp32 (the fixed embeddings stay bf16)
    assert bf16.parts["master"] == 2 * (n - shape.embedding) and "master" not in fp32.parts
    assert bf16.parts["activations"] < fp32.parts["activations"]
    assert "master" not in _cell("gd", weights="bf16", device="cuda", lora={"r": 16}).parts  # adapters are fp32
    assert _cell("grace", weights="bf16", device="cuda").parts["copy"] == 2 * n
    # the editors' statistics are cached and solved on the CPU: host memory on a GPU
    gpu, cpu = _cell("memit", weights="bf16", device="cuda"), _cell("memit")
    assert "statistics" not in gpu.parts and gpu.host_bytes == cpu.phases["solve"] > cpu.parts["statistics"] > 0
    # held through the value optimisation: one d_ff² float64 matrix per edited layer; the solves after it
    square = shape.intermediate ** 2 * 8
    assert cpu.parts["statistics"] == 5 * square and cpu.phases["solve"] == 7 * square
    rome = _cell("rome")
    assert rome.parts["statistics"] == square and rome.phases["solve"] == 2 * square
    # LUNAR keeps its activation rows for every candidate layer of the search
    assert _cell("lunar", layers=[20]).parts["rows"] < _cell("lunar").parts["rows"]


def test_plan_says_what_fits_and_how(tmp_path, grid_config):
    cfg = grid_config({"name": "p", "model": "llama-3-8b", "device": "cuda", "data": {"preset": "pistol-mini"},
                       "finetune": None, "eval": {"utility_limit": 20},
                       "methods": [{"name": "gd"}, {"name": "gd", "label": "gd-lora", "params": {"lora": {"r": 16}}},
                                   {"name": "rome"}],
                       "scenarios": [{"type": "edge", "edge": "A_B", "name": "hub"}], "seeds": [0]}, tmp_path)
    p = plan(cfg, memory_gb=80)
    by = {c["cell"]: c for c in p["cells"]}
    assert not by["gd__hub"]["fits"] and "lora" in by["gd__hub"]["advice"]
    assert by["gd-lora__hub"]["fits"] and by["rome__hub"]["fits"]
    assert p["weights"] == "bf16" and p["weights_gb"] == pytest.approx(8.03e9 * 2 / GB, rel=0.01)  # auto on CUDA


def test_cli_plan_json(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: p\nmodel: tiny-random-llama\ndevice: cpu\ndata: {preset: pistol-mini}\nfinetune: null\n"
                   "methods: all\nscenarios: [{type: edge, edge: A_B}]\nseeds: [0]\n")
    r = subprocess.run([sys.executable, "-m", "unlearnbench.cli", "plan", str(cfg), "--json", "--memory-gb", "8"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert {c["method"] for c in out["cells"]} == set(methods.REGISTRY)  # every registered method has a plan
    assert all(c["fits"] and c["peak_bytes"] > 0 and c["flops"] > 0 for c in out["cells"])


def test_editors_value_groups_bound_the_activations_not_the_flops():
    """MEMIT/AlphaEdit run their facts' value optimisation in groups of at most v_chunk_tokens
    positions: the activations are the largest group's, the FLOPs every fact's."""
    import dataclasses

    def geometry(n_prefixes, batched, query_merge=1, chunk_tokens=None):
        every = (4000, 400) if batched else (500, 50)
        return every if chunk_tokens is None or not batched else (min(chunk_tokens, every[0]), 100)

    t = dataclasses.replace(TOKENS, edit_geometry=geometry)
    shape = shape_of("llama-3-8b")
    for name in ("memit", "alphaedit"):
        cls = methods.get_method(name)
        whole, grouped = (plan_cell(name, cls.Params(v_chunk_tokens=c), shape, t, EVAL) for c in (None, 1000))
        assert grouped.parts["activations"] < whole.parts["activations"] / 3
        assert grouped.flops == whole.flops
