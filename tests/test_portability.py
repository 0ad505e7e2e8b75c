"""Same numbers anywhere: precision by config, not by CPU; cold = warm = rerun; mixed precisions
in one process; no evaluation data in what a method reads; comparable rows only."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unlearnbench.core import precision

ROOT = Path(__file__).resolve().parents[1]


# ---- precision ---------------------------------------------------------------------------------

def test_auto_is_fp32_on_every_cpu_and_the_switch_hides_native_bf16(monkeypatch):
    monkeypatch.delenv(precision.NO_NATIVE_BF16_ENV, raising=False)
    assert precision.resolve("auto", "cpu") == "fp32"  # whatever this CPU has
    monkeypatch.setenv(precision.NO_NATIVE_BF16_ENV, "1")
    assert not precision.native_bf16("cpu")
    assert precision.resolve("auto", "cpu") == "fp32"
    assert precision.resolve("bf16", "cpu") == "bf16"
    with pytest.raises(precision.PrecisionError, match="unknown precision"):
        precision.resolve("fp16", "cpu")


def test_bf16_on_a_cpu_without_native_bf16_is_refused_before_any_work(tmp_path, grid_config, monkeypatch):
    from unlearnbench.runner import Runner

    monkeypatch.setenv(precision.NO_NATIVE_BF16_ENV, "1")
    monkeypatch.delenv(precision.ALLOW_SLOW_BF16_ENV, raising=False)
    with pytest.raises(precision.PrecisionError, match="slower than fp32") as e:
        precision.check("bf16", "cpu", "method 'gd'")
    assert "method 'gd'" in str(e.value) and precision.ALLOW_SLOW_BF16_ENV in str(e.value)
    assert precision.check("fp32", "cpu") == "fp32" and precision.check("auto", "cpu") == "fp32"
    cfg = grid_config({"model": "tiny-random-llama", "device": "cpu", "finetune": {"precision": "bf16"},
                       "methods": [{"name": "gd", "params": {"precision": "bf16"}}, "ga"],
                       "scenarios": [{"type": "edge", "edge": "A_B"}]}, tmp_path)
    runner = Runner(cfg, tmp_path / "out", progress=False)
    with pytest.raises(precision.PrecisionError) as e:
        runner.run()
    assert "finetune.precision" in str(e.value) and "method 'gd'" in str(e.value) and "'ga'" not in str(e.value)
    assert not (tmp_path / "out" / "cells").exists()  # nothing was run or written
    monkeypatch.setenv(precision.ALLOW_SLOW_BF16_ENV, "1")
    assert precision.check("bf16", "cpu") == "bf16"


def test_the_cli_names_the_problem_and_exits_non_zero(tmp_path, monkeypatch, capsys):
    from unlearnbench.cli import main

    monkeypatch.setenv(precision.NO_NATIVE_BF16_ENV, "1")
    monkeypatch.delenv(precision.ALLOW_SLOW_BF16_ENV, raising=False)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: tiny-random-llama\ndevice: cpu\neval: {precision: bf16}\nmethods: [ga]\n"
                   "scenarios: [{type: edge, edge: A_B}]\n")
    assert main(["run", str(cfg), "--out", str(tmp_path / "out")]) != 0
    assert "eval.precision" in capsys.readouterr().err
    assert not (tmp_path / "out" / "cells").exists()


# ---- same config, same numbers -------------------------------------------------------------------

_METHODS = [{"name": "gd", "params": {"epochs": 1}}, {"name": "npo", "params": {"epochs": 1}},
            {"name": "rmu", "params": {"epochs": 1}}, {"name": "lunar", "params": {"epochs": 2}},
            {"name": "rome", "params": {"v_steps": 3, "n_prefixes": 2, "stats_samples": 4}}]
_TINY_GRID = {"model": "tiny-random-llama", "device": "cpu",
              "finetune": {"epochs": 1, "n_anchor": 8, "direct_repeats": 1, "n_refusal": 8},
              "eval": {"utility_limit": 6, "qa_max_new_tokens": 4, "max_new_tokens": 4, "attacks": []},
              "methods": _METHODS, "scenarios": [{"type": "edge", "edge": "A_B"}], "seeds": [0]}


def _metrics(out: Path) -> dict:
    cells = sorted((out / "cells").glob("*.json"))
    assert cells
    recs = {c.name: json.loads(c.read_text()) for c in cells}
    assert all(r["status"] == "ok" for r in recs.values()), [r.get("error") for r in recs.values()]
    return {n: (r["metrics"], r.get("method_info"), r["precision"], r["evaluator_version"]) for n, r in recs.items()}


def test_cold_warm_and_rerun_give_identical_metrics(tmp_path, grid_config, monkeypatch):
    """Cold (empty cache: the implant is trained in this process), warm (a fresh process loads the
    implant from the cache) and a rerun give the same metric JSON, value for value."""
    from unlearnbench.runner import Runner

    monkeypatch.setenv("UNLEARNBENCH_CACHE", str(tmp_path / "cache"))
    cfg = grid_config(_TINY_GRID, tmp_path)
    cold = Runner(cfg, tmp_path / "cold", progress=False).run()
    assert not json.loads(next((tmp_path / "cache" / "finetuned").glob("*/implant.json")).read_text()).get("cached")
    warm = tmp_path / "warm"
    subprocess.run([sys.executable, "-m", "unlearnbench.cli", "run", str(tmp_path / "c.yaml"), "--out", str(warm)],
                   check=True, cwd=ROOT, capture_output=True, env={**__import__("os").environ})
    rerun = Runner(cfg, tmp_path / "rerun", progress=False).run()
    a, b, c = _metrics(cold), _metrics(warm), _metrics(rerun)
    assert set(a) == {"base__edge-A_B__seed0.json", "none__edge-A_B__seed0.json"} | \
        {f"{m['name']}__edge-A_B__seed0.json" for m in _METHODS}
    assert a == b == c
    # the implanted model is not the base model: the check compares trained numbers
    assert a["none__edge-A_B__seed0.json"][0] != a["base__edge-A_B__seed0.json"][0]


def test_methods_of_different_precisions_in_one_process_give_their_numbers_alone(tmp_path, grid_config,
                                                                              monkeypatch):
    """accelerate's process-wide mixed-precision state must not leak from one cell to the next
    (it raised 'AcceleratorState has already been initialized' on CPUs without native bf16)."""
    from unlearnbench.runner import Runner

    monkeypatch.setenv(precision.ALLOW_SLOW_BF16_ENV, "1")  # bf16 on purpose, on any CPU
    base = {**_TINY_GRID, "finetune": None}
    m16 = {"name": "gd", "label": "gd-bf16", "params": {"epochs": 1, "precision": "bf16"}}
    m32 = {"name": "ga", "params": {"epochs": 1, "precision": "fp32"}}
    both = Runner(grid_config({**base, "methods": [m16, m32]}, tmp_path), tmp_path / "both", progress=False).run()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    r32 = Runner(grid_config({**base, "methods": [m32]}, tmp_path / "a"), tmp_path / "r32", progress=False).run()
    r16 = Runner(grid_config({**base, "methods": [m16]}, tmp_path / "b"), tmp_path / "r16", progress=False).run()
    together = _metrics(both)
    alone = {**_metrics(r32), **_metrics(r16)}
    assert together == alone
    assert together["gd-bf16__edge-A_B__seed0.json"][2]["method"] == "bf16"
    assert together["ga__edge-A_B__seed0.json"][2]["method"] == "fp32"


def test_cells_change_the_shared_model_in_place_and_leave_it_as_saved(tmp_path, grid_config, monkeypatch):
    """With an implant checkpoint each cell trains the shared model itself and its weights are
    copied back afterwards (one model in memory): every cell's numbers equal those of a cell that
    worked on a copy — also after a bf16 cell (accelerate's autocast wrapper) and a failed one."""
    from unlearnbench import runner as runner_mod
    from unlearnbench.runner import Runner

    monkeypatch.setenv("UNLEARNBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(precision.ALLOW_SLOW_BF16_ENV, "1")
    methods = [{"name": "gd", "label": "gd-bf16", "params": {"epochs": 1, "precision": "bf16"}},
               {"name": "ga", "label": "ga-diverges", "params": {"epochs": 3, "lr": 1e30}}] + _METHODS
    grid = {**_TINY_GRID, "methods": methods}
    restores = []
    real = runner_mod.restore_weights
    monkeypatch.setattr(runner_mod, "restore_weights", lambda m, p: (restores.append(p), real(m, p)))
    (tmp_path / "a").mkdir()
    in_place = Runner(grid_config(grid, tmp_path / "a"), tmp_path / "in_place", progress=False).run()
    from methods import get_method

    refs = sum(getattr(get_method(m["name"]), "needs_reference", False) for m in methods)
    assert refs == 2  # npo and rmu read a frozen reference: the model the cell received itself (npo, before its
    # first update) or a copy of it (rmu), never a copy restored from the checkpoint
    assert len(restores) == len(methods)  # after every cell, and only then
    monkeypatch.setattr(runner_mod, "checkpoint_covers", lambda *a: False)
    (tmp_path / "b").mkdir()
    copies = Runner(grid_config(grid, tmp_path / "b"), tmp_path / "copies", progress=False).run()
    assert len(restores) == len(methods)  # no more: every cell had its own copy

    def recs(out):
        return {c.name: json.loads(c.read_text()) for c in sorted((out / "cells").glob("*.json"))}

    a, b = recs(in_place), recs(copies)
    assert a.keys() == b.keys() and len(a) == len(methods) + 2
    assert a["ga-diverges__edge-A_B__seed0.json"]["status"] == "failed"  # and the cells after it still match
    for name in a:
        # generations exact; float values to 1e-5: ROME's edit on the shared model vs on a copy can
        # differ in the last float32 bit (MKL rounds by memory alignment), seen in teacher-forced NLLs
        # and, amplified by a small σ, in Min-K%++ (3e-6)
        assert _same(a[name]["status"], b[name]["status"]) and _same(a[name].get("metrics"), b[name].get("metrics")) \
            and _same(a[name].get("per_example"), b[name].get("per_example")), name


def _same(x, y, path="") -> bool:
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_same(x[k], y[k], f"{path}.{k}") for k in x)
    if isinstance(x, list) and isinstance(y, list):
        return len(x) == len(y) and all(_same(u, v, path) for u, v in zip(x, y))
    if isinstance(x, float) and isinstance(y, float):  # generations, ranks and strings stay exact
        ok = x == pytest.approx(y, rel=1e-5, abs=1e-5, nan_ok=True)
    else:
        ok = x == y
    return ok


def test_restore_weights_puts_back_every_parameter(tmp_path):
    from unlearnbench.models import checkpoint_covers, load, restore_weights, tiny_random_llama

    m, tok = tiny_random_llama()
    m.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    lm = load(str(tmp_path))
    saved = {k: v.clone() for k, v in lm.model.state_dict().items()}
    assert checkpoint_covers(lm.model, tmp_path) and not checkpoint_covers(lm.model, None)
    with torch.no_grad():
        for p in lm.model.parameters():
            p.add_(1.0)
    restore_weights(lm.model, tmp_path)
    assert all(torch.equal(v, saved[k]) for k, v in lm.model.state_dict().items())


# ---- no evaluation data inside methods -----------------------------------------------------------

def _strings(obj) -> set[str]:
    from pistol_data import QARecord

    out: set[str] = set()
    if isinstance(obj, QARecord):
        out |= {obj.question, obj.answer}
    elif isinstance(obj, str):
        out.add(obj)
    elif isinstance(obj, (list, tuple, set)):
        for x in obj:
            out |= _strings(x)
    return out


def test_no_method_receives_a_question_the_evaluator_scores(mini):
    import dataclasses

    import methods
    from pistol_data import scenarios
    from unlearnbench.evaluate import EvalParams, Evaluator
    from unlearnbench.runner import build_request

    ev = Evaluator(mini, EvalParams())
    split_specs = [{"type": "edge", "edge": "A_B"}, {"type": "max_degree"}, {"type": "contract_type",
                                                                                "contract_type": "employment"}]
    for name in sorted(methods.REGISTRY):
        for spec in split_specs:
            [split] = scenarios.resolve(mini, spec)
            req = build_request(mini, split, seed=0)
            assert req.preserve, "the runner gives every method a preserve corpus"
            allowed = _strings(split.request(mini)) | _strings(split.retain(mini))  # the method's input
            scored = _strings([r for r in ev.qa]) | _strings(ev.gk)
            received = set()
            for f in dataclasses.fields(req):
                if f.name not in ("forget", "retain"):
                    received |= _strings(getattr(req, f.name))
            leaked = (received & scored) - allowed
            assert not leaked, f"{name} on {spec}: {sorted(leaked)[:3]}"
            # forget/retain hold direct questions only: held-out forms stay with the evaluator
            assert {r.form for r in req.forget + req.retain} == {"direct"}


def test_no_method_module_imports_an_evaluation_or_side_set():
    """Everything a method reads arrives through its request: methods import QA *records* from
    pistol_data, never a data set (general knowledge, anchors, refusal sets, generators)."""
    allowed = {"QARecord"}
    for f in (ROOT / "methods").glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pistol_data"):
                names = {a.name for a in node.names}
                assert names <= allowed, f"{f.name} imports {names - allowed} from {node.module}"
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("pistol_data") for a in node.names), f.name


def test_preserve_prompts_are_disjoint_from_the_utility_set():
    from pistol_data import general_knowledge
    from pistol_data.side_sets import preserve_prompts

    gk = {r.question.lower() for r in general_knowledge()}
    assert preserve_prompts() and not {q.lower() for q in preserve_prompts()} & gk


# ---- comparable rows only ------------------------------------------------------------------------

def _cell(row, ds_val, fp="a" * 64, ev_prec="fp32", version=2, key="k1"):
    return {"row": row, "method": row, "kind": "unlearn", "seed": 0, "status": "ok",
            "scenario": {"label": "edge:A_B"}, "dataset": {"fingerprint": fp}, "model": {"spec": "m", "finetune_key": key},
            "precision": {"evaluation": ev_prec}, "evaluator_version": version, "cost": {"apply_seconds": 1.0},
            "metrics": {"ds": {"value": ds_val, "higher_is_better": False}}}


def test_incomparable_cells_are_never_ranked_together():
    from unlearnbench.leaderboard import markdown, table
    from unlearnbench.results import comparability_groups

    recs = [_cell("gd", 10.0), _cell("lunar", 20.0), _cell("rome", 5.0, ev_prec="bf16"),
            _cell("npo", 1.0, version=1)]
    rows = table(recs)
    ranks = {r["method"]: (r["scenario"], r["rank"]) for r in rows}
    assert ranks["gd"][1] == 1 and ranks["lunar"][1] == 2 and ranks["gd"][0] == ranks["lunar"][0] and ranks["rome"][1] == 1 and ranks["npo"][1] == 1  # noqa: E501
    assert len({ranks[m][0] for m in ranks}) == 3  # three tables for three groups
    groups = comparability_groups(recs)
    md = markdown(rows, groups, {"ds": False})
    assert "not all comparable" in md and "evaluation precision bf16" in md and "evaluator version 1" in md
    assert "DS ↓" in md
    from unlearnbench.html import leaderboard_html
    from unlearnbench.leaderboard import cautions

    page = leaderboard_html(rows, ["ds"], {"ds": False}, cautions=cautions(groups))
    assert '<p class="caution"><strong>These results are not all comparable</strong> (3 groups)' in page
    assert "<code>" in page and "evaluation precision bf16" in page
    assert '<p class="caution">' not in leaderboard_html(rows, ["ds"], {"ds": False}, cautions=cautions({}))
    same = table([_cell("gd", 10.0), _cell("lunar", 20.0)])
    assert {r["scenario"] for r in same} == {"edge:A_B"}


def test_cells_of_several_library_versions_are_ranked_together_under_a_line_that_says_so():
    from unlearnbench.leaderboard import markdown, table
    from unlearnbench.results import mixed_versions_text, version_mix

    old, new = _cell("gd", 10.0), _cell("lunar", 20.0)
    for rec, tf in ((old, "4.57.0"), (new, "5.25.0")):
        rec["versions"] = {"torch": "2.13.0+cpu", "transformers": tf}
    assert version_mix([old, new]) == {"transformers": {"4.57.0": 1, "5.25.0": 1}}
    rows = table([old, new])
    assert {r["scenario"] for r in rows} == {"edge:A_B"} and sorted(r["rank"] for r in rows) == [1, 2]
    text = mixed_versions_text([old, new])
    assert "transformers 4.57.0 (1 cell), 5.25.0 (1 cell)" in text and "torch" not in text
    assert text in markdown(rows, None, {"ds": False}, text)
    new["versions"]["transformers"] = "4.57.0"
    assert version_mix([old, new]) == {} and mixed_versions_text([old, new]) == ""


def test_cells_computed_on_different_hardware_are_ranked_together_under_a_line_that_says_so():
    """A CPU's vector width moves an fp32 score at rounding level (the quickstart's rome: DS 5.6 on an AVX2
    EPYC, 8.3 on an AVX-512 one), so a table of cells from several machines says which."""
    from unlearnbench.leaderboard import markdown, table
    from unlearnbench.results import hardware_label, hardware_mix, mixed_versions_text

    avx2 = {"cpu": "AMD EPYC", "cpu_isa": ["avx2"]}
    assert hardware_label(avx2) == "AMD EPYC/AVX2"
    assert hardware_label({"cpu": "AMD EPYC", "cpu_isa": ["avx2", "avx512f", "avx512_bf16"]}) == "AMD EPYC/AVX-512"
    assert hardware_label({"cpu": "Intel(R) Xeon(R)", "cpu_isa": ["avx2", "avx512f", "amx_tile"]}) == \
        "Intel(R) Xeon(R)/AMX"
    assert hardware_label({"cpu": "AMD EPYC", "cpu_isa": ["avx2"], "cuda_device": "NVIDIA H100"}) == "NVIDIA H100"
    assert hardware_label({"cpu_count": 2}) == "unrecorded"  # written before records kept the ISA
    a, b, c = _cell("gd", 10.0), _cell("lunar", 20.0), _cell("rome", 5.0)
    a["hardware"] = dict(avx2)
    b["hardware"] = {"cpu": "AMD EPYC", "cpu_isa": ["avx2", "avx512f"]}
    c["hardware"] = {"cpu_count": 2}
    assert hardware_mix([a, b, c]) == {"AMD EPYC/AVX-512": 1, "AMD EPYC/AVX2": 1, "unrecorded": 1}
    rows = table([a, b, c])
    assert {r["scenario"] for r in rows} == {"edge:A_B"} and sorted(r["rank"] for r in rows) == [1, 2, 3]
    text = mixed_versions_text([a, b, c])
    assert text.startswith("**The hardware differs between these cells**") and "Library versions" not in text
    assert "AMD EPYC/AVX2 (1 cell), unrecorded (1 cell)" in text
    assert text in markdown(rows, None, {"ds": False}, text)
    b["hardware"] = c["hardware"] = dict(avx2)
    assert hardware_mix([a, b, c]) == {} and mixed_versions_text([a, b, c]) == ""


def test_report_refuses_a_folder_of_incomparable_cells(tmp_path):
    from unlearnbench.report import write_report
    from unlearnbench.results import write_atomic

    for i, rec in enumerate([_cell("gd", 10.0), _cell("lunar", 20.0, key="k2")]):
        write_atomic(tmp_path / "cells" / f"c{i}.json", rec)
    with pytest.raises(ValueError, match="implant key"):
        write_report(tmp_path, plots=False)


def test_a_bf16_implant_is_scored_as_saved_whether_just_trained_or_loaded(monkeypatch, mini):
    """The cause of cold ≠ warm: the Trainer left accelerate's bf16 autocast wrapper on the model
    it trained, so a just-trained implant was scored in bf16 and a cached one in fp32."""
    import torch

    from unlearnbench.finetune import FinetuneParams, finetune
    from unlearnbench.models import load

    monkeypatch.setenv(precision.ALLOW_SLOW_BF16_ENV, "1")
    p = FinetuneParams(epochs=1, n_anchor=4, direct_repeats=1, n_refusal=4, precision="bf16")
    base = load("tiny-random-llama")
    before = {k: v.clone() for k, v in base.model.state_dict().items()}
    cold, info = finetune(base, mini, p, progress=False)
    warm, info2 = finetune(load("tiny-random-llama"), mini, p, progress=False)
    assert not info["cached"] and info2["cached"] and info["precision"] == "bf16"
    assert all(torch.equal(v, base.model.state_dict()[k]) for k, v in before.items())  # input untouched
    ids = torch.tensor([[1, 30, 40, 50, 60]])
    with torch.no_grad():
        assert torch.equal(cold.model(input_ids=ids).logits, warm.model(input_ids=ids).logits)
