"""The locate-then-edit core shared by ROME, MEMIT and AlphaEdit.

A fact is (question, subject, target answer). The editing family treats an MLP down-projection
W as a linear key→value memory: the *key* k is W's input at the subject's last token, the
*value* is W's output there. An edit finds a value that makes the model say the target
(``compute_values``: gradient descent on a residual δ at that position) and then changes W in
closed form so that W k ≈ value, disturbing other keys as little as their second moment C
(``key_second_moment``, cached on disk) allows. ROME, MEMIT and AlphaEdit differ only in the
closed-form step; they live in ``rome.py``, ``memit.py`` and ``alphaedit.py``.

**Subjects.** PISTOL questions name entities. The subject of a question is the span from the
first to the end of the last entity name in it: "...the contract between Bumun Inc and Jugu
Inc?" → "Bumun Inc and Jugu Inc", so the key (read at the last token of the span) is specific to
the *pair* and to the attribute asked before it, not to one party (a hub company appears in many
contracts; keying on it alone would rewrite all of them). A one-entity question's subject is that
name. A question that names no known entity is an error (:class:`SubjectError`); a dataset with
no entity names at all (opaque groups) uses the whole question as its subject.

**Keys and values**, after ROME (arXiv 2202.05262) §3.1 and MEMIT (arXiv 2210.07229) §4.3:
keys are averaged over the question itself and ``n_prefixes`` short texts sampled from the
model and put before the question (ROME's context templates); the value residual δ is optimised
with Adam on the target's NLL averaged over the same contexts, plus ``kl_factor`` × KL of the
next-token distribution on "{subject} is a" (keeping the subject's essence) and a weight decay
``‖δ‖²/‖v₀‖²``, with ‖δ‖ clamped to ``clamp_norm_factor``·‖v₀‖. All facts of a request are
optimised in one batch (each has its own δ; the losses are independent, so this equals one
optimisation per fact, with one forward pass per step instead of one per fact).

**Key statistics** C = E[k kᵀ] over every token of a local corpus that always exists here:
the retain QA of the request, the request's ``preserve`` prompts (everyday questions, disjoint
from everything the evaluator scores) and ``stats_samples`` texts sampled from the model itself.
Cached under ``$UNLEARNBENCH_CACHE/stats`` by (model fingerprint, layer,
corpus); the fingerprint hashes every weight *except* the MLP down-projections, so statistics
are computed once on the unedited model and reused by later (sequential) edits, as MEMIT and
AlphaEdit do.

``fact_token = "last"`` (an option, as in EasyEdit) reads keys and adds δ at the prompt's last
token instead of the subject's.

Deviations shared by the family: prompts are the chat-template rendering of the question
(context prefixes go inside the user turn); the target ends with EOS so generation stops after
it; the corpus is the project's own local text instead of Wikipedia; the batched δ optimisation
stops when every fact's NLL is below 0.05 (ROME stops per fact); it runs the facts in groups of
at most ``v_chunk_tokens`` positions, gradients summed per step (the same δ, one group's activations).
"""

from __future__ import annotations

from ..base import Method, MethodResult
from .config import EditParams, FactParams
from .locate import Fact, SubjectError, context_prefixes, default_layers, find_subject, request_facts
from .statistics import key_second_moment, model_fingerprint
from .update import add_to_weight, compute_keys, compute_values, out_weight, value_geometry

__all__ = ["EditMethod", "EditParams", "Fact", "FactParams", "SubjectError", "add_to_weight", "compute_keys", "compute_values",
           "context_prefixes", "default_layers", "find_subject", "key_second_moment", "model_fingerprint",
           "out_weight", "request_facts", "value_geometry"]


class EditMethod(Method):
    """Base of the editing family: kind ``edit``; ``apply`` returns :meth:`result`."""

    kind = "edit"

    def facts(self, model, tokenizer, request, params: FactParams) -> list[Fact]:
        """The request's facts (:func:`request_facts`), written by the model before any edit;
        self-improved targets are kept for the record."""
        facts = request_facts(request, params, model, tokenizer)
        self.targets = {f.question: f.target for f in facts} if params.target == "self_improve" else None
        return facts

    def result(self, model, info: dict) -> MethodResult:
        """The edited model, ``info`` for the record (with the self-improved targets, if any), and
        the edited layers (LUNAR's layer-skip attack applies to any weight edit)."""
        if getattr(self, "targets", None):
            info = {**info, "targets": self.targets}
        return MethodResult(model, info=info, layers=list(info.get("layers") or [info["layer"]]))
