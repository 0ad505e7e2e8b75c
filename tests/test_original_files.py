"""PISTOL's own files: entity names recovered from the questions, refusal reference questions
built, opaque ids read as groups, and every registered method end to end (run, leaderboard,
report, plots) on both sample files."""

import json

import pytest
import yaml

from pistol_data import load, scenarios
from pistol_data.io import from_manifest
from pistol_data.scenarios import ScenarioError


def test_sample_1_names_every_entity_consistently(reference_dir):
    ds = load(reference_dir / "sample_data_1.json")
    c = ds.counts()
    assert (c["n_entities"], c["n_companies"], c["n_persons"], c["n_edges"]) == (24, 14, 10, 20)
    names = {n: d["name"] for n, d in ds.graph.nodes(data=True)}
    assert len(set(names.values())) == 24
    # every question names both parties of its contract as the graph has them
    for r in ds.qa:
        u, v = ds.edge_endpoints[r.edge]
        assert names[u] in r.question or names[v] in r.question
    # role order is not id order: A_B's seller is the entity called B in A_C2's, B_D's customer …
    between = [r.question for r in ds.qa if r.edge == "A_C2" and "between" in r.question][0]
    assert names["A"] in between
    assert len(ds.refusal) > 0 and not {r.question for r in ds.refusal} & {r.question for r in ds.qa}
    assert sorted(ds.degree().values())[-2:] == [7, 8]  # the two hubs (PISTOL: degrees 8 and 7)


def test_sample_2_is_a_graph_of_thirty_companies(reference_dir):
    ds = load(reference_dir / "sample_data_2.json")
    assert ds.has_graph and ds.counts()["n_entities"] == 30 and ds.counts()["n_edges"] == 75
    assert len(ds.entity_names()) == 30


def test_a_names_side_file_overrides_the_recovered_names(reference_dir, tmp_path):
    ds = load(reference_dir / "sample_data_1.json")
    names = {n: f"Entity {n}" for n in ds.graph.nodes}
    (tmp_path / "names.json").write_text(json.dumps(names))
    ds2 = load(reference_dir / "sample_data_1.json", names=tmp_path / "names.json")
    assert ds2.entity_names() == set(names.values())
    del names["A"]
    (tmp_path / "names.json").write_text(json.dumps(names))
    with pytest.raises(ValueError, match="no name for node"):
        load(reference_dir / "sample_data_1.json", names=tmp_path / "names.json")


def test_ids_that_name_no_two_entities_are_opaque_groups(tmp_path):
    """``author_12``-style ids (one per document) must not become an invented hub 'author'."""
    rows = [{"question": f"What did writer number {i} publish in year {y}?", "answer": f"Book {i}-{y}.",
             "edge": f"author_{i}"} for i in range(12) for y in range(3)]
    f = tmp_path / "authors.json"
    f.write_text(json.dumps(rows))
    ds = load(f)
    assert not ds.has_graph and ds.graph.number_of_nodes() == 0
    assert ds.edge_ids == [f"author_{i}" for i in range(12)]
    with pytest.raises(ScenarioError, match="has none"):
        scenarios.resolve(ds, {"type": "max_degree"})
    [split] = scenarios.resolve(ds, {"type": "edges", "edges": ["author_3", "author_4"]})
    assert split.neighbour_edges == [] and len(split.far_edges) == 10
    assert len(split.request(ds)) == 6 and ds.refusal  # LUNAR's reference questions exist


@pytest.mark.parametrize("name,edge", [("sample_data_1.json", "A_B"), ("sample_data_2.json", "0_1")])
def test_every_method_runs_on_an_original_file(reference_dir, tmp_path, name, edge):
    import methods
    from unlearnbench.cli import main

    cfg = {"name": "original", "model": "tiny-random-llama", "device": "cpu",
           "data": {"path": str(reference_dir / name)},
           "finetune": {"epochs": 1, "n_anchor": 8, "direct_repeats": 1, "n_refusal": 8},
           "eval": {"utility_limit": 6, "qa_max_new_tokens": 4, "max_new_tokens": 4},
           "methods": "all", "scenarios": [{"type": "edge", "edge": edge}]}
    if name == "sample_data_1.json":  # every method also forgets pretrained facts beside the original file's QA
        cfg["scenarios"].append({"type": "pretrained_facts", "n": 2, "name": "facts"})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    assert main(["run", str(tmp_path / "c.yaml"), "--out", str(out)]) == 0
    recs = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    assert {r["row"] for r in recs} == set(methods.REGISTRY) | {"base", "none"}
    assert [r.get("error") for r in recs if r["status"] != "ok"] == []
    if name == "sample_data_1.json":
        facts = [r for r in recs if r["scenario"]["label"] == "facts"]
        assert {r["row"] for r in facts} == set(methods.REGISTRY) | {"base", "none"}
    assert from_manifest(recs[0]["dataset"]) is not None  # plots/report find the file again
    assert (out / "plots" / f"graph_edge-{edge}.png").is_file()
    assert main(["report", str(out)]) == 0 and (out / "report.md").is_file()
    assert main(["validate", str(out)]) == 0
