"""Leaderboard plots (matplotlib, each as PNG and SVG), written next to the leaderboard.

* ``forget_vs_retain`` — forget ROUGE-1 against retain ROUGE-1 per method, with DS iso-curves
  (quarter circles around the ideal corner: forget 0, retain 1) and that corner marked.
* ``ds_bars`` — DS per method and scenario, error bars = std over seeds.
* ``leak_heatmap`` — what still leaks after unlearning: forget ROUGE-1 per attribute (direct
  questions on the forgotten edges), methods × attributes, one panel per scenario.
* ``graph_<scenario>`` — the knowledge graph with the forgotten edges highlighted, coloured by how
  much of each edge the model still knows (mean ROUGE-1 of its direct questions), one panel per method.
* ``cost_vs_ds`` — wall time of ``apply`` against DS.

The structural report's figures (``report_figures``): DS per scenario, DS against the forgotten
edge's connectivity, DS against its component's edge density (one panel per forget-set size),
sequential requests, attack recovery.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path
from statistics import mean

from pistol_data.scenarios import spec_on_facts

from .records import REFERENCE_ROWS


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "svg"):
        p = out / f"{name}.{ext}"
        fig.savefig(p, dpi=130, bbox_inches="tight")
        paths.append(p)
    _plt().close(fig)
    return paths


def _scenarios(rows):
    return list(dict.fromkeys(r["scenario"] for r in rows))


def _ok(rows):
    return [r for r in rows if r["status"] == "ok" and not math.isnan(r.get("ds", math.nan))]


def forget_vs_retain(rows, out: Path) -> list[Path]:
    plt = _plt()
    scens = _scenarios(rows)
    fig, axes = plt.subplots(1, len(scens), figsize=(5.2 * len(scens), 4.8), squeeze=False)
    for ax, scen in zip(axes[0], scens):
        for ds_level in (10, 25, 50, 75, 100):
            t = [i * math.pi / 2 / 60 for i in range(61)]
            rad = ds_level / 100
            ax.plot([rad * math.cos(a) for a in t], [1 - rad * math.sin(a) for a in t], color="#bbb", lw=0.8, zorder=0)
            ax.annotate(f"DS {ds_level}", (rad * math.cos(0.6), 1 - rad * math.sin(0.6)), fontsize=7, color="#999")
        ax.scatter([0], [1], marker="*", s=260, color="gold", edgecolor="k", zorder=3, label="ideal (forget 0, retain 1)")
        for r in _ok(x for x in rows if x["scenario"] == scen):
            ref = r["kind"] == "reference"
            ax.errorbar(r["forget_rouge1"], r["retain_rouge1"], xerr=r.get("forget_rouge1_std") or None,
                        yerr=r.get("retain_rouge1_std") or None, fmt="s" if ref else "o", ms=7,
                        color="#888" if ref else None, zorder=2)
            ax.annotate(r["method"], (r["forget_rouge1"], r["retain_rouge1"]), textcoords="offset points",
                        xytext=(5, 4), fontsize=8)
        ax.set(xlim=(-0.05, 1.08), ylim=(-0.05, 1.08), xlabel="forget ROUGE-1 (lower is better)",
               ylabel="retain ROUGE-1 (higher is better)", title=scen, aspect="equal")
        ax.legend(loc="lower left", fontsize=7)
    return _save(fig, out, "forget_vs_retain")


def ds_bars(rows, out: Path) -> list[Path]:
    plt = _plt()
    scens = _scenarios(rows)
    methods = list(dict.fromkeys(r["method"] for r in _ok(rows)))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(methods) * len(scens) / 1.5), 4.2))
    width = 0.8 / max(1, len(scens))
    for j, scen in enumerate(scens):
        by = {r["method"]: r for r in _ok(rows) if r["scenario"] == scen}
        xs = [i + j * width for i, m in enumerate(methods) if m in by]
        ax.bar(xs, [by[m]["ds"] for m in methods if m in by], width,
               yerr=[by[m].get("ds_std", 0.0) for m in methods if m in by], capsize=3, label=scen)
    ax.set_xticks([i + width * (len(scens) - 1) / 2 for i in range(len(methods))], methods, rotation=30, ha="right")
    ax.set_ylabel("Deviation Score (lower is better)")
    ax.set_title("DS per method (error bars: std over seeds)")
    ax.legend(fontsize=8)
    return _save(fig, out, "ds_bars")


def _forgotten_qa(record: dict) -> list[dict]:
    """The per-example values of the direct questions on the edges a result's last step forgot."""
    forget = set(record["scenario"]["splits"][-1]["forget_edges"])
    return [q for q in (record.get("per_example") or {}).get("qa", []) if q["edge"] in forget and q["form"] == "direct"]


def leak_heatmap(records, out: Path) -> list[Path]:
    """Forget ROUGE-1 per attribute, from the per-example values kept in each result."""
    plt = _plt()
    cells = defaultdict(lambda: defaultdict(list))  # (scenario) -> (method, attribute) -> values
    attrs_all: dict[str, None] = {}
    for r in records:
        if r.get("status") != "ok" or not r.get("per_example"):
            continue
        for q in _forgotten_qa(r):
            cells[r["scenario"]["label"]][(r.get("row", r["method"]), q["attribute"])].append(q["rouge1"])
            attrs_all[q["attribute"]] = None
    scens = list(cells)
    if not scens:
        return []
    fig, axes = plt.subplots(1, len(scens), figsize=(0.7 * len(attrs_all) * len(scens) + 4, 5), squeeze=False)
    im = None
    for ax, scen in zip(axes[0], scens):
        methods = sorted(dict.fromkeys(m for m, _ in cells[scen]), key=lambda m: m not in REFERENCE_ROWS)
        attrs = list(dict.fromkeys(a for _, a in cells[scen]))
        grid = [[mean(cells[scen][(m, a)]) if cells[scen].get((m, a)) else math.nan for a in attrs] for m in methods]
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="Reds", aspect="auto")
        ax.set_xticks(range(len(attrs)), attrs, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(methods)), methods, fontsize=8)
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                if not math.isnan(v):
                    ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=6,
                            color="white" if v > 0.6 else "black")
        ax.set_title(scen)
    fig.suptitle("What still leaks: forget ROUGE-1 per attribute (direct questions on forgotten edges)")
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="still known (ROUGE-1)")
    return _save(fig, out, "leak_heatmap")


def knowledge_graphs(records, out: Path) -> list[Path]:
    """One figure per scenario: the graph, forgotten edges coloured by what the model still knows."""
    import networkx as nx

    from pistol_data.io import from_manifest

    plt = _plt()
    paths: list[Path] = []
    by_scen = defaultdict(list)
    for r in records:
        if r.get("status") == "ok" and r.get("per_example") and not spec_on_facts(r["scenario"].get("spec")):
            by_scen[r["scenario"]["label"]].append(r)
    for scen, recs in by_scen.items():
        ds = from_manifest(recs[0].get("dataset", {}))
        if ds is None or not ds.has_graph:
            continue  # not the dataset the results came from (never draw a wrong picture), or no graph
        g, simple = ds.graph, nx.Graph(ds.graph)
        pos = nx.kamada_kawai_layout(simple)
        methods = sorted(dict.fromkeys(r.get("row", r["method"]) for r in recs), key=lambda m: m not in REFERENCE_ROWS)
        ncol = min(4, len(methods))
        nrow = math.ceil(len(methods) / ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.3 * nrow), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, m in zip(axes.flat, methods):
            rs = [r for r in recs if r.get("row", r["method"]) == m]
            forget = set(rs[0]["scenario"]["splits"][-1]["forget_edges"])
            known = defaultdict(list)
            for r in rs:
                for q in _forgotten_qa(r):
                    known[q["edge"]].append(q["rouge1"])
            nx.draw_networkx_nodes(g, pos, node_size=80, node_color="#4C72B0", ax=ax)
            for u, v, k, data in g.edges(keys=True, data=True):
                if k in forget:
                    val = mean(known[k]) if known[k] else 0.0
                    nx.draw_networkx_edges(g, pos, edgelist=[(u, v)], width=4, ax=ax,
                                           edge_color=[plt.cm.RdYlGn_r(val)])
                else:
                    nx.draw_networkx_edges(g, pos, edgelist=[(u, v)], width=1, edge_color="#bbb", ax=ax,
                                           style="solid" if data.get("type") == "sales" else "dashed")
            nx.draw_networkx_labels(g, pos, font_size=6, ax=ax)
            still = mean(v for vals in known.values() for v in vals) if known else 0.0
            ax.set_title(f"{m}: still knows {still:.2f}", fontsize=9)
        sm = plt.cm.ScalarMappable(cmap="RdYlGn_r", norm=plt.Normalize(0, 1))
        fig.colorbar(sm, ax=axes.ravel().tolist(), shrink=0.6, label="forgotten edge: ROUGE-1 still recalled")
        fig.suptitle(f"{scen}: forgotten edges (thick) coloured by what the model still knows")
        paths += _save(fig, out, "graph_" + re.sub(r"[^A-Za-z0-9_.-]+", "-", scen))
    return paths


def cost_vs_ds(rows, out: Path) -> list[Path]:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for scen in _scenarios(rows):
        rs = [r for r in _ok(rows) if r["scenario"] == scen and r["kind"] != "reference"]
        if not rs:
            continue
        ax.scatter([max(r["apply_seconds"], 0.1) for r in rs], [r["ds"] for r in rs], label=scen)
        for r in rs:
            ax.annotate(r["method"], (max(r["apply_seconds"], 0.1), r["ds"]), textcoords="offset points",
                        xytext=(4, 3), fontsize=7)
    ax.set_xscale("log")
    ax.set(xlabel="apply wall time, s (log)", ylabel="Deviation Score (lower is better)",
           title="cost vs DS (bottom left is best)")
    ax.legend(fontsize=8)
    return _save(fig, out, "cost_vs_ds")


def write_plots(records, rows, out: Path) -> dict[str, Path]:
    """Every plot, PNG and SVG, into ``out``; returns name → PNG path."""
    out = Path(out)
    made: dict[str, Path] = {}
    for fn, arg in ((forget_vs_retain, rows), (ds_bars, rows), (leak_heatmap, records),
                    (knowledge_graphs, records), (cost_vs_ds, rows)):
        for p in fn(arg, out):
            if p.suffix == ".png":
                made[p.stem] = p
    return made


# ---- the report's figures (unlearnbench.report computes the data) ----------------------------

_MARKERS = "osD^vP*X<>"


def _style(plt, i: int, label: str) -> dict:
    """Distinct colour and marker for the i-th line (tab20: up to 20 colours; markers cycle too, so 17+
    methods stay apart); reference rows dashed."""
    return {"color": plt.get_cmap("tab20")(i % 20), "marker": _MARKERS[i % len(_MARKERS)],
            "linestyle": "--" if label in REFERENCE_ROWS else "-", "label": label, "alpha": 0.85}


def _lines(plt, series: dict, xlabel: str, ylabel: str, title: str, out: Path, name: str) -> None:
    """One line plot: row → (xs, ys)."""
    _panels(plt, {title: series}, xlabel, ylabel, None, out, name)


def _panels(plt, panels: dict, xlabel: str, ylabel: str, title: str | None, out: Path, name: str) -> None:
    """Line plots side by side on a shared y axis (panel title → row → (xs, ys)), one legend; ``title``
    over them all (a lone panel's own title is enough)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels) + 1.5, 4.2), squeeze=False, sharey=True)
    for ax, (sub, series) in zip(axes[0], panels.items()):
        for i, (label, (xs, ys)) in enumerate(series.items()):
            ax.plot(xs, ys, **_style(plt, i, label))
        ax.set_xlabel(xlabel)
        ax.set_title(sub, fontsize=9 if len(panels) > 1 else None)
    axes[0][0].set_ylabel(ylabel)
    axes[0][-1].legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    if title:
        fig.suptitle(title)
    _save(fig, out, name)


def report_figures(out: Path, scenarios: list[str], ds: dict, connectivity: dict | None = None,
                   density: dict | None = None, curves: dict | None = None, one_sequence: bool = True,
                   attack_grid: dict | None = None, methods: list[str] = ()) -> list[str]:
    """The structural study's figures into ``out``; returns their names. ``ds``: row → one
    (mean, std, n) per scenario; ``connectivity``: row → (degrees, DS); ``density``: panel (forget-set
    size) → row → (component edge densities, DS); ``curves``: (scenario, row)
    → DS after each request; ``attack_grid``: (method, attack) → recovery."""
    plt = _plt()
    made = []
    rows = list(ds)
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(scenarios) * max(1, len(rows)) / 4), 4.5))
    w = 0.8 / max(1, len(rows))
    for i, row in enumerate(rows):
        ms = ds[row]
        ax.bar([j + i * w for j in range(len(scenarios))], [m[0] for m in ms], w,
               yerr=[m[1] if m[2] > 1 else 0 for m in ms], label=row, capsize=1.5)
    ax.set_xticks([j + 0.4 - w / 2 for j in range(len(scenarios))], scenarios, rotation=20, ha="right")
    ax.set_ylabel("DS (lower is better)")
    ax.legend(fontsize=7, ncol=2, bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.set_title("DS per scenario (mean ± std over seeds)")
    _save(fig, out, "ds_by_scenario")
    made.append("ds_by_scenario")
    if connectivity:
        _lines(plt, connectivity, "connectivity of the forgotten edge (max endpoint degree)", "DS",
               "Connectivity vs DS (single-edge scenarios)", out, "connectivity")
        made.append("connectivity")
    if density:
        _panels(plt, density, "edge density of the forgotten edges' component", "DS (lower is better)",
                "Density vs DS (components of one size)", out, "density")
        made.append("density")
    if curves:
        _lines(plt, {(row if one_sequence else f"{row} ({s})"): (list(range(1, len(c) + 1)), c)
                     for (s, row), c in curves.items()},
               "request", "DS on everything forgotten so far", "Sequential requests", out, "sequence")
        made.append("sequence")
    attack_grid = attack_grid or {}
    names = sorted({a for _, a in attack_grid})
    meths = [m for m in methods if any((m, a) in attack_grid for a in names)]
    if names and meths:
        import numpy as np

        grid = np.array([[attack_grid.get((m, a), float("nan")) for a in names] for m in meths], dtype=float)
        fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 0.4 * len(meths) + 1.5))
        im = ax.imshow(np.ma.masked_invalid(grid), cmap="Reds", vmin=0, vmax=max(0.05, np.nanmax(grid)
                                                                                if np.isfinite(grid).any() else 1))
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
        ax.set_yticks(range(len(meths)), meths)
        for i in range(len(meths)):
            for j in range(len(names)):
                ax.text(j, i, "n/a" if math.isnan(grid[i, j]) else f"{grid[i, j]:+.2f}", ha="center", va="center",
                        fontsize=7)
        fig.colorbar(im, ax=ax, label="forget ROUGE-1 recovered")
        ax.set_title("Attack recovery (after − before)")
        _save(fig, out, "attack_recovery")
        made.append("attack_recovery")
    return made
