"""The structural-study report over a real (tiny-model) grid: roles read off the graph, numbers
that agree with the cells, attack recovery, sequential steps, clear errors."""

import json
import math
import subprocess
import sys
from statistics import mean

import pytest

from unlearnbench.report import Study, write_report
from unlearnbench.runner import Runner

CFG = {
    "name": "study", "model": "tiny-random-llama", "device": "cpu",
    "data": {"preset": "pistol-mini", "seed": 0}, "finetune": None,
    "eval": {"batch_size": 64, "max_new_tokens": 4, "utility_limit": 5,
             "attacks": ["quantization", "relearn_forget"]},
    "methods": [{"name": "ga", "params": {"epochs": 1, "lr": 1e-3}}],
    "scenarios": [{"type": "edge", "edge": "A_B", "name": "hub"},
                  {"type": "independent_edge", "edge": "E1_F1", "name": "ind_sales"},
                  {"type": "independent_edge", "edge": "E2_q2", "name": "ind_emp"},
                  {"type": "edges", "edges": ["E1_F1", "E2_q2"], "name": "batch"},
                  {"type": "sequence", "name": "seq", "steps": [{"type": "edge", "edge": "A_B"},
                                                                {"type": "edge", "edge": "E1_F1"}]}],
    "seeds": [0, 1],
}


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory, grid_config):
    d = tmp_path_factory.mktemp("study")
    return Runner(grid_config(CFG, d), out_dir=d / "r", progress=False).run()


def _cells(d, row, scen):
    return [json.loads(f.read_text()) for f in sorted((d / "cells").glob(f"{row}__{scen}__seed*.json"))]


def test_attacks_record_recovery_on_the_same_questions(study_dir):
    rec = _cells(study_dir, "ga", "hub")[0]
    q = rec["attacks"]["quantization"]
    # quantization scores every direct forget question: before = the cell's own forget ROUGE-1
    assert q["before_forget_rouge1"] == pytest.approx(rec["metrics"]["forget_rouge1"]["value"])
    assert q["recovery"] == pytest.approx(q["forget_rouge1"] - q["before_forget_rouge1"])
    r = rec["attacks"]["relearn_forget"]  # scored on the held-out half only
    held = {e["question"] for e in r["examples"]}
    per_q = {x["question"]: x["rouge1"] for x in rec["per_example"]["qa"] if x["form"] == "direct"}
    assert held <= set(per_q) and r["n"] < len([x for x in rec["per_example"]["qa"]
                                                  if x["form"] == "direct" and x["edge"] == "A_B"])
    assert (study_dir / "run_log.jsonl").read_text().count("seconds") == 1
    from unlearnbench.results import hardware, hardware_label

    run = json.loads((study_dir / "run_log.jsonl").read_text())
    assert run["hardware"].startswith(hardware_label(hardware()) + ", ")  # e.g. "AMD EPYC/AVX2, 2 CPU cores, no GPU"


def test_the_wall_time_is_told_per_machine_when_parts_ran_on_several():
    from unlearnbench.report import wall_text

    one = wall_text([{"seconds": 60, "hardware": "AMD EPYC/AVX2, 2 CPU cores, no GPU"}] * 2)
    assert "2 invocation(s)" in one and "**2.0 min** on AMD EPYC/AVX2, 2 CPU cores, no GPU." in one
    two = wall_text([{"seconds": 120, "hardware": "2 CPU cores, no GPU"}, {"seconds": 60, "hardware": "2 CPU cores, no GPU"},
                     {"seconds": 240, "hardware": "AMD EPYC/AVX2, 2 CPU cores, no GPU"}])
    assert "**7.0 min** of it 3.0 min on 2 CPU cores, no GPU (2 invocations); 4.0 min on AMD EPYC/AVX2" in two
    assert "stopped" not in two
    cut = wall_text([{"seconds": 60, "hardware": "h", "stopped": True}, {"seconds": 30, "hardware": "h"}])
    assert "(`unlearnbench run`, 2 invocation(s); 1 stopped before their end" in cut and "**1.5 min** on h." in cut


def test_report_roles_and_numbers_agree_with_cells(study_dir):
    from pistol_data import generate
    from unlearnbench.results import load_results

    st = Study(load_results(study_dir), generate("pistol-mini", 0))
    singles = st.single_edge()
    # connectivity read off the graph: the hub edge (degree 4) last, the independent edges (degree 1) first
    assert [s for s, _, _ in singles][-1] == "hub" and {d for _, _, d in singles} == {1, 4}
    assert st.sequences() == ["seq"]
    out = write_report(study_dir)
    md = out.read_text()
    for section in ("## Findings", "## DS per scenario", "## Connectivity", "## Domain", "## Batch size",
                    "## Sequential requests", "## Attacks", "## Cost"):
        assert section in md, section
    ds = {s: mean(c["metrics"]["ds"]["value"] for c in _cells(study_dir, "ga", s)) for s in ("hub", "ind_sales", "ind_emp")}
    delta = ds["hub"] - (ds["ind_sales"] + ds["ind_emp"]) / 2
    conn = md.split("## Connectivity")[1].split("\n## ")[0]
    row = next(line for line in conn.splitlines() if line.startswith("| ga |")).split("|")
    assert row[2 + len(singles)].strip() == f"{delta:.1f}"  # after: '', method, one DS per single-edge scenario
    verdict = "holds" if delta > 0 else "does not hold"
    assert f"more connected knowledge is harder to unlearn** — {verdict}" in md
    # sequence: one column per request, DS after request 1 = the mean of the cells' first step
    seq = _cells(study_dir, "ga", "seq")
    first = mean(c["steps"][0]["metrics"]["ds"]["value"] for c in seq)
    seq_row = next(line for line in md.split("### seq")[1].splitlines() if line.startswith("| ga |"))
    assert seq_row.split("|")[2].strip().startswith(f"{first:.1f}")
    assert "after request 2" in md and "after request 3" not in md
    for fig in ("ds_by_scenario", "connectivity", "sequence", "attack_recovery"):
        assert (study_dir / "report" / f"{fig}.png").stat().st_size > 1000
        assert f"report/{fig}.png" in md
    assert not math.isnan(mean(c["attacks"]["quantization"]["recovery"] for c in _cells(study_dir, "ga", "batch")))


def test_report_cli_errors(tmp_path):
    r = subprocess.run([sys.executable, "-m", "unlearnbench.cli", "report", str(tmp_path / "nope")],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 2 and "does not exist" in r.stderr
    (tmp_path / "empty" / "cells").mkdir(parents=True)
    r = subprocess.run([sys.executable, "-m", "unlearnbench.cli", "report", str(tmp_path / "empty")],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 2 and "no result cells" in r.stderr and not (tmp_path / "empty" / "report.md").exists()


def _record(row, label, splits, seed, ds, qa, steps=None, attacks=None, kind="unlearn"):
    return {"row": row, "method": row, "kind": "reference" if row == "none" else kind, "seed": seed,
            "status": "ok", "experiment": "synthetic", "scenario": {"label": label, "splits": splits},
            "dataset": {"preset": "pistol-mini", "seed": 0}, "model": {"spec": "x"},
            "metrics": {"ds": {"value": ds}, "forget_rouge1": {"value": 0.0}, "retain_rouge1": {"value": 1 - ds / 100}},
            "steps": steps, "attacks": attacks, "cost": {"apply_seconds": 1.0},
            "per_example": {"qa": qa}}


def _report_of(folder, cells) -> str:
    """The report (markdown) of hand-made cells written into ``folder``."""
    from unlearnbench.results import write_atomic

    for i, c in enumerate(cells):
        write_atomic(folder / "cells" / f"{i}.json", c)
    return write_report(folder, plots=False).read_text()


def test_report_findings_follow_the_numbers(tmp_path, mini):
    """Hand-made cells where the hub edge is harder, same-domain retain drops more, a sequence
    degrades and LUNAR beats the baseline 4×: every finding must read 'holds' with those counts."""
    from pistol_data import scenarios

    splits = {name: [s.to_dict() for s in scenarios.resolve(mini, spec)] for name, spec in
              [("hub", {"type": "edge", "edge": "A_B"}), ("ind_sales", {"type": "edge", "edge": "E1_F1"}),
               ("ind_emp", {"type": "edge", "edge": "E2_q2"}),
               ("seq", {"type": "sequence", "steps": [{"type": "edge", "edge": "A_B"}, {"type": "edge", "edge": "E1_F1"}]})]}
    types = mini.edge_types

    def qa(forgot_type, same_drop, other_drop):
        return [{"edge": e, "form": "direct", "question": e, "rouge1": 1.0 - (same_drop if t == forgot_type else other_drop)}
                for e, t in types.items()]

    cells = []
    for seed in (0, 1):
        for scen, ftype in (("hub", "sales"), ("ind_sales", "sales"), ("ind_emp", "employment")):
            cells.append(_record("none", scen, splits[scen], seed, 90.0, qa(ftype, 0, 0)))
            cells.append(_record("gd", scen, splits[scen], seed, 60.0 if scen == "hub" else 40.0 + seed,
                                 qa(ftype, 0.4, 0.1),
                                 attacks={"quantization": {"forget_rouge1": 0.3, "before_forget_rouge1": 0.1,
                                                           "recovery": 0.2, "meaning": "int8"}}))
            cells.append(_record("lunar", scen, splits[scen], seed, 15.0 if scen == "hub" else 10.0,
                                 qa(ftype, 0.2, 0.0), kind="steer"))
        for row, first, last in (("gd", 50.0, 70.0), ("lunar", 10.0, 12.0)):
            steps = [{"metrics": {"ds": {"value": v}, "forget_rouge1": {"value": 0.0}, "retain_rouge1": {"value": 0.5}}}
                     for v in (first, last)]
            cells.append(_record(row, "seq", splits["seq"], seed, last, qa("sales", 0, 0), steps=steps))
    md = _report_of(tmp_path, cells)
    assert "more connected knowledge is harder to unlearn** — holds: DS is higher on the most connected edge for " \
           "2 of 2 methods" in md
    assert "harms the same domain more** — holds: the retain drop is larger on same-type contracts in 6 of 6" in md
    assert "for 2 of 2 methods" in md.split("Sequential requests degrade")[1]
    # gd: hub 60 vs the independent edges' mean (40.5 + 40.5) / 2 → Δ 19.5; LUNAR ratio 40.5/10 .. 60/15 = 4.05..4.00
    conn = md.split("## Connectivity")[1].split("\n## ")[0]
    assert next(line for line in conn.splitlines() if line.startswith("| gd |")).split("|")[5].strip() == "19.5"
    assert "ratio baseline/LUNAR 4.00–5.83×" in md  # seq: 70 / 12
    assert "0.300 (+0.200)" in md and "| lunar | 0.000 | – | – | n/a |" in md
    assert "0.400 / 0.100" in md  # gd's same / other domain drop
    assert "- **Leaks under attack** (mean recovery > 0.1 forget ROUGE-1): quantization: gd (+0.20)." in md
    # pistol-mini's components differ in size (the hub's six entities, two lone contracts): no density
    # question to ask — comparing them would be the connectivity question again
    assert "## Density" not in md and "denser graph" not in md


def test_report_names_the_precision_the_cells_were_scored_in():
    from unlearnbench.report import _precision_text

    cells = [{"precision": {"evaluation": "fp32"}}, {"precision": {"evaluation": "fp32"}}]
    assert _precision_text(cells, "auto") == "; evaluation precision `fp32` (config: `auto`)"
    assert _precision_text(cells + [{"precision": {"evaluation": "bf16"}}], "bf16") == \
        "; evaluation precision `bf16` and `fp32`"
    assert _precision_text([{}], "auto") == "; evaluation precision `auto`" and _precision_text([{}], None) == ""


def test_oracle_columns_per_scenario(tmp_path, mini):
    """Forget quality and privleak per scenario (mean over seeds), beside the whole-study verdict:
    a method that matches the oracle on one forget set only is not called indistinguishable."""
    from pistol_data import scenarios

    splits = {name: [s.to_dict() for s in scenarios.resolve(mini, {"type": "edge", "edge": e})]
              for name, e in (("hub", "A_B"), ("ind", "E1_F1"))}
    cells = []
    for seed in (0, 1):
        for scen in ("hub", "ind"):
            for row, fq, pl in (("none", 0.001, 0.9), ("retrain", 1.0, 0.0),
                                ("gd", 0.5 if scen == "ind" else 0.01, 0.3 + 0.1 * seed)):
                rec = _record(row, scen, splits[scen], seed, 50.0, [], kind="reference" if row != "gd" else "unlearn")
                rec["metrics"].update(forget_quality={"value": fq}, privleak={"value": pl})
                cells.append(rec)
    md = _report_of(tmp_path, cells)
    fq = md.split("### Forget quality (p) per scenario")[1].split("###")[0]
    assert "| row | hub | ind |" in fq and "| gd | 0.010 ± 0.000 | 0.500 ± 0.000 |" in fq
    pl = md.split("### privleak per scenario")[1]
    assert "| gd | 0.35 ± 0.05 | 0.35 ± 0.05 |" in pl and "| none | 0.90 ± 0.00 | 0.90 ± 0.00 |" in pl
    assert "**Indistinguishable from retraining** (forget quality ≥ 0.05 in every cell): none" in md
    assert "leaking by membership inference** (privleak > 0.1): gd (+0.35)" in md


def test_editing_findings_follow_the_numbers(tmp_path, mini):
    """Hand-made cells on a contract edge and on pretrained facts: WISE is the best editor and
    beats gd on both, self-improved targets raise fluency, query merging lowers ROME's DS; the
    four 2505.19855 findings must read 'holds' with those counts, and the fact scenario has no
    graph role (no connectivity row from it)."""
    from pistol_data import scenarios

    specs = {"hub": {"type": "edge", "edge": "A_B"}, "facts": {"type": "pretrained_facts", "n": 1}}
    splits = {k: [s.to_dict() for s in scenarios.resolve(mini, v)] for k, v in specs.items()}
    rows = {  # row: (method, params, DS on hub, DS on facts, fluency)
        "gd": ("gd", {}, 50.0, 50.0, 0.5), "rome": ("rome", {"target": "refusal"}, 40.0, 45.0, 0.3),
        "rome-qm": ("rome", {"target": "refusal", "query_merge": 3}, 30.0, 35.0, 0.3),
        "rome-self": ("rome", {"target": "self_improve"}, 42.0, 46.0, 2.5),
        "wise": ("wise", {"target": "refusal"}, 20.0, 10.0, 0.3)}
    cells = []
    for row, (method, params, hub, facts, flu) in rows.items():
        for scen, ds in (("hub", hub), ("facts", facts)):
            r = _record(row, scen, splits[scen], 0, ds, [], kind="unlearn" if row == "gd" else "edit")
            r.update(method=method, params=params)
            r["scenario"]["spec"] = specs[scen]
            r["metrics"].update(forget_fluency={"value": flu}, forget_refusal_rate={"value": 1.0},
                                utility={"value": 0.6}, forget_paraphrase_rouge1={"value": 0.1})
            cells.append(r)
    md = _report_of(tmp_path, cells)
    assert "editing methods are strong unlearning baselines** — holds: the best editor has a lower DS than the " \
           "best other method in 2 of 2 scenarios" in md
    assert "is WISE or AlphaEdit in 1 of 1 pretrained-knowledge and 1 of 1 implanted-knowledge scenarios" in md
    assert "query merging helps ROME/MEMIT** — holds: lower DS with merged queries in 2 of 2 comparisons" in md
    assert "more human-like refusals** — holds: higher forget fluency with self-improved targets in 2 of 2" in md
    sec = md.split("## Editing as unlearning")[1]
    assert "| gd (best non-editor) | – | 50.0 |" in sec and "| rome-self | self_improve | 42.0 |" in sec
    assert "facts (" not in md.split("## Connectivity")[1].split("\n## ")[0]  # no graph role for facts


def test_sequence_table_lists_only_rows_run_on_the_sequence(tmp_path, mini):
    from pistol_data import scenarios

    specs = {"hub": {"type": "edge", "edge": "A_B"},
             "seq": {"type": "sequence", "steps": [{"type": "edge", "edge": "A_B"}, {"type": "edge", "edge": "E1_F1"}]}}
    splits = {k: [s.to_dict() for s in scenarios.resolve(mini, v)] for k, v in specs.items()}
    steps = [{"metrics": {"ds": {"value": v}, "forget_rouge1": {"value": 0.0}, "retain_rouge1": {"value": 0.5}}}
             for v in (30.0, 40.0)]
    cells = [_record("gd", "seq", splits["seq"], 0, 40.0, [], steps=steps),
             _record("gd", "hub", splits["hub"], 0, 30.0, []),
             _record("rome-qm4", "hub", splits["hub"], 0, 20.0, [], kind="edit")]  # never run on the sequence
    seq = _report_of(tmp_path, cells).split("## Sequential requests")[1].split("\n## ")[0]
    assert "| gd | 30.0 (0.00 / 0.50) | 40.0 (0.00 / 0.50) | 10.0 |" in seq
    assert "rome-qm4" not in seq and "for 1 of 1 methods" in seq


def test_density_finding_follows_the_numbers(tmp_path):
    """pistol-2-mini's chain, cluster and complete graph: hand-made cells where two of three methods
    do worse in the densest component — the density finding must say so, with the counts."""
    from pistol_data import generate, scenarios

    ds = generate("pistol-2-mini", 0)
    specs = {"chain": {"type": "edge", "edge": "1_2"}, "cluster": {"type": "edge", "edge": "7_8"},
             "complete": {"type": "edge", "edge": "10_11"},
             "complete_batch": {"type": "edges", "edges": ["10_11", "12_13"]}}
    splits = {k: [s.to_dict() for s in scenarios.resolve(ds, v)] for k, v in specs.items()}
    table = {"none": (90, 90, 90, 90), "gd": (30, 40, 50, 60), "rmu": (20, 25, 30, 30), "npo": (50, 45, 40, 40)}
    cells = []
    for row, values in table.items():
        for (scen, _), v in zip(specs.items(), values):
            r = _record(row, scen, splits[scen], 0, float(v), [])
            r["dataset"] = {"preset": "pistol-2-mini", "seed": 0}
            cells.append(r)
    md = _report_of(tmp_path, cells)
    assert "unlearning is harder in a denser graph** — holds: DS is higher in the densest component (density " \
           "1.00) than in the sparsest (0.40) for 2 of 3 methods" in md
    # 2 of 3 by coin flips has p = 1/2, and one seed per cell: the finding says it is weak
    assert "for 2 of 3 methods (mean Δ DS 8.3); sign test p = 0.5, 1 seed per cell — weak evidence." in md
    sec = md.split("## Density")[1].split("\n## ")[0]
    assert sec.index("chain (density 0.40") < sec.index("cluster (density 0.70") < sec.index("complete (density 1.00")
    # gd: the complete graph's two scenarios (50, 60) minus the chain's 30
    assert next(line for line in sec.splitlines() if line.startswith("| gd |")).split("|")[-3].strip() == "25.0"
    # the figure: DS against density, one panel per forget-set size, each row's points in density order
    from unlearnbench.report import density_section
    from unlearnbench.results import load_results

    lines = density_section(Study(load_results(tmp_path), ds)).data["density_lines"]
    assert list(lines) == ["1 edge forgotten", "2 edges forgotten"]
    assert lines["1 edge forgotten"]["gd"] == ([0.4, 0.7, 1.0], [30.0, 40.0, 50.0])
    assert lines["2 edges forgotten"]["npo"] == ([1.0], [40.0])
    md = write_report(tmp_path).read_text()
    assert "report/density.png" in md and (tmp_path / "report" / "density.png").stat().st_size > 1000


def test_report_says_when_its_cells_come_from_several_library_versions(tmp_path, mini):
    from pistol_data import scenarios

    splits = [s.to_dict() for s in scenarios.resolve(mini, {"type": "edge", "edge": "A_B"})]
    cells = [_record(row, "hub", splits, seed, 50.0, []) for row in ("none", "gd") for seed in (0, 1)]
    for i, c in enumerate(cells):
        c["versions"] = {"torch": "2.13.0+cpu", "transformers": "5.25.0" if i else "4.57.0"}
    md = _report_of(tmp_path / "mixed", cells)
    assert "Library versions differ between these cells** (transformers 4.57.0 (1 cell), 5.25.0 (3 cells))" in md
    cells[0]["versions"]["transformers"] = "5.25.0"
    assert "Library versions differ" not in _report_of(tmp_path / "same", cells)


def test_lunar_efficiency_follows_the_apply_times(tmp_path, mini):
    """LUNAR with its layer fixed applies 5× faster than gd, the layer search 2×: the efficiency table
    and finding say so, each LUNAR row by its layer setting."""
    from pistol_data import scenarios

    specs = {"hub": {"type": "edge", "edge": "A_B"}, "ind": {"type": "edge", "edge": "E1_F1"}}
    splits = {k: [s.to_dict() for s in scenarios.resolve(mini, v)] for k, v in specs.items()}
    cells = []
    for scen in specs:
        for row, method, params, secs, ds in (("none", "none", {}, 0.0, 90.0), ("gd", "gd", {}, 20.0, 40.0),
                                              ("lunar", "lunar", {"candidate_layers": [1, 2]}, 10.0, 10.0),
                                              ("lunar-fixed", "lunar", {"layers": [2]}, 4.0, 12.0)):
            r = _record(row, scen, splits[scen], 0, ds, [], kind="steer" if method == "lunar" else "unlearn")
            r.update(method=method, params=params, cost={"apply_seconds": secs})
            cells.append(r)
    md = _report_of(tmp_path, cells)
    sec = md.split("### Efficiency")[1].split("\n## ")[0]
    assert "| lunar-fixed | fixed [2] | 5.00× |" in sec and "| lunar | search over [1, 2] | 2.00× |" in sec
    assert "cheaper to apply than the gradient baselines (its layer fixed, as in the paper)** — holds: faster " \
           "than the baseline in 1 of 1 baseline comparisons, 5.00–5.00×" in md
    # the DS ratio for every LUNAR row: the search (40 / 10) and the fixed layer (40 / 12) in one table
    ds = md.split("## LUNAR vs the gradient baselines")[1].split("### Efficiency")[0]
    assert "| scenario | best baseline DS | lunar DS | best / lunar | range over baselines | lunar-fixed DS |" in ds
    assert "| hub | 40.0 | 10.0 | 4.00× | 4.00–4.00× | 12.0 | 3.33× | 3.33–3.33× |" in ds
    assert "lunar's DS is below every baseline's in 2 of 2 scenarios; ratio baseline/LUNAR 4.00–4.00×; " \
           "lunar-fixed's DS is below every baseline's in 2 of 2 scenarios; ratio baseline/LUNAR 3.33–3.33×" in ds


def test_finding_support_names_the_seeds_behind_each_cell():
    """The sign test's p and the seeds per cell: weak below 3 seeds in some cell, and the count
    again over the methods that have 3 seeds everywhere."""
    from types import SimpleNamespace

    from unlearnbench.report import Study, _seeded, _support

    assert _support(13, 15, (1, 3)) == "; sign test p = 0.0037, 1–3 seeds per cell — weak evidence"
    assert _support(5, 5, (3, 3)) == "; sign test p = 0.031, 3 seeds per cell"
    by = {("gd", "a"): [0, 1, 2], ("gd", "b"): [0, 1, 2], ("npo", "a"): [0, 1, 2], ("npo", "b"): [0],
          ("rmu", "a"): [0, 1, 2], ("rmu", "b"): [0, 1, 2]}
    st = SimpleNamespace(by=by)
    st.seeds_range = lambda rows, scen: Study.seeds_range(st, rows, scen)
    assert _seeded(st, {"gd": 2.0, "npo": 1.0, "rmu": -1.0}, ["a", "b"]) == \
        "; with 3 or more seeds per cell: 1 of 2 (gd, rmu)"
    assert _seeded(st, {"gd": 2.0, "rmu": -1.0}, ["a", "b"]) == ""  # every method has 3: said once


def test_ties_favour_neither_side_of_a_finding():
    """A method whose DS is the same in both cells neither supports nor refutes a finding: the
    majority is over the comparisons that differ, and the sign test drops the ties."""
    from unlearnbench.report import _holds, _seeded, _support

    assert _holds(2, 5, ties=3) is True and _holds(2, 5) is False and _holds(0, 2, ties=2) is False and _holds(0, 0) is None
    assert _support(2, 5, (1, 1), ties=3) == "; sign test over the 2 unequal p = 0.25, 1 seed per cell — weak evidence"
    assert _support(0, 2, (1, 1), ties=2) == ""
    from types import SimpleNamespace

    from unlearnbench.report import Study

    st = SimpleNamespace(by={(r, s): [0, 1, 2] for r in ("gd", "npo", "rmu") for s in "ab"} | {("ga", "a"): [0]})
    st.seeds_range = lambda rows, scen: Study.seeds_range(st, rows, scen)
    assert _seeded(st, {"gd": 2.0, "npo": 0.0, "rmu": -1.0, "ga": 1.0}, ["a", "b"]) == \
        "; with 3 or more seeds per cell: 1 of 3 (1 equal) (gd, npo, rmu)"
