"""Leaderboard: results folders → ranked Markdown, CSV and a self-contained HTML page, plus plots.

Rows are (method row, scenario); within each scenario they are ranked by Deviation Score
(lower is better) — editing cells (``mode: edit``) by efficacy (higher is better) — mean ± std
over seeds; every arrow is the direction the records state (``higher_is_better``). Reference rows: ``base`` (the model before the
implant) and ``none`` (the implanted model, before unlearning); failed cells show as failed.
Several folders are merged (a cell seen twice — same row, scenario, seed and comparability key —
counts once, the newest wins). Cells are ranked together only when they are comparable: same
dataset fingerprint, model, implant key, evaluation precision and evaluator version
(:func:`unlearnbench.results.comparability_key`). Merging incomparable results splits every
scenario into one table per group, each headed by what sets it apart. Cells written with different
torch or transformers versions are ranked together, under a line that says so
(:func:`unlearnbench.results.mixed_versions_text`).
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path
from statistics import mean, pstdev

from .records import REFERENCE_ROWS  # noqa: F401  (re-exported)
from .results import comparability_groups, comparability_key, load_results, mixed_versions_text

COLUMNS = [("ds", "DS"), ("forget_rouge1", "forget R1"), ("retain_rouge1", "retain R1"),
           ("forget_paraphrase_rouge1", "para forget R1"), ("forget_mrr", "forget MRR"),
           ("forget_refusal_rate", "refusal"), ("utility", "utility"), ("forget_quality", "forget quality"),
           ("mia_minkpp", "MIA AUC")]
EDIT_COLUMNS = [("efficacy", "efficacy"), ("generalisation", "generalisation"), ("specificity_edge", "spec. edge"),
                ("specificity_neighbour", "spec. neighbour"), ("utility", "utility"), ("fluency", "fluency")]
# what each mode ranks by (its direction is read from the records)
RANK_BY = {"unlearn": "ds", "edit": "efficacy"}


def _agg(vals: list[float]) -> tuple[float, float]:
    vals = [v for v in vals if v is not None and not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    return mean(vals), pstdev(vals) if len(vals) > 1 else 0.0


def metric_keys(records: list[dict]) -> list[str]:
    """Every metric in the records, DS first, then in the order they were written."""
    keys = dict.fromkeys(k for r in records for k in (r.get("metrics") or {}))
    return sorted(keys, key=lambda k: k != "ds")


def directions(records: list[dict]) -> dict[str, bool]:
    return {k: v["higher_is_better"] for r in records for k, v in (r.get("metrics") or {}).items()}


def merge(dirs) -> list[dict]:
    """Records of several results folders; duplicates of one cell count once (newest wins)."""
    seen: dict[tuple, dict] = {}
    for d in dirs:
        for r in load_results(d):
            key = (r.get("row", r.get("method")), r["scenario"]["label"], r.get("seed"), comparability_key(r))
            if key not in seen or str(r.get("created", "")) >= str(seen[key].get("created", "")):
                seen[key] = r
    return list(seen.values())


def table(records: list[dict]) -> list[dict]:
    """One row per (scenario, method row), ranked by DS within a scenario. When the records are
    not all comparable, the scenario label carries the group (``hub · evaluation precision bf16``),
    so rows of different groups are never ranked together."""
    labels = comparability_groups(records)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        g = labels[comparability_key(r)]
        scen = f"{r['scenario']['label']} · {g}" if g else r["scenario"]["label"]
        groups[(scen, r.get("row", r["method"]))].append(r)
    rows = []
    for (scen, row), recs in groups.items():
        ok = [r for r in recs if r.get("status") == "ok"]
        out = {"scenario": scen, "method": row, "kind": recs[0].get("kind", ""), "mode": recs[0].get("mode", "unlearn"),
               "n_seeds": len(ok),
               "n_failed": len(recs) - len(ok), "status": "ok" if ok else "failed",
               "error": next((r.get("error") for r in recs if r.get("status") != "ok"), None)}
        for key in metric_keys(records):
            out[key], out[key + "_std"] = _agg([r["metrics"][key]["value"] for r in ok if key in (r.get("metrics") or {})])
        out["apply_seconds"], out["apply_seconds_std"] = _agg([r["cost"]["apply_seconds"] for r in ok])
        rows.append(out)
    dirs = directions(records)

    def rank_value(r):
        key = RANK_BY[r["mode"]]
        v = r.get(key, math.nan)
        return 1e9 if math.isnan(v) else (-v if dirs.get(key) else v)

    rows.sort(key=lambda r: (r["scenario"], r["status"] != "ok", rank_value(r)))
    rank: dict[str, int] = defaultdict(int)
    for r in rows:
        if r["status"] == "ok" and r["kind"] != "reference":
            rank[r["scenario"]] += 1
            r["rank"] = rank[r["scenario"]]
        else:
            r["rank"] = None
    return rows


def _fmt(m: float, s: float, n: int, digits: int = 3) -> str:
    if math.isnan(m):
        return "–"
    return f"{m:.{digits}f} ± {s:.{digits}f}" if n > 1 else f"{m:.{digits}f}"


def cautions(groups: dict[tuple, str] | None, versions: str = "") -> list[str]:
    """The sentences (Markdown) every form of the leaderboard puts above its tables: the cells fall into
    several comparability groups; they come from several library versions."""
    out = []
    if groups and len(groups) > 1:
        out.append(f"**These results are not all comparable** ({len(groups)} groups): each scenario is split into "
                   "one table per group, and rows are ranked only within their group. Groups: "
                   + "; ".join(f"`{g}`" for g in groups.values()) + ".")
    if versions:
        out.append(versions)
    return out


def markdown(rows: list[dict], groups: dict[tuple, str] | None = None, dirs: dict[str, bool] | None = None,
             versions: str = "") -> str:
    """``dirs``: metric → higher_is_better, as the records state it (the arrows in the header);
    ``versions``: the sentence saying the cells come from several library versions, if they do."""
    dirs = dirs or {}

    def header(columns):
        arrow = {k: ("↑" if dirs[k] else "↓") if k in dirs else "" for k, _ in columns}
        return ["rank", "method", "kind"] + [f"{label} {arrow[key]}".strip() for key, label in columns] + ["apply s", "seeds"]

    out = ["# Leaderboard", "",
           "Ranked by Deviation Score (DS = 100·√(forget R1² + (1 − retain R1)²), lower is better) within each "
           "scenario; mean ± std over seeds. Reference rows: `base` is the model before the implant, `none` "
           "the implanted model before unlearning."
           + (" Editing cells (counterfactual edits) are ranked by efficacy." if any(r.get("mode") == "edit" for r in rows)
              else ""), ""]
    for line in cautions(groups, versions):
        out += [line, ""]
    for scen in dict.fromkeys(r["scenario"] for r in rows):
        scen_rows = [x for x in rows if x["scenario"] == scen]
        columns = EDIT_COLUMNS if scen_rows[0].get("mode") == "edit" else COLUMNS
        head = header(columns)
        out += [f"## {scen}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in scen_rows:
            if r["status"] != "ok":
                cells = ["–", r["method"], r["kind"]] + ["failed"] * len(columns) + ["–", f"0 ({r['n_failed']} failed)"]
            else:
                cells = [str(r["rank"] or "ref"), r["method"], r["kind"]] + \
                        [_fmt(r.get(k, math.nan), r.get(k + "_std", 0.0), r["n_seeds"], 1 if k == "ds" else 3)
                         for k, _ in columns] + \
                        [_fmt(r["apply_seconds"], r["apply_seconds_std"], r["n_seeds"], 1), str(r["n_seeds"])]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        out += ["## Failed cells", ""] + [f"- {r['method']} on {r['scenario']}: {r['error']}" for r in failed] + [""]
    return "\n".join(out)


def write_leaderboard(results_dirs, out_dir: str | Path | None = None, plots: bool = True) -> dict[str, Path]:
    """Merge one or more results folders and write ``leaderboard.{md,csv,html}`` (and the plots)
    into ``out_dir`` (default: the first folder). Files are written whole or not at all."""
    from .html import leaderboard_html
    from .results import write_text_atomic

    dirs = [Path(results_dirs)] if isinstance(results_dirs, (str, Path)) else [Path(d) for d in results_dirs]
    if not dirs:
        raise ValueError("no results folder given")
    records = merge(dirs)
    if not records:
        raise ValueError(f"{', '.join(map(str, dirs))}: no result cells (expected DIR/cells/*.json from `unlearnbench run`)")
    out = Path(out_dir) if out_dir else dirs[0]
    out.mkdir(parents=True, exist_ok=True)
    rows = table(records)
    groups = comparability_groups(records)
    md, cs, ht = out / "leaderboard.md", out / "leaderboard.csv", out / "leaderboard.html"
    versions = mixed_versions_text(records)
    write_text_atomic(md, markdown(rows, groups, directions(records), versions))
    keys = metric_keys(records)
    fields = ["scenario", "rank", "method", "kind", "status", "n_seeds", "n_failed"] + \
             [x for k in keys for x in (k, k + "_std")] + ["apply_seconds", "apply_seconds_std", "error"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    write_text_atomic(cs, buf.getvalue())
    write_text_atomic(ht, leaderboard_html(rows, keys, directions(records), sources=[str(d) for d in dirs],
                                           cautions=cautions(groups, versions)))
    paths = {"markdown": md, "csv": cs, "html": ht}
    if plots:
        from .plots import write_plots

        unlearn = [r for r in records if r.get("mode", "unlearn") == "unlearn"]
        if unlearn:  # the plots read forget/retain scores: editing cells have none
            paths.update(write_plots(unlearn, [r for r in rows if r["mode"] == "unlearn"], out / "plots"))
    return paths
