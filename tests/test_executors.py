"""Where cells run: Ray tasks give the serial runner's numbers, survive a killed worker and resume;
``save_models`` writes checkpoints other tools load."""

import json
import math
import os
import signal
import threading
import time

import psutil
import pytest

from unlearnbench.runner import Runner

GRID = {
    "name": "t", "model": "tiny-random-llama", "device": "cpu",
    "data": {"preset": "pistol-mini", "seed": 0},
    "finetune": {"mode": "full", "epochs": 1, "lr": 1e-3, "n_anchor": 4, "n_refusal": 8},
    "eval": {"batch_size": 64, "max_new_tokens": 4, "utility_limit": 5},
    "methods": [{"name": "gd", "params": {"epochs": 1, "lr": 1e-4}}, {"name": "rome"}, {"name": "grace"}],
    "scenarios": [{"type": "edge", "edge": "A_B", "name": "hub"}, {"type": "independent_edge", "name": "ind"}],
    "seeds": [0],
}


def _cells(out):
    return {p.stem: json.loads(p.read_text()) for p in (out / "cells").glob("*.json")}


def _values(rec):
    """Metric values, NaN (no oracle in this grid) as None so that equal means equal."""
    return {k: None if isinstance(m["value"], float) and math.isnan(m["value"]) else m["value"]
            for k, m in rec["metrics"].items()}


def _kill_first_cell_worker(stop: threading.Event, killed: list):
    """SIGKILL the first Ray worker seen running a cell (Ray titles it ``ray::_run_cell_task``)."""
    while not stop.is_set() and not killed:
        for p in psutil.process_iter(["pid", "cmdline"]):
            if p.pid != os.getpid() and "ray::_run_cell_task" in " ".join(p.info["cmdline"] or []):
                time.sleep(0.5)  # mid-cell, not at its first instruction
                os.kill(p.pid, signal.SIGKILL)
                killed.append(p.pid)
                return
        time.sleep(0.05)


def test_ray_matches_serial_and_survives_a_killed_worker(tmp_path, grid_config, monkeypatch):
    pytest.importorskip("ray")
    # one torch thread per cell both ways: the serial run on one core, each Ray task on one CPU
    # (fp32 sums split over 2 threads round differently: MRR moves in the 7th digit)
    monkeypatch.setenv("UNLEARNBENCH_THREADS", "1")
    cfg = grid_config(GRID, tmp_path)
    serial = _cells(Runner(cfg, out_dir=tmp_path / "serial", progress=False).run())

    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_first_cell_worker, args=(stop, killed), daemon=True)
    killer.start()
    try:
        out = Runner(cfg, out_dir=tmp_path / "ray", progress=False, executor="ray").run()
    finally:
        stop.set()
        killer.join()
    assert killed, "no Ray worker was seen running a cell"
    distributed = _cells(out)
    assert sorted(distributed) == sorted(serial) and len(serial) == 2 * (3 + 2)  # 3 methods + none, base
    for cid, rec in serial.items():
        assert rec["status"] == distributed[cid]["status"] == "ok", cid
        assert rec["hardware"]["torch_threads"] == distributed[cid]["hardware"]["torch_threads"] == 1
        assert _values(distributed[cid]) == _values(rec), cid  # exactly, every metric of every cell
        assert [q["generation"] for q in distributed[cid]["per_example"]["qa"]] == \
            [q["generation"] for q in rec["per_example"]["qa"]]
    # a rerun resumes: nothing is left to run, so no cell is sent anywhere
    before = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    Runner(cfg, out_dir=out, progress=False, executor="ray").run()
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")} == before
    assert json.loads((out / "run_log.jsonl").read_text().splitlines()[-1])["cells_run"] == 0


def test_ray_missing_is_a_clear_error(tmp_path, grid_config, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *a, **k):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    cfg = grid_config({**GRID, "finetune": None, "methods": [{"name": "gd", "params": {"epochs": 1}}],
                       "scenarios": GRID["scenarios"][:1]}, tmp_path)
    with pytest.raises(RuntimeError, match=r"unlearnbench\[ray\]"):
        Runner(cfg, out_dir=tmp_path / "r", progress=False, executor="ray").run()
    assert not (tmp_path / "r").exists()  # refused before any work or output
    with pytest.raises(ValueError, match="unknown executor"):
        Runner(cfg, out_dir=tmp_path / "r", executor="dask")


def test_save_models_writes_checkpoints_that_score_like_the_cell(tmp_path, grid_config):
    import torch
    from transformers import AutoModelForCausalLM

    from unlearnbench.core.generation import teacher_forced_stats
    from unlearnbench.models import tiny_tokenizer

    cfg = grid_config({**GRID, "scenarios": GRID["scenarios"][:1]}, tmp_path)
    out = Runner(cfg, out_dir=tmp_path / "r", progress=False, save_models=tmp_path / "models").run()
    cells = _cells(out)
    gd = cells["gd__hub__seed0"]
    saved = gd["method_info"]["saved_model"]
    assert saved["format"] == "huggingface" and (tmp_path / "models" / "gd__hub__seed0" / "config.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(saved["path"], dtype=torch.float32).eval()
    qa = gd["per_example"]["qa"]
    stats = teacher_forced_stats(model, tiny_tokenizer(), [(q["question"], q["answer"]) for q in qa])
    # the checkpoint is the unlearned model: its losses are the cell's, not the implanted model's
    assert [s["nll"] for s in stats] == pytest.approx([q["nll"] for q in qa], abs=1e-4)
    implanted = cells["none__hub__seed0"]["per_example"]["qa"]
    assert max(abs(s["nll"] - q["nll"]) for s, q in zip(stats, implanted)) > 1e-3
    # GRACE adds a codebook module: the whole model is pickled, codebook included
    grace = cells["grace__hub__seed0"]["method_info"]["saved_model"]
    assert grace["format"] == "torch-pickle"
    loaded = torch.load(os.path.join(grace["path"], "model.pt"), weights_only=False)
    assert any("grace" in type(m).__name__.lower() for m in loaded.modules())
    assert not list(tmp_path.glob("models/.*"))  # no temporary folder left
