"""``unlearnbench plan CONFIG``: each cell's peak memory and FLOPs, predicted before any work from
the model's configuration alone (a meta-device model: exact parameter counts, no weights).

The prediction is an arithmetic model of what the code holds, per part:

* ``weights`` — the shared implanted model (resident for the whole grid; not part of a cell);
* ``copy`` — a second model a cell holds: GRACE/WISE (they change the structure) and RMU's frozen
  reference (the other reference-reading methods read the model itself once, before its first
  update: no copy);
* ``grads`` + ``optimizer`` — fp32 gradient and AdamW's two moments per *trained* value (every
  weight; RMU 3 down-projections, LUNAR one; under LoRA the adapters); BLUR keeps a second gradient;
* ``activations`` — what autograd saves for the largest training micro-batch (one sub-batch of
  ``batch_size`` rows at a time), per token and layer ≈ (4h + 2·kv + 4i) values + 2h fp32 (``h`` hidden,
  ``i`` MLP width, ``kv`` the key/value width), plus the LM head at answer positions only; with
  ``gradient_checkpointing`` one input per layer plus one layer's;
* ``statistics`` — the editors' key second moments and projections (i² values per edited layer:
  ROME 1 layer, MEMIT 5, AlphaEdit 5 with its null-space projection and key cache);
* ``evaluation`` — the KV cache of one generation batch and the teacher-forced pass's logits.

A cell's peak is the largest of its phases (reference memo, training, evaluation), above the
shared model. Tokens are counted with the project's small BPE tokenizer (deterministic, no
download); a model's own tokenizer gives a similar count on PISTOL text (within ~20% on SmolLM2's).
FLOPs: 6 × trained-path parameters × tokens for training (4 × under LoRA: no weight gradients),
2 × parameters × tokens for every forward-only pass (reference, evaluation, generation).

Architecture presets for plans at paper scale (``llama-2-7b``, ``llama-3-8b``, ``mistral-7b``) and
random models for measurements at scale (``random-llama-0.1b``, ``-0.5b``, ``-1b``; these also
load, with random weights and the small tokenizer) are in :data:`ARCHITECTURES`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .core.arch import embedding_weights
from .models import ARCHITECTURES, RANDOM

GB = 1e9
FP32 = 4


@dataclass
class Shape:
    """What the prediction reads of a model: exact parameter counts (meta device) and widths."""

    n_params: int
    layers: int
    hidden: int
    intermediate: int
    kv: int  # key/value width: kv heads × head dim
    vocab: int
    linear: list[tuple[str, int, int]] = field(default_factory=list)  # (name, in, out) of every Linear but the head
    embedding: int = 0  # token embeddings + LM head (a tied pair counted once): fixed by freeze_embeddings

    def lora_params(self, r: int) -> int:
        return sum(r * (i + o) for _, i, o in self.linear)


def config_of(spec: str):
    """The transformers config of a model spec, without weights: an architecture preset, the tiny
    test model, a local model directory or a Hugging Face id (which needs the hub)."""
    from transformers import AutoConfig, LlamaConfig

    if spec in ARCHITECTURES:
        return LlamaConfig(max_position_embeddings=4096, **ARCHITECTURES[spec])
    if spec == "tiny-random-llama":
        from .models import tiny_random_llama

        return tiny_random_llama()[0].config
    from .models import resolve_path

    try:
        return AutoConfig.from_pretrained(resolve_path(spec))
    except OSError as e:
        raise ValueError(f"no configuration for model {spec!r}: {e}") from None


def shape_of(spec: str) -> Shape:
    import torch
    from transformers import AutoModelForCausalLM

    cfg = config_of(spec)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    n = sum(p.numel() for p in model.parameters())  # tied embeddings counted once
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    linear = [(name, m.in_features, m.out_features) for name, m in model.named_modules()
              if isinstance(m, torch.nn.Linear) and name != "lm_head"]
    return Shape(n, cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size,
                 getattr(cfg, "num_key_value_heads", cfg.num_attention_heads) * head_dim, cfg.vocab_size, linear,
                 sum(w.numel() for w in embedding_weights(model)))


# ---- tokens ---------------------------------------------------------------------------------

def _counter():
    from .core.prompts import encode_qa
    from .models import tiny_tokenizer

    tok = tiny_tokenizer()

    def count(q, a=""):
        return len(encode_qa(tok, q, a)["input_ids"])

    count.tokenizer = tok
    return count


def _edit_geometry(ds, forget, tokenizer):
    """``(n_prefixes, batched, query_merge) -> (tokens, answer positions)`` of one value-optimisation
    step: one fact at a time (ROME: the largest fact) or every fact in one batch (MEMIT,
    AlphaEdit), computed when an editor asks; None where the questions name no known entity (no
    subject to edit at)."""
    from functools import lru_cache

    from methods.base import UnlearnRequest
    from methods.editing import FactParams, SubjectError, request_facts, value_geometry
    from pistol_data import refusal_sentences

    request = UnlearnRequest(forget=list(forget), retain=[], refusal_targets=list(refusal_sentences()),
                             entities=sorted(ds.entity_names()))

    @lru_cache(maxsize=None)
    def geometry(n_prefixes: int, batched: bool, query_merge: int = 1,
                 chunk_tokens: int | None = None) -> tuple[int, int] | None:
        try:
            facts = request_facts(request, FactParams(query_merge=query_merge))
        except SubjectError:
            return None
        if batched:
            return value_geometry(tokenizer, facts, n_prefixes, chunk_tokens=chunk_tokens)  # its largest group
        return max((value_geometry(tokenizer, [f], n_prefixes) for f in facts), default=(0, 0))

    return geometry


@dataclass
class Tokens:
    """Token geometry of one request (and the evaluation that follows it)."""

    forget_rows: int
    retain_rows: int
    longest: int      # longest training row (prompt + answer)
    forget_tokens: int
    retain_tokens: int
    eval_rows: int    # questions the evaluator generates for
    eval_prompt: int  # longest evaluation prompt
    eval_prompt_tokens: int
    forget_prompt_tokens: int = 0  # the questions alone (templated), what LUNAR reads
    retain_prompt_tokens: int = 0
    preserve_prompt: float = 16.0  # mean templated length of an everyday (preserve) prompt
    # the editors' value optimisation: (n_prefixes, batched, query_merge) -> (tokens per step, answer positions)
    edit_geometry: object = None
    template_prefix: int = 0  # tokens every templated prompt shares before the question


# ---- the per-method model -------------------------------------------------------------------

GRADIENT = {"ga", "gd", "ukl", "dpo", "npo", "blur-ga", "blur-npo"}
MEMO_REFERENCE = {"ukl", "dpo", "npo", "blur-npo"}  # read the model once before training (no copy)
TWO_BACKWARDS = {"gd", "ukl", "dpo", "npo", "rmu"}  # a retain term: its activations beside the forget term's gradients
EDITOR_LAYERS = {"rome": 1, "memit": 5, "alphaedit": 5}
EDITOR_DEPTH = {"rome": 1 / 6, "memit": 0.27, "alphaedit": 0.27}  # (last) edited layer, fraction of the depth
F64 = 8


@dataclass
class CellPlan:
    cell: str
    method: str
    scenario: str
    parts: dict[str, float]   # bytes per part (apply's parts, and the evaluation's)
    phases: dict[str, float]  # bytes per phase above the shared model
    peak_phase: str
    peak_bytes: float         # above the shared model, on the device
    resident_bytes: float     # the shared model's weights
    flops: float
    host_bytes: float = 0.0   # on a GPU: what the cell holds in host memory (the editors' statistics)
    fits: bool | None = None
    advice: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


HEAD_CHUNK = 2 ** 21 * FP32  # core.lm's lean head: log p(gold) over 2 M logits at a time


def _activations(shape: Shape, rows: int, tokens: int, answer_tokens: int, checkpointing: bool,
                 upto_layer: int | None = None, act_bytes: int = FP32, from_layer: int = 0,
                 frozen: bool = False, lean: bool = False, full_logits: bool = True) -> float:
    """Saved for backward, per token and layer of a Llama block, counted from its operations: the
    two RMSNorm inputs (2h, fp32: the norm upcasts) and, in the compute dtype, the two normed
    outputs (inputs of q/k/v and gate/up), q, k, v (h + 2kv), the attention output (input of o) and
    the gated MLP's gate, up, SiLU and product (4i): 4h + 2kv + 4i; plus the LM head's logits at
    answer positions. With ``frozen`` weights (a gradient for an activation only: the editors' δ)
    no linear layer's input is kept: 2h + 2kv + 3i. ``lean``: the shared loop's MLP (core.lean)
    keeps gate and up only (2i). Without ``full_logits`` the head is core.lm's lean head: the answer
    positions' hidden states and one chunk of logits (log p(gold), or a KL chunk by chunk)."""
    core = (2 * shape.hidden + 2 * shape.kv + 3 * shape.intermediate) if frozen else \
        (4 * shape.hidden + 2 * shape.kv + (2 if lean else 4) * shape.intermediate)
    per_layer_token = core * act_bytes + 2 * shape.hidden * FP32
    layers = (shape.layers if upto_layer is None else upto_layer + 1) - from_layer
    if checkpointing:
        saved = rows * tokens * (layers * shape.hidden * act_bytes + per_layer_token)
    else:
        saved = rows * tokens * layers * per_layer_token
    if upto_layer is not None:
        head = 0
    elif full_logits:
        head = answer_tokens * shape.vocab * FP32 * 3  # logits, log-softmax, grad
    else:
        head = answer_tokens * shape.hidden * FP32 + 2 * min(HEAD_CHUNK, answer_tokens * shape.vocab * FP32)
    return saved + head


def _evaluation(shape: Shape, t: Tokens, eval_params, weight_bytes: int = FP32) -> float:
    rows = min(eval_params.batch_size, t.eval_rows)
    length = t.eval_prompt + max(eval_params.max_new_tokens, eval_params.qa_max_new_tokens)
    kv_cache = rows * length * shape.layers * 2 * shape.kv * weight_bytes
    step = rows * (shape.vocab + 4 * shape.intermediate + 8 * shape.hidden) * FP32
    tf = min(eval_params.tf_batch_size, t.eval_rows) * t.eval_prompt * (shape.vocab * 2 + 8 * shape.hidden) * FP32
    return max(kv_cache + step, tf)


def plan_cell(name: str, params, shape: Shape, t: Tokens, eval_params, cell: str = "", scenario: str = "",
              weights: str = "fp32", device: str = "cpu") -> CellPlan:
    """Peak memory (bytes above the shared model) and FLOPs of one method cell, for the shared
    model's ``weights`` dtype (``fp32`` | ``bf16``; bf16 weights compute in bf16) on ``device``."""
    wb = 2 if weights == "bf16" else FP32
    ab = 2 if weights == "bf16" or (device == "cuda" and getattr(params, "precision", "auto") != "fp32") else FP32
    model_copy = shape.n_params * wb
    lora = getattr(params, "lora", None)
    ckpt = bool(getattr(params, "gradient_checkpointing", False))
    phases: dict[str, float] = {}
    parts: dict[str, float] = {}
    host = 0.0
    rows = getattr(params, "batch_size", 8)
    flops = 0.0
    if name in GRADIENT or name == "rmu":
        # the shared loop's lean MLP (core.lean) stands aside under autocast and for LoRA's linears
        autocast = getattr(params, "precision", "auto") == "bf16" or (
            device == "cuda" and getattr(params, "precision", "auto") == "auto")
        lean = lora is None and not autocast
        if name == "rmu":
            layer = params.layer if params.layer is not None else round(0.22 * shape.layers)
            trained = params.n_update_layers * shape.hidden * shape.intermediate
            if lora is not None:
                trained = params.n_update_layers * lora.r * (shape.hidden + shape.intermediate)
            act = _activations(shape, rows, t.longest, 0, ckpt, upto_layer=layer, act_bytes=ab, lean=lean)
            parts["copy"] = model_copy  # the frozen model, read every step
            path = shape.n_params * (layer + 1) / shape.layers
        else:
            if lora is not None:
                trained = shape.lora_params(lora.r)
            else:
                trained = shape.n_params - (shape.embedding if getattr(params, "freeze_embeddings", False) else 0)
            kl = name == "ukl" or (name.startswith("blur") and getattr(params, "retain_loss", None) == "kl")
            # a KL reads every logit: kept only under autocast (core.lm's chunked KL otherwise)
            # a term over more than rows_per_pass rows runs as several passes, one alive at a time;
            # PISTOL answers are ≤ 11 tokens, refusals ~10
            per_pass = min(rows, getattr(params, "rows_per_pass", None) or rows)
            act = _activations(shape, per_pass, t.longest, per_pass * 12, ckpt, act_bytes=ab, lean=lean,
                               full_logits=kl and autocast)
            path = shape.n_params
        if lora is None and wb < FP32:  # a half-precision model's trained tensors train in fp32
            parts["master"] = trained * (FP32 - wb)
        grad = trained * FP32
        blur = name.startswith("blur")
        # BLUR holds g_r beside g_f, or (low_memory) runs the retain backward twice consuming g_r
        # weight by weight: then it peaks as a two-term method does
        both = blur and not getattr(params, "low_memory", False)
        parts.update(grads=grad * (2 if both else 1), optimizer=2 * trained * FP32, activations=act)
        held = sum(v for k, v in parts.items() if k not in ("grads", "activations"))
        # a term's backward frees its activations as it makes the gradients: one term alone peaks at the
        # larger of the two; a retain term runs its forward beside the forget term's gradients; BLUR
        # computes g_r beside g_f (measured: gd's retain term adds its activations, not a gradient)
        if both:
            phases["training"] = held + grad + max(act, grad)
        elif blur or name in TWO_BACKWARDS:
            phases["training"] = held + grad + act
        else:
            phases["training"] = held + max(grad, act)
        passes = 3 if name in ("dpo", "npo", "blur-npo") else 2  # forget (+ refusal) + retain sub-batches
        # each step pairs its forget rows with as many retain rows, drawn cyclically
        retain_per_epoch = t.forget_rows * t.retain_tokens / max(t.retain_rows, 1)
        per_epoch = t.forget_tokens * (passes - 1) + retain_per_epoch
        twice = retain_per_epoch if blur and getattr(params, "low_memory", False) else 0  # retain backward twice
        flops = (4 if lora is not None else 6) * path * params.epochs * (per_epoch + twice)
        if name == "dpo" and getattr(params, "recompute_preferred", False):  # the refusal's pass again
            flops += 2 * path * params.epochs * t.forget_tokens
        if name in MEMO_REFERENCE:  # the reference asked once
            flops += 2 * shape.n_params * per_epoch
        if name == "rmu":  # the frozen model's activations, every step
            flops += 2 * path * params.epochs * per_epoch
    elif name == "lunar":
        trained = shape.hidden * shape.intermediate
        if params.layers:
            cands = list(params.layers)
        else:
            n = shape.layers
            cands = params.candidate_layers or list(range(n - 2, n // 3 - 1, -params.layer_stride))
        # down-projection input and output rows (fp32) of every prompt token, kept for every candidate
        # layer; each fit also mixes its rows into one table (retain rows capped in the search)
        # rows start after the template prefix every prompt shares (skipped)
        forget_tokens = (t.forget_prompt_tokens or t.forget_tokens) - t.template_prefix * t.forget_rows
        tokens = forget_tokens + (t.retain_prompt_tokens or t.retain_tokens) - t.template_prefix * t.retain_rows + \
            params.general_retain * (t.preserve_prompt - t.template_prefix + params.general_answer_tokens)
        row = (shape.intermediate + shape.hidden) * FP32
        # the search's fits mix the forget rows with at most select_max_retain retain rows; a fixed
        # layer (or the search's winner, refitted) mixes every row
        mix = tokens if params.layers else min(tokens, forget_tokens + params.select_max_retain)
        parts.update(rows=tokens * row * len(cands), mix=mix * row,
                     grads=trained * FP32, optimizer=2 * trained * FP32)
        if wb < FP32:
            parts["master"] = trained * FP32
        phases["training"] = sum(parts.values())
        act_rows = tokens
        flops = 2 * shape.n_params * act_rows * max(1, len(cands) // 4) + \
            6 * trained * act_rows * params.epochs * len(cands)
    elif name in EDITOR_LAYERS:
        n = EDITOR_LAYERS[name]
        square = shape.intermediate ** 2 * F64
        # float64 key second moments, one per edited layer, held through the value optimisation (ROME's
        # made a ridge in place); the solves come after it (its activations freed) and add the system
        # and its factorisation (ROME: the factorisation; AlphaEdit: a null-space projector per layer
        # too); computing the statistics adds a batch's k kᵀ beside each sum
        held = n * square
        solve = held + (square if name == "rome" else (2 + (n if name == "alphaedit" else 0)) * square)
        if device == "cuda":
            host = solve  # cached and solved on the CPU
        else:
            parts["statistics"] = held
            phases["solve"] = solve
        # the value optimisation: δ's gradient flows through every layer after the edited one, for
        # each context prefix and the bare question, over the columns after the cached prefix
        # (from the subject on), and the LM head at the target's positions; ROME edits one fact at
        # a time, MEMIT/AlphaEdit batch their facts in groups of at most v_chunk_tokens positions, one
        # group's activations alive (the KL rows are short and few: not counted)
        ctx_rows = (getattr(params, "n_prefixes", 5) + 1) * (1 if name == "rome" else t.forget_rows)
        edited = round(EDITOR_DEPTH[name] * shape.layers)
        geometry = t.edit_geometry and t.edit_geometry(getattr(params, "n_prefixes", 5), name != "rome",
                                                       getattr(params, "query_merge", 1),
                                                       getattr(params, "v_chunk_tokens", None))
        tokens, answers = geometry or (ctx_rows * (t.longest + 10), ctx_rows * 12)  # no subjects: whole rows
        # every group runs each step: the FLOPs count every fact's positions
        every = (t.edit_geometry and t.edit_geometry(getattr(params, "n_prefixes", 5), name != "rome",
                                                     getattr(params, "query_merge", 1))) or (tokens, answers)
        parts["activations"] = _activations(shape, 1, tokens, 0, False, act_bytes=ab, upto_layer=shape.layers - 1,
                                            from_layer=edited, frozen=True) + answers * shape.vocab * FP32 * 3
        phases["edit"] = sum(parts.values())
        # per δ step: forward and the input-gradient backward (no weight gradients) through the blocks
        # from the edited layer on, over the step's tokens, and the LM head at the answer positions;
        # ROME one fact at a time, MEMIT/AlphaEdit every fact each step (at most v_steps: it stops early)
        after = (shape.n_params - shape.embedding) * (shape.layers - edited) / shape.layers
        step = 4 * after * every[0] + 4 * shape.hidden * shape.vocab * every[1]
        flops = step * params.v_steps * (t.forget_rows if name == "rome" else 1)
    elif name in ("grace", "wise"):
        parts["copy"] = model_copy  # the structure changes: the cell edits a copy
        side = shape.hidden * shape.intermediate * FP32 * (3 if name == "wise" else 0)
        parts.update(side_memory=side, activations=_activations(shape, 1, t.longest, 12, False, act_bytes=ab))
        phases["edit"] = sum(parts.values())
        steps = params.n_iter
        flops = 6 * shape.n_params * t.longest * steps * t.forget_rows
    else:
        raise ValueError(f"plan has no memory model for method {name!r}")
    # scored after apply: GRACE/WISE's copy is the model being evaluated, so it is still there
    parts["evaluation"] = _evaluation(shape, t, eval_params, wb)
    phases["evaluation"] = parts["evaluation"] + (model_copy if name in ("grace", "wise") else 0.0)
    peak_phase = max(phases, key=phases.get)
    # the evaluation: each prompt once, the answers generated, then teacher-forced from the prompts' cache
    flops += 2 * shape.n_params * (t.eval_prompt_tokens + 2 * t.eval_rows * eval_params.qa_max_new_tokens)
    return CellPlan(cell, name, scenario, parts, phases, peak_phase, phases[peak_phase], shape.n_params * wb, flops,
                    host)


def _tokens(ds, split, evaluator_rows: int, count) -> Tokens:
    from pistol_data.side_sets import preserve_prompts

    from .core.prompts import template_prefix_len

    forget = split.request(ds)
    retain = split.retain(ds)
    f = [count(r.question, r.answer) for r in forget]
    r = [count(x.question, x.answer) for x in retain]
    prompts = [count(x.question) for x in ds.qa[:evaluator_rows]] or [0]
    everyday = [count(q) for q in preserve_prompts()] or [0]
    return Tokens(len(f), len(r), max(f + r + [1]), sum(f), sum(r), evaluator_rows, max(prompts), sum(prompts),
                  sum(count(x.question) for x in forget), sum(count(x.question) for x in retain),
                  sum(everyday) / len(everyday),
                  _edit_geometry(ds, forget, count.tokenizer) if hasattr(count, "tokenizer") and forget else None,
                  template_prefix_len(count.tokenizer) if hasattr(count, "tokenizer") else 0)


def plan(cfg, device: str | None = None, memory_gb: float | None = None) -> dict:
    """Every method cell of ``cfg`` (first seed; seeds cost the same): predicted peak memory and FLOPs,
    whether it fits ``memory_gb`` (default: this machine's GPU or available RAM), and what would
    make a cell that does not fit fit."""
    import psutil

    import methods as methods_pkg
    from pistol_data import scenarios
    from pistol_data.facts import pretrained_facts

    from .runner import _device, load_dataset

    device = device or _device(cfg)
    if memory_gb is None:
        if device == "cuda":
            import torch

            memory_gb = torch.cuda.get_device_properties(0).total_memory / GB if torch.cuda.is_available() else None
        else:
            memory_gb = psutil.virtual_memory().available / GB
    # weights: auto is bf16 on CUDA (any GPU this plans for has bf16), fp32 on CPU — as the runner resolves it
    weights = cfg.weights if cfg.weights != "auto" else ("bf16" if device == "cuda" else "fp32")
    shape = shape_of(cfg.model)
    ds = load_dataset(cfg)
    count = _counter()
    facts = None
    cells = []
    for spec in cfg.scenarios:
        data = ds
        if spec.on_facts():
            facts = facts or pretrained_facts(ds.refusal)
            data = facts
        splits = scenarios.resolve(data, spec)
        eval_rows = len(data.qa) + len(data.holdout) + (cfg.eval.utility_limit or 207)
        toks = [_tokens(data, s, eval_rows, count) for s in splits]
        t = max(toks, key=lambda x: x.longest * max(x.forget_rows, 1))
        for e in cfg.method_entries():
            cls = methods_pkg.get_method(e.name)
            params = cls.Params.model_validate(e.params)
            c = plan_cell(e.name, params, shape, t, cfg.eval, cell=f"{e.row}__{spec.label()}", scenario=spec.label(),
                          weights=weights, device=device)
            c.flops *= len(splits)
            cells.append(c)
    resident = shape.n_params * (2 if weights == "bf16" else FP32)
    for c in cells:
        if memory_gb is not None:
            c.fits = resident + c.peak_bytes <= memory_gb * GB
            if not c.fits:
                c.advice = _advice(c, shape, memory_gb, resident)
    return {"model": cfg.model, "device": device, "memory_gb": memory_gb, "n_params": shape.n_params,
            "weights": weights, "weights_gb": resident / GB, "cells": [c.to_dict() for c in cells]}


def _advice(c: CellPlan, shape: Shape, memory_gb: float, resident: float) -> str:
    room = memory_gb * GB - resident
    if c.method in GRADIENT:
        lora_state = 3 * shape.lora_params(16) * FP32
        act = c.parts.get("activations", 0.0)
        if lora_state + act <= room:
            return "params.lora: {r: 16} (adapter gradients and AdamW state only)"
        if lora_state + act / max(shape.layers, 1) * 2 <= room:
            return "params.lora: {r: 16} and params.gradient_checkpointing: true"
        return "a smaller batch_size with lora and gradient_checkpointing, or a larger device"
    if c.method == "rmu" and c.parts.get("activations", 0) > room / 2:
        return "params.gradient_checkpointing: true, or a smaller batch_size"
    return "a device with more memory (this method's footprint has no option that shrinks it)"


def render(p: dict) -> str:
    mem = f"{p['memory_gb']:.1f} GB" if p["memory_gb"] else "unknown memory"
    w = f"{p.get('weights', 'fp32')} weights {p['weights_gb']:.2f} GB"
    lines = [f"plan: {p['model']} ({p['n_params'] / 1e9:.3f} B parameters, {w}) "
             f"on {p['device']} with {mem}", "",
             "| cell | peak above the model (GB) | largest parts (GB) | TFLOP | fits |", "|---|---|---|---|---|"]
    for c in p["cells"]:
        parts = ", ".join(f"{k} {v / GB:.2f}" for k, v in sorted(c["parts"].items(), key=lambda kv: -kv[1])[:3])
        parts = f"{c['peak_phase']}: {parts}"
        fits = "–" if c["fits"] is None else ("yes" if c["fits"] else f"**no** — {c['advice']}")
        lines.append(f"| {c['cell']} | {c['peak_bytes'] / GB:.2f} | {parts} | {c['flops'] / 1e12:.1f} | {fits} |")
    return "\n".join(lines)


__all__ = ["ARCHITECTURES", "RANDOM", "CellPlan", "Shape", "config_of", "plan", "plan_cell", "render", "shape_of"]
