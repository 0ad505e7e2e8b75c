"""``unlearnbench plan`` against measurement: every method's predicted peak above the shared model
vs the peak the runner measures (``cost.cell_peak_mb``: RSS above the process before the cell on
CPU, ``peak_cuda_mb`` on a GPU), on random Llamas of ~0.1, ~0.5 and ~1 B parameters (built from a
configuration, saved once under the cache so that cells run in place as they do on a real model).

    python benchmarks/validate_plan.py                      # 0.1b 0.5b 1b, every method
    python benchmarks/validate_plan.py 0.1b --methods gd rome
    python benchmarks/validate_plan.py --table              # the table again from the JSON

Each size is one grid (no implant: the random model is the "implanted" model; the hub edge of
pistol-mini; a short evaluation); finished cells are reused, so an interrupted run resumes.
Writes ``results/plan_validation.{md,json}``.
"""

from __future__ import annotations

import argparse
import json

import yaml
from common import RESULTS, write

from unlearnbench.core.cache import cache_dir
from unlearnbench.plan import GB, plan

SIZES = ("0.1b", "0.5b", "1b")
EVAL = {"batch_size": 32, "tf_batch_size": 8, "max_new_tokens": 8, "qa_max_new_tokens": 8, "utility_limit": 20,
        "forms": ["direct"], "attacks": []}


def model_dir(size: str) -> str:
    """The random model saved once (weights and tokenizer): a checkpoint the runner restores from."""
    from unlearnbench.models import random_llama

    d = cache_dir("models") / f"random-llama-{size}"
    if not (d / "config.json").exists():
        model, tok = random_llama(f"random-llama-{size}")
        model.save_pretrained(d)
        tok.save_pretrained(d)
    return str(d)


def run_size(size: str, names: list[str] | None, device: str) -> list[dict]:
    from unlearnbench.config import load_config
    from unlearnbench.runner import Runner

    out = RESULTS.parent / "runs" / f"plan-{size}"
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / "config.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "name": f"plan-{size}", "model": model_dir(size), "device": device, "finetune": None,
        "data": {"preset": "pistol-mini", "seed": 0}, "eval": EVAL, "methods": names or "all",
        "scenarios": [{"type": "edge", "edge": "A_B", "name": "hub"}], "seeds": [0]}))
    cfg = load_config(cfg_path)
    predicted = {c["cell"]: c for c in plan(cfg, device=device)["cells"]}
    Runner(cfg, out_dir=out).run()
    rows = []
    for cid, pred in predicted.items():
        rec = json.loads((out / "cells" / f"{cid}__seed0.json").read_text())
        if rec["status"] != "ok":
            rows.append({"size": size, "method": pred["method"], "error": rec.get("error")})
            continue
        cost = rec["cost"]
        measured = (cost["peak_cuda_mb"] if device == "cuda" and cost.get("peak_cuda_mb") else cost["cell_peak_mb"])
        rows.append({"size": size, "method": pred["method"], "predicted_gb": pred["peak_bytes"] / GB,
                     "peak_phase": pred["peak_phase"], "measured_gb": measured * 2**20 / GB,
                     "ratio": measured * 2**20 / max(pred["peak_bytes"], 1)})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["## `plan` vs measured peak memory", "",
             "Peak above the shared model per cell: predicted by `unlearnbench plan`, measured by the runner.", "",
             "| size | method | predicted GB (phase) | measured GB | measured / predicted |", "|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['size']} | {r['method']} | – | failed: {r['error'][:60]} | – |")
            continue
        flag = "" if 0.75 <= r["ratio"] <= 1.25 else " **outside ±25%**"
        lines.append(f"| {r['size']} | {r['method']} | {r['predicted_gb']:.2f} ({r['peak_phase']}) | "
                     f"{r['measured_gb']:.2f} | {r['ratio']:.2f}{flag} |")
    ok = [r for r in rows if "ratio" in r]
    inside = sum(0.75 <= r["ratio"] <= 1.25 for r in ok)
    lines += ["", f"{inside} of {len(ok)} cells within ±25%."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sizes", nargs="*", default=list(SIZES), choices=SIZES)
    ap.add_argument("--methods", nargs="+")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--table", action="store_true", help="rewrite the table from results/plan_validation.json")
    a = ap.parse_args()
    store = RESULTS / "plan_validation.json"
    if a.table:
        rows = json.loads(store.read_text())["rows"]
    else:
        rows = [r for size in a.sizes for r in run_size(size, a.methods, a.device)]
        if store.exists():  # other sizes measured before stay
            old = [r for r in json.loads(store.read_text())["rows"] if r["size"] not in a.sizes]
            rows = old + rows
    write("plan_validation", table(rows), {"rows": rows})


if __name__ == "__main__":
    main()
