"""The dataset: a contract graph plus the QA generated from it, with a fingerprint.

``generate(preset, seed)`` is deterministic: the same preset and seed give byte-identical
files (see :mod:`pistol_data.io`) and the same fingerprint, the sha256 of the canonical JSON
(sorted keys, no whitespace) of the preset, seed, graph and every QA record.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import cached_property

import networkx as nx

from .attributes import ATTRIBUTES, MINI_ATTRIBUTES, Attribute
from .names import NameFactory
from .presets import Topology, get_preset
from .records import QARecord
from .side_sets import refusal_calibration

_PARTY_FIELDS = {"sales": ("seller", "customer"), "employment": ("employer", "employee")}


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def graph_to_json(g: nx.MultiGraph) -> dict:
    return nx.node_link_data(g, edges="edges")


def graph_from_json(d: dict) -> nx.MultiGraph:
    return nx.node_link_graph(d, multigraph=True, edges="edges")


@dataclass
class PistolDataset:
    """A knowledge graph of contracts and its QA.

    ``qa`` holds every form (direct, paraphrase, reverse); ``refusal`` the refusal-calibration
    questions. Edge data: ``type`` (sales/employment) and ``attributes`` (field → value).
    Node data: ``kind`` (company/person/entity), ``name`` and ``address`` when known.
    """

    graph: nx.MultiGraph
    qa: list[QARecord]
    preset: str
    seed: int | None
    refusal: list[QARecord] = field(default_factory=list)
    source: str = "generated"
    holdout: list[QARecord] = field(default_factory=list)  # never implanted (membership non-members)

    # ---- views -------------------------------------------------------------------------
    @cached_property
    def has_graph(self) -> bool:
        """False for an *opaque* dataset: QA grouped by ids that name no entities (an original
        file such as ``author_12``-style groups): no nodes, no edges, groups only."""
        return self.graph.number_of_edges() > 0

    @cached_property
    def edge_ids(self) -> list[str]:
        """The contracts (graph edges), or an opaque dataset's groups in file order."""
        if not self.has_graph:
            return list(dict.fromkeys(r.edge for r in self.qa))
        return [k for _, _, k in self.graph.edges(keys=True)]

    @cached_property
    def edge_endpoints(self) -> dict[str, tuple[str, str]]:
        return {k: (u, v) for u, v, k in self.graph.edges(keys=True)}

    @cached_property
    def edge_types(self) -> dict[str, str]:
        if not self.has_graph:
            return {e: "unknown" for e in self.edge_ids}
        return {k: d.get("type", "unknown") for _, _, k, d in self.graph.edges(keys=True, data=True)}

    def degree(self) -> dict[str, int]:
        return dict(self.graph.degree())

    def direct(self) -> list[QARecord]:
        return [r for r in self.qa if r.form == "direct"]

    def by_form(self, form: str) -> list[QARecord]:
        return [r for r in self.qa if r.form == form]

    def for_edges(self, edges, forms=None) -> list[QARecord]:
        es = set(edges)
        return [r for r in self.qa if r.edge in es and (forms is None or r.form in forms)]

    def perturbed_answers(self, k: int = 3) -> dict[tuple[str, str | None], list[str]]:
        """(edge, attribute) of every direct question, graph and holdout → up to ``k`` wrong but
        plausible answers: the same attribute's answers on other contracts, never the true one
        (TOFU's perturbed answers, arXiv 2401.06121, which were written by hand). Deterministic."""
        rows = self.direct() + list(self.holdout)
        pool: dict[str | None, set[str]] = defaultdict(set)
        for r in rows:
            pool[r.attribute].add(r.answer)
        out = {}
        for r in rows:
            cands = sorted(pool[r.attribute] - {r.answer})
            random.Random(f"perturb-{r.edge}-{r.attribute}").shuffle(cands)
            out[(r.edge, r.attribute)] = cands[:k]
        return out

    def without_edges(self, edges) -> "PistolDataset":
        """The dataset as if the contracts ``edges`` had never existed (every form of their QA and the
        edges themselves removed; refusal rows and holdout unchanged): what the retrained oracle
        is implanted with."""
        drop = set(edges)
        unknown = drop - set(self.edge_ids)
        if unknown:
            raise ValueError(f"unknown edge(s) {sorted(unknown)}")
        g = self.graph.copy()
        g.remove_edges_from([(u, v, k) for u, v, k in self.graph.edges(keys=True) if k in drop])
        return PistolDataset(graph=g, qa=[r for r in self.qa if r.edge not in drop], preset=self.preset,
                             seed=self.seed, refusal=list(self.refusal), source=self.source, holdout=list(self.holdout))

    def entity_names(self) -> set[str]:
        return {d["name"] for _, d in self.graph.nodes(data=True) if d.get("name")}

    def counts(self) -> dict:
        kinds = Counter(d.get("kind", "entity") for _, d in self.graph.nodes(data=True))
        forms = Counter(r.form for r in self.qa)
        return {"n_entities": self.graph.number_of_nodes(), "n_companies": kinds.get("company", 0),
                "n_persons": kinds.get("person", 0), "n_edges": self.graph.number_of_edges(),
                "n_qa": len(self.qa), "n_qa_direct": forms.get("direct", 0),
                "n_qa_paraphrase": forms.get("paraphrase", 0), "n_qa_reverse": forms.get("reverse", 0),
                "n_refusal": len(self.refusal), "n_holdout": len(self.holdout)}

    # ---- identity ----------------------------------------------------------------------
    def canonical(self, holdout: bool = True) -> dict:
        out = {"preset": self.preset, "seed": self.seed, "graph": graph_to_json(self.graph),
               "qa": [r.to_dict() for r in self.qa], "refusal": [r.to_dict() for r in self.refusal]}
        if holdout and self.holdout:
            out["holdout"] = [r.to_dict() for r in self.holdout]
        return out

    @cached_property
    def fingerprint(self) -> str:
        """Everything the dataset holds, the holdout contracts included."""
        return hashlib.sha256(canonical_json(self.canonical()).encode("utf-8")).hexdigest()

    @cached_property
    def train_fingerprint(self) -> str:
        """What an implant can read (graph, QA, refusal rows; not the holdout): the implant's cache key."""
        return hashlib.sha256(canonical_json(self.canonical(holdout=False)).encode("utf-8")).hexdigest()

    def manifest(self) -> dict:
        return {"preset": self.preset, "seed": self.seed, "source": self.source,
                "fingerprint": self.fingerprint, **self.counts(),
                "contract_types": dict(Counter(self.edge_types.values()))}

    def to_hf(self):
        """A ``datasets.DatasetDict`` with one split per form, plus ``refusal``."""
        import datasets

        splits = {}
        for form in ("direct", "paraphrase", "reverse"):
            rows = [r.to_dict() for r in self.by_form(form)]
            if rows:
                splits[form] = datasets.Dataset.from_list(rows)
        if self.refusal:
            splits["refusal"] = datasets.Dataset.from_list([r.to_dict() for r in self.refusal])
        return datasets.DatasetDict(splits)


# ---- generation -------------------------------------------------------------------------

def _attributes_for(topo: Topology, contract_type: str) -> tuple[Attribute, ...]:
    attrs = ATTRIBUTES[contract_type]
    if topo.attributes == "mini":
        keep = MINI_ATTRIBUTES[contract_type]
        attrs = tuple(a for a in attrs if a.name in keep)
    return attrs


def _contract(ctype: str, a: tuple[str, str], b: tuple[str, str], names: NameFactory, rng: random.Random) -> dict:
    """A contract's fields between parties ``a`` and ``b`` (name, address): every attribute is
    drawn, so values don't depend on which attributes a preset asks about."""
    a_field, b_field = _PARTY_FIELDS[ctype]
    c: dict = {a_field: a[0], b_field: b[0], f"{a_field}_address": a[1], f"{b_field}_address": b[1]}
    if ctype == "sales":
        c["delivery_address"] = names.address()
    else:
        c["work_location"] = names.address()
    for attr in ATTRIBUTES[ctype]:
        if attr.draw is not None:
            c[attr.name] = attr.draw(rng, c)
    return c


def _build_graph(topo: Topology, rng: random.Random) -> nx.MultiGraph:
    names = NameFactory(rng)
    g = nx.MultiGraph()
    persons = topo.persons
    for eid, u, v, _ in topo.edges:
        for node in (u, v):
            if node not in g:
                kind = "person" if node in persons else "company"
                name = names.person() if kind == "person" else names.company()
                g.add_node(node, kind=kind, name=name, address=names.address())
    for eid, u, v, ctype in topo.edges:
        c = _contract(ctype, (g.nodes[u]["name"], g.nodes[u]["address"]), (g.nodes[v]["name"], g.nodes[v]["address"]),
                      names, rng)
        g.add_edge(u, v, key=eid, type=ctype, attributes=c)
    return g


def holdout_contracts(topo: Topology, preset: str, seed: int,
                      exclude_names: set[str]) -> tuple[list[QARecord], set[str]]:
    """Contracts that are never implanted: one per contract of the graph, of the same type and
    drawn the same way, between fresh entities (none of ``exclude_names``); their direct
    questions (edge ids ``holdout1``, ``holdout2``, ...). They are the non-members of membership
    inference: same distribution as the forget set, never seen in training. Also returns the
    names it made up."""
    rng = random.Random(f"holdout-{preset}-{seed}")
    names = NameFactory(rng, exclude=exclude_names)
    out: list[QARecord] = []
    for i, (_, _, _, ctype) in enumerate(topo.edges, 1):
        a = (names.company(), names.address())
        b = ((names.person() if ctype == "employment" else names.company()), names.address())
        c = _contract(ctype, a, b, names, rng)
        for attr in _attributes_for(topo, ctype):
            t = attr.templates[0]  # the direct template
            out.append(QARecord(question=t.text.format(**c), answer=attr.answer(c), edge=f"holdout{i}",
                                attribute=attr.name, form="direct", template_id=t.id))
    return out, names.used - set(exclude_names)



def _questions(g: nx.MultiGraph, topo: Topology) -> list[QARecord]:
    out: list[QARecord] = []
    for _, _, eid, d in g.edges(keys=True, data=True):
        c = d["attributes"]
        for attr in _attributes_for(topo, d["type"]):
            for t in attr.templates:
                answer = attr.answer(c) if t.answer_field is None else f"{c[t.answer_field]}."
                out.append(QARecord(question=t.text.format(**c), answer=answer, edge=eid,
                                    attribute=attr.name, form=t.form, template_id=t.id))
    # a held-out question that two contracts answer differently is ambiguous: drop it
    answers: dict[str, set[str]] = defaultdict(set)
    for r in out:
        answers[r.question].add(r.answer)
    return [r for r in out if len(answers[r.question]) == 1 or r.form == "direct"]


def generate(preset: str = "pistol-1", seed: int = 0, n_refusal: int = 120) -> PistolDataset:
    """Generate a dataset; the topology comes from ``preset``, names and values from ``seed``."""
    topo = get_preset(preset)
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    rng = random.Random(f"{preset}-{seed}")
    g = _build_graph(topo, rng)
    qa = _questions(g, topo)
    ds = PistolDataset(graph=g, qa=qa, preset=preset, seed=seed)
    ds.holdout, made_up = holdout_contracts(topo, preset, seed, ds.entity_names())
    # the refusal questions' made-up entities are neither the graph's nor the holdout's
    ds.refusal = refusal_calibration(seed, exclude_names=ds.entity_names() | made_up, n=n_refusal)
    return ds
