"""Leaderboard: a results folder → ranked Markdown and CSV tables (mean ± std over seeds).

Rows are (method row, scenario); within each scenario they are ranked by Deviation Score
(lower is better). The implanted model appears as row ``none``; failed cells as ``failed``.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path
from statistics import mean, pstdev

from .results import load_results

COLUMNS = [("ds", "DS"), ("forget_rouge1", "forget R1"), ("retain_rouge1", "retain R1"),
           ("forget_paraphrase_rouge1", "para forget R1"), ("forget_mrr", "forget MRR"),
           ("forget_refusal_rate", "refusal"), ("utility", "utility")]


def _agg(vals: list[float]) -> tuple[float, float]:
    vals = [v for v in vals if v is not None and not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    return mean(vals), pstdev(vals) if len(vals) > 1 else 0.0


def table(records: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["scenario"]["label"], r.get("row", r["method"]))].append(r)
    rows = []
    for (scen, row), recs in groups.items():
        ok = [r for r in recs if r.get("status") == "ok"]
        out = {"scenario": scen, "method": row, "kind": recs[0].get("kind", ""), "n_seeds": len(ok),
               "n_failed": len(recs) - len(ok), "status": "ok" if ok else "failed",
               "error": next((r.get("error") for r in recs if r.get("status") != "ok"), None)}
        for key, _ in COLUMNS:
            out[key], out[key + "_std"] = _agg([r["metrics"][key]["value"] for r in ok if key in r.get("metrics", {})])
        out["apply_seconds"], out["apply_seconds_std"] = _agg([r["cost"]["apply_seconds"] for r in ok])
        rows.append(out)
    rows.sort(key=lambda r: (r["scenario"], r["status"] != "ok", r["ds"] if not math.isnan(r["ds"]) else 1e9))
    rank: dict[str, int] = defaultdict(int)
    for r in rows:
        if r["status"] == "ok":
            rank[r["scenario"]] += 1
            r["rank"] = rank[r["scenario"]]
        else:
            r["rank"] = None
    return rows


def _fmt(m: float, s: float, n: int, digits: int = 3) -> str:
    if math.isnan(m):
        return "–"
    return f"{m:.{digits}f} ± {s:.{digits}f}" if n > 1 else f"{m:.{digits}f}"


def markdown(rows: list[dict]) -> str:
    head = ["rank", "method", "kind"] + [f"{label} {'↓' if key in ('ds', 'forget_rouge1', 'forget_paraphrase_rouge1', 'forget_mrr') else '↑'}"
                                        for key, label in COLUMNS] + ["apply s", "seeds"]
    out = ["# Leaderboard", "",
           "Ranked by Deviation Score (DS = 100·√(forget R1² + (1 − retain R1)²), lower is better) within each "
           "scenario; mean ± std over seeds. `none` is the implanted model before unlearning.", ""]
    for scen in dict.fromkeys(r["scenario"] for r in rows):
        out += [f"## {scen}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in (x for x in rows if x["scenario"] == scen):
            if r["status"] != "ok":
                cells = ["–", r["method"], r["kind"]] + ["failed"] * len(COLUMNS) + ["–", f"0 ({r['n_failed']} failed)"]
            else:
                cells = [str(r["rank"]), r["method"], r["kind"]] + \
                        [_fmt(r[k], r[k + "_std"], r["n_seeds"], 1 if k == "ds" else 3) for k, _ in COLUMNS] + \
                        [_fmt(r["apply_seconds"], r["apply_seconds_std"], r["n_seeds"], 1), str(r["n_seeds"])]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        out += ["## Failed cells", ""] + [f"- {r['method']} on {r['scenario']}: {r['error']}" for r in failed] + [""]
    return "\n".join(out)


def write_leaderboard(results_dir: str | Path) -> dict[str, Path]:
    d = Path(results_dir)
    records = load_results(d)
    if not records:
        raise ValueError(f"{d} holds no result cells (expected {d}/cells/*.json from `unlearnbench run`)")
    rows = table(records)
    md, cs = d / "leaderboard.md", d / "leaderboard.csv"
    md.write_text(markdown(rows), encoding="utf-8")
    fields = ["scenario", "rank", "method", "kind", "status", "n_seeds", "n_failed"] + \
             [x for k, _ in COLUMNS for x in (k, k + "_std")] + ["apply_seconds", "apply_seconds_std", "error"]
    with cs.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return {"markdown": md, "csv": cs}
