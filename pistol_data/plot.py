"""Drawing the knowledge graph: companies and persons distinguished, hubs sized by degree."""

from __future__ import annotations

from pathlib import Path

import networkx as nx

from .dataset import PistolDataset


def draw_graph(ds: PistolDataset, out: str | Path, highlight: dict[str, float] | None = None,
               title: str | None = None) -> Path:
    """Save a picture of the graph. ``highlight`` maps edge ids to a value in [0, 1] (e.g. how
    much of a forgotten edge the model still knows) drawn as a red colour scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = ds.graph
    simple = nx.Graph(g)
    pos = nx.kamada_kawai_layout(simple) if simple.number_of_nodes() > 1 else {n: (0, 0) for n in g}
    deg = dict(g.degree())
    fig, ax = plt.subplots(figsize=(9, 7))
    colors = {"company": "#4C72B0", "person": "#DD8452", "entity": "#8C8C8C"}
    for kind, col in colors.items():
        nodes = [n for n, d in g.nodes(data=True) if d.get("kind", "entity") == kind]
        if nodes:
            nx.draw_networkx_nodes(g, pos, nodelist=nodes, node_color=col, ax=ax, label=kind,
                                   node_size=[250 + 180 * deg[n] for n in nodes],
                                   node_shape="s" if kind == "company" else "o")
    for u, v, k, d in g.edges(keys=True, data=True):
        style = "solid" if d.get("type") == "sales" else "dashed"
        if highlight and k in highlight:
            color, width = plt.cm.Reds(0.35 + 0.65 * float(highlight[k])), 4
        else:
            color, width = "#999999", 1.5
        nx.draw_networkx_edges(g, pos, edgelist=[(u, v)], style=style, edge_color=[color], width=width, ax=ax)
    labels = {n: f"{n}\n{d.get('name', '')}" if d.get("name") else n for n, d in g.nodes(data=True)}
    nx.draw_networkx_labels(g, pos, labels=labels, font_size=7, ax=ax)
    ax.set_title(title or f"{ds.preset}: {g.number_of_nodes()} entities, {g.number_of_edges()} contracts "
                          f"(solid = sales, dashed = employment; size = degree)")
    ax.legend(loc="lower left", fontsize=8)
    ax.axis("off")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
