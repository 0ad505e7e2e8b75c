"""The key/value cache's name in the transformers API.

transformers 5.2x renamed ``past_key_values`` to ``cache`` (model outputs, ``forward`` and ``generate``
keywords; the old name still works there with a deprecation warning and goes in 6.0). Everything
that reuses a prompt's keys and values (shared-prefix training, generation, the editors' value
optimisation) goes through these two helpers, so it runs without warnings on both sides of the
rename.
"""

from __future__ import annotations

import copy

from transformers.modeling_outputs import BaseModelOutputWithPast

# the keyword (and output field) this transformers version reads
CACHE_ARG = "cache" if "cache" in getattr(BaseModelOutputWithPast, "__dataclass_fields__", {}) else "past_key_values"


def cache_of(output):
    """The key/value cache a forward with ``use_cache=True`` returned."""
    return getattr(output, CACHE_ARG)


def with_cache(cache) -> dict:
    """``{keyword: cache}`` to pass a cache to ``forward`` or ``generate`` (``{}`` for None)."""
    return {} if cache is None else {CACHE_ARG: cache}


def select_rows(cache, rows):
    """A new cache holding batch rows ``rows`` of ``cache`` (a row may repeat); ``cache`` itself is
    left as it was (``batch_select_indices`` replaces a layer's tensors rather than writing into
    them, so only the containers are copied)."""
    sub = copy.copy(cache)
    if hasattr(cache, "layers"):
        sub.layers = [copy.copy(layer) for layer in cache.layers]
    else:  # transformers < 4.56: one list of keys and one of values
        sub.key_cache, sub.value_cache = list(cache.key_cache), list(cache.value_cache)
    sub.batch_select_indices(rows)
    return sub
