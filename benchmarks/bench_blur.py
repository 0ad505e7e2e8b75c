"""BLUR holding g_f and g_r vs ``low_memory`` (the retain backward twice, g_r consumed weight by
weight), side by side in one process: blur-npo's and blur-ga's apply on the quickstart's hub edge
(SmolLM2 implant, fp32, the methods' defaults but ``low_memory``), alternating, each variant twice
(best time kept). Writes ``results/blur_memory.md``.

    python benchmarks/bench_blur.py [blur-npo blur-ga]

Reports apply seconds, the method's peak C heap in use and peak RSS above the level before it (as
``bench_lean.py``), the loss it ended on and the largest weight difference between the two
variants' models (the same direction up to float rounding).
"""

from __future__ import annotations

import json
import sys

from common import edge_request, machine, measured_apply, write
from report import machine_line

from methods import get_method


def run(method: str, model, tok, request, low_memory: bool) -> tuple[dict, dict]:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cls = get_method(method)
    res, fig = measured_apply(cls, model, tok, request, cls.Params(low_memory=low_memory))
    info = getattr(res, "info", None) or {}
    after = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    model.requires_grad_(False)
    return {**fig, "last_loss": info.get("last_loss"), "steps": info.get("steps")}, after


def main():
    names = sys.argv[1:] or ["blur-npo", "blur-ga"]
    model, tok, request = edge_request("A_B")
    data, rows = {}, []
    for name in names:
        runs, weights = {"both": [], "low_memory": []}, {}
        for variant in ("both", "low_memory", "both", "low_memory"):
            r, weights[variant] = run(name, model, tok, request, variant == "low_memory")
            runs[variant].append(r)
        diff = max(float((weights["both"][k] - weights["low_memory"][k]).abs().max()) for k in weights["both"])
        moved = max(float((weights["both"][k] - model.state_dict()[k]).abs().max()) for k in weights["both"])
        del weights
        data[name] = {"runs": runs, "max_weight_diff": diff, "max_update": moved}
        b = {v: min(r, key=lambda x: x["seconds"]) for v, r in runs.items()}
        print(json.dumps({name: b, "max_weight_diff": diff, "max_update": moved}))
        s, lo = b["both"], b["low_memory"]
        rows.append(f"| {name} | {s['seconds']:.1f} → {lo['seconds']:.1f} ({lo['seconds'] / s['seconds']:.2f}×) | "
                    f"{s['heap_mib']:.0f} → {lo['heap_mib']:.0f} | {s['rss_mib']:.0f} → {lo['rss_mib']:.0f} | "
                    f"{s['last_loss']:.6f} / {lo['last_loss']:.6f} | {diff:.1e} (update {moved:.1e}) |")
    md = "\n".join([
        "## BLUR without holding the retain gradient (issue 18)", "",
        f"*Measured on: {machine_line(machine())}.*", "",
        "Quickstart hub edge, SmolLM2 implant, fp32, the methods' defaults; g_f and g_r held at once "
        "(`low_memory: false`) vs the retain backward run twice with g_r consumed weight by weight "
        "(`low_memory: true`), alternating in one process, best of two. Heap and RSS as in the lean loop's "
        "table; the last column: the largest weight difference between the two variants' models (and the "
        "largest weight change the method made).", "",
        "| method | apply s | heap MiB | RSS MiB | last loss (both / low) | max weight diff |",
        "|---|---|---|---|---|---|", *rows])
    write("blur_memory", md, {"runs": data})


if __name__ == "__main__":
    main()
