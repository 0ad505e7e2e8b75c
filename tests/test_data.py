import json
import subprocess
import sys
from collections import Counter

import networkx as nx
import pytest

from pistol_data import generate, load, load_pistol_json, save, scenarios
from pistol_data.attributes import ATTRIBUTES
from pistol_data.io import DataFormatError
from pistol_data.scenarios import ScenarioError
from pistol_data.side_sets import general_knowledge, refusal_calibration, refusal_sentences


def test_same_seed_same_bytes(tmp_path):
    a, b = generate("pistol-1", 3), generate("pistol-1", 3)
    assert a.fingerprint == b.fingerprint
    save(a, tmp_path / "a")
    save(b, tmp_path / "b")
    for name in ("qa.jsonl", "graph.json", "manifest.json", "refusal.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_other_seed_changes_names_not_topology():
    a, b = generate("pistol-1", 0), generate("pistol-1", 1)
    assert a.fingerprint != b.fingerprint
    assert sorted(a.edge_endpoints.items()) == sorted(b.edge_endpoints.items())
    assert a.entity_names() != b.entity_names()


@pytest.mark.parametrize("preset", ["pistol-1", "pistol-2", "pistol-2-mini", "pistol-mini"])
def test_names_unique_and_values_consistent(preset):
    ds = generate(preset, 0)
    names = [d["name"] for _, d in ds.graph.nodes(data=True)]
    assert len(names) == len(set(names))
    for _, _, d in ds.graph.edges(data=True):
        c = d["attributes"]
        if d["type"] == "sales":
            assert c["total_price"] == c["quantity"] * c["unit_price"]
            assert c["penalty_days"] >= c["payment_days"]
        else:
            assert c["end_hour"] > c["start_hour"]


def test_pistol1_topology():
    ds = generate("pistol-1", 0)
    m = ds.manifest()
    assert (m["n_companies"], m["n_persons"], m["n_edges"], m["n_qa_direct"]) == (14, 10, 20, 400)
    deg = ds.degree()
    assert deg["A"] == 8 and deg["B"] == 7  # as in PISTOL's sample file (A_B is shared)
    assert scenarios.hubs(ds) == ["A"]
    comps = [c for c in nx.connected_components(ds.graph) if "A" not in c]
    assert len(comps) == 3 and all(len(c) == 3 for c in comps)
    assert Counter(ds.edge_types[e] for e in scenarios.independent_edges(ds)) == {"sales": 3, "employment": 3}


def test_pistol2_topology():
    ds = generate("pistol-2", 0)
    assert ds.counts()["n_companies"] == 30 and ds.counts()["n_edges"] == 75
    sizes = sorted((len(c), ds.graph.subgraph(c).number_of_edges()) for c in nx.connected_components(ds.graph))
    assert sizes == [(10, 9), (10, 21), (10, 45)]


def test_pistol2_mini_has_the_three_densities_at_cpu_size():
    ds = generate("pistol-2-mini", 0)
    comps = sorted(nx.connected_components(ds.graph), key=lambda c: min(int(n) for n in c))
    assert [(len(c), round(nx.density(nx.Graph(ds.graph.subgraph(c))), 2)) for c in comps] == [(5, 0.4), (5, 0.7), (5, 1.0)]
    assert set(ds.edge_types.values()) == {"sales"} and ds.counts()["n_qa_direct"] == 21 * 6


def test_mini_has_hub_and_independent_edges():
    ds = generate("pistol-mini", 0)
    assert 6 <= ds.counts()["n_edges"] <= 8
    assert max(ds.degree().values()) >= 3
    assert set(scenarios.independent_edges(ds)) == {"E1_F1", "E2_q2"}


def test_every_attribute_has_all_forms():
    for ctype, attrs in ATTRIBUTES.items():
        assert len(attrs) == 20
        for a in attrs:
            forms = Counter(t.form for t in a.templates)
            assert forms["direct"] == 1 and forms["paraphrase"] >= 2
    ds = generate("pistol-1", 0)
    by = Counter((r.edge, r.attribute, r.form) for r in ds.qa)
    for e in ds.edge_ids:
        for a in ATTRIBUTES[ds.edge_types[e]]:
            assert by[(e, a.name, "direct")] == 1 and by[(e, a.name, "paraphrase")] >= 2
    assert ds.counts()["n_qa_reverse"] > 0
    reverse = [r for r in ds.qa if r.form == "reverse"][0]
    assert reverse.answer.rstrip(".") in ds.entity_names()


def test_records_carry_all_fields(mini):
    for r in mini.qa:
        d = r.to_dict()
        assert set(d) == {"question", "answer", "edge", "attribute", "form", "template_id"}
        assert "{" not in r.question and r.answer.endswith(".")


def test_scenarios(mini):
    [s] = scenarios.resolve(mini, {"type": "edge", "edge": "A_B"})
    assert s.forget_edges == ["A_B"]
    assert set(s.neighbour_edges) == {"A_C", "A_m", "A_n", "B_p"}
    assert set(s.far_edges) == {"E1_F1", "E2_q2"}
    [s] = scenarios.resolve(mini, {"type": "max_degree"})
    assert set(s.forget_edges) == {"A_B", "A_C", "A_m", "A_n"}
    [s] = scenarios.resolve(mini, {"type": "min_degree"})
    assert len(s.forget_edges) == 1
    [s] = scenarios.resolve(mini, {"type": "independent_edge"})
    assert s.forget_edges == ["E1_F1"] and s.neighbour_edges == []
    [s] = scenarios.resolve(mini, {"type": "contract_type", "contract_type": "employment"})
    assert all(mini.edge_types[e] == "employment" for e in s.forget_edges) and len(s.forget_edges) == 4
    [s] = scenarios.resolve(mini, {"type": "entity", "entity": "B"})
    assert set(s.forget_edges) == {"A_B", "B_p"}
    seq = scenarios.resolve(mini, {"type": "sequence", "steps": [{"type": "edge", "edge": "A_B"},
                                                                  {"type": "edge", "edge": "E1_F1"}]})
    assert [x.request_edges for x in seq] == [["A_B"], ["E1_F1"]]
    assert seq[1].forget_edges == ["A_B", "E1_F1"] and "A_B" not in seq[1].far_edges
    for x in seq:  # forget, neighbour and far partition the edges
        assert sorted(x.forget_edges + x.neighbour_edges + x.far_edges) == sorted(mini.edge_ids)


def test_scenario_errors_list_valid_choices(mini):
    with pytest.raises(ScenarioError, match="valid edges: .*A_B"):
        scenarios.resolve(mini, {"type": "edge", "edge": "Z_Z"})
    with pytest.raises(ScenarioError, match="valid entities"):
        scenarios.resolve(mini, {"type": "entity", "entity": "nobody"})
    with pytest.raises(ScenarioError, match="not independent"):
        scenarios.resolve(mini, {"type": "independent_edge", "edge": "A_B"})
    with pytest.raises(ScenarioError, match="valid: \\['employment', 'sales'\\]"):
        scenarios.resolve(mini, {"type": "contract_type", "contract_type": "lease"})
    with pytest.raises(ValueError, match="type"):
        scenarios.resolve(mini, {"type": "hubbish"})


def test_side_sets(mini):
    gk = general_knowledge()
    assert len(gk) >= 200 and len({r.question for r in gk}) == len(gk)
    assert len(refusal_sentences()) >= 20
    cal = refusal_calibration(0, exclude_names=mini.entity_names(), n=120)
    assert len(cal) >= 100 and len({r.question for r in cal}) == len(cal)
    for r in cal:  # questions about entities that do not exist in the dataset
        assert not any(name in r.question for name in mini.entity_names())
        assert r.answer in refusal_sentences()
    assert {r.attribute for r in general_knowledge(10)} == {r.attribute for r in gk}


def test_save_load_roundtrip_and_hf(tmp_path, mini):
    save(mini, tmp_path / "d")
    back = load(tmp_path / "d")
    assert back.fingerprint == mini.fingerprint and back.qa == mini.qa
    assert sorted(back.edge_ids) == sorted(mini.edge_ids)
    hf = mini.to_hf()
    assert set(hf) == {"direct", "paraphrase", "reverse", "refusal"} and hf["direct"].num_rows == 42
    with pytest.raises(FileExistsError):
        save(generate("pistol-mini", 1), tmp_path / "d")


def test_tampered_dataset_rejected(tmp_path, mini):
    save(mini, tmp_path / "d")
    p = tmp_path / "d" / "qa.jsonl"
    p.write_text(p.read_text().replace("paint", "pant", 1) if "paint" in p.read_text() else p.read_text()[:-30] + "\n")
    with pytest.raises(DataFormatError):
        load(tmp_path / "d")


def test_original_pistol_files(reference_dir):
    ds = load_pistol_json(reference_dir / "sample_data_1.json")
    assert ds.counts()["n_edges"] == 20 and len(ds.qa) == 400
    assert ds.degree()["A"] == 8
    assert ds.edge_types["A_m"] == "employment" and ds.edge_types["A_B"] == "sales"
    assert ds.qa[0].attribute == "effective_date" and ds.qa[19].attribute == "governing_law"
    ds2 = load_pistol_json(reference_dir / "sample_data_2.json")
    assert ds2.counts()["n_edges"] == 75 and max(ds2.degree().values()) == 9
    [s] = scenarios.resolve(ds2, {"type": "max_degree"})
    assert len(s.forget_edges) == 9


def test_malformed_original_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[{\"question\": \"q\"}]")
    with pytest.raises(DataFormatError, match="item 0"):
        load_pistol_json(bad)
    bad.write_text("{not json")
    with pytest.raises(DataFormatError, match="malformed JSON"):
        load_pistol_json(bad)


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "unlearnbench.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_generate_and_inspect(tmp_path, reference_dir):
    r = _cli("generate", "--preset", "pistol-1", "--seed", "0", "--out", str(tmp_path / "p1"))
    assert r.returncode == 0, r.stderr
    r = _cli("inspect-data", str(tmp_path / "p1"), "--json", "--plot", str(tmp_path / "g.png"))
    info = json.loads(r.stdout)
    assert info["n_entities"] == 24 and info["n_edges"] == 20 and info["n_qa_direct"] == 400
    assert info["degree"]["A"] == 8 and info["edges"]["A_m"] == "employment"
    assert len(info["fingerprint"]) == 64
    assert (tmp_path / "g.png").stat().st_size > 10_000
    r = _cli("inspect-data", str(reference_dir / "sample_data_2.json"), "--json")
    info = json.loads(r.stdout)
    assert info["n_edges"] == 75 and info["degree"]["20"] == 9


def test_cli_bad_input_is_one_clear_error(tmp_path):
    r = _cli("generate", "--preset", "pistol-9", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "valid presets" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x").exists()
    r = _cli("inspect-data", str(tmp_path / "nothing"))
    assert r.returncode == 2 and "no dataset" in r.stderr


def test_pretrained_facts_dataset_and_scenarios(mini):
    from pistol_data import facts
    from pistol_data.side_sets import anchor_questions

    fds = scenarios.dataset_for(mini, {"type": "pretrained_facts"})
    assert fds.preset == facts.PRESET and not fds.has_graph and fds.refusal == mini.refusal
    ids = facts.fact_ids()
    assert len(ids) == len(set(ids)) >= 40 and fds.edge_ids == ids
    assert Counter(r.form for r in fds.qa) == {"direct": len(ids), "paraphrase": len(ids)}
    # disjoint from what else the evaluator scores or a method reads
    other = {r.question for r in general_knowledge()} | set(anchor_questions()) | {r.question for r in mini.qa}
    assert not other & {r.question for r in fds.qa}
    # every direct question names its subject (the editors edit at it)
    for r in fds.direct():
        assert any(name in r.question for name in fds.entity_names()), r.question
    # n facts spread over the categories; neighbours share a forgotten fact's category
    [s] = scenarios.resolve(mini, {"type": "pretrained_facts", "n": 4})
    cats = facts.categories()
    assert len(s.forget_edges) == 4 and len({cats[e] for e in s.forget_edges}) == 4
    assert {cats[e] for e in s.neighbour_edges} == {cats[e] for e in s.forget_edges}
    assert not {cats[e] for e in s.far_edges} & {cats[e] for e in s.forget_edges}
    assert sorted(s.forget_edges + s.neighbour_edges + s.far_edges) == sorted(ids)
    assert {r.edge for r in s.request(fds)} == set(s.forget_edges)
    # resolving on the facts dataset itself gives the same split
    assert scenarios.resolve(fds, {"type": "pretrained_facts", "n": 4})[0] == s
    with pytest.raises(ScenarioError, match="valid edges"):
        scenarios.resolve(mini, {"type": "pretrained_facts", "edges": ["nope"]})
    with pytest.raises(ScenarioError, match="no fact to retain"):
        scenarios.resolve(mini, {"type": "pretrained_facts", "n": len(ids)})


def test_sequence_each_requests_one_group_at_a_time(mini):
    seq = scenarios.resolve(mini, {"type": "sequence", "each": {"type": "pretrained_facts", "n": 10}})
    assert len(seq) == 10 and all(len(x.request_edges) == 1 for x in seq)
    assert [len(x.forget_edges) for x in seq] == list(range(1, 11))
    assert scenarios.ScenarioSpec(type="sequence", each={"type": "pretrained_facts", "n": 10}).on_facts()
    hub = scenarios.resolve(mini, {"type": "sequence", "each": {"type": "max_degree"}})
    assert [x.request_edges for x in hub] == [[e] for e in hub[-1].forget_edges]
    assert set(hub[-1].forget_edges) == {"A_B", "A_C", "A_m", "A_n"}
    with pytest.raises(ScenarioError, match="mixes pretrained facts"):
        scenarios.resolve(mini, {"type": "sequence", "steps": [{"type": "edge", "edge": "A_B"},
                                                                {"type": "pretrained_facts", "n": 1}]})
    with pytest.raises(ScenarioError, match="either a non-empty 'steps'"):
        scenarios.resolve(mini, {"type": "sequence"})
    with pytest.raises(ScenarioError, match="belongs to type 'pretrained_facts'"):
        scenarios.resolve(mini, {"type": "edge", "edge": "A_B", "n": 3})


def test_an_unquoted_numeric_edge_id_is_a_clear_error():
    """pistol-2's edge ids look like numbers to YAML (1_2 reads as 12): the error says to quote them."""
    from pydantic import ValidationError

    from pistol_data.scenarios import ScenarioSpec

    for spec in ({"type": "edge", "edge": 12}, {"type": "edges", "edges": ["0_1", 23]}):
        with pytest.raises(ValidationError, match="quote it"):
            ScenarioSpec.model_validate(spec)
    assert ScenarioSpec.model_validate({"type": "edge", "edge": "1_2"}).edge == "1_2"
