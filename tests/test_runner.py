"""The grid runner: results files, resume after interrupt, failing cells, config errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import methods
from methods.base import REGISTRY, Method, MethodParams
from unlearnbench.config import ConfigError
from unlearnbench.runner import Runner

BASE = {
    "name": "t", "model": "tiny-random-llama", "device": "cpu",
    "data": {"preset": "pistol-mini", "seed": 0},
    "finetune": None,
    "eval": {"batch_size": 64, "max_new_tokens": 4, "utility_limit": 5},
    "methods": [{"name": "ga", "params": {"epochs": 1, "lr": 1e-4}},
                {"name": "gd", "params": {"epochs": 1, "lr": 1e-4}}],
    "scenarios": [{"type": "edge", "edge": "A_B", "name": "hub"}, {"type": "independent_edge", "name": "ind"}],
    "seeds": [0],
}


@pytest.fixture
def make_cfg(tmp_path, grid_config):
    """``BASE`` with top-level overrides, loaded as ``unlearnbench run`` loads a config."""
    return lambda **over: grid_config({**BASE, **over}, tmp_path)


def test_grid_writes_cells_and_leaderboard(tmp_path, make_cfg):
    out = Runner(make_cfg(), out_dir=tmp_path / "r", progress=False).run()
    cells = sorted(p.name for p in (out / "cells").glob("*.json"))
    assert cells == sorted(f"{m}__{s}__seed0.json" for m in ("none", "ga", "gd") for s in ("hub", "ind"))
    rec = json.loads((out / "cells" / "ga__hub__seed0.json").read_text())
    assert rec["status"] == "ok" and rec["scenario"]["splits"][0]["forget_edges"] == ["A_B"]
    assert rec["metrics"]["ds"]["higher_is_better"] is False
    assert rec["cost"]["apply_seconds"] > 0 and rec["cost"]["peak_rss_mb"] > 0
    # the cell's wall time covers apply and the evaluation (an estimate for its other seeds reads it)
    assert rec["cost"]["cell_seconds"] >= rec["cost"]["apply_seconds"] + rec["cost"]["eval_seconds"]
    assert rec["dataset"]["fingerprint"] and "torch" in rec["versions"] and rec["params"]["epochs"] == 1
    assert len(rec["per_example"]["qa"]) > 0
    md = (out / "leaderboard.md").read_text()
    assert "## hub" in md and "| gd |" in md
    # the reference row is in the table, unranked, with the DS its cell holds
    none = json.loads((out / "cells" / "none__hub__seed0.json").read_text())
    line = next(x for x in md.splitlines() if x.startswith("| ref | none | reference |"))
    assert f"| {none['metrics']['ds']['value']:.1f} |" in line
    assert (out / "leaderboard.csv").read_text().startswith("scenario,rank,method")
    assert not list(out.rglob("*.tmp"))


class _Interrupt(BaseException):
    """Stands in for Ctrl-C (pytest handles a real KeyboardInterrupt itself)."""


def test_resume_after_interrupt(tmp_path, make_cfg, monkeypatch, caplog):
    cfg = make_cfg()
    calls, interrupt = [], [True]
    real = Runner._run_cell

    def flaky(self, *a, **k):
        calls.append(a[-1])  # the cell id
        if len(calls) == 2 and interrupt[0]:
            raise _Interrupt  # the user pressed Ctrl-C in the middle of the grid
        return real(self, *a, **k)

    monkeypatch.setattr(Runner, "_run_cell", flaky)
    with pytest.raises(_Interrupt):
        Runner(cfg, out_dir=tmp_path / "r", progress=False).run()
    done = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "r" / "cells").glob("*.json")}
    assert "ga__hub__seed0.json" in done and "ga__ind__seed0.json" not in done
    assert not list((tmp_path / "r").rglob("*.tmp"))
    # the stopped invocation's time is logged, with the one cell it finished
    (stopped,) = [json.loads(x) for x in (tmp_path / "r" / "run_log.jsonl").read_text().splitlines()]
    assert stopped["stopped"] is True and stopped["cells_run"] == 1 and stopped["seconds"] > 0
    calls.clear()
    interrupt[0] = False
    with caplog.at_level("WARNING", logger="unlearnbench.runner"):
        Runner(cfg, out_dir=tmp_path / "r", progress=False).run()
    assert "ga__hub__seed0" not in calls and len(calls) == 3  # only the unfinished cells ran
    # the kept cell's time on this machine sets the speed of the estimate before the first new cell
    assert any("3 cells to run" in r.message and "the 1 cell(s) recorded here before achieved" in r.message
               for r in caplog.records)
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "r" / "cells").glob("*.json")}
    assert after["ga__hub__seed0.json"] == done["ga__hub__seed0.json"] and len(after) == 6
    runs = [json.loads(x) for x in (tmp_path / "r" / "run_log.jsonl").read_text().splitlines()]
    assert len(runs) == 2 and "stopped" not in runs[1] and runs[1]["cells_run"] == 3


def test_sigterm_stops_a_run_like_ctrl_c(tmp_path, monkeypatch, capsys):
    """`timeout` or a scheduler sends SIGTERM: the CLI stops between Python steps, says so, exits
    128 + 15, and the run's time goes into run_log.jsonl marked stopped (no cell half-written)."""
    import os
    import signal
    import time

    import yaml

    from unlearnbench.cli import main

    def killed(self, *a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
        raise AssertionError("SIGTERM did not stop the run")

    monkeypatch.setattr(Runner, "_run_serial", killed)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**BASE, "methods": [{"name": "ga", "params": {"epochs": 1}}],
                                   "scenarios": [BASE["scenarios"][0]]}))
    before = signal.getsignal(signal.SIGTERM)
    assert main(["run", str(cfg), "--out", str(tmp_path / "out")]) == 143
    assert "stopped by SIGTERM" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before  # the CLI puts the caller's handler back
    (run,) = [json.loads(x) for x in (tmp_path / "out" / "run_log.jsonl").read_text().splitlines()]
    assert run["stopped"] is True and run["cells_run"] == 0
    assert not list((tmp_path / "out").rglob("*.tmp"))


def test_a_later_part_is_estimated_by_the_seeds_an_earlier_part_ran(tmp_path, make_cfg, monkeypatch, caplog):
    """``--seeds 1`` after ``--seeds 0``: the pending cells' method and scenario already ran on this
    machine (in another part of the grid), so the estimate before the first cell is seed 0's time. A
    record cut short in the folder is an error naming it for a reader of results; the estimate
    passes over it."""
    from unlearnbench.config import Selection

    cfg = make_cfg(methods=[{"name": "ga", "params": {"epochs": 1, "lr": 1e-4}}], scenarios=[BASE["scenarios"][0]],
                   seeds=[0, 1])
    out = Runner(cfg, out_dir=tmp_path / "r", progress=False, only=Selection(seeds=(0,))).run()
    seconds = json.loads((out / "cells" / "ga__hub__seed0.json").read_text())["cost"]["cell_seconds"]
    broken = out / "cells" / "ga__other__seed7.json"
    broken.write_text('{"status": "ok", "cost": {"cell_')  # a record cut short (disk full, killed copy)
    from unlearnbench.results import load_results

    with pytest.raises(ValueError, match="ga__other__seed7.json: malformed JSON"):
        load_results(out)  # a reader of results names the broken file ...
    read = sorted(Path(r["_file"]).name for r in load_results(out, skip_malformed=True))
    assert read == sorted(p.name for p in (out / "cells").glob("*.json") if p != broken) and len(read) == 2

    def stop(self, *a, **k):
        raise _Interrupt  # the estimate is printed before the first cell; no need to run it

    monkeypatch.setattr(Runner, "_run_cell", stop)
    caplog.clear()
    with caplog.at_level("WARNING", logger="unlearnbench.runner"), pytest.raises(_Interrupt):
        Runner(cfg, out_dir=out, progress=False, only=Selection(seeds=(1,))).run()
    line = next(r.message for r in caplog.records if "cells to run" in r.message)
    assert line == f"1 cells to run: about {seconds / 60:.0f} min (each by the time its method and scenario took " \
                   "on this machine (another seed))"


def test_resume_says_when_kept_cells_come_from_other_library_versions_or_hardware(tmp_path, make_cfg, caplog):
    from unlearnbench.results import hardware, hardware_label

    cfg = make_cfg(methods=[{"name": "ga", "params": {"epochs": 1, "lr": 1e-4}}], scenarios=[BASE["scenarios"][0]])
    out = Runner(cfg, out_dir=tmp_path / "r", progress=False).run()
    for page in ("leaderboard.md", "leaderboard.html"):
        text = (out / page).read_text()
        assert "Library versions differ" not in text and "hardware differs" not in text
    path = out / "cells" / "ga__hub__seed0.json"
    rec = json.loads(path.read_text())
    assert rec["hardware"]["cpu_isa"] == hardware()["cpu_isa"]  # the record keeps what it ran on
    rec["versions"]["transformers"] = "4.0.0"  # as if written before an upgrade ...
    rec["hardware"] = {**rec["hardware"], "cpu": "Some CPU", "cpu_isa": []}  # ... on a machine without AVX2
    path.write_text(json.dumps(rec))
    before = path.stat().st_mtime_ns
    with caplog.at_level("WARNING", logger="unlearnbench.runner"):
        Runner(cfg, out_dir=out, progress=False).run()
    assert path.stat().st_mtime_ns == before  # kept, not rerun
    warned = [r.getMessage() for r in caplog.records if "other library versions" in r.getMessage()]
    assert len(warned) == 1 and "transformers 4.0.0 (1 cell)" in warned[0] and "1 finished cells" in warned[0]
    warned = [r.getMessage() for r in caplog.records if "other hardware" in r.getMessage()]
    assert len(warned) == 1 and "Some CPU/no AVX2 (1 cell)" in warned[0]
    assert f"this process: {hardware_label(hardware())}" in warned[0]
    md = (out / "leaderboard.md").read_text()
    assert "Library versions differ" in md and "transformers 4.0.0 (1 cell)" in md
    assert "hardware differs between these cells" in md and "Some CPU/no AVX2 (1 cell)" in md
    page = (out / "leaderboard.html").read_text()  # the HTML page says it too, not only the Markdown
    assert "<strong>Library versions differ between these cells</strong>" in page and "4.0.0 (1 cell)" in page
    assert "<strong>The hardware differs between these cells</strong>" in page


def test_resume_runs_again_a_cell_whose_method_settings_the_config_changed(tmp_path, make_cfg, caplog):
    """A kept cell is reused only if it ran with the parameters the config sets; a parameter left to its
    default is not compared (a library default that changed keeps the cell)."""
    scen = [BASE["scenarios"][0]]
    out = Runner(make_cfg(methods=[{"name": "ga", "params": {"epochs": 1, "lr": 1e-4}}], scenarios=scen),
                 out_dir=tmp_path / "r", progress=False).run()
    path = out / "cells" / "ga__hub__seed0.json"
    rec = json.loads(path.read_text())
    rec["params"]["max_grad_norm"] = 7.0  # as if the library's default had been another
    path.write_text(json.dumps(rec))
    before = path.stat().st_mtime_ns
    Runner(make_cfg(methods=[{"name": "ga", "params": {"epochs": 1, "lr": 1e-4}}], scenarios=scen),
           out_dir=out, progress=False).run()
    assert path.stat().st_mtime_ns == before  # same settings asked: kept
    with caplog.at_level("WARNING", logger="unlearnbench.runner"):
        Runner(make_cfg(methods=[{"name": "ga", "params": {"epochs": 1, "lr": 2e-4}}], scenarios=scen),
               out_dir=out, progress=False).run()
    warned = [r.getMessage() for r in caplog.records if "other method settings" in r.getMessage()]
    assert len(warned) == 1 and "ga__hub__seed0" in warned[0] and "lr 0.0001 → 0.0002" in warned[0]
    again = json.loads(path.read_text())
    assert again["params"]["lr"] == 2e-4 and again["params"]["max_grad_norm"] == 1.0 and again["status"] == "ok"


class _BoomParams(MethodParams):
    pass


class _Boom(Method):
    """Always fails."""

    Params = _BoomParams

    def apply(self, model, tokenizer, request, params):
        raise RuntimeError("boom: simulated divergence")


def test_failing_cell_does_not_stop_grid(tmp_path, make_cfg):
    methods.register_method("boom")(_Boom)
    try:
        cfg = make_cfg(methods=[{"name": "boom"}, {"name": "ga", "params": {"epochs": 1}}])
        out = Runner(cfg, out_dir=tmp_path / "r", progress=False).run()
    finally:
        REGISTRY.unregister("boom")
    boom = json.loads((out / "cells" / "boom__hub__seed0.json").read_text())
    assert boom["status"] == "failed" and "simulated divergence" in boom["error"]
    assert json.loads((out / "cells" / "ga__ind__seed0.json").read_text())["status"] == "ok"
    md = (out / "leaderboard.md").read_text()
    assert "failed" in md and "boom" in md


@pytest.mark.parametrize("patch, message", [
    ({"methods": [{"name": "gradient-magic"}]}, "registered methods"),
    ({"methods": [{"name": "gd", "params": {"lr": "fast"}}]}, "invalid params for method 'gd'"),
    ({"data": {"preset": "pistol-99"}}, "allowed: \\['pistol-1'"),
    ({"scenarios": [{"type": "galaxy"}]}, "scenarios.0.type"),
    ({"finetune": {"mode": "half"}}, "finetune.mode"),
    ({"seeds": []}, "seeds"),
])
def test_bad_config_clear_error(tmp_path, make_cfg, patch, message):
    with pytest.raises(ConfigError, match=message):
        make_cfg(**patch)


def test_cli_bad_config_exit_code(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("methods: [nonexistent]\nscenarios: [{type: edge, edge: A_B}]\n")
    r = subprocess.run([sys.executable, "-m", "unlearnbench.cli", "run", str(p), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "nonexistent" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()
    p.write_text("{ this is: [not yaml")
    r = subprocess.run([sys.executable, "-m", "unlearnbench.cli", "run", str(p)], capture_output=True, text=True)
    assert r.returncode == 2 and "malformed YAML" in r.stderr


def test_unknown_edge_in_scenario_fails_before_work(tmp_path, make_cfg):
    cfg = make_cfg(scenarios=[{"type": "edge", "edge": "Q_Z"}])
    with pytest.raises(ValueError, match="valid edges"):
        Runner(cfg, out_dir=tmp_path / "r", progress=False).run()
    assert not (tmp_path / "r" / "cells").exists()


def test_cli_evaluate_writes_json(tmp_path):
    from pistol_data import generate, save

    save(generate("pistol-mini", 0), tmp_path / "d")
    out = tmp_path / "eval.json"
    r = subprocess.run([sys.executable, "-m", "unlearnbench.cli", "evaluate", "--model", "tiny-random-llama",
                        "--data", str(tmp_path / "d"), "--forget-edge", "A_B", "--utility-limit", "3",
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "forget_rouge1" in r.stdout and "ds" in r.stdout
    rec = json.loads(out.read_text())
    assert rec["scenario"]["forget_edges"] == ["A_B"] and rec["metrics"]["ds"]["higher_is_better"] is False
    r = subprocess.run([sys.executable, "-m", "unlearnbench.cli", "evaluate", "--model", "tiny-random-llama",
                        "--data", str(tmp_path / "d"), "--forget-edge", "NOPE_X"], capture_output=True, text=True)
    assert r.returncode == 2 and "valid edges" in r.stderr


def test_pretrained_facts_grid(tmp_path, make_cfg):
    """Pretrained facts run beside the contract scenarios: requests and scores on the facts
    dataset, a base row on it (with an implant), no oracle, a 3-step single-fact sequence with
    per-step metrics, and every method kind (gradient, editor) on it."""
    cfg = make_cfg(finetune={"epochs": 1, "n_anchor": 4, "direct_repeats": 1, "n_refusal": 8},
                   reference=["retrain"],
                   methods=[{"name": "gd", "params": {"epochs": 1, "lr": 1e-4}}, {"name": "rome"}],
                   scenarios=[{"type": "edge", "edge": "A_B", "name": "hub"},
                              {"type": "pretrained_facts", "n": 3, "name": "facts"},
                              {"type": "sequence", "each": {"type": "pretrained_facts", "n": 3}, "name": "fseq"}])
    out = Runner(cfg, out_dir=tmp_path / "r", progress=False).run()
    from pistol_data import facts

    ids = set(facts.fact_ids())
    cell = lambda name: json.loads((out / "cells" / f"{name}__seed0.json").read_text())  # noqa: E731
    for row in ("none", "base", "gd", "rome"):
        rec = cell(f"{row}__facts")
        assert rec["status"] == "ok", rec.get("error")
        assert {q["edge"] for q in rec["per_example"]["qa"]} <= ids  # scored on the facts, not the contracts
        assert rec["metrics"]["forget_rouge1"]["value"] == rec["metrics"]["forget_rouge1"]["value"]  # not NaN
        assert rec["scenario"]["splits"][0]["forget_edges"] == facts.default_forget(3)
    # the base row on the facts is the base model's own evaluation, not the implanted model's
    assert cell("base__facts")["per_example"]["qa"] != cell("none__facts")["per_example"]["qa"]
    assert cell("base__hub")["per_example"]["qa"][0]["edge"] not in ids
    assert (out / "cells" / "retrain__hub__seed0.json").exists()
    assert not (out / "cells" / "retrain__facts__seed0.json").exists()  # pretrained knowledge has no oracle
    for row in ("gd", "rome"):
        rec = cell(f"{row}__fseq")
        assert rec["status"] == "ok", rec.get("error")
        assert len(rec["steps"]) == 3 and [len(s) for s in (rec["scenario"]["splits"][i]["forget_edges"]
                                                           for i in range(3))] == [1, 2, 3]
        assert all("forget_fluency" in s["metrics"] for s in rec["steps"])
    assert "facts" in (out / "leaderboard.md").read_text()


def _metrics(folder) -> dict:
    return {p.stem: json.loads(p.read_text())["metrics"] for p in sorted((folder / "cells").glob("*.json"))}


def test_grid_in_parts_equals_the_whole_grid(tmp_path, make_cfg):
    """``--methods/--scenarios/--seeds``: each part writes only its cells, the parts together
    write the whole grid's cells with the same values, the report lists what no part has run."""
    from unlearnbench.config import Selection
    from unlearnbench.report import write_report

    cfg = make_cfg(seeds=[0, 1])
    whole = Runner(cfg, out_dir=tmp_path / "whole", progress=False).run()
    parts = tmp_path / "parts"
    Runner(cfg, out_dir=parts, progress=False, only=Selection(methods=("ga",), seeds=(0,))).run()
    assert sorted(p.stem for p in (parts / "cells").glob("*.json")) == sorted(
        f"{r}__{s}__seed0" for r in ("none", "ga") for s in ("hub", "ind"))
    report = write_report(parts, plots=False).read_text()
    assert "Not run yet: 6 of 8 method cells" in report
    assert "- `ga`: hub (seed 1); ind (seed 1)" in report and "- `gd`: hub (seeds 0, 1); ind (seeds 0, 1)" in report
    first = {p.name: p.stat().st_mtime_ns for p in (parts / "cells").glob("*.json")}
    Runner(cfg, out_dir=parts, progress=False, only=Selection(scenarios=("hub",))).run()
    Runner(cfg, out_dir=parts, progress=False).run()  # the rest
    assert {p.name: p.stat().st_mtime_ns for p in (parts / "cells").glob("*.json") if p.name in first} == first
    assert _metrics(parts) == _metrics(whole)
    assert "Not run yet" not in write_report(parts, plots=False).read_text()


def test_cli_unknown_part_of_the_grid(tmp_path):
    import yaml

    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(BASE))
    r = subprocess.run([sys.executable, "-m", "unlearnbench.cli", "run", str(p), "--out", str(tmp_path / "o"),
                        "--methods", "ga,rmu", "--seeds", "0", "--scenarios", "hub", "--scenarios", "galaxy"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--methods: rmu not in the config (it has ga, gd)" in r.stderr
    assert "--scenarios: galaxy not in the config (it has hub, ind)" in r.stderr
    assert not (tmp_path / "o").exists()
    r = subprocess.run([sys.executable, "-m", "unlearnbench.cli", "run", str(p), "--out", str(tmp_path / "o"),
                        "--seeds", "zero"], capture_output=True, text=True)
    assert r.returncode == 2 and "--seeds: integers expected" in r.stderr and not (tmp_path / "o").exists()


def test_grid_clock_weighs_cells_by_their_predicted_flops(make_cfg):
    """The estimate before any cell (plan's FLOPs at a share of the measured matmul peak) and after
    cells finished (their achieved speed), weighted by each cell's FLOPs; equal cells when plan
    cannot read the grid."""
    from unlearnbench import eta

    cfg = make_cfg(methods=[{"name": "ga", "params": {"epochs": 1}}, {"name": "rome"}], seeds=[0, 1])
    ids = [f"{m}__{s}__seed{k}" for m in ("ga", "rome") for s in ("hub", "ind") for k in (0, 1)]
    clock = eta.GridClock(cfg, ids, "cpu")
    assert clock.weighted and all(clock.flops[c] > 0 for c in ids) and clock.peak > 0
    assert clock.flops["ga__hub__seed0"] == clock.flops["ga__hub__seed1"]  # seeds cost the same
    total = sum(clock.flops.values())
    assert clock.remaining(ids) == pytest.approx(total / (eta.EFFICIENCY * clock.peak))
    assert "matmul peak" in clock.basis()
    clock.finished(ids[0], 10.0)  # this machine ran the first cell at flops/10 s
    speed = clock.flops[ids[0]] / 10.0
    assert clock.remaining(ids[1:]) == pytest.approx((total - clock.flops[ids[0]]) / speed)
    assert "the 1 finished cell(s) achieved" in clock.basis()
    # a grid plan cannot read: cells of equal cost, known only once one has run
    unknown = eta.GridClock(cfg.model_copy(update={"model": "no-such-model"}), ids, "cpu")
    assert not unknown.weighted and unknown.remaining(ids) is None
    unknown.finished(ids[0], 6.0)
    assert unknown.remaining(ids[1:]) == pytest.approx(6.0 * 7)


def test_grid_clock_predicts_a_timed_cell_by_its_other_seed(make_cfg):
    """A cell whose method and scenario were timed on this machine (another seed: in this run, or a
    kept record's ``cell_seconds``) is predicted by that time; kept cells calibrate the speed the
    untimed cells are predicted at before this run's first cell."""
    from unlearnbench import eta

    cfg = make_cfg(methods=[{"name": "ga", "params": {"epochs": 1}}, {"name": "rome"}], seeds=[0, 1])
    ids = [f"{m}__{s}__seed{k}" for m in ("ga", "rome") for s in ("hub", "ind") for k in (0, 1)]
    pending = [c for c in ids if c != "ga__hub__seed0"]
    clock = eta.GridClock(cfg, pending, "cpu", timed={"ga__hub__seed0": 30.0})
    flops = eta.GridClock(cfg, ids, "cpu").flops
    speed = flops["ga__hub__seed0"] / 30.0  # what the kept cell achieved here
    assert clock.speed() == pytest.approx(speed) and clock.kept_cells == 1
    untimed = [c for c in pending if c != "ga__hub__seed1"]
    assert clock.remaining(pending) == pytest.approx(30.0 + sum(flops[c] for c in untimed) / speed)
    assert clock.basis(pending).startswith("1 by the time their method and scenario took")
    assert "1 cell(s) recorded here before achieved" in clock.basis(pending)
    # in this run: rome's first seed took 50 s, so its second is predicted at 50 s whatever its FLOPs
    clock.finished("rome__ind__seed0", 50.0)
    assert clock.remaining(["rome__ind__seed1"]) == pytest.approx(50.0)
    assert clock.remaining(["rome__hub__seed1"]) == pytest.approx(flops["rome__hub__seed1"] / clock.speed())
    # a grid plan cannot read: a timed row and scenario by its own time, the others at the mean
    unknown = eta.GridClock(cfg.model_copy(update={"model": "no-such-model"}), pending, "cpu",
                            timed={"ga__hub__seed0": 30.0})
    assert not unknown.weighted and unknown.remaining(["ga__hub__seed1", "rome__hub__seed0"]) == pytest.approx(60.0)
    unknown.finished("rome__hub__seed0", 90.0)
    assert unknown.remaining(["rome__hub__seed1", "ga__ind__seed0"]) == pytest.approx(90.0 + 60.0)


def test_recorded_seconds_reads_a_cells_wall_time():
    """``cost.cell_seconds`` where the record has it; before it was kept: apply, each evaluation (a
    sequence's steps) and one more for the attacks."""
    from unlearnbench.eta import recorded_seconds

    cost = {"apply_seconds": 40.0, "eval_seconds": 30.0}
    assert recorded_seconds({"cost": {**cost, "cell_seconds": 123.0}}) == 123.0
    assert recorded_seconds({"cost": cost, "attacks": {"quantization": {}}}) == 40.0 + 2 * 30.0
    assert recorded_seconds({"cost": cost, "steps": [{}, {}, {}], "attacks": {"q": {}}}) == 40.0 + 4 * 30.0
    assert recorded_seconds({"cost": cost, "attacks": {}}) == 70.0
    assert recorded_seconds({"status": "failed"}) is None and recorded_seconds({"cost": {"apply_seconds": 1.0}}) is None


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_its_scenarios_resolve(path):
    """The configs the README and issues point to (CPU and GPU ones, which CI cannot run) are checked
    as `unlearnbench run` checks them before any work: the config and its method settings, then every
    scenario against the dataset it generates (pistol-2's edges for the GPU density config)."""
    from pistol_data import scenarios
    from unlearnbench.config import load_config
    from unlearnbench.runner import load_dataset

    cfg = load_config(path)
    assert cfg.method_entries(), f"{path.name}: no methods"
    if cfg.mode != "unlearn":
        return
    ds = load_dataset(cfg)
    for s in cfg.scenarios:
        splits = scenarios.resolve(ds, s)
        assert splits and all(sp.forget_edges for sp in splits), f"{path.name}: {s.label()} forgets nothing"
