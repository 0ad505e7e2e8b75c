"""The editing mode of the runner: counterfactual edits written by each editing method.

Per seed, ``cfg.edits.n`` edits (:func:`pistol_data.edits.counterfactual_edits`) go to every
method as one request (``UnlearnRequest.edits``; MEMIT/AlphaEdit apply them in one batch, ROME
one after another). The implanted model is scored too (row ``none``: efficacy ≈ 0, the old
values). Each cell is written to ``edits/<row>__seed<k>.json``; ``edits.md`` tables every row.
"""

from __future__ import annotations

import copy
import logging
import math
import time
import traceback
from pathlib import Path

import methods as methods_pkg
from pistol_data.edits import counterfactual_edits

from .edit_eval import EditEvaluator, score_edits
from .evaluate import EvalParams
from .metrics import EDIT_METRICS
from .results import write_atomic, write_text_atomic

log = logging.getLogger(__name__)

TABLE = ["efficacy", "generalisation", "specificity_edge", "specificity_neighbour", "utility", "fluency"]


def _record(cfg, ctx, row, method, kind, params, seed, cases, ev, extra) -> dict:
    return {"experiment": cfg.name, "mode": "edit", "row": row, "method": method, "kind": kind, "params": params,
            "seed": seed, "edits": [c.to_dict() for c in cases],
            "dataset": {"preset": ctx.ds.preset, "seed": ctx.ds.seed, "fingerprint": ctx.ds.fingerprint},
            "model": {"spec": cfg.model, "finetune_key": ctx.finetune_info.get("key")},
            "metrics": {k: {"value": v, "higher_is_better": EDIT_METRICS[k].higher_is_better}
                        for k, v in score_edits(ev).items()} if ev is not None else None,
            "per_example": {"qa": ev.rows, "utility": ev.utility} if ev is not None else None,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra}


def run_edit_grid(runner, ctx) -> Path:
    from .runner import PeakMemory, build_request, set_seed

    cfg, out = runner.cfg, runner.out / "edits"
    params = EvalParams(**cfg.eval.model_dump(), progress=runner.progress)
    for seed in cfg.seeds:
        cases = counterfactual_edits(ctx.ds, cfg.edits.n, seed, per_edge=cfg.edits.per_edge)
        evaluator = EditEvaluator(ctx.ds, cases, params)
        path = out / f"none__seed{seed}.json"
        if not path.exists():
            ev = evaluator.run(ctx.model.model, ctx.model.tokenizer, desc="evaluate implanted model")
            write_atomic(path, _record(cfg, ctx, "none", "none", "reference", {}, seed, cases, ev,
                                       {"status": "ok", "cost": {"apply_seconds": 0.0, "eval_seconds": ev.seconds}}))
        requests = [c.request for c in cases]
        edited = {(c.edge, c.attribute) for c in cases}
        for entry in cfg.method_entries():
            path = out / f"{entry.row}__seed{seed}.json"
            if path.exists() and not runner.retry_failed:
                continue
            cls = methods_pkg.get_method(entry.name)
            p = cls.Params.model_validate(entry.params)
            try:
                set_seed(seed)
                model = copy.deepcopy(ctx.model.model)
                req = build_request(ctx.ds, None, seed, ctx.device, progress=runner.progress, edits=requests,
                                    retain=[r for r in ctx.ds.direct() if (r.edge, r.attribute) not in edited])
                method = cls()
                with PeakMemory() as mem:
                    t = time.perf_counter()
                    model = method.apply(model, ctx.model.tokenizer, req, p)
                    apply_s = time.perf_counter() - t
                ev = evaluator.run(model, ctx.model.tokenizer, desc=f"evaluate {entry.row} seed {seed}")
                rec = _record(cfg, ctx, entry.row, entry.name, cls.kind, p.model_dump(), seed, cases, ev, {
                    "status": "ok", "method_info": method.report(),
                    "cost": {"apply_seconds": apply_s, "seconds_per_edit": apply_s / len(cases),
                             "peak_rss_mb": mem.peak_rss / 2**20, "eval_seconds": ev.seconds}})
                del model
            except Exception as e:  # a failing cell is a result
                log.error("edit cell %s seed %d failed: %s", entry.row, seed, e)
                rec = _record(cfg, ctx, entry.row, entry.name, cls.kind, p.model_dump(), seed, cases, None, {
                    "status": "failed", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
            write_atomic(path, rec)
    write_edit_table(runner.out)
    return runner.out


def write_edit_table(results_dir: Path) -> Path:
    """``edits.md``: one line per row (mean over seeds) with the edit metrics and the cost."""
    import json
    from collections import defaultdict
    from statistics import mean

    by = defaultdict(list)
    for f in sorted((Path(results_dir) / "edits").glob("*.json")):
        rec = json.loads(f.read_text())
        by[rec["row"]].append(rec)
    head = ["method"] + [f"{k} {'↑' if EDIT_METRICS[k].higher_is_better else '↓'}" for k in TABLE] + \
        ["apply s", "s / edit", "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def avg(recs, k):
        vals = [r["metrics"][k]["value"] for r in recs if r["status"] == "ok"]
        return mean(vals) if vals else math.nan

    order = sorted(by, key=lambda r: (r != "none", -avg(by[r], "efficacy") if not math.isnan(avg(by[r], "efficacy")) else 0))
    for row in order:
        recs = by[row]
        ok = [r for r in recs if r["status"] == "ok"]
        if not ok:
            lines.append(f"| {row} | failed: {recs[0].get('error', '')[:80]} |")
            continue
        cells = [f"{avg(ok, k):.3f}" if k != "fluency" else f"{avg(ok, k):.2f}" for k in TABLE]
        apply_s = mean(r["cost"]["apply_seconds"] for r in ok)
        per = mean(r["cost"].get("seconds_per_edit", 0.0) for r in ok)
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {apply_s:.1f} | {per:.2f} | {len(ok)} |")
    path = Path(results_dir) / "edits.md"
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path
