"""``unlearnbench plan`` against measurement: every method's predicted peak above the shared model
vs the peak the runner measures (``cost.cell_peak_mb``: RSS above the process before the cell on
CPU, ``peak_cuda_mb`` on a GPU), on random Llamas of ~0.1, ~0.5 and ~1 B parameters (built from a
configuration, saved once under the cache so that cells run in place as they do on a real model).

    python benchmarks/validate_plan.py                      # 0.1b 0.5b 1b, every method
    python benchmarks/validate_plan.py 0.1b --methods gd rome
    python benchmarks/validate_plan.py --table              # the table again from the JSON
    python benchmarks/validate_plan.py 0.1b --repredict     # the stored runs against the plan as it is now

On CPU run it with ``MALLOC_MMAP_THRESHOLD_=65536`` (glibc then returns freed large blocks, and RSS
reads the live tensors rather than the allocator's high-water mark).

Each size is one grid (no implant: the random model is the "implanted" model; the hub edge of
pistol-mini; a short evaluation); finished cells are reused, so an interrupted run resumes.
Writes ``results/plan_validation.{md,json}`` (``plan_validation_cuda`` with ``--device cuda``, where the
measured peak is the CUDA memory a cell allocated above the shared model, apply and evaluation).
"""

from __future__ import annotations

import argparse
import json

import yaml
from common import RESULTS, machine, write

from unlearnbench.core.cache import cache_dir
from unlearnbench.plan import GB, plan

SIZES = ("0.1b", "0.5b", "1b")
# the options plan's advice relies on, at every size: LoRA adapters, gradient checkpointing
VARIANTS = [{"name": "gd", "label": "gd-lora", "params": {"lora": {"r": 16}}},
            {"name": "npo", "label": "npo-lora", "params": {"lora": {"r": 16}}},
            {"name": "gd", "label": "gd-ckpt", "params": {"gradient_checkpointing": True}}]
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


def grid(size: str, names: list[str] | None, device: str, model: str, variants: bool = False) -> dict:
    """The validation grid of one size: the hub edge of pistol-mini, no implant, a short evaluation."""
    return {"name": f"plan-{size}", "model": model, "device": device, "finetune": None,
            "data": {"preset": "pistol-mini", "seed": 0}, "eval": EVAL,
            "methods": ([{"name": n} for n in names] if names else "all") if not variants else
            [{"name": n} for n in names or []] + VARIANTS,
            "scenarios": [{"type": "edge", "edge": "A_B", "name": "hub"}], "seeds": [0]}


def predictions(size: str, device: str, params: dict | None = None) -> dict:
    """The plan as it is now for every method and variant of one size, from the preset's
    configuration (meta device, no weights), with ``params`` over each method's own where it has
    them (e.g. ``freeze_embeddings: false`` for a row measured when every weight trained): {cell id: plan cell}."""
    from methods import get_method
    from unlearnbench.config import MethodEntry, RunConfig

    cfg = RunConfig.model_validate(grid(size, None, device, f"random-llama-{size}"))
    every = cfg.method_entries() + [MethodEntry.model_validate(v) for v in VARIANTS]
    if params:
        every = [e.model_copy(update={"params": {**e.params, **{k: v for k, v in params.items()
                                                               if k in get_method(e.name).Params.model_fields}}})
                 for e in every]
    cfg = cfg.model_copy(update={"methods": every})
    return {c["cell"]: c for c in plan(cfg, device=device, memory_gb=1e6)["cells"]}


def row(size: str, method: str, pred: dict, measured_gb: float) -> dict:
    return {"size": size, "method": method, "predicted_gb": pred["peak_bytes"] / GB, "peak_phase": pred["peak_phase"],
            "measured_gb": measured_gb, "ratio": measured_gb * GB / max(pred["peak_bytes"], 1)}


def run_size(size: str, names: list[str] | None, device: str, runs=None, measure: bool = True,
             variants: bool = False) -> list[dict]:
    """Measure one size (``measure``; finished cells are reused) and compare with the prediction of
    the plan as it is now; ``runs``: where the run folders are (default: benchmarks/runs)."""
    from unlearnbench.config import load_config
    from unlearnbench.runner import Runner

    out = (runs or RESULTS.parent / "runs") / (f"plan-{size}" + ("-cuda" if device == "cuda" else ""))
    cfg_path = out / "config.yaml"
    if measure:
        out.mkdir(parents=True, exist_ok=True)
        cfg_path.write_text(yaml.safe_dump(grid(size, names, device, model_dir(size), variants)))
    predicted = predictions(size, device)
    if measure:
        Runner(load_config(cfg_path), out_dir=out).run()
        (out / "machine.json").write_text(json.dumps(machine()))
    rows = []
    for cid, pred in predicted.items():
        path = out / "cells" / f"{cid}__seed0.json"
        if not path.exists():
            continue
        rec = json.loads(path.read_text())
        if rec["status"] != "ok":
            rows.append({"size": size, "method": cid.rsplit("__", 1)[0], "error": rec.get("error")})
            continue
        cost = rec["cost"]
        measured = (cost["cell_cuda_mb"] if device == "cuda" and cost.get("cell_cuda_mb") is not None
                    else cost["cell_peak_mb"])
        rows.append({**row(size, cid.rsplit("__", 1)[0], pred, measured * 2**20 / GB),
                     "measured": f"{rec.get('created', '')[:10]}, " + (
                         f"{rec.get('hardware', {}).get('cpu_count')}-core {machine()['cpu']} "
                         f"({'native bf16' if machine()['bf16_native'] else 'no native bf16'})"
                         if device == "cpu" else machine()["cuda"])})
    return rows


# From this day the shared loop runs the shared prompt prefix's backward after the rows' (core.lm.
# split_prefix_backward): before it, autograd buffered a retain term's weight gradients beside the
# forget term's until the prefix's share arrived — one more gradient set than the code holds now.
PREFIX_SPLIT = "2026-12-05"


def _before_prefix_split(r: dict) -> bool:
    return (r["method"].split("-")[0] in ("gd", "npo", "ukl", "dpo") and "lora" not in r["method"]
            and r.get("measured", "9")[:10] < PREFIX_SPLIT)


def table(rows: list[dict], device: str = "cpu", gpu: str | None = None) -> str:
    how = ("CUDA memory allocated above the shared model (bf16 weights), apply and evaluation" if device == "cuda" else
           "RSS above the process before the cell, during apply (fp32; measured with `MALLOC_MMAP_THRESHOLD_=65536` "
           "so that freed large blocks leave the RSS — with glibc's default the editors read 1.5–1.9× higher)")
    where = (gpu or "GPU").removeprefix("NVIDIA ") + ", bf16" if device == "cuda" else "CPU, fp32"
    lines = [f"## `plan` vs measured peak memory ({where})", "",
             f"Peak above the shared model per cell: predicted by `unlearnbench plan`, measured by the runner: {how}. "
             "Every row is predicted by the plan as it is now, with the settings it was measured with.",
             "",
             "| size | method | predicted GB (phase) | measured GB | measured / predicted | measured on |",
             "|---|---|---|---|---|---|"]
    order = {s: i for i, s in enumerate(SIZES)}
    for r in sorted(rows, key=lambda r: (order.get(r["size"], 9), r["method"])):
        if "error" in r:
            lines.append(f"| {r['size']} | {r['method']} | – | failed: {r['error'][:60]} | – | – |")
            continue
        flag = "" if 0.75 <= r["ratio"] <= 1.25 else " **outside ±25%**"
        how = "".join(f", {k}: {str(v).lower()}" for k, v in (r.get("params") or {}).items())
        if _before_prefix_split(r):
            how += ", before the prefix's backward was split off (one more gradient set held)"
        lines.append(f"| {r['size']} | {r['method']} | {r['predicted_gb']:.2f} ({r['peak_phase']}) | "
                     f"{r['measured_gb']:.2f} | {r['ratio']:.2f}{flag} | {r.get('measured', '–')}{how} |")
    ok = [r for r in rows if "ratio" in r]
    inside = sum(0.75 <= r["ratio"] <= 1.25 for r in ok)
    lines += ["", f"{inside} of {len(ok)} cells within ±25%."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sizes", nargs="*", help=f"any of {', '.join(SIZES)} (default: every size)")
    ap.add_argument("--methods", nargs="+")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--variants", action="store_true", help="also gd and npo with LoRA and gd with gradient "
                    "checkpointing (with --methods: those methods and the variants)")
    ap.add_argument("--table", action="store_true", help="rewrite the table from the measured peaks stored in "
                    "results/plan_validation[_cuda].json, predicted by the plan as it is now")
    ap.add_argument("--repredict", metavar="RUNS", nargs="?", const=str(RESULTS.parent / "runs"),
                    help="measure nothing: compare the runs in RUNS (default benchmarks/runs) with the plan as it is now")
    a = ap.parse_args()
    bad = [s for s in a.sizes if s not in SIZES]  # (argparse's choices check fails an empty list)
    if bad:
        ap.error(f"unknown size {bad[0]!r}: choose from {', '.join(SIZES)}")
    a.sizes = a.sizes or list(SIZES)
    name = "plan_validation" + ("_cuda" if a.device == "cuda" else "")
    store = RESULTS / f"{name}.json"
    stored = json.loads(store.read_text()) if a.table else {}
    if a.table:
        preds: dict = {}  # (size, the row's params) -> predictions

        def predicted(r):
            key = (r["size"], json.dumps(r.get("params") or {}, sort_keys=True))
            if key not in preds:
                preds[key] = predictions(r["size"], a.device, r.get("params"))
            return preds[key][f"{r['method']}__hub"]

        rows = [r if "error" in r else {**r, **row(r["size"], r["method"], predicted(r), r["measured_gb"])}
                for r in stored["rows"]]
    elif a.repredict:
        from pathlib import Path

        rows = [r for size in a.sizes for r in run_size(size, a.methods, a.device, Path(a.repredict), measure=False)]
    else:
        rows = [r for size in a.sizes for r in run_size(size, a.methods, a.device, variants=a.variants)]
        if store.exists():  # other sizes measured before stay
            now = {(r["size"], r["method"]) for r in rows}
            old = [r for r in json.loads(store.read_text())["rows"] if (r["size"], r["method"]) not in now]
            rows = old + rows
    data = {"rows": rows}
    if a.repredict:  # the machine that measured, not this one
        from pathlib import Path

        sizes = [Path(a.repredict) / (f"plan-{size}" + ("-cuda" if a.device == "cuda" else "")) for size in a.sizes]
        found = [json.loads((d / "machine.json").read_text()) for d in sizes if (d / "machine.json").exists()]
        if found:
            data["machine"] = found[-1]
    if stored.get("machine"):  # --table: the machine that measured the stored rows
        data["machine"] = stored["machine"]
    write(name, table(rows, a.device, (data.get("machine") or machine()).get("cuda")), data)


if __name__ == "__main__":
    main()
