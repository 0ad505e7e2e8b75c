"""The metric registry: every metric has a name, a one-line meaning and a direction.

A metric is a function of a :class:`~unlearnbench.evaluate.ModelEval` (per-example values for
every QA of a dataset, computed once per model) and a scenario :class:`~pistol_data.scenarios.Split`.
Plugins add metrics with :func:`register_metric`; the evaluator never knows which method ran.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

from rouge_score import rouge_scorer


@dataclass(frozen=True)
class MetricInfo:
    name: str
    meaning: str
    higher_is_better: bool
    fn: Callable


METRICS: dict[str, MetricInfo] = {}


def register_metric(name: str, meaning: str, higher_is_better: bool):
    def deco(fn):
        METRICS[name] = MetricInfo(name, meaning, higher_is_better, fn)
        return fn
    return deco


EDIT_METRICS: dict[str, MetricInfo] = {}


def register_edit_metric(name: str, meaning: str, higher_is_better: bool):
    """An editing-mode metric: a function of an :class:`~unlearnbench.edit_eval.EditEval`."""
    def deco(fn):
        EDIT_METRICS[name] = MetricInfo(name, meaning, higher_is_better, fn)
        return fn
    return deco


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


def is_refusal(text: str) -> bool:
    """Phrase-pattern refusal detector ("I don't know", "no information", "I'm not sure", ...)."""
    return bool(_REFUSAL.search(text or ""))
