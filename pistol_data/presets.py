"""Graph topologies of the presets. The seed changes names and values, never the topology.

Node ids and edge ids follow the original PISTOL sample files (edge ``A_B`` joins ``A`` and
``B``; the first node of a sales edge is the seller, of an employment edge the employer).

* ``pistol-1`` — PISTOL sample dataset 1: 14 companies, 10 persons, 20 contracts. Hub ``A``
  has 8 contracts and hub ``B`` 7 (``A_B`` is shared: the original file's counts; 8 for both
  would need 21 edges), three sales edges ``Ei_Fi`` and three employment edges ``Ei_qi``
  forming three small components away from the hubs.
* ``pistol-2`` — PISTOL sample dataset 2: 30 companies, 75 sales contracts: a chain on nodes
  0–9 (9 edges), a semi-dense cluster on 10–19 (21 edges, the original's edge list) and a
  complete graph on 20–29 (45 edges).
* ``pistol-2-mini`` — ``pistol-2``'s three densities at CPU size: a chain on 0–4 (4 edges, edge
  density 0.4), a semi-dense cluster on 5–9 (a 5-cycle and two chords: 7 edges, 0.7) and a
  complete graph on 10–14 (10 edges, 1.0); 21 sales contracts, 6 attributes each.
* ``pistol-mini`` — the shape of ``pistol-1`` at a size SmolLM2-135M memorises on a 2-core
  CPU in minutes: hub ``A`` with 4 contracts (2 sales, 2 employment), ``B`` with 2, and two
  independent edges (one sales, one employment); 6 attributes per contract type.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations


@dataclass(frozen=True)
class Topology:
    name: str
    edges: tuple[tuple[str, str, str, str], ...]  # (edge id, u, v, contract type)
    attributes: str = "full"  # "full" or "mini" (see attributes.MINI_ATTRIBUTES)
    description: str = ""

    @property
    def persons(self) -> set[str]:
        return {v for _, _, v, t in self.edges if t == "employment"}


def _edge(eid: str, kind: str) -> tuple[str, str, str, str]:
    u, v = eid.split("_")
    return (eid, u, v, kind)


def _pistol1() -> Topology:
    sales = ["A_B", "A_C", "A_C2", "A_C3", "B_D", "B_D2", "B_D3", "E1_F1", "E2_F2", "E3_F3"]
    emp = ["A_m", "A_n", "A_n2", "A_n3", "B_p", "B_p2", "B_p3", "E1_q1", "E2_q2", "E3_q3"]
    return Topology("pistol-1", tuple([_edge(e, "sales") for e in sales] +
                                      [_edge(e, "employment") for e in emp]),
                    description="PISTOL sample dataset 1: two hubs, three small independent components")


_CLUSTER_EXTRA = ["10_19", "11_18", "12_17", "13_16", "10_18", "11_17", "12_16", "13_15",
                  "14_16", "13_17", "12_18", "11_19"]


def _pistol2() -> Topology:
    chain = [f"{i}_{i + 1}" for i in range(9)]
    cluster = [f"{i}_{i + 1}" for i in range(10, 19)] + _CLUSTER_EXTRA
    complete = [f"{i}_{j}" for i, j in combinations(range(20, 30), 2)]
    return Topology("pistol-2", tuple(_edge(e, "sales") for e in chain + cluster + complete),
                    description="PISTOL sample dataset 2: chain, semi-dense cluster, complete graph")


def _pistol2_mini() -> Topology:
    chain = [f"{i}_{i + 1}" for i in range(4)]
    cluster = ["5_6", "6_7", "7_8", "8_9", "5_9", "5_7", "6_9"]
    complete = [f"{i}_{j}" for i, j in combinations(range(10, 15), 2)]
    return Topology("pistol-2-mini", tuple(_edge(e, "sales") for e in chain + cluster + complete), attributes="mini",
                    description="pistol-2's chain, semi-dense cluster and complete graph, 5 entities each")


def _mini() -> Topology:
    edges = [_edge("A_B", "sales"), _edge("A_C", "sales"), _edge("A_m", "employment"),
             _edge("A_n", "employment"), _edge("B_p", "employment"), _edge("E1_F1", "sales"),
             _edge("E2_q2", "employment")]
    return Topology("pistol-mini", tuple(edges), attributes="mini",
                    description="pistol-1's shape at CPU size: one hub, independent edges")


PRESETS: dict[str, Topology] = {t.name: t for t in (_pistol1(), _pistol2(), _pistol2_mini(), _mini())}


def get_preset(name: str) -> Topology:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; valid presets: {sorted(PRESETS)}") from None
