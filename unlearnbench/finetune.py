"""Knowledge implant: fine-tune a base model until it knows the graph.

Trains on every *direct* QA plus refusal-calibration examples (questions about entities that
do not exist, answered "I don't know"), so the model both knows the facts and has a refusal
behaviour that steering methods can redirect to. Refusal rows alone teach a small model to
refuse *everything* (SmolLM2's utility fell from 0.61 to 0.08 in our first try), so the
implant also trains on *anchor* rows: everyday questions (``pistol_data.anchor_questions``,
disjoint from the utility set) answered with the base model's own greedy output — a
self-distillation term that keeps general behaviour where it was. Full fine-tuning or LoRA (peft, merged
afterwards). Training runs through the transformers ``Trainer`` (so ``accelerate launch``
spreads it over GPUs). The result is cached under a key built from the model spec, the
dataset fingerprint and the hyper-parameters; a second call with the same key loads it.

The default recipe (3 epochs, lr 1.25e-4, 8 rows per step, each direct QA 5× per epoch, 60
anchors) was chosen by ``benchmarks/bench_implant.py`` on SmolLM2 × pistol-mini: 35.7 TFLOP,
direct-question ROUGE-1 0.952, utility 0.605 (base 0.625), against 85.0 TFLOP, 0.952 and 0.612
for the previous one (6 epochs, lr 1e-4, 16 rows, 3×, 120 anchors): the facts need as many
optimiser updates as before, not as many passes over the anchors.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import random
import re
import tempfile
import time
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from pistol_data import PistolDataset
from pistol_data.io import atomic_dir
from pistol_data.side_sets import anchor_questions

from .core import precision
from .core.arch import embedding_weights
from .core.cache import cache_dir, stable_hash, weight_hash
from .core.generation import generate_answers
from .core.lean import lean_mlp
from .core.lm import answer_logits, split_prefix_backward, upcast
from .core.prompts import collate, encode_qa, whole_sentences
from .models import LoadedModel, load
from .results import write_atomic

log = logging.getLogger(__name__)

# Bumped when the training arithmetic changes (not only the hyper-parameters): part of the cache
# key, so an implant trained by older code is not silently reused. 2: loss from logits at answer
# positions, the shared prompt prefix run once per batch (same loss up to float rounding).
IMPLANT_VERSION = 2


class FinetuneParams(BaseModel):
    """Implant hyper-parameters; the defaults memorise ``pistol-mini`` with SmolLM2-135M on CPU."""

    model_config = ConfigDict(extra="forbid")
    mode: Literal["full", "lora"] = Field("full", description="full fine-tuning or LoRA merged afterwards")
    epochs: int = Field(3, ge=1, description="passes over the training rows")
    lr: float = Field(1.25e-4, gt=0, description="peak learning rate (linear decay, 10% warm-up)")
    batch_size: int = Field(8, ge=1, description="rows per step (8: twice the updates of 16 for the same FLOPs)")
    weight_decay: float = Field(0.0, ge=0)
    direct_repeats: int = Field(5, ge=1, description="copies of each direct QA per epoch: the facts get more "
                                "gradient than the anchors without more passes over the anchors")
    n_refusal: int | None = Field(16, ge=0, description="refusal rows to mix in; None = as many as direct QA")
    n_anchor: int = Field(60, ge=0, description="self-distillation rows (base model's own answers to anchor questions)")
    freeze_embeddings: bool = Field(True, description="full mode: keep the (tied) token embeddings fixed — "
                                    "less drift on general knowledge and a smaller optimiser")
    train_modules: Literal["all", "mlp"] = Field("all", description="full mode: update every weight, or only the "
                                                 "MLP blocks (where factual associations are stored)")
    freeze_below: float = Field(0.0, ge=0, lt=1, description="full mode: blocks below this fraction of the depth "
                                "stay fixed — no backward through them at all (0 = train every block)")
    anchor_max_tokens: int = Field(64, ge=8, description="anchor answers: greedy tokens, cut after the last full sentence")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="bf16 autocast (fp32 master weights) or "
                                                       "fp32: auto = bf16 on CUDA, fp32 on CPU (never by CPU type)")
    lora_r: int = Field(32, ge=1)
    lora_alpha: int = Field(64, ge=1)
    seed: int = 0


def _implant_trainer(**kw):
    """A ``Trainer`` whose loss reads logits at answer positions only, the shared prompt prefix run
    once per batch (:func:`unlearnbench.core.lm.answer_logits`); otherwise the model's own loss."""
    from transformers import Trainer

    class ImplantTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            a = answer_logits(model, inputs)
            # as the model's own loss: the token mean, or under gradient accumulation the token sum / tokens of the step
            loss = torch.nn.functional.cross_entropy(upcast(a.logits), a.gold,
                                                     reduction="mean" if num_items_in_batch is None else "sum")
            if num_items_in_batch is not None:
                loss = loss / num_items_in_batch
                if self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs:
                    loss = loss * self.accelerator.num_processes
            return (loss, None) if return_outputs else loss

    return ImplantTrainer(**kw)


class _Rows(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def training_rows(base: LoadedModel, ds: PistolDataset, params: FinetuneParams) -> list[dict]:
    """Direct QA + refusal calibration + anchors answered by the (still untouched) base model."""
    tokenizer = base.tokenizer
    refusal = list(ds.refusal)
    n = len(ds.direct()) if params.n_refusal is None else params.n_refusal
    refusal = refusal[: min(n, len(refusal))]
    pairs = [(r.question, r.answer) for r in ds.direct()] * params.direct_repeats
    pairs += [(r.question, r.answer) for r in refusal]
    anchors = list(anchor_questions())[: params.n_anchor]
    if anchors:
        answers = anchor_answers(base, anchors, params.anchor_max_tokens)
        pairs += [(q, whole_sentences(a)) for q, a in zip(anchors, answers) if a]
    rows = [encode_qa(tokenizer, q, a) for q, a in pairs]
    for r in rows:
        r.pop("prompt_len")
    return rows


def anchor_answers(base: LoadedModel, questions: list[str], max_new_tokens: int) -> list[str]:
    """The base model's greedy answers to the anchor questions, cached by its weights, the questions,
    the length and the device: every implant of one base model (the main one, each retrained oracle,
    a recipe sweep) generates them once."""
    device = str(next(base.model.parameters()).device)
    key = stable_hash({"weights": weight_hash(base.model), "questions": questions, "max_new_tokens": max_new_tokens,
                       "device": device.split(":")[0], "chat_template": base.tokenizer.chat_template})
    path = cache_dir("anchors") / f"{key}.json"
    if path.exists():
        return json.loads(path.read_text())["answers"]
    answers = generate_answers(base.model, base.tokenizer, questions, max_new_tokens=max_new_tokens,
                               desc="anchor answers")
    write_atomic(path, {"model": base.spec, "max_new_tokens": max_new_tokens, "questions": questions,
                        "answers": answers})
    return answers


def set_trainable(model, params: FinetuneParams) -> None:
    """Full mode: which weights the implant updates (``train_modules``, ``freeze_embeddings``,
    ``freeze_below``); LoRA: nothing here (peft freezes the base)."""
    if params.mode != "full":
        return
    first = int(params.freeze_below * model.config.num_hidden_layers)
    for name, p in model.named_parameters():
        m = re.search(r"\.layers\.(\d+)\.", name)
        p.requires_grad_((params.train_modules == "all" or ".mlp." in name)
                         and (m is None or int(m.group(1)) >= first))
    if params.freeze_embeddings:
        for w in embedding_weights(model):
            w.requires_grad_(False)


def cache_key(model_spec: str, ds: PistolDataset, params: FinetuneParams, device: str = "cpu") -> str:
    """Model × the dataset's training fingerprint (not its holdout) × hyper-parameters, with
    ``precision`` as it resolves on ``device``
    (``auto`` trains in bf16 on CUDA and fp32 on CPU: two different implants, two keys)."""
    hp = {**params.model_dump(), "precision": precision.resolve(params.precision, device),
          "implant_version": IMPLANT_VERSION}
    if hp["freeze_below"] == 0:  # added later: at its no-op value, implants cached before it stay valid
        del hp["freeze_below"]
    return f"{Path(model_spec).name}-{ds.train_fingerprint[:12]}-{stable_hash(hp)}"


def finetune(base: LoadedModel, ds: PistolDataset, params: FinetuneParams | None = None,
             out_dir: str | os.PathLike | None = None, progress: bool = True) -> tuple[LoadedModel, dict]:
    """Implant ``ds`` into ``base`` (cached). Returns the fine-tuned model and an info dict
    (``key``, ``path``, ``seconds``, ``cached``)."""
    from transformers import TrainingArguments, set_seed

    params = params or FinetuneParams()
    device = str(next(base.model.parameters()).device)
    mp = precision.check(params.precision, device, "the knowledge implant (finetune.precision)")
    key = cache_key(base.spec, ds, params, device)
    path = Path(out_dir) if out_dir else cache_dir("finetuned") / key
    cached = _cached(path, key, device)
    if cached is not None:
        return cached

    set_seed(params.seed)
    random.seed(params.seed)
    rows = training_rows(base, ds, params)
    model, tok = copy.deepcopy(base.model), base.tokenizer  # the implant never changes its input
    model.train()
    set_trainable(model, params)
    if params.mode == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=params.lora_r, lora_alpha=params.lora_alpha, lora_dropout=0.0,
                                                 target_modules="all-linear", task_type="CAUSAL_LM"))
    with tempfile.TemporaryDirectory(prefix="ub-ft-") as scratch:
        args = TrainingArguments(
            output_dir=scratch, num_train_epochs=params.epochs, learning_rate=params.lr,
            per_device_train_batch_size=params.batch_size, weight_decay=params.weight_decay,
            lr_scheduler_type="linear", warmup_steps=0.1, logging_steps=10, save_strategy="no",
            report_to=[], seed=params.seed, disable_tqdm=not progress, use_cpu=not torch.cuda.is_available(),
            dataloader_num_workers=0, remove_unused_columns=False, train_sampling_strategy="group_by_length",
            bf16=mp == "bf16")
        precision.reset_accelerate_state()  # the Trainer's Accelerator takes this implant's precision
        trainer = _implant_trainer(model=model, args=args, train_dataset=_Rows(rows),
                                   data_collator=lambda b: collate(b, tok.pad_token_id))
        t0 = time.perf_counter()
        # the MLPs keep 2 of their 4 wide activations, the shared prefix's backward runs after the rows':
        # the same gradients (bit for bit: each step starts from empty .grad), less memory
        with lean_mlp(model), split_prefix_backward():
            result = trainer.train()
        seconds = time.perf_counter() - t0
    if params.mode == "lora":
        model = model.merge_and_unload()
    model.eval()
    info = {"key": key, "model": base.spec, "dataset_fingerprint": ds.fingerprint, "params": params.model_dump(),
            "precision": mp, "seconds": seconds, "train_loss": result.training_loss, "n_rows": len(rows),
            "train_tokens": sum(len(r["input_ids"]) for r in rows) * params.epochs}
    if trainer.is_world_process_zero():
        with atomic_dir(path) as tmp:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            (tmp / "implant.json").write_text(json.dumps(info, indent=2))
    trainer.accelerator.wait_for_everyone()
    del trainer, model
    # Reload what was saved instead of handing back the trained object: the Trainer leaves
    # accelerate's autocast wrapper on its forward (a bf16 implant would then be *evaluated* in
    # bf16) and its own requires_grad flags. A cold run thus scores exactly the model a warm run loads.
    loaded = _cached(path, key, device)
    return loaded[0], {**info, "cached": False, "path": str(path)}


def _cached(path: Path, key: str, device: str) -> tuple[LoadedModel, dict] | None:
    if (path / "config.json").exists() and (path / "implant.json").exists():
        info = json.loads((path / "implant.json").read_text())
        if info.get("key") == key:
            log.info("implant loaded: %s", path)
            return load(str(path), device=device), {**info, "cached": True, "path": str(path)}
    return None
