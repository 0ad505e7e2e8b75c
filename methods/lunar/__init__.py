"""LUNAR: unlearning by neural activation redirection (Shen et al., arXiv 2502.07218;
public code facebookresearch/LUNAR).

Algorithm, as the public code does it:

1. **Direction** r_l, for each layer l: the mean residual-stream activation after block l at the
   last post-instruction token over a *reference* set of prompts the model refuses (here the
   refusal-calibration questions: contracts between entities that do not exist), minus the same
   mean over the forget questions. Prompts are questions only, in the chat template. Not normalised.
2. **Targets** at the chosen layer: rows are the inputs of that layer's MLP down-projection at
   every question token; the target is the original down-projection output, plus ``coeff · r``
   for forget rows.
3. **Training**: only that layer's down-projection weight, MSE over shuffled forget+retain rows,
   AdamW (lr 1e-2), exponential LR decay (γ = 0.9) per epoch, 20 epochs, coeff +2.0 (ours: 2.5,
   see the deviations).
   Several layers ⇒ the losses are summed (one optimiser over all of them).
4. **Layer selection** (automatic unless ``layers`` is given): the paper sweeps layers and keeps
   the one where forget answers turn into refusals while retain answers survive. We fit the
   edit at each candidate layer (on at most ``select_max_retain`` retain rows; the winner is
   then refitted on all rows) and score the *trained* edit with one teacher-forced pass on a
   few questions: ``gain(l) = Δ log p(refusal | forget q) − Δ NLL(true answer | retain q)
   − Δ NLL(own answer | everyday q)``;
   the arg-max wins. Candidates: every second layer from a third of the depth up to the
   second-last layer. (Scoring by steering instead of the trained edit picked layers that did
   not forget: ``benchmarks/notes.md``, "LUNAR layer selection".)
5. **Sequential requests**: ``apply`` again on the already-unlearned model; it starts from the
   current weights and recomputes the direction on that model.

Attacks (``reverse_direction``, ``layer_skip``) live in :mod:`unlearnbench.attacks`; they read the
layers and directions from the :class:`~methods.base.MethodResult` that ``apply`` returns.

Deviations from the public code:
* Rows are the *question* tokens only: SmolLM2's chat template prepends a system prompt shared
  by every question; identical rows with conflicting targets (forget vs retain) would fight,
  so the shared template prefix is dropped (the issue asks for question tokens).
* The direction is taken at the last prompt token (the code's ``positions=-1``).
* float32 instead of bfloat16 (CPU).
* ``general_retain`` (default 120): everyday prompts, with the model's own greedy answers
  (``general_answer_tokens``), as extra retain rows — question *and* answer tokens, since
  generation runs through the edited layer too (the edit spreads to every prompt otherwise); the
  paper's retain set is the retain QA alone.
* Forget rows are repeated until they are ≥ ``forget_share`` (20%) of the rows: with the
  everyday retain rows they would otherwise be ~2% of the MSE and the redirection too weak.
  Batch 128 rows instead of 64 (same epochs; 2× fewer steps).
* ``coeff`` 2.5 instead of the code's 2.0: the only setting that met the refusal (≥ 0.8) and utility
  (within 0.05) targets on SmolLM2 × pistol-mini (sweep in ``benchmarks/notes.md``, "LUNAR coeff").
* Layer selection scores trained edits with a teacher-forced proxy instead of generating and
  judging answers, so a method never needs the evaluator.
"""

from __future__ import annotations

import logging

import torch

from unlearnbench.core.arch import blocks, mlp_out
from unlearnbench.core.cache import weight_hash
from unlearnbench.core.prompts import template_prefix_len

from ..base import Method, MethodResult, UnlearnRequest, register_method
from .activations import _memo, directions, down_proj_rows, mean_last_token_residual
from .config import LunarParams
from .locate import select_layer
from .update import _fit, _mix, _rows

__all__ = ["Lunar", "LunarParams", "directions", "down_proj_rows", "mean_last_token_residual", "select_layer",
           "template_prefix_len"]

log = logging.getLogger(__name__)


@register_method("lunar")
class Lunar(Method):
    """Redirect forget activations toward the refusal region by training one MLP down-projection."""

    kind = "steer"
    Params = LunarParams

    def apply(self, model, tokenizer, request: UnlearnRequest, params: LunarParams):

        if not request.forget:
            raise ValueError("the request has an empty forget set")
        if not request.refusal_questions:
            raise ValueError("LUNAR needs reference prompts the model refuses (request.refusal_questions)")
        torch.manual_seed(request.seed)
        model.eval()
        n_layers = len(blocks(model))
        bad = [l for l in params.layers or [] if not 0 <= l < n_layers]
        if bad:
            raise ValueError(f"LUNAR layers {bad} out of range 0..{n_layers - 1}")
        skip = template_prefix_len(tokenizer)
        forget_q = [x.question for x in request.forget]
        digest = weight_hash(model)
        general = self._general(model, tokenizer, request.preserve, params, digest)
        reference = [x.question for x in request.refusal_questions[: params.max_reference]]
        r = directions(model, tokenizer, reference, forget_q, digest)
        model.requires_grad_(False)
        if params.layers:
            layers = list(params.layers)
            retain_q = [x.question for x in request.retain]
            rows = _rows(model, tokenizer, layers, forget_q, retain_q, r, params.coeff, skip, general)
            self.layer_scores = None
        else:  # the search fits on subsampled retain rows; the winner is refitted on all of them
            best, self.layer_scores, best_rows = select_layer(model, tokenizer, request, r, params, skip, general)
            layers, rows = [best], {best: best_rows}
        data = [_mix(rows[l], params.forget_share, request.seed) for l in layers]
        self.history = _fit([mlp_out(model, l).weight for l in layers], data, params, request.seed, request.progress)
        self.layers, self.direction = layers, {l: r[l].clone() for l in layers}
        return MethodResult(model, info={"layers": list(layers), "layer_scores": self.layer_scores,
                                         "direction_norm": {l: float(v.norm()) for l, v in self.direction.items()}},
                            layers=list(layers), directions={l: params.coeff * self.direction[l] for l in layers})

    @staticmethod
    def _general(model, tokenizer, preserve: list[str], params: LunarParams,
                 digest: str | None = None) -> list[tuple[str, str]]:
        """Everyday prompts (the request's preserve corpus) with the model's own greedy answers: the
        edit must leave the MLP output unchanged on them, answer tokens included (generation runs
        through the edited layer too)."""
        qs = list(preserve)[: params.general_retain]
        if not qs:
            return []
        if params.general_answer_tokens == 0:
            return [(q, "") for q in qs]
        from unlearnbench.core.generation import generate_answers

        answers = _memo(digest, ("general", tuple(qs), params.general_answer_tokens),
                        lambda: generate_answers(model, tokenizer, qs, batch_size=128,
                                                 max_new_tokens=params.general_answer_tokens))
        return list(zip(qs, answers))
