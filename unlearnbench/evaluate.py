"""One evaluator for every model: the base model, the fine-tuned one, every method's output.

``Evaluator.run(model, tokenizer)`` makes two model calls per example set — batched greedy
generation and one teacher-forced pass — over every QA of the dataset (all forms) and the
general-knowledge set, and keeps per-example values. Scoring a scenario is then a selection
over those values (``score``), so one evaluation of a model serves every scenario, and the
pre-unlearning row costs one evaluation for a whole grid.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from statistics import mean

from pistol_data import PistolDataset, general_knowledge
from pistol_data.scenarios import Split

from .generation import generate_answers, teacher_forced_stats
from .metrics import METRICS, deviation_score, is_refusal, register_metric, rouge_recall

log = logging.getLogger(__name__)

# Bumped whenever what a metric means or how it is computed changes: cells of different
# evaluator versions are never ranked together (leaderboard, report).
EVALUATOR_VERSION = 2


@dataclass
class EvalParams:
    batch_size: int = 128         # generation batch size (128 was fastest for SmolLM2 on 2 CPU cores)
    tf_batch_size: int = 16       # teacher-forced batch size (logits are vocab-sized)
    max_new_tokens: int = 32      # answer budget on general-knowledge questions (free-form sentences)
    qa_max_new_tokens: int = 16   # answer budget on PISTOL questions: gold answers are ≤ 11 tokens
    utility_limit: int | None = None  # score utility on a stratified prefix of the GK set
    # dtype of the evaluated copy: "fp32" (default), "bf16", or "auto" = bf16 on CUDA, fp32 on CPU
    # (bf16 on a CPU with AVX512-BF16/AMX: SmolLM2's evaluation 12.0 s -> 5.6 s on 2 cores)
    precision: str = "fp32"
    forms: tuple[str, ...] = ("direct", "paraphrase", "reverse")
    # attacks scored on every unlearned model (those that apply); the relearning and quantization
    # attacks cost a model copy and some training each, so they are opt-in
    attacks: tuple[str, ...] = ("reverse_direction", "layer_skip")
    progress: bool = True


@dataclass
class ModelEval:
    """Per-example values of one model. ``qa``: one dict per QA record; ``utility``: one per GK item."""

    qa: list[dict]
    utility: list[dict]
    seconds: float = 0.0

    def select(self, edges, forms=("direct",)) -> list[dict]:
        es, fs = set(edges), set(forms)
        return [r for r in self.qa if r["edge"] in es and r["form"] in fs]


def _mean(rows: list[dict], key: str) -> float:
    vals = [r[key] for r in rows if r.get(key) is not None and not (isinstance(r[key], float) and math.isnan(r[key]))]
    return float(mean(vals)) if vals else float("nan")


class Evaluator:
    def __init__(self, ds: PistolDataset, params: EvalParams | None = None):
        self.ds = ds
        self.params = params or EvalParams()
        self.qa = [r for r in ds.qa if r.form in self.params.forms]
        self.gk = general_knowledge(self.params.utility_limit)

    def run(self, model, tokenizer, desc: str = "evaluate", heldout_edges=None) -> ModelEval:
        """Evaluate every direct question, general knowledge, and the held-out forms (paraphrase,
        reverse) of every edge — or, with ``heldout_edges``, only of those edges: metrics read
        held-out forms on forgotten edges alone, so a model scored on one scenario skips the rest
        (on pistol-mini: 56 instead of 140 QA)."""
        import time

        p = self.params
        t0 = time.perf_counter()
        model = self.cast(model)
        keep = None if heldout_edges is None else set(heldout_edges)
        qa = [r for r in self.qa if keep is None or r.form == "direct" or r.edge in keep]
        gens = generate_answers(model, tokenizer, [r.question for r in qa], batch_size=p.batch_size,
                                max_new_tokens=p.qa_max_new_tokens, progress=p.progress, desc=desc)
        util_gens = generate_answers(model, tokenizer, [r.question for r in self.gk], batch_size=p.batch_size,
                                     max_new_tokens=p.max_new_tokens, progress=p.progress, desc=f"{desc} (utility)")
        tf = teacher_forced_stats(model, tokenizer, [(r.question, r.answer) for r in qa],
                                  batch_size=p.tf_batch_size, progress=p.progress)
        qa_rows = []
        for r, g, t in zip(qa, gens, tf):
            r1, rl = rouge_recall(g, r.answer)
            qa_rows.append({**r.to_dict(), "generation": g, "rouge1": r1, "rougeL": rl,
                            "refusal": is_refusal(g), **t})
        util_rows = []
        for r, g in zip(self.gk, util_gens):
            r1, rl = rouge_recall(g, r.answer)
            util_rows.append({"question": r.question, "answer": r.answer, "category": r.attribute,
                              "generation": g, "rouge1": r1, "rougeL": rl})
        return ModelEval(qa_rows, util_rows, seconds=time.perf_counter() - t0)

    def casts(self, model) -> bool:
        """Whether :meth:`run` evaluates a bf16 copy of this model rather than the model itself."""
        import torch

        from .precision import use_bf16

        param = next(model.parameters())
        return param.dtype == torch.float32 and use_bf16(self.params.precision, param.device.type)

    def cast(self, model):
        """The model in the evaluation's precision: itself, or a bf16 copy (the caller's model,
        which attacks and later requests keep using, stays fp32)."""
        import copy

        import torch

        if not self.casts(model):
            return model
        from .precision import check

        check(self.params.precision, next(model.parameters()).device, "eval.precision")
        # requires_grad on the copy's weights (it only ever runs under inference_mode): with frozen
        # bf16 weights torch 2.13 takes a slower CPU path in generate — SmolLM2's 42 answers 1.1 s
        # vs 4.2 s, a whole evaluation 4.9 s vs 11.8 s for LUNAR's and RMU's frozen models
        return copy.deepcopy(model).to(torch.bfloat16).requires_grad_(True)


def attack_scores(evaluator: Evaluator, model, tokenizer, split: Split, info: dict | None, seed: int = 0,
                  before: ModelEval | None = None) -> dict:
    """Forget ROUGE-1 (direct questions) under every attack in ``EvalParams.attacks`` that applies.
    With ``before`` (the unattacked model's evaluation), each attack also records the unattacked
    ROUGE-1 on the same questions (``before_forget_rouge1``) and ``recovery`` = after − before."""
    from .attacks import ATTACKS, Target

    names = evaluator.params.attacks
    unknown = sorted(set(names) - set(ATTACKS))
    if unknown:
        raise ValueError(f"unknown attack(s) {unknown}; registered: {sorted(ATTACKS)}")
    target = Target(model, tokenizer, evaluator.ds.for_edges(split.forget_edges, ("direct",)),
                    evaluator.ds.for_edges(split.neighbour_edges, ("direct",)), seed)
    unattacked = None
    if before is not None and not evaluator.casts(model):
        unattacked = {(q["question"], q["answer"]): q["rouge1"] for q in before.qa}
    elif before is not None and names:
        # the evaluation ran on a lower-precision copy; attacks score the model itself, so the
        # unattacked reference is re-read from it: recovery compares like with like
        gens = generate_answers(model, tokenizer, [r.question for r in target.forget],
                                batch_size=evaluator.params.batch_size,
                                max_new_tokens=evaluator.params.qa_max_new_tokens)
        unattacked = {(r.question, r.answer): rouge_recall(g, r.answer)[0] for g, r in zip(gens, target.forget)}
    out = {}
    for name in names:
        att = ATTACKS[name]
        ctx = att.factory(model, info, target)
        if ctx is None:
            continue
        with ctx as t:
            gens = generate_answers(t.model, tokenizer, [r.question for r in t.forget],
                                    batch_size=evaluator.params.batch_size,
                                    max_new_tokens=evaluator.params.qa_max_new_tokens)
        vals = [rouge_recall(g, r.answer)[0] for g, r in zip(gens, t.forget)]
        out[name] = {"forget_rouge1": float(mean(vals)) if vals else float("nan"), "meaning": att.meaning,
                     "n": len(vals),
                     "examples": [{"question": r.question, "generation": g} for r, g in zip(t.forget[:3], gens[:3])]}
        if unattacked is not None and vals:
            prior = [unattacked[(r.question, r.answer)] for r in t.forget if (r.question, r.answer) in unattacked]
            if len(prior) == len(vals):
                out[name]["before_forget_rouge1"] = float(mean(prior))
                out[name]["recovery"] = out[name]["forget_rouge1"] - out[name]["before_forget_rouge1"]
    return out


def score(ev: ModelEval, split: Split) -> dict[str, float]:
    """Every registered metric for one scenario split."""
    return {name: float(m.fn(ev, split)) for name, m in METRICS.items()}


def metric_directions() -> dict[str, bool]:
    return {n: m.higher_is_better for n, m in METRICS.items()}


# ---- the metrics -------------------------------------------------------------------------

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
register_metric("utility", "ROUGE-1 recall on the general-knowledge set", True)(
    lambda ev, s: _mean(ev.utility, "rouge1"))
register_metric("ds", "Deviation Score 100·√(forget R1² + (1 − retain R1)²), distance from the ideal", False)(
    lambda ev, s: deviation_score(_mean(_forget(ev, s), "rouge1"), _mean(_retain(ev, s), "rouge1")))
