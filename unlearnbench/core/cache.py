"""Where expensive artefacts live: dequantized models, fine-tuned models, statistics.

``UNLEARNBENCH_CACHE`` moves it (default ``~/.cache/unlearnbench``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    root = Path(os.environ.get("UNLEARNBENCH_CACHE", Path.home() / ".cache" / "unlearnbench"))
    p = root.joinpath(*parts)
    p.mkdir(parents=True, exist_ok=True)
    return p


def stable_hash(obj, n: int = 16) -> str:
    """Short sha256 of an object's canonical JSON: the cache key of a configuration."""
    data = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()[:n]


def weight_hash(model, skip: tuple[str, ...] = ()) -> str:
    """Hash of a model's weights (names, dtypes, raw bytes), leaving out parameters whose names end
    with one of ``skip``: the key of what a method computes from the weights alone."""
    import torch

    h = hashlib.blake2b(digest_size=16)
    h.update(str(getattr(getattr(model, "config", None), "model_type", "")).encode())
    for name, p in sorted(model.state_dict().items()):
        if skip and name.endswith(skip):
            continue
        h.update(name.encode())
        h.update(str(p.dtype).encode())
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
