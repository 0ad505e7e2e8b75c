"""Holdout contracts, membership inference, truth ratio and forget quality, with known answers on
the tiny model."""

from __future__ import annotations

import math

import pytest

from pistol_data import generate, scenarios
from unlearnbench.attacks import relearn
from unlearnbench.evaluate import EvalParams, Evaluator, score
from unlearnbench.metrics import forget_quality, mia_auc, privleak
from unlearnbench.models import load


def test_holdout_contracts_are_never_implanted_and_deterministic(mini):
    again = generate("pistol-mini", 0)
    assert [r.to_dict() for r in mini.holdout] == [r.to_dict() for r in again.holdout]
    assert len(mini.holdout) == len(mini.direct())  # one holdout contract per contract, same attributes
    names = mini.entity_names()
    assert not any(n in r.question for r in mini.holdout for n in names)  # fresh entities only
    asked = {r.question for r in mini.qa} | {r.question for r in mini.refusal}
    assert not asked & {r.question for r in mini.holdout}
    assert sorted({r.attribute for r in mini.holdout}) == sorted({r.attribute for r in mini.direct()})
    # part of the dataset's identity, not of what an implant reads (its cache key)
    other = generate("pistol-mini", 0)
    other.holdout = other.holdout[:-1]
    assert other.fingerprint != mini.fingerprint and other.train_fingerprint == mini.train_fingerprint


def test_perturbed_answers_are_wrong_and_plausible(mini):
    pert = mini.perturbed_answers(3)
    for r in mini.direct() + mini.holdout:
        wrong = pert[(r.edge, r.attribute)]
        assert wrong and r.answer not in wrong and len(set(wrong)) == len(wrong)
        same_attr = {x.answer for x in mini.direct() + mini.holdout if x.attribute == r.attribute}
        assert set(wrong) <= same_attr


def test_mia_auc_and_forget_quality_known_values():
    rows = lambda vals: [{"nll": v} for v in vals]  # noqa: E731
    assert mia_auc(rows([0.1, 0.2]), rows([1.0, 2.0]), "nll", -1.0) == 1.0  # members have the lower loss
    assert mia_auc(rows([1.0, 2.0]), rows([0.1, 0.2]), "nll", -1.0) == 0.0
    assert mia_auc(rows([1.0, 0.1]), rows([1.0, 0.1]), "nll", -1.0) == 0.5
    assert math.isnan(mia_auc([], rows([1.0]), "nll"))
    assert forget_quality([0.2, 0.5, 0.9], [0.2, 0.5, 0.9]) == 1.0  # identical distributions
    assert forget_quality([0.01] * 20, [0.9] * 20) < 1e-6
    assert privleak(0.5, 0.5) == 0.0 and privleak(0.75, 0.5) == 0.5


@pytest.fixture(scope="module")
def trained(mini):
    """The tiny model, and a copy trained hard on the hub edge's direct questions (the members)."""
    lm = load("tiny-random-llama")
    [split] = scenarios.resolve(mini, {"type": "edge", "edge": "A_B"})
    model = relearn(lm.model, lm.tokenizer, split.request(mini), steps=60, lr=3e-3, batch_size=6, seed=0)
    ev = Evaluator(mini, EvalParams(max_new_tokens=2, qa_max_new_tokens=2, utility_limit=4, progress=False))
    return lm, split, ev.run(lm.model, lm.tokenizer, heldout_edges=split.forget_edges), \
        ev.run(model, lm.tokenizer, heldout_edges=split.forget_edges)


def test_membership_inference_sees_what_was_trained(trained):
    _, split, before, after = trained
    s0, s1 = score(before, split), score(after, split)
    for name in ("mia_loss", "mia_zlib", "mia_mink", "mia_minkpp"):
        assert s1[name] > 0.9, (name, s1[name])  # trained on: told apart from never-seen contracts
    # the untrained model saw neither: its losses do not single the forget set out
    assert abs(s0["mia_loss"] - 0.5) < 0.35
    assert len(after.holdout) == 42 and all(math.isfinite(r["nll"]) for r in after.holdout)


def test_truth_ratio_falls_when_the_true_answer_gets_likelier(trained):
    _, split, before, after = trained
    fb = [r for r in before.select(split.forget_edges)]
    fa = [r for r in after.select(split.forget_edges)]
    assert all(math.isfinite(r["tr"]) for r in fb + fa)
    assert score(after, split)["forget_truth_ratio"] < 0.5 * score(before, split)["forget_truth_ratio"]
    # ratios of retain questions are not computed (the scores never read them)
    assert all("tr" not in r for r in after.select(split.far_edges))


def test_retrained_oracle_rows_and_forget_quality(tmp_path, grid_config, caplog):
    """``reference: [retrain]``: one oracle implant per distinct forget set (a sequence: the union of
    its requests), its own row, and forget quality / privleak on every method row; a second run
    trains nothing (the oracle implants are cached like every implant)."""
    import json
    import logging

    from unlearnbench.runner import Runner

    cfg = {"name": "o", "model": "tiny-random-llama", "device": "cpu", "data": {"preset": "pistol-mini", "seed": 0},
           "finetune": {"epochs": 1, "n_anchor": 0, "batch_size": 16}, "reference": ["retrain"],
           "eval": {"batch_size": 64, "max_new_tokens": 2, "qa_max_new_tokens": 2, "utility_limit": 4},
           "methods": [{"name": "ga", "params": {"epochs": 1, "lr": 1e-4}}],
           "scenarios": [{"type": "edge", "edge": "A_B", "name": "hub"},
                         {"type": "sequence", "name": "seq", "steps": [{"type": "edge", "edge": "A_B"},
                                                                        {"type": "edge", "edge": "E1_F1"}]}],
           "seeds": [0]}
    with caplog.at_level(logging.INFO, logger="unlearnbench.runner"):
        out = Runner(grid_config(cfg, tmp_path), out_dir=tmp_path / "a", progress=False).run()
    cells = {p.stem: json.loads(p.read_text()) for p in (out / "cells").glob("*.json")}
    assert {"retrain__hub__seed0", "retrain__seq__seed0"} <= set(cells)
    hub, seq = cells["retrain__hub__seed0"]["method_info"], cells["retrain__seq__seed0"]["method_info"]
    assert hub["without"] == ["A_B"] and seq["without"] == ["A_B", "E1_F1"]
    assert hub["implant_key"] != seq["implant_key"]
    m = cells["retrain__hub__seed0"]["metrics"]
    assert m["forget_quality"]["value"] == 1.0 and m["privleak"]["value"] == 0.0  # the oracle against itself
    ga = cells["ga__hub__seed0"]["metrics"]
    assert 0.0 <= ga["forget_quality"]["value"] <= 1.0 and math.isfinite(ga["privleak"]["value"])
    assert math.isfinite(cells["none__hub__seed0"]["metrics"]["mia_loss"]["value"])
    assert len(cells["ga__hub__seed0"]["per_example"]["holdout"]) == 42
    from unlearnbench.report import write_report

    md = write_report(out, plots=False).read_text()
    assert "## Retraining and membership inference" in md and "Indistinguishable from retraining" in md
    section = md.split("## Retraining and membership inference")[1].split("\n## ")[0]
    line = next(x for x in section.splitlines() if x.startswith("| retrain |"))
    assert "| 1.000 | 2/2 |" in line  # the oracle against itself, in both scenarios
    # a fresh folder: the oracle implants come from the cache, and so do their evaluations (JSON kept
    # beside the cache between parts of a grid) — with the same numbers as scoring them again
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="unlearnbench.runner"):
        Runner(grid_config(cfg, tmp_path), out_dir=tmp_path / "b", progress=False).run()
    loaded = [r.getMessage().split(":")[0] for r in caplog.records if "evaluation loaded from" in r.getMessage()]
    assert sorted(loaded) == ["base model", "implanted model", "oracle without ['A_B', 'E1_F1']",
                              "oracle without ['A_B']"]  # every reference model scored once, in the first part
    again = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "b" / "cells").glob("*.json")}
    info = again["retrain__seq__seed0"]["method_info"]
    assert info["cached"] and info["implant_key"] == seq["implant_key"]
    for cid in ("retrain__hub__seed0", "retrain__seq__seed0", "ga__hub__seed0", "ga__seq__seed0",
                "base__hub__seed0", "none__seq__seed0"):
        for part in ("per_example", "metrics"):  # compared as JSON text: NaN equals NaN there
            assert json.dumps(again[cid][part], sort_keys=True) == json.dumps(cells[cid][part], sort_keys=True), cid
    # another evaluation setting is another key: nothing loaded, everything scored again
    caplog.clear()
    cfg["eval"] = {**cfg["eval"], "utility_limit": 3}
    with caplog.at_level(logging.INFO, logger="unlearnbench.runner"):
        Runner(grid_config(cfg, tmp_path), out_dir=tmp_path / "c", progress=False).run()
    assert not any("evaluation loaded from" in r.getMessage() for r in caplog.records)
