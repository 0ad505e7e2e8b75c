"""One method's apply on the quickstart's hub edge: its peak memory above the process before it,
and its wall time, under one allocator setting. One process per measurement, one at a time:

    python benchmarks/probe_memory.py gd                        # glibc's default: RSS = the heap's high-water mark
    MALLOC_MMAP_THRESHOLD_=65536 python benchmarks/probe_memory.py gd   # large blocks returned: RSS = live tensors
    python benchmarks/probe_memory.py gd --params '{"freeze_embeddings": false}'

(With the fixed 64 KiB threshold every large tensor is its own mapping: measured 1.6x slower
apply for gd on 2 cores, so it is a measuring mode, not a default.)

Prints one JSON line: method, params, allocator setting, apply seconds, peak RSS above the
baseline (MiB), peak C heap in use above the baseline (glibc mallinfo2: live allocations, without the
fragmented heap's resident free pages; MiB), trained parameters.
"""

from __future__ import annotations

import argparse
import json
import os

from common import edge_request, measured_apply

from methods import get_method


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("method")
    ap.add_argument("--params", default="{}")
    ap.add_argument("--edge", default="A_B")
    a = ap.parse_args()
    setting = f"MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', 'glibc default')}"
    cls = get_method(a.method)
    params = cls.Params.model_validate(json.loads(a.params))
    model, tok, request = edge_request(a.edge)
    res, fig = measured_apply(cls, model, tok, request, params)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    info = getattr(res, "info", None) or {}
    print(json.dumps({"method": a.method, "params": json.loads(a.params),
                      "malloc": setting,
                      "apply_s": round(fig["seconds"], 2), "cell_peak_mib": round(fig["rss_mib"]),
                      "cell_heap_mib": round(fig["heap_mib"]) if fig["heap_mib"] is not None else None,
                      "requires_grad_after": trained, "last_loss": info.get("last_loss")}))


if __name__ == "__main__":
    main()
