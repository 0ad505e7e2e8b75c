"""Run by tests/test_distributed.py under `torchrun --nproc_per_node 2` (2 CPU processes).

Each process runs the shared unlearning loop on the tiny model (method: argv[2], default gd) and
writes a digest of its final weights; the replicas must stay identical (DDP for ordinary methods,
BLUR's own all-reduce of g_f and g_r for the bi-level ones).
"""

import copy
import hashlib
import json
import sys

import torch

import methods
from pistol_data import generate, scenarios
from unlearnbench.models import load


def main(out_prefix: str, method: str = "gd") -> None:
    from accelerate import PartialState

    state = PartialState(cpu=True)
    ds = generate("pistol-mini", 0)
    [split] = scenarios.resolve(ds, {"type": "edge", "edge": "A_B"})
    lm = load("tiny-random-llama")
    before = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in lm.model.parameters())).hexdigest()
    frozen = copy.deepcopy(lm.model).eval()
    req = methods.UnlearnRequest(forget=split.request(ds), retain=split.retain(ds), seed=0, progress=False,
                                 reference_model=lambda: frozen)
    cls = methods.get_method(method)
    model = cls().apply(lm.model, lm.tokenizer, req, cls.Params(lr=1e-3, epochs=2, batch_size=2)).model
    after = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
    with open(f"{out_prefix}.{state.process_index}.json", "w") as f:
        json.dump({"rank": state.process_index, "world": state.num_processes, "before": before, "after": after,
                   "steps": len(cls.history) if hasattr(cls, "history") else None}, f)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(*sys.argv[1:])
