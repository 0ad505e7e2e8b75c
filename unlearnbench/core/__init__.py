"""The lower layer: what the methods and the evaluator both use, importing neither.

* :mod:`.prompts` — chat templates, QA encoding, collation and padding (one left/right pad);
* :mod:`.generation` — batched greedy generation and the teacher-forced pass;
* :mod:`.lm` — answer-position logits (shared-prefix KV reuse), losses' building blocks;
* :mod:`.kv` — the key/value cache under the keyword the installed transformers reads;
* :mod:`.lean` — the training loop's activation savings (norm recipes, lean MLP, grouped key/value heads);
* :mod:`.arch` — where each architecture keeps its blocks and MLP projections;
* :mod:`.precision` — fp32/bf16 resolution, native-bf16 detection, ``accelerate`` state;
* :mod:`.optim` — optimiser helpers (fused AdamW);
* :mod:`.cache` — the cache folder, configuration hashes and weight hashes;
* :mod:`.targets` — refusal targets the model writes itself (self-improvement);
* :mod:`.registry` — the one name → entry registry (methods, metrics, edit metrics, attacks).

It imports :mod:`pistol_data` records at most; ``tests/test_layers.py`` keeps it that way.
"""
