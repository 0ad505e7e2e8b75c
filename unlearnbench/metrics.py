"""Every metric, registered where it is defined: a name, a one-line meaning and a direction.

A scenario metric is a function of a :class:`~unlearnbench.evaluate.ModelEval` (per-example
values for every QA of a dataset, computed once per model) and a scenario
:class:`~pistol_data.scenarios.Split`; an edit metric is a function of an
:class:`~unlearnbench.edit_eval.EditEval`. Plugins add metrics with :func:`register_metric` or
through the entry-point groups ``unlearnbench.metrics`` / ``unlearnbench.edit_metrics``
(objects of :class:`MetricInfo`); the evaluator never knows which method ran. Every command that
shows a metric imports this module, so every command sees every built-in metric.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from statistics import mean
from typing import Callable

from rouge_score import rouge_scorer

from .core.registry import Registry


@dataclass(frozen=True)
class MetricInfo:
    name: str
    meaning: str
    higher_is_better: bool
    fn: Callable


METRICS: Registry[MetricInfo] = Registry("metric", group="unlearnbench.metrics")
EDIT_METRICS: Registry[MetricInfo] = Registry("edit metric", group="unlearnbench.edit_metrics")


def register_metric(name: str, meaning: str, higher_is_better: bool):
    """A scenario metric ``fn(model_eval, split) -> float``; a name already taken is an error."""
    def deco(fn):
        METRICS.register(name, MetricInfo(name, meaning, higher_is_better, fn))
        return fn
    return deco


def register_edit_metric(name: str, meaning: str, higher_is_better: bool):
    """An editing-mode metric ``fn(edit_eval) -> float``."""
    def deco(fn):
        EDIT_METRICS.register(name, MetricInfo(name, meaning, higher_is_better, fn))
        return fn
    return deco


def directions(registry: Registry[MetricInfo] = METRICS) -> dict[str, bool]:
    """Metric name → higher_is_better."""
    return {n: m.higher_is_better for n, m in registry.items()}


def deviation_score(forget_rouge1: float, retain_rouge1: float) -> float:
    """LUNAR's Deviation Score: 100·√(f² + (1−r)²), the distance from the ideal (0 forget, 1 retain)."""
    return 100.0 * math.sqrt(forget_rouge1 ** 2 + (1.0 - retain_rouge1) ** 2)


_SCORER = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)


def rouge_recall(prediction: str, gold: str) -> tuple[float, float]:
    """(ROUGE-1 recall, ROUGE-L recall) of the gold answer in the prediction (rouge_score, stemmer)."""
    s = _SCORER.score(gold, prediction)
    return s["rouge1"].recall, s["rougeL"].recall


_REFUSAL = re.compile(
    r"\b(i\s*(?:do not|don't|dont)\s+(?:know|have)|i(?:'m| am)\s+(?:not sure|not aware|not familiar|afraid|unable|sorry)"
    r"|no (?:information|knowledge|record|idea|data)|(?:cannot|can't|can not|unable to) (?:answer|say|help|provide)"
    r"|not something i know|i have no)\b", re.IGNORECASE)


def ngram_entropy(text: str, ns=(2, 3), weights=(2 / 3, 4 / 3)) -> float:
    """ROME's fluency measure: weighted mean of the n-gram entropies of one text (bits)."""
    toks = text.split()
    ents = []
    for n in ns:
        grams = Counter(tuple(toks[i:i + n]) for i in range(len(toks) - n + 1))
        total = sum(grams.values())
        ents.append(-sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0)
    return float(sum(w * e for w, e in zip(weights, ents)) / sum(weights))


def is_refusal(text: str) -> bool:
    """Phrase-pattern refusal detector ("I don't know", "no information", "I'm not sure", ...)."""
    return bool(_REFUSAL.search(text or ""))


def _mean(rows: list[dict], key: str) -> float:
    vals = [r[key] for r in rows if r.get(key) is not None and not (isinstance(r[key], float) and math.isnan(r[key]))]
    return float(mean(vals)) if vals else float("nan")


# ---- the scenario metrics -------------------------------------------------------------------------

def _forget(ev, s, forms=("direct",)):
    return ev.select(s.forget_edges, forms)


def _retain(ev, s, forms=("direct",)):
    return ev.select(s.neighbour_edges + s.far_edges, forms)


for _key, _label in (("rouge1", "ROUGE-1 recall"), ("rougeL", "ROUGE-L recall"), ("mrr", "teacher-forced MRR"),
                     ("thr", "Top Hit Ratio (gold token rank ≤ 100)"), ("es", "extraction strength")):
    register_metric(f"forget_{_key}", f"{_label} on the forget set (direct questions)", False)(
        lambda ev, s, k=_key: _mean(_forget(ev, s), k))
    register_metric(f"retain_{_key}", f"{_label} on the retain set (direct questions)", True)(
        lambda ev, s, k=_key: _mean(_retain(ev, s), k))

register_metric("forget_paraphrase_rouge1", "ROUGE-1 recall on held-out paraphrases of forget questions", False)(
    lambda ev, s: _mean(_forget(ev, s, ("paraphrase",)), "rouge1"))
register_metric("forget_reverse_rouge1", "ROUGE-1 recall on reverse questions about forgotten edges", False)(
    lambda ev, s: _mean(_forget(ev, s, ("reverse",)), "rouge1"))
register_metric("neighbour_retain_rouge1", "ROUGE-1 recall on edges sharing an entity with a forgotten edge", True)(
    lambda ev, s: _mean(ev.select(s.neighbour_edges), "rouge1"))
register_metric("far_retain_rouge1", "ROUGE-1 recall on edges not touching a forgotten edge", True)(
    lambda ev, s: _mean(ev.select(s.far_edges), "rouge1"))
register_metric("forget_refusal_rate", "share of forget answers that are refusals", True)(
    lambda ev, s: _mean([{"x": float(r["refusal"])} for r in _forget(ev, s)], "x"))
register_metric("retain_refusal_rate", "share of retain answers that are refusals (over-refusal)", False)(
    lambda ev, s: _mean([{"x": float(r["refusal"])} for r in _retain(ev, s)], "x"))
register_metric("forget_fluency", "ROME's generation entropy (weighted bi-/tri-gram, bits; arXiv 2202.05262 §4) of "
                "each answer to a forget question, averaged: 0 = a one- or two-word answer or a loop, 0.3 = "
                "\"I don't know.\", ~3 = a full-sentence refusal", True)(
    lambda ev, s: _mean([{"x": ngram_entropy(r["generation"])} for r in _forget(ev, s)], "x"))
register_metric("utility", "ROUGE-1 recall on the general-knowledge set", True)(
    lambda ev, s: _mean(ev.utility, "rouge1"))
register_metric("ds", "Deviation Score 100·√(forget R1² + (1 − retain R1)²), distance from the ideal", False)(
    lambda ev, s: deviation_score(_mean(_forget(ev, s), "rouge1"), _mean(_retain(ev, s), "rouge1")))


# ---- membership inference and truth ratio ------------------------------------------------
# Members: the forget set's direct questions; non-members: the never-implanted holdout contracts
# (same templates, same value distributions). AUC via scikit-learn; 0.5 = indistinguishable.

def _finite(rows, key):
    return [r[key] for r in rows if r.get(key) is not None and math.isfinite(r[key])]


def mia_auc(members: list[dict], nonmembers: list[dict], key: str, sign: float = 1.0) -> float:
    """ROC AUC of ``sign × row[key]`` as a membership score (members labelled 1)."""
    m, n = _finite(members, key), _finite(nonmembers, key)
    if not m or not n:
        return float("nan")
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score([1] * len(m) + [0] * len(n), [sign * v for v in m + n]))


for _name, _key, _sign, _label in (
        ("mia_loss", "nll", -1.0, "the answer's loss (LOSS attack, Yeom et al. arXiv 1709.01604)"),
        ("mia_zlib", "zlib", -1.0, "the loss over the answer's zlib entropy (Carlini et al. arXiv 2012.07805)"),
        ("mia_mink", "mink", 1.0, "Min-K% (k = 0.4, arXiv 2310.16789)"),
        ("mia_minkpp", "minkpp", 1.0, "Min-K%++ (k = 0.4, arXiv 2404.02936)")):
    register_metric(_name, f"membership-inference AUC, forget vs never-implanted contracts, by {_label}; "
                    "0.5 = the forget set looks unseen", False)(
        lambda ev, s, k=_key, sg=_sign: mia_auc(_forget(ev, s), getattr(ev, "holdout", []), k, sg))

register_metric("forget_truth_ratio", "TOFU's truth ratio on forget questions: P(wrong answers) / P(true answer), "
                "per token; near 0 = the true answer is still preferred", True)(
    lambda ev, s: _mean(_forget(ev, s), "tr"))
register_metric("holdout_rouge1", "ROUGE-1 recall on never-implanted contracts: what guessing alone scores "
                "(a forget ROUGE-1 at this level is as low as it can usefully go)", False)(
    lambda ev, s: _mean(getattr(ev, "holdout", []), "rouge1"))


def forget_quality(truth_ratios: list[float], oracle_truth_ratios: list[float]) -> float:
    """TOFU's forget quality (arXiv 2401.06121 §2.5.2): the p-value of the two-sample
    Kolmogorov–Smirnov test between a model's and the retrained oracle's forget truth ratios
    (scipy); ≥ 0.05: indistinguishable from retraining at that level. Both lists finite."""
    if not truth_ratios or not oracle_truth_ratios:
        return float("nan")
    from scipy.stats import ks_2samp

    return float(ks_2samp(truth_ratios, oracle_truth_ratios).pvalue)


def privleak(auc: float, oracle_auc: float) -> float:
    """MUSE's PrivLeak (arXiv 2407.06460 §3): the relative gap (AUC − AUC_oracle) / AUC_oracle of a
    membership-inference AUC (Min-K%) to the retrained oracle's; 0 is ideal, > 0 leaks, < 0
    over-unlearns. (MUSE reports it ×100.)"""
    return (auc - oracle_auc) / oracle_auc if oracle_auc else float("nan")


@register_metric("forget_quality", "KS-test p-value between the forget truth ratios of this model and of the "
                 "retrained oracle (TOFU); ≥ 0.05: indistinguishable from retraining", True)
def _forget_quality(ev, s) -> float:
    oracle = getattr(ev, "oracle", None)
    if oracle is None:
        return float("nan")
    return forget_quality(_finite(_forget(ev, s), "tr"), _finite(_forget(oracle, s), "tr"))


@register_metric("privleak", "MUSE's PrivLeak: relative gap of the Min-K% membership AUC to the retrained "
                 "oracle's; 0 is ideal, > 0 leaks, < 0 over-unlearns", False)
def _privleak(ev, s) -> float:
    oracle = getattr(ev, "oracle", None)
    if oracle is None:
        return float("nan")
    return privleak(mia_auc(_forget(ev, s), ev.holdout, "mink"), mia_auc(_forget(oracle, s), oracle.holdout, "mink"))


# ---- the edit metrics (editing mode) -----------------------------------------------------

def _m(rows, key) -> float:
    return float(mean(r[key] for r in rows)) if rows else float("nan")


register_edit_metric("efficacy", "edited questions answered with the new value", True)(
    lambda ev: _m(ev.role("efficacy"), "says_answer"))
register_edit_metric("old_answer_rate", "edited questions still answered with the old value", False)(
    lambda ev: _m(ev.role("efficacy"), "says_old"))
register_edit_metric("generalisation", "paraphrases and reverse questions of the edits answered as edited", True)(
    lambda ev: _m(ev.role("paraphrase") + ev.role("reverse"), "says_answer"))
register_edit_metric("generalisation_paraphrase", "paraphrases of edited questions answered with the new value", True)(
    lambda ev: _m(ev.role("paraphrase"), "says_answer"))
register_edit_metric("generalisation_reverse", "reverse questions naming the new value answered correctly", True)(
    lambda ev: _m(ev.role("reverse"), "says_answer"))
register_edit_metric("specificity_edge", "ROUGE-1 on the other attributes of edited contracts", True)(
    lambda ev: _m(ev.role("edge_other"), "rouge1"))
register_edit_metric("specificity_neighbour", "ROUGE-1 on contracts sharing an entity with an edited one", True)(
    lambda ev: _m(ev.role("neighbour"), "rouge1"))
register_edit_metric("specificity_far", "ROUGE-1 on the remaining contracts", True)(
    lambda ev: _m(ev.role("far"), "rouge1"))
register_edit_metric("utility", "ROUGE-1 recall on the general-knowledge set", True)(
    lambda ev: _m(ev.utility, "rouge1"))
register_edit_metric("fluency", "generation entropy of general-knowledge answers (ROME)", True)(
    lambda ev: _m(ev.utility, "entropy"))
