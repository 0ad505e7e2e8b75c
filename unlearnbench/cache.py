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
