"""The structural-study report: ``unlearnbench report RESULTS_DIR`` → ``report.md`` + plots.

It reads the cells of one results folder and asks the questions the study exists for. Scenario
roles are read off the graph, not off scenario names, so any config gets the sections it can
support:

* **DS per scenario** — every method row × every scenario, mean ± std over seeds.
* **Connectivity** (PISTOL: more connected knowledge is harder to unlearn) — single-edge
  scenarios ordered by their edge's connectivity (the larger endpoint degree): DS at the most
  connected edge minus DS at the least connected one, per method.
* **Density** (PISTOL, sample dataset 2: unlearning is harder in a denser graph) — scenarios whose
  forget set lies in one connected component, components of one size only, by the component's
  edge density: DS in the densest minus DS in the sparsest, per method.
* **Domain** (PISTOL: domain-skewed forgetting harms the same domain more) — for single-edge
  scenarios, the drop in retain ROUGE-1 (against the implanted model, ``none``) on the contracts
  of the forgotten edge's type vs on the other type.
* **Batch size** — DS by number of forgotten edges.
* **Sequential requests** — DS, forget and retain ROUGE-1 after every request of a sequence.
* **Attacks** — forget ROUGE-1 on held-out forms (paraphrase, reverse) and after every attack,
  with the recovery (after − before on the same questions).
* **LUNAR vs baselines** — the DS ratio gradient baseline / LUNAR per scenario for every LUNAR row (its
  layer search, its layer fixed; the paper: 2.9–11.7×) and its apply time beside theirs.
* **Editing as unlearning** (arXiv 2505.19855) — every editor per scenario beside the best other
  row, and the paper's findings: editors are strong baselines; WISE and AlphaEdit the strongest,
  especially on pretrained knowledge (``pretrained_facts`` scenarios); query merging helps;
  self-improved targets give more human-like refusals (forget fluency, refusal rate).

Each finding is stated as holds / does not hold with the counts behind it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean, pstdev

from pistol_data.scenarios import spec_on_facts

from .leaderboard import REFERENCE_ROWS
from .results import comparability_groups, load_results, mixed_versions_text, write_text_atomic

GRADIENT_BASELINES = ("ga", "gd", "ukl", "npo", "dpo")  # LUNAR's comparison set
LEAK_RECOVERY = 0.1  # an attack that brings back more forget ROUGE-1 than this (mean) makes the method leak


@dataclass
class Section:
    """One part of the report: its markdown (empty: nothing to say here), the typed findings it
    establishes (``{"name", "holds", "evidence"}`` per claim) and the data its figure plots."""

    text: str
    findings: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)


def _m(rec: dict, key: str) -> float:
    v = rec.get("metrics", {}).get(key, {})
    v = v.get("value") if isinstance(v, dict) else v
    return float("nan") if v is None else float(v)


def _agg(vals) -> tuple[float, float, int]:
    vals = [v for v in vals if v is not None and not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan"), 0
    return mean(vals), (pstdev(vals) if len(vals) > 1 else 0.0), len(vals)


def _fmt(v: float, digits: int = 1) -> str:
    return "–" if v is None or math.isnan(v) else f"{v:.{digits}f}"


TIE = 1e-9  # a difference this small favours neither side


def _ties(values) -> int:
    return sum(abs(v) < TIE for v in values)


def _holds(k: int, n: int, ties: int = 0) -> bool | None:
    """A majority of the comparisons that differ (a tie favours neither side); all tied: it does not
    hold (nothing is harder); None with no comparison."""
    return k > (n - ties) / 2 if n - ties > 0 else (False if n else None)


def _equal(ties: int) -> str:
    return f" ({ties} equal)" if ties else ""


def _support(k: int, n: int, seeds: tuple[int, int], ties: int = 0) -> str:
    """How much a majority of k in n says: the one-sided sign test's p-value (k or more by chance
    when each is a coin flip; ties dropped, as the sign test does) and the seeds per cell (fewest,
    most); weak where a cell has fewer than 3 seeds or at p >= 0.05."""
    m = n - ties
    if m <= 0:
        return ""
    from scipy.stats import binomtest

    p = binomtest(k, m, 0.5, alternative="greater").pvalue
    lo, hi = seeds
    span = f"{lo}" if lo == hi else f"{lo}–{hi}"
    return (f"; sign test{f' over the {m} unequal' if ties else ''} p = {p:.2g}, {span} seed{'s' * (hi != 1)} per cell"
            + (" — weak evidence" if p >= 0.05 or lo < 3 else ""))


def _seeded(st, deltas: dict, scenarios) -> str:
    """The count again over the methods with 3 or more seeds in every cell, where only some have."""
    full = [r for r in deltas if st.seeds_range([r], scenarios)[0] >= 3]
    if not full or len(full) == len(deltas):
        return ""
    return (f"; with 3 or more seeds per cell: {sum(deltas[r] > TIE for r in full)} of {len(full)}"
            f"{_equal(_ties(deltas[r] for r in full))} ({', '.join(full)})")


def _pm(vals, digits: int = 1) -> str:
    m, s, n = _agg(vals)
    if n == 0:
        return "–"
    return f"{m:.{digits}f} ± {s:.{digits}f}" if n > 1 else f"{m:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _dataset(results_dir: Path, records: list[dict]):
    """The dataset the cells were scored on, the config's scenario order, its evaluation precision
    and the whole grid's config (from the run's config.yaml, else the records' preset/seed, file
    order, None, None)."""
    cfg = results_dir / "config.yaml"
    if cfg.is_file():
        from .config import load_config
        from .runner import load_dataset

        run = load_config(cfg)
        return load_dataset(run), [s.label() for s in run.scenarios], run.eval.precision, run
    from pistol_data.io import from_manifest

    d = records[0].get("dataset", {})
    ds = from_manifest(d)
    if ds is None:
        raise ValueError(f"{results_dir}: cannot find the dataset the cells were scored on "
                         f"({d.get('preset')}, fingerprint {str(d.get('fingerprint'))[:12]}…) and there is no config.yaml")
    return ds, [], None, None


def _precision_text(records: list[dict], setting: str | None) -> str:
    """What the cells were scored in (their records: ``auto`` resolved on the machine that ran them),
    with the config's setting where it differs."""
    used = sorted({(r.get("precision") or {}).get("evaluation") for r in records} - {None})
    if not used:
        return f"; evaluation precision `{setting}`" if setting else ""
    return "; evaluation precision " + " and ".join(f"`{u}`" for u in used) + \
        (f" (config: `{setting}`)" if setting and setting not in used else "")


def missing_cells(expected: list[tuple[str, str, int]], records: list[dict]) -> list[tuple[str, str, int]]:
    """The method cells of the config's grid (``expected``, from ``config.expected_cells``) that no
    part has written yet, ok or failed: (row, scenario label, seed) in the config's order."""
    have = {(r["row"], r["scenario"]["label"], r.get("seed")) for r in records}
    return [c for c in expected if c not in have]


def missing_text(missing: list[tuple[str, str, int]], total: int) -> str:
    """One line per method row with cells not run yet: the whole row, or its scenarios with their seeds."""
    if not missing:
        return ""
    by_row: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for row, label, seed in missing:
        by_row[row][label].append(seed)
    lines = [f"\n**Not run yet: {len(missing)} of {total} method cells** (the config's grid; `unlearnbench run "
             "CONFIG --methods/--scenarios/--seeds` runs a part, finished cells are kept):\n"]
    for row, cols in by_row.items():
        lines.append(f"- `{row}`: " + "; ".join(f"{label} (seed{'s' if len(seeds) > 1 else ''} "
                                                f"{', '.join(map(str, seeds))})" for label, seeds in cols.items()))
    return "\n".join(lines) + "\n"


class Study:
    """The records of one results folder, grouped for the report's questions."""

    def __init__(self, records: list[dict], ds, scenario_order: list[str] | None = None):
        self.ds = ds
        self.ok = [r for r in records if r.get("status") == "ok"]
        self.failed = [r for r in records if r.get("status") != "ok"]
        self.by: dict[tuple[str, str], list[dict]] = defaultdict(list)
        for r in self.ok:
            self.by[(r["row"], r["scenario"]["label"])].append(r)
        seen = list(dict.fromkeys(r["scenario"]["label"] for r in records))
        order = [s for s in scenario_order or [] if s in seen]
        self.scenarios = order + [s for s in seen if s not in order]  # the config's order first
        rows = list(dict.fromkeys(r["row"] for r in records))
        self.references = [r for r in REFERENCE_ROWS if r in rows]
        self.methods = [r for r in rows if r not in REFERENCE_ROWS]
        self.kind = {r["row"]: r.get("kind", "") for r in records}
        self.splits = {r["scenario"]["label"]: r["scenario"]["splits"] for r in records}
        # pretrained-facts scenarios forget facts, not contracts: no graph role (connectivity, domain)
        self.on_facts = {r["scenario"]["label"] for r in records if spec_on_facts(r["scenario"].get("spec"))}
        self.seeds = sorted({r.get("seed") for r in records})

    def vals(self, row: str, scenario: str, key: str) -> list[float]:
        return [_m(r, key) for r in self.by.get((row, scenario), [])]

    def mean(self, row: str, scenario: str, key: str) -> float:
        return _agg(self.vals(row, scenario, key))[0]

    def seeds_range(self, rows, scenarios) -> tuple[int, int]:
        """Fewest and most seeds behind one (row, scenario) cell of a finding."""
        n = [len(self.by.get((r, s), [])) for r in rows for s in scenarios]
        n = [k for k in n if k] or [0]
        return min(n), max(n)

    # ---- scenario roles, read off the graph ----------------------------------------------
    def single_edge(self) -> list[tuple[str, str, int]]:
        """(scenario, edge, connectivity) for one-request, one-edge scenarios, least connected first."""
        deg = self.ds.degree()
        out = []
        for s, splits in self.splits.items():
            if len(splits) == 1 and len(splits[0]["forget_edges"]) == 1 and s not in self.on_facts:
                e = splits[0]["forget_edges"][0]
                u, v = self.ds.edge_endpoints[e]
                out.append((s, e, max(deg[u], deg[v])))
        return sorted(out, key=lambda t: (t[2], t[0]))

    def by_component(self) -> list[tuple[str, int, float, int]]:
        """(scenario, component, edge density, forgotten edges) for one-request scenarios whose forget
        edges all lie in one connected component of the graph; components numbered by density. Only
        components of one size (entities) are compared, as PISTOL's density question holds the size
        fixed: the size of at least 3 entities whose components hit by scenarios differ in density
        (the one with most scenarios); none when no size does — a lone contract's two entities are
        trivially "complete", and set beside a sparse hub they would ask the connectivity question
        again under another name."""
        import networkx as nx

        if self.ds is None or not self.ds.has_graph:
            return []
        g = nx.Graph(self.ds.graph)
        comps = [set(c) for c in nx.connected_components(g)]
        dens = [nx.density(g.subgraph(c)) for c in comps]
        rank = {i: k for k, i in enumerate(sorted(range(len(comps)), key=lambda i: (dens[i], min(comps[i]))))}
        out = []
        for s, splits in self.splits.items():
            if len(splits) != 1 or s in self.on_facts or not splits[0]["forget_edges"]:
                continue
            nodes = {n for e in splits[0]["forget_edges"] for n in self.ds.edge_endpoints.get(e, ())}
            hit = [i for i, c in enumerate(comps) if nodes and nodes <= c]
            if hit:
                out.append((len(comps[hit[0]]), (s, rank[hit[0]], dens[hit[0]], len(splits[0]["forget_edges"]))))
        sizes = {n: [c for m, c in out if m == n] for n, _ in out}
        fit = [n for n, cs in sizes.items() if n >= 3 and len({c[2] for c in cs}) >= 2]
        if not fit:
            return []
        size = max(fit, key=lambda n: (len(sizes[n]), n))
        return sorted(sizes[size], key=lambda t: (t[2], t[3], t[0]))

    def sequences(self) -> list[str]:
        return [s for s, sp in self.splits.items() if len(sp) > 1]


# ---- sections -------------------------------------------------------------------------------

def ds_section(st: Study) -> Section:
    rows = []
    for row in st.references + st.methods:
        rows.append([row, st.kind.get(row, "")] + [_pm(st.vals(row, s, "ds")) for s in st.scenarios])
    text = ("## DS per scenario\n\nDeviation Score (100·√(forget R1² + (1 − retain R1)²), lower is better), "
            f"mean ± std over seeds {st.seeds}. `none` is the implanted model before unlearning.\n\n"
            + _table(["method", "kind"] + st.scenarios, rows))
    return Section(text)


def connectivity_section(st: Study) -> Section:
    singles = st.single_edge()
    if len(singles) < 2 or singles[0][2] == singles[-1][2]:
        return Section("## Connectivity\n\nNeeds two single-edge scenarios of different connectivity; not measurable here.")
    lo = [s for s in singles if s[2] == singles[0][2]]
    hi = [s for s in singles if s[2] == singles[-1][2]]
    header = ["method"] + [f"{s} ({e}, degree {d})" for s, e, d in singles] + ["Δ DS most − least connected",
                                                                              "Δ forget R1", "Δ retain R1"]
    rows, deltas = [], {}
    for row in st.references + st.methods:
        def avg(group, key, row=row):
            return _agg([st.mean(row, s, key) for s, _, _ in group])[0]
        d_ds = avg(hi, "ds") - avg(lo, "ds")
        d_f = avg(hi, "forget_rouge1") - avg(lo, "forget_rouge1")
        d_r = avg(hi, "retain_rouge1") - avg(lo, "retain_rouge1")
        if row in st.methods and not math.isnan(d_ds):
            deltas[row] = d_ds
        rows.append([row] + [_pm(st.vals(row, s, "ds")) for s, _, _ in singles]
                    + [_fmt(d_ds), _fmt(d_f, 3), _fmt(d_r, 3)])
    harder = sorted(r for r, d in deltas.items() if d > TIE)
    ties = _ties(deltas.values())
    single_labels = [s for s, _, _ in singles]
    finding = {"name": "PISTOL: more connected knowledge is harder to unlearn",
               "holds": _holds(len(harder), len(deltas), ties),
               "evidence": f"DS is higher on the most connected edge for {len(harder)} of {len(deltas)} methods"
                           f"{_equal(ties)} (mean Δ DS {_fmt(_agg(deltas.values())[0])})"
                           + _support(len(harder), len(deltas), st.seeds_range(deltas, single_labels), ties)
                           + _seeded(st, deltas, single_labels)}
    text = ("## Connectivity: hub vs independent edge\n\nSingle-edge scenarios, least connected first "
            "(connectivity = the larger degree of the edge's two entities). Δ columns: most minus least "
            "connected (positive Δ DS = the connected edge is harder).\n\n" + _table(header, rows)
            + f"\n\n**{finding['name']}**: {'holds' if finding['holds'] else 'does not hold'} — {finding['evidence']}.")
    return Section(text, {"connectivity": finding}, {"deltas": deltas})


def density_section(st: Study) -> Section:
    """PISTOL's second question (its sample dataset 2): is unlearning harder in a denser graph? One
    column per scenario whose forget set lies in one component, components by edge density."""
    cells = st.by_component()
    densities = sorted({d for _, _, d, _ in cells})
    if len(densities) < 2:
        return Section("")
    lo = [c for c in cells if c[2] == densities[0]]
    hi = [c for c in cells if c[2] == densities[-1]]
    header = ["method"] + [f"{s} (density {d:.2f}, {n} edge{'s' * (n > 1)})" for s, _, d, n in cells] + \
        ["Δ DS densest − sparsest", "Δ neighbour retain R1"]
    rows, deltas = [], {}
    for row in st.references + st.methods:
        def avg(group, key, row=row):
            return _agg([st.mean(row, s, key) for s, _, _, _ in group])[0]
        d_ds = avg(hi, "ds") - avg(lo, "ds")
        d_n = avg(hi, "neighbour_retain_rouge1") - avg(lo, "neighbour_retain_rouge1")
        if row in st.methods and not math.isnan(d_ds):
            deltas[row] = d_ds
        rows.append([row] + [f"{_fmt(st.mean(row, s, 'ds'))} ({_fmt(st.mean(row, s, 'forget_rouge1'), 2)} / "
                             f"{_fmt(st.mean(row, s, 'retain_rouge1'), 2)} / "
                             f"{_fmt(st.mean(row, s, 'neighbour_retain_rouge1'), 2)})" for s, _, _, _ in cells]
                    + [_fmt(d_ds), _fmt(d_n, 3)])
    harder = sorted(r for r, d in deltas.items() if d > TIE)
    ties = _ties(deltas.values())
    compared = [c[0] for c in lo + hi]  # the sparsest and densest components' scenarios
    finding = {"name": "PISTOL: unlearning is harder in a denser graph",
               "holds": _holds(len(harder), len(deltas), ties),
               "evidence": f"DS is higher in the densest component (density {densities[-1]:.2f}) than in the "
                           f"sparsest ({densities[0]:.2f}) for {len(harder)} of {len(deltas)} methods{_equal(ties)} "
                           f"(mean Δ DS {_fmt(_agg(deltas.values())[0])})"
                           + _support(len(harder), len(deltas), st.seeds_range(deltas, compared), ties)
                           + _seeded(st, deltas, compared)}
    text = ("## Density: chain vs semi-dense cluster vs complete graph\n\nScenarios whose forgotten contracts lie "
            "in one connected component, components of the same size only (entities), sparsest first (edge density "
            "= edges / possible edges). "
            "Cells: DS (forget R1 / retain R1 / neighbour retain R1), mean over seeds. Δ columns: densest minus "
            "sparsest, averaged over each one's scenarios (positive Δ DS = the dense graph is harder). In a denser "
            "component each entity also has more contracts: density and connectivity move together here, as in "
            "PISTOL's dataset.\n\n" + _table(header, rows)
            + f"\n\n**{finding['name']}**: {'holds' if finding['holds'] else 'does not hold'} — {finding['evidence']}.")
    # the figure: DS against the component's edge density, one panel per forget-set size
    lines = {}
    for n in sorted({c[3] for c in cells}):
        group = [c for c in cells if c[3] == n]
        lines[f"{n} edge{'s' * (n > 1)} forgotten"] = {
            row: ([d for _, _, d, _ in group], [st.mean(row, s, "ds") for s, _, _, _ in group])
            for row in st.references + st.methods}
    return Section(text, {"density": finding}, {"density_deltas": deltas, "density_lines": lines})


def _retain_by_type(rec: dict, ds, etype: str, same: bool) -> float:
    split = rec["scenario"]["splits"][-1]
    edges = set(split["neighbour_edges"]) | set(split["far_edges"])
    keep = {e for e in edges if (ds.edge_types[e] == etype) == same}
    vals = [q["rouge1"] for q in rec.get("per_example", {}).get("qa", [])
            if q.get("form") == "direct" and q.get("edge") in keep]
    return mean(vals) if vals else float("nan")


def domain_section(st: Study) -> Section:
    singles = st.single_edge()
    types = sorted(set(st.ds.edge_types.values()))
    if len(types) < 2 or not singles or "none" not in st.references:
        return Section("## Domain\n\nNeeds single-edge scenarios, two contract types and the `none` row; not measurable.")
    header = ["method"] + [f"{s} ({st.ds.edge_types[e]}): drop same / other" for s, e, _ in singles]
    rows, wins, total, ties = [], 0, 0, 0
    for row in st.methods:
        cells = []
        for s, e, _ in singles:
            t = st.ds.edge_types[e]
            ref = st.by.get(("none", s), [])
            if not ref:
                cells.append("–")
                continue
            drops = []
            for same in (True, False):
                before = _retain_by_type(ref[0], st.ds, t, same)
                after = _agg([_retain_by_type(r, st.ds, t, same) for r in st.by.get((row, s), [])])[0]
                drops.append(before - after)
            if not any(math.isnan(x) for x in drops):
                total += 1
                wins += drops[0] - drops[1] > TIE
                ties += abs(drops[0] - drops[1]) < TIE
            cells.append(f"{_fmt(drops[0], 3)} / {_fmt(drops[1], 3)}")
        rows.append([row] + cells)
    finding = {"name": "PISTOL: forgetting harms the same domain more",
               "holds": _holds(wins, total, ties),
               "evidence": f"the retain drop is larger on same-type contracts in {wins} of {total} (method, scenario) "
                           f"pairs{_equal(ties)}"
                           + _support(wins, total, st.seeds_range(st.methods, [s for s, _, _ in singles]), ties)}
    text = ("## Domain: same vs other contract type\n\nDrop in retain ROUGE-1 (direct questions) against the "
            "implanted model, on the retained contracts of the forgotten edge's type (*same*) and of the other "
            "type (*other*); mean over seeds.\n\n" + _table(header, rows)
            + f"\n\n**{finding['name']}**: {'holds' if finding['holds'] else 'does not hold'} — {finding['evidence']}.")
    return Section(text, {"domain": finding})


def size_section(st: Study) -> Section:
    one = [s for s, sp in st.splits.items() if len(sp) == 1]
    sizes = {s: len(st.splits[s][0]["forget_edges"]) for s in one}
    if len(set(sizes.values())) < 2:
        return Section("")
    order = sorted(one, key=lambda s: (sizes[s], s))
    header = ["method"] + [f"{s} ({sizes[s]} edge{'s' * (sizes[s] > 1)})" for s in order]
    rows = [[row] + [f"{_fmt(st.mean(row, s, 'ds'))} ({_fmt(st.mean(row, s, 'forget_rouge1'), 2)} / "
                     f"{_fmt(st.mean(row, s, 'retain_rouge1'), 2)})" for s in order]
            for row in st.references + st.methods]
    return Section("## Batch size: one edge vs several\n\nDS (forget R1 / retain R1), mean over seeds, scenarios by "
                   "number of forgotten edges.\n\n" + _table(header, rows))


def sequence_section(st: Study) -> Section:
    seqs = st.sequences()
    if not seqs:
        return Section("")
    parts, curves = [], {}
    for s in seqs:
        n = len(st.splits[s])
        header = ["method"] + [f"after request {i + 1}: DS (forget / retain)" for i in range(n)] + ["Δ DS last − first"]
        rows = []
        for row in st.methods:
            recs = st.by.get((row, s), [])
            if not any(r.get("steps") for r in recs):  # a row not run on this sequence
                continue
            per_step = []
            for i in range(n):
                def step_vals(key, i=i, recs=recs):
                    out = []
                    for r in recs:
                        steps = r.get("steps") or []
                        if i < len(steps):
                            v = steps[i]["metrics"].get(key, {})
                            out.append(v.get("value") if isinstance(v, dict) else v)
                    return [x for x in out if x is not None]
                per_step.append((_agg(step_vals("ds"))[0], _agg(step_vals("forget_rouge1"))[0],
                                 _agg(step_vals("retain_rouge1"))[0]))
            curves[(s, row)] = [p[0] for p in per_step]
            rows.append([row] + [f"{_fmt(d)} ({_fmt(f, 2)} / {_fmt(r, 2)})" for d, f, r in per_step]
                        + [_fmt(per_step[-1][0] - per_step[0][0])])
        parts.append(f"### {s}\n\n" + _table(header, rows))
    deltas = [c[-1] - c[0] for c in curves.values() if c and not math.isnan(c[-1] - c[0])]
    worse = sum(d > 0 for d in deltas)
    text = ("## Sequential requests\n\nAfter each request the model is scored on everything forgotten so far. "
            f"DS grows from the first to the last request for {worse} of {len(deltas)} methods.\n\n"
            + "\n\n".join(parts))
    return Section(text, {"sequence": {"worse": worse, "total": len(deltas)}}, {"curves": curves})


def attack_section(st: Study) -> Section:
    """The attack table and the recovery grid {(method, attack): mean recovery} for the heatmap."""
    meanings = {a: g["meaning"] for r in st.ok for a, g in (r.get("attacks") or {}).items()}
    names = sorted(meanings)
    if not names:
        return Section("## Attacks\n\nNo attack was scored in this run.")
    header = (["method", "forget R1 (direct)", "paraphrase", "reverse"]
              + [f"{a}: after (recovery)" for a in names])
    rows, grid = [], {}
    for row in st.methods:
        recs = [r for s in st.scenarios for r in st.by.get((row, s), [])]
        if not recs:
            continue
        cells = [_fmt(_agg([_m(r, key) for r in recs])[0], 3)
                 for key in ("forget_rouge1", "forget_paraphrase_rouge1", "forget_reverse_rouge1")]
        for a in names:
            got = [r["attacks"][a] for r in recs if a in (r.get("attacks") or {})]
            after = _agg([g["forget_rouge1"] for g in got])[0]
            recovery = _agg([g["recovery"] for g in got if "recovery" in g])[0]
            grid[(row, a)] = recovery
            if not got:
                cells.append("n/a")
            elif math.isnan(recovery):
                cells.append(_fmt(after, 3))
            else:
                cells.append(f"{_fmt(after, 3)} ({'+' if recovery >= 0 else ''}{_fmt(recovery, 3)})")
        rows.append([row] + cells)
    # which methods leak under which attack: mean recovery above LEAK_RECOVERY forget ROUGE-1
    leaks = {a: [f"{row} (+{grid[(row, a)]:.2f})" for row in st.methods
                 if math.isfinite(grid.get((row, a), float("nan"))) and grid[(row, a)] > LEAK_RECOVERY]
             for a in names}
    leak_text = "\n".join(f"- **{a}**: " + (", ".join(v) or "none") for a, v in leaks.items())
    text = ("## Attacks: how much forgotten knowledge comes back\n\nForget ROUGE-1 on direct questions, on the "
            "held-out paraphrased and reverse forms, and after each attack (recovery = after − before on the same "
            "questions; relearn_forget scores the half it did not train on). Mean over every scenario and seed; "
            "n/a = the attack does not apply to the method.\n\n" + _table(header, rows)
            + "\n\n" + "\n".join(f"- `{a}`: {meanings[a]}" for a in names)
            + f"\n\n**Leaks under attack** (mean recovery > {LEAK_RECOVERY} forget ROUGE-1):\n\n" + leak_text)
    return Section(text, {"attack_leaks": leaks}, {"attack_grid": grid})


def oracle_section(st: Study) -> Section:
    """Retraining and membership inference: per method, forget quality against the retrained
    oracle (how many scenario × seed cells reach p ≥ 0.05), membership AUCs and privleak."""
    keys = ("forget_quality", "mia_loss", "mia_minkpp", "privleak", "forget_truth_ratio")
    if not any(math.isfinite(_m(r, k)) for r in st.ok for k in keys):
        return Section("")
    has_oracle = "retrain" in st.references
    header = ["row", "forget quality (p)", "cells p ≥ 0.05", "MIA AUC loss", "MIA AUC Min-K%++", "privleak",
              "truth ratio"]
    rows, same, leak = [], [], []
    for row in st.references + st.methods:
        recs = [r for s in st.scenarios for r in st.by.get((row, s), [])]
        if not recs:
            continue
        fq = [_m(r, "forget_quality") for r in recs if math.isfinite(_m(r, "forget_quality"))]
        n_same = sum(v >= 0.05 for v in fq)
        pl = _agg([_m(r, "privleak") for r in recs])[0]
        rows.append([row, _fmt(_agg(fq)[0], 3), f"{n_same}/{len(fq)}" if fq else "–"]
                    + [_fmt(_agg([_m(r, k) for r in recs])[0], 3) for k in ("mia_loss", "mia_minkpp")]
                    + [_fmt(pl, 3), _fmt(_agg([_m(r, "forget_truth_ratio") for r in recs])[0], 3)])
        if row in st.methods and fq and n_same == len(fq):
            same.append(row)
        if row in st.methods and math.isfinite(pl) and pl > 0.1:
            leak.append(f"{row} ({pl:+.2f})")
    verdict = ""
    if has_oracle:
        verdict = ("\n\n**Indistinguishable from retraining** (forget quality ≥ 0.05 in every cell): "
                   + (", ".join(same) or "none") + ". **Leaks by membership inference** (privleak > 0.1): "
                   + (", ".join(leak) or "none") + ".")
    per_scenario = ""
    if has_oracle:  # every scenario on its own: a method can match the oracle on one forget set and not another
        for key, title, digits in (("forget_quality", "Forget quality (p) per scenario", 3),
                                   ("privleak", "privleak per scenario", 2)):
            table = [[row] + [_pm([v for v in st.vals(row, s, key) if math.isfinite(v)], digits)
                              for s in st.scenarios] for row in st.references + st.methods]
            per_scenario += f"\n\n### {title}\n\nMean ± std over seeds; – = no value (no oracle for that " \
                            "forget set).\n\n" + _table(["row"] + st.scenarios, table)
    text = ("## Retraining and membership inference\n\nForget quality: KS-test p-value between the forget "
            "truth ratios of the row and of the retrained oracle (TOFU); MIA AUC: forget questions (members) vs "
            "never-implanted holdout contracts (non-members), 0.5 = unseen; privleak: relative gap of the Min-K% "
            "AUC to the oracle's (MUSE), 0 ideal. Mean over scenarios and seeds"
            + ("" if has_oracle else "; no `retrain` row in this run (add `reference: [retrain]`), so no forget "
               "quality or privleak") + "." + verdict + "\n\n" + _table(header, rows) + per_scenario)
    return Section(text, {"oracle": {"same": same, "leak": leak}} if has_oracle else {})


_STRONGEST_EDITORS = ("wise", "alphaedit")  # arXiv 2505.19855's strongest editors


def editing_section(st: Study) -> Section:
    """Editing as unlearning (arXiv 2505.19855): per scenario, every editor row (and the best
    other row) with DS, forget and paraphrase R1, refusal rate, forget fluency, utility and apply
    time; then the paper's four findings, each holds / does not hold with its counts."""
    editors = [r for r in st.methods if st.kind.get(r) == "edit"]
    others = [r for r in st.methods if st.kind.get(r) != "edit"]
    if not editors:
        return Section("")
    params = {r["row"]: r.get("params") or {} for r in st.ok}
    method = {r["row"]: r.get("method", r["row"]) for r in st.ok}

    def apply_s(row, s):
        return _agg([(r.get("cost") or {}).get("apply_seconds") for r in st.by.get((row, s), [])])[0]

    parts, wins, strongest = [], [], {"pretrained": [], "implanted": []}
    header = ["row", "target", "DS", "forget R1", "paraphrase R1", "refusal rate", "fluency", "utility", "apply s"]
    for s in st.scenarios:
        best_other = min((r for r in others if math.isfinite(st.mean(r, s, "ds"))),
                         key=lambda r: st.mean(r, s, "ds"), default=None)
        rows_here = [r for r in editors if st.by.get((r, s))] + ([best_other] if best_other else [])
        if not any(r in editors for r in rows_here):
            continue
        table = [[r + (" (best non-editor)" if r == best_other else ""), params.get(r, {}).get("target", "–"),
                  _fmt(st.mean(r, s, "ds"))] + [_fmt(st.mean(r, s, k), 2) for k in
                                               ("forget_rouge1", "forget_paraphrase_rouge1", "forget_refusal_rate",
                                                "forget_fluency", "utility")] + [_fmt(apply_s(r, s))]
                 for r in rows_here]
        parts.append(f"### {s}\n\n" + _table(header, table))
        ed = [r for r in rows_here if r in editors and math.isfinite(st.mean(r, s, "ds"))]
        if ed and best_other:
            wins.append(min(st.mean(r, s, "ds") for r in ed) < st.mean(best_other, s, "ds"))
        if ed:
            top = min(ed, key=lambda r: st.mean(r, s, "ds"))
            strongest["pretrained" if s in st.on_facts else "implanted"].append(method[top] in _STRONGEST_EDITORS)
    findings = {}

    def finding(key, name, votes, evidence):
        findings[key] = {"name": name, "holds": (sum(votes) > len(votes) / 2) if votes else None,
                         "evidence": evidence}

    finding("editing_strong", "2505.19855: editing methods are strong unlearning baselines", wins,
            f"the best editor has a lower DS than the best other method in {sum(wins)} of {len(wins)} scenarios")
    votes = strongest["pretrained"] + strongest["implanted"]
    finding("editing_strongest", "2505.19855: WISE and AlphaEdit are the strongest editors, especially on "
            "pretrained knowledge", votes,
            f"the editor with the lowest DS is WISE or AlphaEdit in {sum(strongest['pretrained'])} of "
            f"{len(strongest['pretrained'])} pretrained-knowledge and {sum(strongest['implanted'])} of "
            f"{len(strongest['implanted'])} implanted-knowledge scenarios")
    # query merging: the same editor with query_merge > 1 vs 1, on scenarios of several questions
    merged, qm = [], []
    for r in editors:
        if (params[r].get("query_merge") or 1) > 1 and params[r].get("target", "refusal") == "refusal":
            plain = [p for p in editors if method[p] == method[r] and (params[p].get("query_merge") or 1) == 1
                     and params[p].get("target", "refusal") == params[r].get("target", "refusal")]
            for p in plain:
                for s in st.scenarios:
                    a, b = st.mean(r, s, "ds"), st.mean(p, s, "ds")
                    if math.isfinite(a) and math.isfinite(b):
                        qm.append(a < b)
                        merged.append(f"{r} vs {p} on {s}: {_fmt(a)} vs {_fmt(b)}")
    finding("query_merge", "2505.19855: query merging helps ROME/MEMIT", qm,
            f"lower DS with merged queries in {sum(qm)} of {len(qm)} comparisons" + (f" ({'; '.join(merged)})"
                                                                                     if merged else
                                                                                     " (no query_merge row here)"))
    # self-improvement: the same editor with target self_improve vs the plain refusal
    si, si_refusal, pairs = [], [], []
    for r in editors:
        if params[r].get("target") == "self_improve":
            plain = [p for p in editors if method[p] == method[r] and params[p].get("target", "refusal") == "refusal"
                     and params[p].get("query_merge", 1) == params[r].get("query_merge", 1)]
            for p in plain:
                for s in st.scenarios:
                    fa, fb = st.mean(r, s, "forget_fluency"), st.mean(p, s, "forget_fluency")
                    ra, rb = st.mean(r, s, "forget_refusal_rate"), st.mean(p, s, "forget_refusal_rate")
                    if math.isfinite(fa) and math.isfinite(fb):
                        si.append(fa > fb)
                        si_refusal.append(ra >= rb if math.isfinite(ra) and math.isfinite(rb) else False)
                        pairs.append((r, p, s))
    finding("self_improve", "2505.19855: self-improved targets give more human-like refusals", si,
            f"higher forget fluency with self-improved targets in {sum(si)} of {len(si)} editor × scenario pairs, "
            f"at an equal or higher refusal rate in {sum(si_refusal)} of them")
    lines = []
    for f in findings.values():
        verdict = "not measurable" if f["holds"] is None else ("holds" if f["holds"] else "does not hold")
        lines.append(f"- **{f['name']}** — {verdict}: {f['evidence']}.")
    text = ("## Editing as unlearning (arXiv 2505.19855)\n\nEvery editor row per scenario beside the best "
            "non-editing row. Target: the refusal sentence or the model's own (`self_improve`). Fluency: ROME's "
            "n-gram entropy of the forget answers. Pretrained-knowledge scenarios: "
            + (", ".join(s for s in st.scenarios if s in st.on_facts) or "none") + ".\n\n" + "\n".join(lines)
            + "\n\n" + "\n\n".join(parts))
    return Section(text, findings)


def _lunar_rows(st: Study) -> list[str]:
    """The rows whose method is LUNAR (its layer search, its layer fixed, ...), in the study's order."""
    return [r for r in st.methods if any(x.get("method") == "lunar" for x in st.ok if x["row"] == r)]


def lunar_section(st: Study) -> Section:
    base = [b for b in GRADIENT_BASELINES if b in st.methods]
    lunar_rows = _lunar_rows(st)
    if not lunar_rows or not base:
        return Section("")
    rows, per_row = [], {row: {"ratios": [], "lower": 0} for row in lunar_rows}
    for s in st.scenarios:
        best = min((st.mean(b, s, "ds") for b in base), default=float("nan"))
        cells = [s, _fmt(best)]
        for row in lunar_rows:
            lu = st.mean(row, s, "ds")
            rs = [st.mean(b, s, "ds") / lu for b in base if lu > 0 and not math.isnan(st.mean(b, s, "ds"))]
            per_row[row]["ratios"] += rs
            per_row[row]["lower"] += int(lu < best)
            cells += [_fmt(lu), _fmt(best / lu, 2) + "×" if lu > 0 else "–",
                      (f"{min(rs):.2f}–{max(rs):.2f}×" if rs else "–")]
        rows.append(cells)

    def evidence(row):
        r = per_row[row]
        return (f"{row}'s DS is below every baseline's in {r['lower']} of {len(st.scenarios)} scenarios; "
                f"ratio baseline/LUNAR {min(r['ratios']):.2f}–{max(r['ratios']):.2f}×" if r["ratios"]
                else f"{row}: no ratio")

    # the finding is the default LUNAR row's (the registered name, its layer search); every other LUNAR
    # row (e.g. the paper's fixed layer) is stated beside it
    main = "lunar" if "lunar" in lunar_rows else lunar_rows[0]
    finding = {"name": "LUNAR: lower DS than the gradient baselines (paper: 2.9–11.7×)",
               "holds": per_row[main]["lower"] > len(st.scenarios) / 2,
               "evidence": "; ".join([evidence(main)] + [evidence(r) for r in lunar_rows if r != main])}
    header = ["scenario", "best baseline DS"]
    for row in lunar_rows:
        header += [f"{row} DS", f"best / {row}", "range over baselines"]
    text = (f"## LUNAR vs the gradient baselines ({', '.join(base)})\n\n" + _table(header, rows)
            + f"\n\n**{finding['name']}**: {'holds' if finding['holds'] else 'does not hold'} — {finding['evidence']}.")
    findings = {"lunar": finding}
    eff = _lunar_efficiency(st, base, lunar_rows)
    if eff is not None:
        text += "\n\n" + eff[0]
        findings["lunar_efficiency"] = eff[1]
    return Section(text, findings)


def _lunar_efficiency(st: Study, base: list[str], lunar_rows: list[str]):
    """LUNAR's efficiency as the paper states it: its apply time with the layer fixed (the paper's
    setting) and with the automatic layer search, beside the gradient baselines' on the same requests."""
    def apply_s(row, s):
        return _agg([(r.get("cost") or {}).get("apply_seconds") for r in st.by.get((row, s), [])])[0]

    params = {r["row"]: r.get("params") or {} for r in st.ok}
    rows, fixed_ratios = [], []
    for row in lunar_rows:
        p = params.get(row, {})
        mode = (f"fixed {p['layers']}" if p.get("layers") else
                f"search over {p['candidate_layers']}" if p.get("candidate_layers") else "search (default candidates)")
        per_base = {}
        for b in base:
            pairs = [(apply_s(b, s), apply_s(row, s)) for s in st.scenarios]
            pairs = [(x, y) for x, y in pairs if not (math.isnan(x) or math.isnan(y)) and y > 0]
            per_base[b] = _agg([x / y for x, y in pairs])[0] if pairs else float("nan")
        lu = _agg([apply_s(row, s) for s in st.scenarios])[0]
        rs = [v for v in per_base.values() if not math.isnan(v)]
        if p.get("layers"):
            fixed_ratios += rs
        rows.append([row, mode] + [_fmt(per_base[b], 2) + "×" for b in base] + [_fmt(lu), _fmt(min(rs), 2) + "–"
                                                                                 + _fmt(max(rs), 2) + "×" if rs else "–"])
    header = ["row", "layer"] + [f"{b} time / LUNAR" for b in base] + ["LUNAR apply s", "range"]
    finding = {"name": "LUNAR: cheaper to apply than the gradient baselines (its layer fixed, as in the paper)",
               "holds": (sum(r > 1 for r in fixed_ratios) > len(fixed_ratios) / 2) if fixed_ratios else None,
               "evidence": (f"faster than the baseline in {sum(r > 1 for r in fixed_ratios)} of {len(fixed_ratios)} "
                            f"baseline comparisons, {min(fixed_ratios):.2f}–{max(fixed_ratios):.2f}×") if fixed_ratios
               else "no LUNAR row with a fixed layer (params.layers) in this grid"}
    text = ("### Efficiency: apply time\n\nApply seconds of each baseline over LUNAR's on the same scenarios "
            "(mean of per-scenario ratios; > 1 = LUNAR is faster), for each LUNAR row: its layer fixed "
            "(`params.layers`, the paper's setting) or chosen by the search.\n\n" + _table(header, rows)
            + f"\n\n**{finding['name']}**: "
            + ("not measurable" if finding["holds"] is None else "holds" if finding["holds"] else "does not hold")
            + f" — {finding['evidence']}.")
    return text, finding


def cost_section(st: Study, results_dir: Path) -> Section:
    rows = []
    for row in st.methods:
        recs = [r for s in st.scenarios for r in st.by.get((row, s), [])]
        apply_s = [r["cost"]["apply_seconds"] for r in recs]
        eval_s = [r["cost"].get("eval_seconds") or 0.0 for r in recs]
        rows.append([row, len(recs), _fmt(_agg(apply_s)[0]), _fmt(sum(apply_s) / 60, 1), _fmt(_agg(eval_s)[0])])
    wall = ""
    log = results_dir / "run_log.jsonl"
    if log.is_file():
        import json

        wall = wall_text([json.loads(x) for x in log.read_text().splitlines() if x.strip()])
    return Section("## Cost\n\n" + wall + _table(["method", "cells", "mean apply s", "total apply min",
                                                    "mean eval s (last evaluation of a cell)"], rows))


def wall_text(runs: list[dict]) -> str:
    """The run's wall time from ``run_log.jsonl``'s lines, per machine when its parts ran on several."""
    total = sum(r.get("seconds", 0) for r in runs)
    by: dict[str, list[float]] = {}
    for r in runs:
        by.setdefault(r.get("hardware", "unrecorded hardware"), []).append(r.get("seconds", 0))
    if len(by) == 1:
        where = f"on {next(iter(by))}"
    else:
        where = "of it " + "; ".join(f"{sum(s) / 60:.1f} min on {h} ({len(s)} invocation{'s' * (len(s) != 1)})"
                                     for h, s in by.items())
    stopped = sum(1 for r in runs if r.get("stopped"))
    how = f"; {stopped} stopped before their end (the cells they finished are kept)" if stopped else ""
    return (f"Wall time of the run (`unlearnbench run`, {len(runs)} invocation(s){how}, implant and grid): "
            f"**{total / 60:.1f} min** {where}.\n\n")


def write_report(results_dir: str | Path, plots: bool = True) -> Path:
    """Write ``report.md`` (and ``report/*.png|svg``) into the results folder; return its path."""
    d = Path(results_dir)
    records = [r for r in load_results(d) if r.get("mode", "unlearn") == "unlearn"]  # editing cells: the leaderboard
    if not records:
        raise ValueError(f"{d} holds no result cells (expected {d / 'cells'}/*.json from `unlearnbench run`)")
    groups = comparability_groups(records)
    if len(groups) > 1:
        raise ValueError(f"{d}: the cells are not comparable, so one report cannot rank them: "
                         + "; ".join(groups.values()) + ". Rerun the grid into a fresh folder "
                         "(or remove the stale cells)")
    ds, order, precision, run = _dataset(d, records)
    st = Study(records, ds, order)
    if not st.methods:
        raise ValueError(f"{d} holds only reference rows; nothing to report")
    parts = [fn(st) for fn in (ds_section, connectivity_section, density_section, domain_section, size_section,
                               sequence_section, attack_section, oracle_section, lunar_section, editing_section)]
    parts.append(cost_section(st, d))
    findings = {k: v for part in parts for k, v in part.findings.items()}
    sections = [part.text for part in parts if part.text]
    made = []
    if plots:
        from .plots import report_figures

        data = {k: v for part in parts for k, v in part.data.items()}
        rows = st.references + st.methods
        singles = st.single_edge()
        made = report_figures(
            d / "report", st.scenarios, {row: [_agg(st.vals(row, s, "ds")) for s in st.scenarios] for row in rows},
            connectivity={row: ([deg for _, _, deg in singles], [st.mean(row, s, "ds") for s, _, _ in singles])
                          for row in rows} if len(singles) >= 2 else None,
            density=data.get("density_lines") or None, curves=data.get("curves") or None, one_sequence=len(st.sequences()) == 1,
            attack_grid=data.get("attack_grid") or {}, methods=st.methods)

    first = records[0]
    summary = []
    for key in ("connectivity", "density", "domain", "lunar", "lunar_efficiency", "editing_strong", "editing_strongest",
                "query_merge",
                "self_improve"):
        if key in findings:
            f = findings[key]
            verdict = "not measurable" if f["holds"] is None else ("holds" if f["holds"] else "does not hold")
            summary.append(f"- **{f['name']}** — {verdict}: {f['evidence']}.")
    if "sequence" in findings:
        s = findings["sequence"]
        summary.append(f"- **Sequential requests degrade** — DS after the last request is higher than after the "
                       f"first for {s['worse']} of {s['total']} methods.")
    if "attack_leaks" in findings:
        summary.append("- **Leaks under attack** (mean recovery > " + f"{LEAK_RECOVERY} forget ROUGE-1): "
                       + "; ".join(f"{a}: {', '.join(v) or 'none'}" for a, v in findings["attack_leaks"].items()) + ".")
    if "oracle" in findings:
        o = findings["oracle"]
        summary.append(f"- **Indistinguishable from retraining** (forget quality ≥ 0.05 in every cell): "
                       f"{', '.join(o['same']) or 'none'}; **leaking by membership inference** (privleak > 0.1): "
                       f"{', '.join(o['leak']) or 'none'}.")
    head = (f"# Structural study: {first.get('experiment', d.name)}\n\n"
            f"Model `{first.get('model', {}).get('spec')}`, dataset {first.get('dataset', {}).get('preset')} "
            f"(seed {first.get('dataset', {}).get('seed')}), {len(st.methods)} methods × {len(st.scenarios)} scenarios "
            f"× seeds {st.seeds}: {len(st.ok)} cells ok, {len(st.failed)} failed"
            + _precision_text(records, precision) + ".\n\n## Findings\n\n"
            + ("\n".join(summary) or "- none measurable with these scenarios") + "\n")
    if run is not None:
        from .config import expected_cells

        expected = expected_cells(run)
        head += missing_text(missing_cells(expected, records), len(expected))
    mixed = mixed_versions_text(records)
    if mixed:
        head += "\n" + mixed + "\n"
    if st.failed:
        head += "\nFailed cells: " + ", ".join(f"`{r['row']}/{r['scenario']['label']}/seed{r.get('seed')}` "
                                                f"({r.get('error', '')[:80]})" for r in st.failed) + "\n"
    figs = "".join(f"\n![{m}](report/{m}.png)\n" for m in made)
    out = d / "report.md"
    write_text_atomic(out, head + "\n" + "\n\n".join(sections) + "\n" + (("\n## Figures\n" + figs) if figs else ""))
    return out
