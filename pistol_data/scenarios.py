"""Scenarios: which edges to forget, chosen by the graph's structure.

A scenario spec is a small dict (validated by pydantic), e.g. ``{"type": "edge", "edge": "A_B"}``.
``resolve(ds, spec)`` returns a :class:`Split` with the forget set and the retain sets the
evaluator scores separately: *neighbour retain* (edges that share an entity with a forgotten
edge), *far retain* (all other edges). A ``sequence`` resolves to one split per request;
at step *i* the method is asked to forget the new edges (``request_edges``) while the split
is scored on everything forgotten so far (``forget_edges`` is cumulative).

types: ``edge``, ``edges`` (a batch), ``entity`` (every edge of one entity), ``max_degree``
/ ``min_degree`` (the edges of the highest/lowest-degree entity; ties broken by id),
``independent_edge`` (an edge none of whose entities touches a hub, i.e. a highest-degree
node's component; ``edge`` may name one), ``contract_type`` (all edges of one type:
domain-skewed), ``sequence`` (``steps``: a list of specs applied one after another; or
``each``: one spec whose forget groups are requested one at a time, e.g. ten single facts),
``pretrained_facts`` (facts the *base* model knew before any implant, :mod:`pistol_data.facts`:
``n`` of them spread over the categories, or the ids in ``edges``; neighbour retain = the other
facts of a forgotten fact's category, far retain = the rest).

A pretrained-facts scenario (or a sequence of them) is resolved on the facts dataset, whatever
dataset is passed in: :func:`dataset_for` says which dataset a spec's splits refer to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import networkx as nx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from . import facts
from .dataset import PistolDataset
from .records import QARecord

ScenarioType = Literal["edge", "edges", "entity", "max_degree", "min_degree", "independent_edge",
                       "contract_type", "sequence", "pretrained_facts"]


class ScenarioSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: ScenarioType
    name: str | None = Field(None, description="label in results; derived from the spec if empty")
    edge: str | None = None
    edges: list[str] | None = None
    entity: str | None = None
    contract_type: str | None = None
    steps: list["ScenarioSpec"] | None = None
    each: "ScenarioSpec | None" = Field(None, description="sequence: request this spec's forget groups one at a time")
    n: int | None = Field(None, ge=1, description="pretrained_facts: how many facts (spread over the categories)")

    @field_validator("edge", "entity", mode="before")
    @classmethod
    def _unquoted_id(cls, v):
        if isinstance(v, int) and not isinstance(v, bool):
            raise ValueError(f"got the number {v}: an unquoted edge id such as 1_2 reads as a number in YAML; "
                             "quote it (\"1_2\")")
        return v

    @field_validator("edges", mode="before")
    @classmethod
    def _unquoted_ids(cls, v):
        if isinstance(v, list):
            for x in v:
                cls._unquoted_id(x)
        return v

    def label(self) -> str:
        if self.name:
            return self.name
        arg = {"edge": self.edge, "edges": "+".join(self.edges or []), "entity": self.entity,
               "contract_type": self.contract_type, "independent_edge": self.edge}.get(self.type)
        if self.type == "pretrained_facts":
            arg = "+".join(self.edges) if self.edges else f"n{self.n or DEFAULT_FACTS}"
        if self.type == "sequence":
            arg = f"each:{self.each.label()}" if self.each else ">".join(s.label() for s in self.steps or [])
        return f"{self.type}:{arg}" if arg else self.type

    def on_facts(self) -> bool:
        """Whether the spec forgets pretrained facts (and so resolves on the facts dataset)."""
        if self.type == "sequence":
            inner = [self.each] if self.each else list(self.steps or [])
            return bool(inner) and all(s.on_facts() for s in inner)
        return self.type == "pretrained_facts"


DEFAULT_FACTS = 6


def spec_on_facts(spec) -> bool:
    """Whether a recorded scenario spec (a dict) forgets pretrained facts; False for anything that
    is no scenario spec (e.g. editing mode's counterfactual edits)."""
    try:
        return ScenarioSpec.model_validate(spec).on_facts()
    except ValueError:
        return False


class ScenarioError(ValueError):
    """A scenario that does not fit the dataset; the message lists the valid choices."""


@dataclass
class Split:
    name: str
    forget_edges: list[str]
    neighbour_edges: list[str]
    far_edges: list[str]
    request_edges: list[str] | None = None  # sequence steps: the edges newly requested at this step

    def request(self, ds: PistolDataset) -> list[QARecord]:
        """The forget QA a method is asked to unlearn at this step (new edges only)."""
        return ds.for_edges(self.request_edges if self.request_edges is not None else self.forget_edges, ("direct",))

    def forget(self, ds: PistolDataset, forms=("direct",)) -> list[QARecord]:
        return ds.for_edges(self.forget_edges, forms)

    def retain(self, ds: PistolDataset, forms=("direct",)) -> list[QARecord]:
        return ds.for_edges(self.neighbour_edges + self.far_edges, forms)

    def to_dict(self) -> dict:
        d = {"name": self.name, "forget_edges": self.forget_edges,
             "neighbour_edges": self.neighbour_edges, "far_edges": self.far_edges}
        if self.request_edges is not None:
            d["request_edges"] = self.request_edges
        return d


def _check_edges(ds: PistolDataset, edges: list[str]) -> None:
    known = set(ds.edge_ids)
    bad = [e for e in edges if e not in known]
    if bad:
        raise ScenarioError(f"unknown edge(s) {bad}; valid edges: {ds.edge_ids}")


def _check_entity(ds: PistolDataset, entity: str) -> None:
    if entity not in ds.graph:
        raise ScenarioError(f"unknown entity {entity!r}; valid entities: {sorted(ds.graph.nodes)}")


def _edges_of(ds: PistolDataset, node: str) -> list[str]:
    return [k for _, _, k in ds.graph.edges(node, keys=True)]


def hubs(ds: PistolDataset) -> list[str]:
    deg = ds.degree()
    top = max(deg.values())
    return sorted(n for n, d in deg.items() if d == top)


def independent_edges(ds: PistolDataset) -> list[str]:
    hub_components = set()
    for comp in nx.connected_components(ds.graph):
        if any(h in comp for h in hubs(ds)):
            hub_components |= comp
    return [e for e, (u, v) in ds.edge_endpoints.items() if u not in hub_components]


def dataset_for(ds: PistolDataset, spec: dict | ScenarioSpec) -> PistolDataset:
    """The dataset a spec's splits refer to: ``ds`` itself, or for pretrained facts the facts
    dataset (carrying ``ds``'s refusal-calibration rows)."""
    s = spec if isinstance(spec, ScenarioSpec) else ScenarioSpec.model_validate(spec)
    if s.on_facts() and ds.preset != facts.PRESET:
        return facts.pretrained_facts(ds.refusal)
    return ds


def split_for(ds: PistolDataset, name: str, forget: list[str], excluded: set[str] = frozenset()) -> Split:
    """Neighbour retain: edges sharing an entity with a forgotten edge (pretrained facts: facts
    of a forgotten fact's category); far: the rest (an opaque dataset has no entities, so every
    other group is far)."""
    fset = set(forget)
    ends = ds.edge_endpoints if ds.preset != facts.PRESET else {k: (c,) for k, c in facts.categories().items()}
    touched = {n for e in forget for n in ends.get(e, ())}
    neighbour, far = [], []
    for e in ds.edge_ids:
        if e in fset or e in excluded:
            continue
        (neighbour if touched & set(ends.get(e, ())) else far).append(e)
    return Split(name, list(forget), neighbour, far)


_NEEDS_GRAPH = ("entity", "max_degree", "min_degree", "independent_edge", "contract_type")


def _forget_edges(ds: PistolDataset, s: ScenarioSpec) -> list[str]:
    t = s.type
    if t in _NEEDS_GRAPH and not ds.has_graph:
        raise ScenarioError(f"scenario {t!r} needs a knowledge graph, and this dataset ({ds.preset}) has none: its "
                            f"edge ids (e.g. {ds.edge_ids[0]!r}) do not name two entities, so its QA are opaque "
                            f"groups. Use scenario 'edge' or 'edges' with a group id; groups: {ds.edge_ids[:10]}")
    if t in ("edge", "independent_edge") and s.edge:
        _check_edges(ds, [s.edge])
        if t == "independent_edge" and s.edge not in independent_edges(ds):
            raise ScenarioError(f"edge {s.edge!r} is not independent; independent edges: {independent_edges(ds)}")
        return [s.edge]
    if t == "edge":
        raise ScenarioError(f"scenario 'edge' needs 'edge'; valid edges: {ds.edge_ids}")
    if t == "independent_edge":
        ind = independent_edges(ds)
        if not ind:
            raise ScenarioError("this dataset has no edge outside the hubs' components")
        return [ind[0]]
    if t == "edges":
        if not s.edges:
            raise ScenarioError(f"scenario 'edges' needs a non-empty 'edges' list; valid edges: {ds.edge_ids}")
        _check_edges(ds, s.edges)
        return list(dict.fromkeys(s.edges))
    if t == "entity":
        if not s.entity:
            raise ScenarioError(f"scenario 'entity' needs 'entity'; valid entities: {sorted(ds.graph.nodes)}")
        _check_entity(ds, s.entity)
        return _edges_of(ds, s.entity)
    if t in ("max_degree", "min_degree"):
        deg = ds.degree()
        pick = (max if t == "max_degree" else min)(sorted(deg), key=lambda n: deg[n])
        return _edges_of(ds, pick)
    if t == "pretrained_facts":
        if ds.preset != facts.PRESET:
            raise ScenarioError("scenario 'pretrained_facts' resolves on the facts dataset (scenarios.dataset_for)")
        if s.edges:
            _check_edges(ds, s.edges)
            return list(dict.fromkeys(s.edges))
        n = s.n or DEFAULT_FACTS
        if n >= len(ds.edge_ids):
            raise ScenarioError(f"pretrained_facts: n = {n} leaves no fact to retain; at most {len(ds.edge_ids) - 1}")
        return facts.default_forget(n)
    if t == "contract_type":
        types = sorted(set(ds.edge_types.values()))
        if s.contract_type not in types:
            raise ScenarioError(f"unknown contract_type {s.contract_type!r}; valid: {types}")
        return [e for e, ty in ds.edge_types.items() if ty == s.contract_type]
    raise ScenarioError(f"unknown scenario type {t!r}")  # pragma: no cover - pydantic rejects it first


def resolve(ds: PistolDataset, spec: dict | ScenarioSpec) -> list[Split]:
    """Resolve a spec into one split per request (one for every type but ``sequence``)."""
    s = spec if isinstance(spec, ScenarioSpec) else ScenarioSpec.model_validate(spec)
    if s.type != "sequence" and (s.each or s.steps):
        raise ScenarioError(f"scenario {s.type!r}: 'steps' and 'each' belong to type 'sequence'")
    if s.n is not None and s.type != "pretrained_facts":
        raise ScenarioError(f"scenario {s.type!r}: 'n' belongs to type 'pretrained_facts'")
    ds = dataset_for(ds, s)
    if s.type != "sequence":
        return [split_for(ds, s.label(), _forget_edges(ds, s))]
    if bool(s.steps) == bool(s.each):
        raise ScenarioError("scenario 'sequence' needs either a non-empty 'steps' list of scenario specs or "
                            "'each': one spec whose forget groups are requested one at a time")
    steps = s.steps
    if s.each:
        if s.each.type == "sequence":
            raise ScenarioError("scenario 'sequence': 'each' cannot be another sequence")
        kind = "pretrained_facts" if s.each.on_facts() else "edges"
        steps = [ScenarioSpec(type=kind, edges=[e]) for e in _forget_edges(ds, s.each)]
    elif len({st.on_facts() for st in steps}) > 1:
        raise ScenarioError("scenario 'sequence' mixes pretrained facts with contracts: its steps must all "
                            "forget from one dataset")
    out, done = [], []
    for i, step in enumerate(steps, 1):
        new = [e for e in _forget_edges(ds, step) if e not in done]
        done += new
        split = split_for(ds, f"{s.label()}#{i}", list(done))
        split.request_edges = new
        out.append(split)
    return out
