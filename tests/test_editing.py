"""ROME, MEMIT and AlphaEdit on the tiny model; subjects; statistics cache; editing mode."""

import copy
import json

import pytest
import torch

import methods
from methods import editing
from methods.alphaedit import AlphaEdit, null_space_projector
from methods.editing import SubjectError, find_subject, key_second_moment, locate
from methods.memit import Memit
from methods.rome import Rome, ridge
from pistol_data import QARecord, scenarios
from pistol_data.edits import counterfactual_edits
from unlearnbench.models import load

FAST = {"v_steps": 3, "n_prefixes": 2, "stats_samples": 4}


@pytest.fixture(scope="module")
def setup(mini):
    lm = load("tiny-random-llama")
    [split] = scenarios.resolve(mini, {"type": "edge", "edge": "A_B"})
    req = methods.UnlearnRequest(forget=split.request(mini), retain=split.retain(mini),
                                 refusal_targets=["I don't know."], entities=sorted(mini.entity_names()),
                                 progress=False)
    return lm, req, mini


def _changed(before, after):
    return [k for k in before if not torch.equal(before[k], after[k])]


def test_subject_rule():
    names = ["Bumun Inc", "Jugu Inc", "Preatous Grijound"]
    q = "What was the effective date of the contract between Bumun Inc and Jugu Inc?"
    assert find_subject(q, names) == "Bumun Inc and Jugu Inc"
    assert find_subject("What job did Preatous Grijound hold?", names) == "Preatous Grijound"
    assert find_subject("Which company bought paint from Bumun Inc?", names) == "Bumun Inc"
    with pytest.raises(SubjectError, match="no subject in question 'Who wrote Hamlet\\?'"):
        find_subject("Who wrote Hamlet?", names)


def test_question_without_subject_is_a_clear_error(setup):
    lm, req, _ = setup
    bad = copy.copy(req)
    bad.forget = [QARecord(question="What is the capital of France?", answer="Paris.", edge="A_B")]
    with pytest.raises(SubjectError, match="capital of France"):
        Memit().apply(copy.deepcopy(lm.model), lm.tokenizer, bad, Memit.Params(**FAST))


def test_rome_update_is_rank_one_on_its_layer(setup):
    lm, req, _ = setup
    one = copy.copy(req)
    one.forget = req.forget[:1]
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    m = Rome().apply(copy.deepcopy(lm.model), lm.tokenizer, one, Rome.Params(layer=1, **FAST)).model
    after = m.state_dict()
    name = "model.layers.1.mlp.down_proj.weight"
    assert _changed(before, after) == [name]
    dw = (after[name] - before[name]).double()
    s = torch.linalg.svdvals(dw)
    assert s[0] > 0 and s[1] / s[0] < 1e-5  # rank one


def test_rome_writes_the_value_for_its_key(setup):
    """W' k = v*: the edited layer maps the bare question's key to the optimised value."""
    lm, req, _ = setup
    m = copy.deepcopy(lm.model)
    fact = editing.request_facts(req, Rome.Params(**FAST))[0]
    prefixes = editing.context_prefixes(m, lm.tokenizer, 2, 0)
    c = ridge(key_second_moment(m, lm.tokenizer, [1], req, Rome.Params(**FAST))[1])
    k_star = editing.compute_keys(m, lm.tokenizer, [1], [fact], prefixes)[1][0].double()
    k = editing.compute_keys(m, lm.tokenizer, [1], [fact], [""])[1][0].double()
    v = torch.randn(m.config.hidden_size).double()
    Rome.update(m, 1, c, k_star, k, v)
    assert torch.allclose(editing.out_weight(m, 1).double() @ k, v, atol=1e-3)


def test_memit_changes_only_its_layers(setup):
    lm, req, _ = setup
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    m = Memit().apply(copy.deepcopy(lm.model), lm.tokenizer, req, Memit.Params(layers=[1, 2], **FAST)).model
    assert _changed(before, m.state_dict()) == [f"model.layers.{l}.mlp.down_proj.weight" for l in (1, 2)]


def test_alphaedit_leaves_preserved_keys_unchanged(setup):
    lm, req, _ = setup
    params = AlphaEdit.Params(layers=[2], nullspace_threshold=0.3, **FAST)
    c = key_second_moment(lm.model, lm.tokenizer, [2], req, params)[2]
    _, rank = null_space_projector(c, params.nullspace_threshold)
    assert 0 < rank < c.shape[0]
    vals, vecs = torch.linalg.eigh(c)
    preserved = vecs[:, vals >= params.nullspace_threshold * vals.max()]  # K_p's span
    name = "model.layers.2.mlp.down_proj.weight"
    w0 = lm.model.state_dict()[name].clone().double()
    ae = AlphaEdit()
    res = ae.apply(copy.deepcopy(lm.model), lm.tokenizer, req, params)
    m = res.model
    dw = m.state_dict()[name].double() - w0
    assert dw.norm() > 1e-4
    assert (dw @ preserved).norm() / dw.norm() < 1e-4   # ΔW K_p ≈ 0
    assert res.info["null_space_rank"] == {2: rank} and res.layers == [2]
    # the sequential-editing cache now holds this request's keys (Σ K Kᵀ: symmetric PSD, non-zero)
    cache = ae._prev[2]
    assert torch.allclose(cache, cache.T) and torch.linalg.eigvalsh(cache).min() > -1e-6 and cache.norm() > 0


def test_key_statistics_are_cached_and_reused(setup, monkeypatch):
    lm, req, _ = setup
    params = Memit.Params(**{**FAST, "stats_samples": 3})
    c1 = key_second_moment(lm.model, lm.tokenizer, [0, 3], req, params)
    assert all(torch.allclose(c1[l], c1[l].T) for l in (0, 3))
    monkeypatch.setattr(editing.statistics, "_corpus_texts", lambda *a, **k: pytest.fail("statistics recomputed"))
    c2 = key_second_moment(lm.model, lm.tokenizer, [0, 3], req, params)
    assert all(torch.equal(c1[l], c2[l]) for l in (0, 3))
    # editing a down-projection keeps the fingerprint (statistics of the unedited model are reused) ...
    m = copy.deepcopy(lm.model)
    with torch.no_grad():
        editing.out_weight(m, 0).add_(0.1)
    assert editing.model_fingerprint(m) == editing.model_fingerprint(lm.model)
    # ... any other weight does not
    with torch.no_grad():
        m.model.layers[0].mlp.up_proj.weight.add_(0.1)
    assert editing.model_fingerprint(m) != editing.model_fingerprint(lm.model)


def test_query_merging_joins_questions_of_one_edge(setup):
    _, req, _ = setup
    facts = editing.request_facts(req, Memit.Params(query_merge=3))
    assert len(req.forget) == 6 and len(facts) == 2
    assert facts[0].question == " ".join(r.question for r in req.forget[:3])
    assert all(f.target == "I don't know." for f in facts)


def test_counterfactual_edits(mini):
    cases = counterfactual_edits(mini, 10, seed=0)
    assert len({(c.edge, c.attribute) for c in cases}) == 10
    assert len({c.edge for c in cases}) == 5  # ≤ 2 per contract: 2 of the 7 stay unedited
    assert all(c.new != c.old and c.request.answer == c.new for c in cases)
    assert all(c.attribute != "total_price" for c in cases)  # derived values are never edited
    for c in cases:
        for r in c.form("paraphrase"):
            assert r.answer == c.new
        for r in c.form("reverse"):
            assert c.new.rstrip(".") in r.question
    assert counterfactual_edits(mini, 10, seed=0) == cases
    with pytest.raises(ValueError, match="only"):
        counterfactual_edits(mini, 1000)


def test_says():
    from unlearnbench.edit_eval import ngram_entropy, says

    assert says("It is governed by the laws of The State of Texas.", "The State of Texas.")
    assert not says("It was 33 units.", "3.")
    assert says("63", "63.")
    assert ngram_entropy("a b c d e") > ngram_entropy("a a a a a")


def test_edit_mode_end_to_end(tmp_path):
    from unlearnbench.cli import main

    cfg = tmp_path / "edit.yaml"
    cfg.write_text("""
name: edit-smoke
model: tiny-random-llama
device: cpu
data: {preset: pistol-mini, seed: 0}
finetune: null
eval: {batch_size: 64, max_new_tokens: 6, qa_max_new_tokens: 6, utility_limit: 10}
mode: edit
edits: {n: 3}
methods:
  - {name: memit, params: {v_steps: 2, n_prefixes: 1, stats_samples: 2, layers: [1, 2]}}
  - {name: rome, params: {v_steps: 2, n_prefixes: 1, stats_samples: 2}}
""")
    out = tmp_path / "out"
    assert main(["edit", str(cfg), "--out", str(out)]) == 0
    # one cell executor: editing cells land in cells/, validate, and the leaderboard ranks them
    from unlearnbench.leaderboard import merge, table
    from unlearnbench.schema import validate_dir

    assert validate_dir(out) == []
    rec = json.loads((out / "cells" / "memit__edits-n3__seed0.json").read_text())
    assert rec["status"] == "ok" and rec["mode"] == "edit" and len(rec["edits"]) == 3
    assert set(rec["metrics"]) >= {"efficacy", "generalisation", "specificity_edge", "specificity_neighbour",
                                   "utility", "fluency"}
    assert rec["cost"]["seconds_per_edit"] > 0 and rec["method_info"]["layers"] == [1, 2]
    # the scores are what the per-example rows say: one efficacy row per edit, asking its request
    eff = [r for r in rec["per_example"]["qa"] if r["role"] == "efficacy"]
    assert sorted(r["question"] for r in eff) == sorted(e["request"] for e in rec["edits"])
    assert rec["metrics"]["efficacy"]["value"] == pytest.approx(sum(r["says_answer"] for r in eff) / 3)
    assert rec["metrics"]["efficacy"]["higher_is_better"] is True
    rows = {r["method"]: r for r in table(merge([out]))}
    assert {"none", "memit", "rome"} <= set(rows) and rows["none"]["rank"] is None
    assert sorted(rows[m]["rank"] for m in ("memit", "rome")) == [1, 2]
    ranked = sorted(("memit", "rome"), key=lambda m: rows[m]["rank"])
    assert rows[ranked[0]]["efficacy"] >= rows[ranked[1]]["efficacy"]  # ranked by efficacy, higher first
    md = (out / "leaderboard.md").read_text()
    assert "## edits-n3" in md and "efficacy ↑" in md
    # --retry-failed reruns failed cells only: a finished cell is left as it was
    before = (out / "cells" / "rome__edits-n3__seed0.json").read_text()
    assert main(["edit", str(cfg), "--out", str(out), "--retry-failed"]) == 0
    assert (out / "cells" / "rome__edits-n3__seed0.json").read_text() == before


def test_edit_mode_rejects_unlearning_methods(tmp_path):
    from unlearnbench.config import ConfigError, load_config

    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model: tiny-random-llama\nmode: edit\nmethods: [gd]\n")
    with pytest.raises(ConfigError, match="cannot run in mode 'edit'"):
        load_config(cfg)


def test_running_from_a_layer_matches_the_full_forward():
    """The value optimisation runs the first blocks once and only the rest per step."""
    from unlearnbench.core.arch import residual_before, starting_at

    lm = load("tiny-random-llama")
    enc = lm.tokenizer(["What was the good?", "Who signed it, and when?"], return_tensors="pt", padding=True)
    with torch.no_grad():
        full = lm.model.base_model(**enc).last_hidden_state
        h = residual_before(lm.model, 2, **enc)
        with starting_at(lm.model, 2):
            part = lm.model.base_model(inputs_embeds=h, attention_mask=enc["attention_mask"]).last_hidden_state
    assert len(lm.model.model.layers) == 4  # restored
    assert torch.allclose(full, part, atol=1e-5)


def test_sampling_is_seeded_and_leaves_the_callers_rng_alone(setup):
    lm, _, _ = setup
    state = torch.random.get_rng_state()
    a = editing.context_prefixes(lm.model, lm.tokenizer, 4, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert a == editing.context_prefixes(lm.model, lm.tokenizer, 4, seed=3) and a[0] == "" and len(a) == 5


def _plain_values(model, tok, facts, layer, where, prefixes, p):
    """The value optimisation written plainly (every token of every row, every block, each step):
    the oracle for the cached, suffix-only version in ``editing.compute_values``."""
    from unlearnbench.core.arch import blocks, mlp_out

    eos = tok.eos_token_id
    rows = []  # (fact, ids, lookup, answer start, target)
    for i, f in enumerate(facts):
        tgt = tok(f.target, add_special_tokens=False)["input_ids"] + [eos]
        for c in prefixes:
            text = locate._render(tok, c, f.question)
            ids = tok(text, add_special_tokens=False)["input_ids"]
            rows.append((i, ids + tgt, locate._lookup(tok, text, f.subject), len(ids), tgt))
    kl = [(i, tok(f"{f.subject} is a", add_special_tokens=False)["input_ids"],
           locate._lookup(tok, f"{f.subject} is a", f.subject)) for i, f in enumerate(facts)]
    module = mlp_out(model, layer) if where == "mlp" else blocks(model)[layer]
    d = model.config.hidden_size
    delta = torch.zeros(len(facts), d, requires_grad=True)  # float32, as in compute_values
    opt = torch.optim.Adam([delta], lr=p.v_lr)
    model.requires_grad_(False)

    def run(ids, at, fact):
        def hook(mod, inp, out):
            hs = out[0] if isinstance(out, tuple) else out
            hs = hs.clone()
            hs[0, at] = hs[0, at] + delta[fact].to(hs.dtype)
            return (hs,) + tuple(out[1:]) if isinstance(out, tuple) else hs
        h = module.register_forward_hook(hook)
        try:
            return model(input_ids=torch.tensor([ids])).logits[0]
        finally:
            h.remove()

    v0 = torch.zeros(len(facts), d, dtype=torch.float64)
    cap = {}
    g = module.register_forward_hook(lambda m, i, o: cap.__setitem__("o", (o[0] if isinstance(o, tuple) else o)))
    with torch.no_grad():
        for i, f in enumerate(facts):
            text = locate._render(tok, "", f.question)
            model(input_ids=torch.tensor([tok(text, add_special_tokens=False)["input_ids"]]))
            v0[i] = cap["o"][0, locate._lookup(tok, text, f.subject)]
        kl_ref = [torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1], -1) for _, ids, _ in kl]
    g.remove()
    for _ in range(p.v_steps):
        nll = torch.zeros(len(facts), dtype=torch.float64)
        count = torch.zeros(len(facts), dtype=torch.float64)
        for i, ids, at, start, tgt in rows:
            lp = torch.log_softmax(run(ids, at, i), -1)
            for j, t in enumerate(tgt):
                nll[i] = nll[i] - lp[start + j - 1, t]
                count[i] += 1
        nll = nll / count
        kls = torch.stack([torch.nn.functional.kl_div(torch.log_softmax(run(ids, at, i)[-1], -1), kl_ref[i],
                                                      log_target=True, reduction="sum") for i, ids, at in kl])
        wd = p.v_weight_decay * delta.double().norm(dim=-1) ** 2 / v0.norm(dim=-1) ** 2
        if nll.max().item() < 5e-2:
            break
        opt.zero_grad()
        (nll + p.kl_factor * kls + wd).sum().backward()
        opt.step()
        with torch.no_grad():
            scale = (p.clamp_norm_factor * v0.norm(dim=-1) / delta.double().norm(dim=-1).clamp_min(1e-12)).clamp(max=1.0)
            scale = scale.float()
            delta.mul_(scale[:, None])
    return v0, v0 + delta.detach().double()


@pytest.mark.parametrize("layer,where", [(1, "mlp"), (0, "mlp"), (2, "block")])
def test_value_optimisation_equals_the_plain_computation(setup, layer, where):
    """Only positions from the earliest lookup on are recomputed per step, the first blocks once:
    the values equal the every-token, every-block computation (float64, so algebra not rounding)."""
    lm, req, _ = setup
    model = copy.deepcopy(lm.model).double()
    p = Rome.Params(**{**FAST, "v_steps": 4})
    facts = editing.request_facts(req, p)[:2]
    prefixes = editing.context_prefixes(model, lm.tokenizer, 2, 0)
    assert len({len(x) for x in prefixes}) > 1  # rows of different lengths, lookups at different places
    v0, v = editing.compute_values(model, lm.tokenizer, facts, layer, where, prefixes, p)
    w0, w = _plain_values(model, lm.tokenizer, facts, layer, where, prefixes, p)
    torch.testing.assert_close(v0.double(), w0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(v.double(), w.double(), rtol=1e-4, atol=1e-5)  # compute_values' loss is float32
    assert (v - v0).norm() > 0  # the optimisation moved


def test_ridge_in_place_equals_the_sum_with_an_identity():
    c = torch.randn(64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    c = c @ c.T
    expected = c + 1e-6 * c.diagonal().mean() * torch.eye(64, dtype=c.dtype)
    out = ridge(c)
    assert out is c and torch.equal(out, expected)


def test_value_geometry_is_what_the_value_optimisation_runs(setup, monkeypatch):
    """plan's count of the value optimisation's tokens and answer positions (``value_geometry``,
    from the questions alone) equals what ``compute_values`` holds at once — one fact, every fact in
    one batch, and every fact in groups (its largest group)."""
    from methods.editing import update

    lm, req, _ = setup
    facts = editing.request_facts(req, editing.FactParams())
    seen, sizes = [], []
    real = update._ValueGroup

    def record(*a, **k):
        g = real(*a, **k)
        seen.append((g.rows.ids.shape[0] * (g.rows.ids.shape[1] - g.rows.s0), len(g.rows.lab_r)))
        sizes.append(g.n)
        return g

    monkeypatch.setattr(update, "_ValueGroup", record)
    one = update.value_geometry(lm.tokenizer, facts[:2], 0)[0]
    for batch, chunk in ((facts[:1], None), (facts, None), (facts, one)):
        p = editing.EditParams(v_steps=1, n_prefixes=0, v_chunk_tokens=chunk)
        expected = update.value_geometry(lm.tokenizer, batch, 0, chunk_tokens=chunk)
        seen.clear(), sizes.clear()
        update.compute_values(lm.model, lm.tokenizer, batch, 1, "mlp", [""], p)
        assert max(seen) == expected and expected[0] > 0 and expected[1] >= 1 and sum(sizes) == len(batch)
    # in groups: several, each within the budget unless a fact alone exceeds it
    assert len(seen) > 1 and all(x[0] <= one or n == 1 for x, n in zip(seen, sizes))


@pytest.mark.parametrize("layer,where", [(1, "mlp"), (2, "block")])
def test_value_optimisation_in_groups_equals_one_batch(setup, layer, where):
    """Each fact's loss depends on its own δ only: the facts run in groups (one group's activations
    alive, gradients summed per step) give the δ of one batch, step for step (float64)."""
    from methods.editing import update

    lm, req, _ = setup
    model = copy.deepcopy(lm.model).double()
    facts = editing.request_facts(req, editing.FactParams())[:4]
    prefixes = editing.context_prefixes(model, lm.tokenizer, 2, 0)
    one = update.value_geometry(lm.tokenizer, facts[:1], 2)[0]
    groups = update.value_chunks(lm.tokenizer, facts, prefixes, "subject_last", one)
    assert len(groups) > 1 and sorted(i for g in groups for i in g) == list(range(len(facts)))
    p = dict(FAST, v_steps=4)
    v0, v = editing.compute_values(model, lm.tokenizer, facts, layer, where, prefixes,
                                   Rome.Params(**p, v_chunk_tokens=None))
    w0, w = editing.compute_values(model, lm.tokenizer, facts, layer, where, prefixes,
                                   Rome.Params(**p, v_chunk_tokens=one))
    torch.testing.assert_close(w0, v0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(w, v, rtol=1e-5, atol=1e-6)
    assert (v - v0).norm() > 0  # the optimisation moved
