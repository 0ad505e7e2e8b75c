"""One evaluator for every model: the base model, the fine-tuned one, every method's output.

``Evaluator.run(model, tokenizer)`` makes one model call per example set — batched greedy
generation, with the teacher-forced passes of the gold (and perturbed) answers run from the same
prompts' cache (``core.generation.generate_and_score``) — over every QA of the dataset (all
forms), the general-knowledge set (generation only) and the holdout, and keeps per-example
values. Scoring a scenario is then a selection over those values (``score``), so one evaluation
of a model serves every scenario, and the pre-unlearning row costs one evaluation for a whole grid.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from statistics import mean
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pistol_data import PistolDataset, general_knowledge
from pistol_data.scenarios import Split

from .attacks import ATTACKS, Target
from .core.generation import generate_and_score, generate_answers
from .metrics import METRICS, directions, is_refusal, rouge_recall

log = logging.getLogger(__name__)

# Bumped whenever what a metric means or how it is computed changes: cells of different
# evaluator versions are never ranked together (leaderboard, report).
EVALUATOR_VERSION = 3  # 3: holdout contracts, membership inference and truth ratio
# Bumped when the values move at float-rounding level only (other matmul shapes, as between two CPUs):
# it keys the cached reference evaluations, so a cache hit is what scoring again gives, while cells of
# either side stay comparable. 2: teacher-forced values from the generation's prompt cache.
EVALUATOR_ARITHMETIC = 2


class EvalParams(BaseModel):
    """How every model is evaluated (the config's ``eval:`` section)."""

    model_config = ConfigDict(extra="forbid")
    batch_size: int = Field(128, ge=1, description="generation batch size")
    tf_batch_size: int = Field(16, ge=1, description="teacher-forced batch size (logits are vocab-sized)")
    max_new_tokens: int = Field(32, ge=1, description="answer budget on general-knowledge questions")
    qa_max_new_tokens: int = Field(16, ge=1, description="answer budget on PISTOL questions (gold answers ≤ 11 tokens)")
    utility_limit: int | None = Field(None, ge=1, description="score utility on a stratified prefix of this many GK items")
    precision: Literal["fp32", "bf16", "auto"] = Field(
        "fp32", description="dtype of the evaluated copy: fp32 (default), bf16 (on a CPU only where bf16 is native: "
                            "AVX512-BF16/AMX, ~2.2x faster evaluation of SmolLM2 on 2 cores; greedy answers can differ "
                            "in a few tokens), or auto = bf16 on CUDA, fp32 on CPU")
    forms: tuple[str, ...] = Field(("direct", "paraphrase", "reverse"), description="question forms evaluated")
    n_perturbed: int = Field(3, ge=1, description="perturbed (wrong) answers per forget question for the truth ratio")
    attacks: tuple[str, ...] = Field(("reverse_direction", "layer_skip"), description="attacks scored on every "
                                     "unlearned model where they apply (see unlearnbench.attacks; also: quantization, "
                                     "relearn_forget, relearn_neighbour); the relearning and quantization attacks "
                                     "cost a model copy and some training each, so they are opt-in")
    progress: bool = Field(True, exclude=True, description="progress bars (not part of what a score means)")

    @field_validator("attacks")
    @classmethod
    def _known_attacks(cls, v):
        unknown = sorted(set(v) - set(ATTACKS))
        if unknown:
            raise ValueError(f"unknown attack(s) {unknown}; allowed: {sorted(ATTACKS)}")
        return v


@dataclass
class ModelEval:
    """Per-example values of one model. ``qa``: one dict per QA record (direct questions of
    forgotten edges also carry ``tr``, the truth ratio); ``utility``: one per GK item;
    ``holdout``: one per direct question of a never-implanted contract (the non-members)."""

    qa: list[dict]
    utility: list[dict]
    seconds: float = 0.0
    holdout: list[dict] = field(default_factory=list)
    # the retrained oracle's evaluation, when the grid has one for this forget set (metrics that
    # compare with retraining read it; the runner attaches it before scoring)
    oracle: "ModelEval | None" = None

    def select(self, edges, forms=("direct",)) -> list[dict]:
        es, fs = set(edges), set(forms)
        return [r for r in self.qa if r["edge"] in es and r["form"] in fs]


class Evaluator:
    def __init__(self, ds: PistolDataset, params: EvalParams | None = None):
        self.ds = ds
        self.params = params or EvalParams()
        self.qa = [r for r in ds.qa if r.form in self.params.forms]
        self.gk = general_knowledge(self.params.utility_limit)
        self.holdout = list(ds.holdout) if "direct" in self.params.forms else []
        self.perturbed = ds.perturbed_answers(self.params.n_perturbed)

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
        # each question's prompt serves its generation, its gold answer's teacher-forced pass and, on a
        # forgotten edge's direct question, the perturbed answers of the truth ratio (one call)
        pairs = [(i, r.answer) for i, r in enumerate(qa)]
        wrong: dict[int, list[int]] = {}  # forgotten-edge direct questions: their perturbed answers' pairs
        for i, r in enumerate(qa):
            if r.form == "direct" and (keep is None or r.edge in keep):
                wrong[i] = []
                for a in self.perturbed.get((r.edge, r.attribute), []):
                    wrong[i].append(len(pairs))
                    pairs.append((i, a))
        gens, tf = generate_and_score(model, tokenizer, [r.question for r in qa], pairs, batch_size=p.batch_size,
                                      tf_batch_size=p.tf_batch_size, max_new_tokens=p.qa_max_new_tokens,
                                      progress=p.progress, desc=desc)
        util_gens = generate_answers(model, tokenizer, [r.question for r in self.gk], batch_size=p.batch_size,
                                     max_new_tokens=p.max_new_tokens, progress=p.progress, desc=f"{desc} (utility)")
        qa_rows = []
        for i, (r, g) in enumerate(zip(qa, gens)):
            r1, rl = rouge_recall(g, r.answer)
            qa_rows.append({**r.to_dict(), "generation": g, "rouge1": r1, "rougeL": rl,
                            "refusal": is_refusal(g), **tf[i]})
            if i in wrong:
                qa_rows[-1]["tr"] = truth_ratio(tf[i]["nll"], [tf[j]["nll"] for j in wrong[i]])
        util_rows = []
        for r, g in zip(self.gk, util_gens):
            r1, rl = rouge_recall(g, r.answer)
            util_rows.append({"question": r.question, "answer": r.answer, "category": r.attribute,
                              "generation": g, "rouge1": r1, "rougeL": rl})
        # the never-implanted contracts, scored like forget QA
        hold_gens, hold_tf = generate_and_score(
            model, tokenizer, [r.question for r in self.holdout], [(i, r.answer) for i, r in enumerate(self.holdout)],
            batch_size=p.batch_size, tf_batch_size=p.tf_batch_size, max_new_tokens=p.qa_max_new_tokens,
            progress=p.progress, desc=f"{desc} (holdout)")
        hold_rows = [{**r.to_dict(), "generation": g, "rouge1": rouge_recall(g, r.answer)[0], **t}
                     for r, g, t in zip(self.holdout, hold_gens, hold_tf)]
        return ModelEval(qa_rows, util_rows, seconds=time.perf_counter() - t0, holdout=hold_rows)

    def casts(self, model) -> bool:
        """Whether :meth:`run` evaluates a bf16 copy of this model rather than the model itself."""
        import torch

        from .core.precision import use_bf16

        param = next(model.parameters())
        return param.dtype == torch.float32 and use_bf16(self.params.precision, param.device.type)

    def cast(self, model):
        """The model in the evaluation's precision: itself, or a bf16 copy (the caller's model,
        which attacks and later requests keep using, stays fp32)."""
        import copy

        import torch

        if not self.casts(model):
            return model
        from .core.precision import check

        check(self.params.precision, next(model.parameters()).device, "eval.precision")
        # requires_grad on the copy's weights (it only ever runs under inference_mode): with frozen bf16
        # weights torch 2.13 takes a slower CPU path in generate (measured in benchmarks/notes.md)
        return copy.deepcopy(model).to(torch.bfloat16).requires_grad_(True)


def truth_ratio(nll: float, wrong_nlls: list[float]) -> float:
    """TOFU's truth ratio (arXiv 2401.06121 §2.5.1): the mean over perturbed answers of
    P(a_pert | q)^(1/|a_pert|) divided by P(a | q)^(1/|a|), from the mean NLLs; here a is the true
    answer itself (TOFU divides by a paraphrased answer: PISTOL's answers are short values with no
    paraphrase). Near 0: the true answer is far likelier; ≥ 1: no preference for it."""
    if not wrong_nlls or not math.isfinite(nll):
        return float("nan")
    return float(mean(math.exp(-x) for x in wrong_nlls) / math.exp(-nll))


def attack_scores(evaluator: Evaluator, model, tokenizer, split: Split, info: dict | None, seed: int = 0,
                  before: ModelEval | None = None) -> dict:
    """Forget ROUGE-1 (direct questions) under every attack in ``EvalParams.attacks`` that applies.
    With ``before`` (the unattacked model's evaluation), each attack also records the unattacked
    ROUGE-1 on the same questions (``before_forget_rouge1``) and ``recovery`` = after − before."""
    names = evaluator.params.attacks
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
    return directions(METRICS)
