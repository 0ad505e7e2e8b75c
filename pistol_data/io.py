"""Reading and writing datasets: our directory format and the original PISTOL JSON list.

A dataset directory holds ``qa.jsonl`` (every QA record, one per line), ``refusal.jsonl``,
``graph.json`` (networkx node-link) and ``manifest.json`` (preset, seed, counts, fingerprint).
Files are written to a temporary directory and renamed into place, so a failure never leaves
a half-written dataset behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections import OrderedDict
from pathlib import Path

import networkx as nx

from .attributes import ATTRIBUTES
from .dataset import PistolDataset, canonical_json, graph_from_json, graph_to_json
from .records import QARecord


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
    ds = PistolDataset(graph=graph, qa=_read_jsonl(p / "qa.jsonl"), preset=manifest.get("preset", "?"),
                       seed=manifest.get("seed"), refusal=refusal, source=manifest.get("source", "generated"))
    if manifest.get("fingerprint") and manifest["fingerprint"] != ds.fingerprint:
        raise DataFormatError(f"{p}: fingerprint mismatch: manifest says {manifest['fingerprint'][:12]}…, "
                              f"the files hash to {ds.fingerprint[:12]}… (files edited by hand?)")
    return ds


_EDGE_ID = re.compile(r"^([^_]+)_([^_]+)$")


def load_pistol_json(path: str | os.PathLike, seed: int | None = None) -> PistolDataset:
    """Read an original PISTOL file, a JSON list of ``{"question", "answer", "edge"}``.

    Entities come from the edge ids (``A_B`` joins ``A`` and ``B``); a contract is
    ``employment`` when its questions speak of an employment contract, else ``sales``; the
    attribute is inferred from the question's position when an edge has the standard 20.
    """
    p = Path(path)
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataFormatError(f"{p}: malformed JSON ({e})") from None
    if not isinstance(raw, list) or not raw:
        raise DataFormatError(f"{p}: expected a non-empty JSON list of {{question, answer, edge}} objects")
    by_edge: "OrderedDict[str, list[dict]]" = OrderedDict()
    for i, rec in enumerate(raw):
        if not isinstance(rec, dict) or not all(k in rec for k in ("question", "answer", "edge")):
            raise DataFormatError(f"{p}: item {i} is not a {{question, answer, edge}} object: {rec!r}"[:300])
        by_edge.setdefault(str(rec["edge"]), []).append(rec)
    g = nx.MultiGraph()
    qa: list[QARecord] = []
    for eid, recs in by_edge.items():
        m = _EDGE_ID.match(eid)
        if not m:
            raise DataFormatError(f"{p}: edge id {eid!r} is not of the form U_V")
        u, v = m.groups()
        ctype = "employment" if any("employment contract" in r["question"] for r in recs) else "sales"
        for node, kind in ((u, "company"), (v, "person" if ctype == "employment" else "company")):
            if node not in g:
                g.add_node(node, kind=kind)
        g.add_edge(u, v, key=eid, type=ctype)
        attrs = ATTRIBUTES[ctype]
        for j, r in enumerate(recs):
            qa.append(QARecord(question=r["question"], answer=r["answer"], edge=eid,
                               attribute=attrs[j].name if len(recs) == len(attrs) else None))
    return PistolDataset(graph=g, qa=qa, preset=f"original:{p.name}", seed=seed, source=str(p))


def load(path: str | os.PathLike) -> PistolDataset:
    """Load a dataset directory, or an original PISTOL ``.json`` file."""
    p = Path(path)
    if p.is_dir():
        return load_dir(p)
    if p.is_file():
        return load_pistol_json(p)
    raise FileNotFoundError(f"no dataset at {p} (expected a directory from `unlearnbench generate` "
                            f"or an original PISTOL .json file)")
