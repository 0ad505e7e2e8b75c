"""Tasks: what a column of the grid asks every method row and how it is scored.

A task holds a request builder (what a method may read: never the evaluator's held-out forms or
sets), an evaluator and the metrics of its mode. :class:`ScenarioTask` is a forget scenario at
one seed (one request per split; a sequential scenario is scored after every step);
:class:`EditTask` is a seed's counterfactual edits (editing mode). The cell executor
(:mod:`unlearnbench.runner`) runs both the same way.
"""

from __future__ import annotations

import dataclasses

import methods as methods_pkg
from methods import MethodResult
from pistol_data import PistolDataset, refusal_sentences
from pistol_data.edits import counterfactual_edits
from pistol_data.scenarios import Split, split_for
from pistol_data.side_sets import preserve_prompts

from .config import edits_label
from .edit_eval import EditEvaluator, score_edits
from .evaluate import ModelEval, attack_scores, score
from .metrics import EDIT_METRICS, METRICS, directions

_PER_EXAMPLE_FIELDS = ("question", "answer", "edge", "attribute", "form", "generation", "rouge1", "rougeL",
                       "mrr", "thr", "es", "refusal", "nll", "mink", "minkpp", "zlib", "tr")
_HOLDOUT_FIELDS = ("question", "answer", "edge", "attribute", "generation", "rouge1", "nll", "mink", "minkpp", "zlib")


def build_request(ds: PistolDataset, split=None, seed: int = 0, device: str = "cpu", *, reference=None,
                  progress: bool = True, edits=None, retain=None) -> methods_pkg.UnlearnRequest:
    """Everything a method gets to read, and nothing the evaluator scores beyond the split's own
    forget/retain QA: direct questions only (held-out forms stay with the evaluator), refusal
    sentences and the refusal-calibration questions (never scored), the entity names, and the
    ``preserve`` prompts (everyday questions, disjoint from the utility set). Editing mode passes
    ``edits`` (and its ``retain``) instead of a split."""
    return methods_pkg.UnlearnRequest(
        forget=split.request(ds) if split is not None else [],
        retain=list(retain) if retain is not None else split.retain(ds),
        refusal_targets=list(refusal_sentences()), refusal_questions=list(ds.refusal), seed=seed, device=device,
        reference_model=reference, progress=progress, entities=sorted(ds.entity_names()),
        edits=list(edits or []), preserve=list(preserve_prompts()))


def _metrics_record(values: dict[str, float], registry=METRICS) -> dict:
    dirs = directions(registry)
    return {k: {"value": v, "higher_is_better": dirs[k]} for k, v in values.items()}


def forgotten_edges(splits) -> list[str]:
    """Every edge the given splits forget: the only edges whose held-out forms the scores read."""
    return sorted({e for sp in splits for e in sp.forget_edges})


def _per_example(ev: ModelEval) -> dict:
    return {"qa": [{k: r.get(k) for k in _PER_EXAMPLE_FIELDS} for r in ev.qa],
            "utility": [{k: r.get(k) for k in ("question", "answer", "generation", "rouge1")} for r in ev.utility],
            "holdout": [{k: r.get(k) for k in _HOLDOUT_FIELDS} for r in ev.holdout]}


# ---- tasks: what a column of the grid asks and how it is scored ------------------------------

class ScenarioTask:
    """A forget scenario at one seed: one request per split; sequential scenarios are scored after
    every step (``steps``) and the last split's scores are the cell's."""

    mode = "unlearn"

    def __init__(self, spec, splits: list[Split], seed: int, grid_heldout: list[str], ds: PistolDataset | None = None,
                 evaluator=None, base_eval=None):
        self.spec, self.splits, self.seed = spec, splits, seed
        self.label = spec.label()
        # held-out forms evaluated: a cell's own forgotten edges; a reference row's serves every scenario
        self.heldout, self.grid_heldout = forgotten_edges(splits), grid_heldout
        # the dataset the splits refer to and its evaluator: the grid's (None) or, for pretrained
        # facts, the facts dataset's; base_eval: the model before the implant on that evaluator
        self.ds, self.evaluator, self.base_eval = ds, evaluator, base_eval

    def dataset(self, ctx) -> PistolDataset:
        return self.ds if self.ds is not None else ctx.ds

    def evaluator_for(self, ctx):
        return self.evaluator if self.evaluator is not None else ctx.evaluator

    def scenario_record(self) -> dict:
        return {"label": self.label, "spec": self.spec.model_dump(exclude_none=True),
                "splits": [s.to_dict() for s in self.splits]}

    def requests(self, ctx, reference_for, progress: bool):
        for i, split in enumerate(self.splits):
            yield split.name, build_request(self.dataset(ctx), split, self.seed, ctx.device,
                                            reference=reference_for(i), progress=progress)

    def evaluate(self, ctx, model, desc: str, reference: bool = False):
        return self.evaluator_for(ctx).run(model, ctx.model.tokenizer, desc=desc,
                                           heldout_edges=self.grid_heldout if reference else self.heldout)

    oracle = None  # the retrained oracle's evaluation (reference: [retrain]); set by the runner
    oracle_info = None

    def score(self, ev, step: int = -1) -> dict:
        if self.oracle is not None and step in (-1, len(self.splits) - 1):  # the oracle forgot everything
            ev = dataclasses.replace(ev, oracle=self.oracle)
        return _metrics_record(score(ev, self.splits[step]))

    def attacks(self, ctx, model, result: MethodResult, ev) -> dict | None:
        return attack_scores(self.evaluator_for(ctx), model, ctx.model.tokenizer, self.splits[-1], result.attack_info(),
                             seed=self.seed, before=ev) or None

    def per_example(self, ev) -> dict:
        return _per_example(ev)

    def extra(self) -> dict:
        return {}


class EditTask:
    """A seed's counterfactual edits (:func:`pistol_data.edits.counterfactual_edits`), asked of
    every editing method as one request (MEMIT/AlphaEdit apply them as one batch, ROME one after
    another) and scored by the edit evaluator. Its one split names the edited contracts
    (``forget_edges``), those sharing an entity with them and the rest."""

    mode = "edit"

    def __init__(self, ctx, n: int, per_edge: int, seed: int, progress: bool):
        self.seed, self.n, self.per_edge = seed, n, per_edge
        self.cases = counterfactual_edits(ctx.ds, n, seed, per_edge=per_edge)
        self.evaluator = EditEvaluator(ctx.ds, self.cases, ctx.evaluator.params.model_copy(update={"progress": progress}))
        self.split = split_for(ctx.ds, "edits", sorted({c.edge for c in self.cases}))
        self.label = edits_label(n)
        self.splits = [self.split]

    def scenario_record(self) -> dict:
        return {"label": self.label, "spec": {"type": "counterfactual_edits", "n": self.n, "per_edge": self.per_edge},
                "splits": [self.split.to_dict()]}

    def requests(self, ctx, reference_for, progress: bool):
        edited = {(c.edge, c.attribute) for c in self.cases}
        yield "edits", build_request(ctx.ds, None, self.seed, ctx.device, reference=reference_for(0),
                                     progress=progress, edits=[c.request for c in self.cases],
                                     retain=[r for r in ctx.ds.direct() if (r.edge, r.attribute) not in edited])

    def evaluate(self, ctx, model, desc: str, reference: bool = False):
        return self.evaluator.run(model, ctx.model.tokenizer, desc=desc)

    def score(self, ev, step: int = -1) -> dict:
        return _metrics_record(score_edits(ev), EDIT_METRICS)

    def attacks(self, ctx, model, result: MethodResult, ev) -> dict | None:
        return None  # the attacks pull forgotten answers back; an edit has none to pull

    def per_example(self, ev) -> dict:
        return {"qa": ev.rows, "utility": ev.utility}

    def extra(self) -> dict:
        return {"edits": [c.to_dict() for c in self.cases]}
