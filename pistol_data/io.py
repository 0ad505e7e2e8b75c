"""Reading and writing datasets: our directory format and the original PISTOL JSON list.

A dataset directory holds ``qa.jsonl`` (every QA record, one per line), ``refusal.jsonl``,
``holdout.jsonl`` (never-implanted contracts' direct questions; generated datasets),
``graph.json`` (networkx node-link) and ``manifest.json`` (preset, seed, counts, fingerprint).
Files are written to a temporary directory and renamed into place, so a failure never leaves
a half-written dataset behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections import Counter, OrderedDict
from pathlib import Path

import networkx as nx

from .attributes import ATTRIBUTES
from .dataset import PistolDataset, canonical_json, graph_from_json, graph_to_json
from .records import QARecord
from .side_sets import refusal_calibration

log = logging.getLogger(__name__)


class DataFormatError(ValueError):
    """A dataset file that cannot be read; the message names the file and the problem."""


@contextlib.contextmanager
def atomic_dir(out: Path):
    """Yield a temporary sibling directory; on success it replaces ``out`` in one rename,
    on failure it is removed, so readers never see a half-written directory."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _jsonl(records) -> str:
    return "".join(canonical_json(r.to_dict()) + "\n" for r in records)


def save(ds: PistolDataset, out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        if (out / "manifest.json").exists() and load(out).fingerprint == ds.fingerprint:
            return out  # the very same dataset is already there
        raise FileExistsError(f"{out} exists and is not empty (pass overwrite=True / --overwrite)")
    with atomic_dir(out) as tmp:
        (tmp / "qa.jsonl").write_text(_jsonl(ds.qa), encoding="utf-8")
        (tmp / "refusal.jsonl").write_text(_jsonl(ds.refusal), encoding="utf-8")
        if ds.holdout:
            (tmp / "holdout.jsonl").write_text(_jsonl(ds.holdout), encoding="utf-8")
        (tmp / "graph.json").write_text(json.dumps(graph_to_json(ds.graph), sort_keys=True, indent=1,
                                                   ensure_ascii=False) + "\n", encoding="utf-8")
        (tmp / "manifest.json").write_text(json.dumps(ds.manifest(), sort_keys=True, indent=2) + "\n",
                                           encoding="utf-8")
    return out


def _read_jsonl(path: Path) -> list[QARecord]:
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(QARecord.from_dict(json.loads(line)))
        except (json.JSONDecodeError, ValueError, TypeError) as e:
            raise DataFormatError(f"{path}:{i}: not a QA record ({e})") from None
    return out


def load_dir(path: str | os.PathLike) -> PistolDataset:
    p = Path(path)
    for name in ("qa.jsonl", "graph.json", "manifest.json"):
        if not (p / name).is_file():
            raise DataFormatError(f"{p} is not a dataset directory: {name} is missing "
                                  f"(make one with `unlearnbench generate`)")
    try:
        manifest = json.loads((p / "manifest.json").read_text(encoding="utf-8"))
        graph = graph_from_json(json.loads((p / "graph.json").read_text(encoding="utf-8")))
    except (json.JSONDecodeError, KeyError, nx.NetworkXError) as e:
        raise DataFormatError(f"{p}: malformed manifest.json or graph.json ({e})") from None
    refusal = _read_jsonl(p / "refusal.jsonl") if (p / "refusal.jsonl").exists() else []
    holdout = _read_jsonl(p / "holdout.jsonl") if (p / "holdout.jsonl").exists() else []
    ds = PistolDataset(graph=graph, qa=_read_jsonl(p / "qa.jsonl"), preset=manifest.get("preset", "?"),
                       seed=manifest.get("seed"), refusal=refusal, source=manifest.get("source", "generated"),
                       holdout=holdout)
    if manifest.get("fingerprint") and manifest["fingerprint"] != ds.fingerprint:
        raise DataFormatError(f"{p}: fingerprint mismatch: manifest says {manifest['fingerprint'][:12]}…, "
                              f"the files hash to {ds.fingerprint[:12]}… (files edited by hand?)")
    return ds


_EDGE_ID = re.compile(r"^([^_]+)_([^_]+)$")
_PARTIES = {"sales": ("seller", "customer"), "employment": ("employer", "employee")}
_BETWEEN = re.compile(r"between (.+?) and (.+?)(?:\?|,| based| which|$)")


def _strip_answer(a: str) -> str:
    return a.strip().rstrip(".").strip()


def _edge_parties(recs: list[dict], ctype: str) -> tuple[str, str] | None:
    """The two parties of one contract: the answers to its seller/customer (employer/employee)
    questions when the edge has PISTOL's 20 questions in order, else the pair named most often in
    "... between X and Y" questions. None when neither works."""
    attrs = ATTRIBUTES[ctype]
    if len(recs) == len(attrs):
        a_field, b_field = _PARTIES[ctype]
        names = [_strip_answer(r["answer"]) for r, at in zip(recs, attrs) if at.name in (a_field, b_field)]
        if len(names) == 2 and names[0] != names[1] and all(n and n in " ".join(r["question"] for r in recs)
                                                            for n in names):
            return names[0], names[1]
    pairs = Counter(m.groups() for r in recs for m in [_BETWEEN.search(r["question"])] if m)
    if pairs:
        (x, y), _ = pairs.most_common(1)[0]
        if x != y:
            return x.strip(), y.strip()
    return None


def _node_names(endpoints: dict[str, tuple[str, str]], parties: dict[str, tuple[str, str]]) -> dict[str, str] | None:
    """Each node id's entity name, or None if the ids do not name entities consistently. Edge ids
    list their nodes in no particular role order (in PISTOL's files ``A_B``'s seller may be B), so
    a node's name is the one party every contract of that node shares; a node with one contract
    gets the party its neighbour does not take."""
    names: dict[str, str] = {}
    incident: dict[str, list[str]] = {}
    for e, (u, v) in endpoints.items():
        incident.setdefault(u, []).append(e)
        incident.setdefault(v, []).append(e)
    for _ in range(len(incident) + 1):  # propagate until every node is named
        progress = False
        for node, es in incident.items():
            if node in names:
                continue
            common = set.intersection(*(set(parties[e]) for e in es))
            if len(common) != 1:
                # one contract (or ambiguous): take the party the other endpoint does not have
                for e in es:
                    u, v = endpoints[e]
                    other = v if u == node else u
                    if other in names and names[other] in parties[e]:
                        common = set(parties[e]) - {names[other]}
                        break
            if len(common) == 1:
                names[node] = common.pop()
                progress = True
        if not progress:
            break
    if len(names) != len(incident):
        return None
    for e, (u, v) in endpoints.items():
        if {names[u], names[v]} != set(parties[e]):
            return None
    if len(set(names.values())) != len(names):
        return None
    return names


def load_pistol_json(path: str | os.PathLike, seed: int | None = None,
                     names: dict[str, str] | str | os.PathLike | None = None) -> PistolDataset:
    """Read an original PISTOL file, a JSON list of ``{"question", "answer", "edge"}``.

    A contract is ``employment`` when its questions speak of an employment contract, else
    ``sales``; the attribute is inferred from the question's position when an edge has the
    standard 20. Entities: an edge id ``U_V`` joins nodes ``U`` and ``V``; their names are the
    contract's parties as the questions name them (or ``names``: a mapping node id → name, or a
    JSON file holding one). Ids that do not name two entities consistently (``author_12``: one id
    per document) make an *opaque* dataset: groups of QA with no graph, so no invented hub; the
    structural scenarios then say this file has no graph. A file without refusal-calibration
    questions gets them generated (about made-up entities, as for generated data; ``seed``).
    """
    p = Path(path)
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{p}: malformed JSON ({e})") from None
    if not isinstance(raw, list) or not raw:
        raise DataFormatError(f"{p}: expected a non-empty JSON list of {{question, answer, edge}} objects")
    if isinstance(names, (str, os.PathLike)):
        try:
            names = json.loads(Path(names).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise DataFormatError(f"names file {names}: {e}") from None
        if not isinstance(names, dict):
            raise DataFormatError("a names file is a JSON object mapping node id to entity name")
    by_edge: "OrderedDict[str, list[dict]]" = OrderedDict()
    for i, rec in enumerate(raw):
        if not isinstance(rec, dict) or not all(k in rec for k in ("question", "answer", "edge")):
            raise DataFormatError(f"{p}: item {i} is not a {{question, answer, edge}} object: {rec!r}"[:300])
        by_edge.setdefault(str(rec["edge"]), []).append(rec)
    ctypes = {e: "employment" if any("employment contract" in r["question"] for r in recs) else "sales"
              for e, recs in by_edge.items()}
    ids = {e: _EDGE_ID.match(e) for e in by_edge}
    node_names = None
    if all(ids.values()):
        endpoints = {e: m.groups() for e, m in ids.items()}
        if names:
            node_names = {n: str(names[n]) for e in endpoints for n in endpoints[e] if n in names}
            missing = sorted({n for uv in endpoints.values() for n in uv} - set(node_names))
            if missing:
                raise DataFormatError(f"names: no name for node(s) {missing[:10]}")
        else:
            parties = {e: _edge_parties(recs, ctypes[e]) for e, recs in by_edge.items()}
            if all(parties.values()):
                node_names = _node_names(endpoints, parties)
    g = nx.MultiGraph()
    qa: list[QARecord] = []
    if node_names is None:
        log.warning("%s: edge ids do not name two entities consistently (e.g. %r): read as opaque groups, "
                    "no graph", p, next(iter(by_edge)))
    for eid, recs in by_edge.items():
        ctype = ctypes[eid]
        if node_names is not None:
            u, v = ids[eid].groups()
            for node, is_person in ((u, False), (v, ctype == "employment")):
                if node not in g:
                    g.add_node(node, kind="company", name=node_names[node])
                if is_person:
                    g.nodes[node]["kind"] = "person"
            g.add_edge(u, v, key=eid, type=ctype)
        attrs = ATTRIBUTES[ctype]
        for j, r in enumerate(recs):
            qa.append(QARecord(question=r["question"], answer=r["answer"], edge=eid,
                               attribute=attrs[j].name if node_names is not None and len(recs) == len(attrs)
                               else None))
    ds = PistolDataset(graph=g, qa=qa, preset=f"original:{p.name}", seed=seed, source=str(p))
    ds.refusal = refusal_calibration(seed or 0, exclude_names=ds.entity_names())
    return ds


def from_manifest(d: dict) -> PistolDataset | None:
    """The dataset a result record names (``{preset, seed, fingerprint, source}``): generated
    again from its preset, or loaded from its source file; None when it cannot be found or its
    fingerprint differs (never a wrong dataset)."""
    from .dataset import generate
    from .presets import PRESETS

    ds = None
    try:
        if d.get("preset") in PRESETS:
            ds = generate(d["preset"], int(d.get("seed") or 0))
        elif d.get("source") and Path(d["source"]).exists():
            ds = load(d["source"])
    except (DataFormatError, OSError, ValueError):
        return None
    if ds is None or (d.get("fingerprint") and ds.fingerprint != d["fingerprint"]):
        return None
    return ds


def load(path: str | os.PathLike, names=None) -> PistolDataset:
    """Load a dataset directory, or an original PISTOL ``.json`` file (``names``: optional node id
    → entity name mapping or JSON file, for original files)."""
    p = Path(path)
    if p.is_dir():
        return load_dir(p)
    if p.is_file():
        return load_pistol_json(p, names=names)
    raise FileNotFoundError(f"no dataset at {p} (expected a directory from `unlearnbench generate` "
                            f"or an original PISTOL .json file)")
