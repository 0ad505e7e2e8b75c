"""The house's layering, read off the source: every import (function-local ones included) between
the packages ``pistol_data``, the lower layer ``unlearnbench.core``, ``methods`` and the rest of
``unlearnbench`` goes one way, and the evaluator never imports a method."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pistol_data", "methods", "unlearnbench")
# what each layer may import (besides itself and third-party packages)
ALLOWED = {
    "pistol_data": set(),
    "core": {"pistol_data"},
    "methods": {"core", "pistol_data"},
    "unlearnbench": {"core", "methods", "pistol_data"},
}
EVALUATOR = ("unlearnbench.evaluate", "unlearnbench.edit_eval", "unlearnbench.metrics", "unlearnbench.attacks")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str | None:
    if module == "unlearnbench.core" or module.startswith("unlearnbench.core."):
        return "core"
    top = module.split(".")[0]
    return top if top in PACKAGES else None


def _imports(path: Path, module: str) -> set[str]:
    """Absolute names of every module imported anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.add(target)
            out.update(f"{target}.{a.name}" for a in node.names)  # `from pkg import submodule`
    return out


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            mod = _module_name(path)
            graph[mod] = {m for m in _imports(path, mod) if _layer(m)}
    return graph


def layer_edges(graph) -> dict[tuple[str, str], list[str]]:
    edges: dict[tuple[str, str], list[str]] = {}
    for mod, targets in graph.items():
        for t in targets:
            a, b = _layer(mod), _layer(t)
            if a != b:
                edges.setdefault((a, b), []).append(f"{mod} -> {t}")
    return edges


def test_layers_import_one_way():
    bad = [f"{a} may not import {b}: " + ", ".join(sorted(set(w))[:3])
           for (a, b), w in layer_edges(import_graph()).items() if b not in ALLOWED[a]]
    assert not bad, "\n".join(bad)


def test_no_circle_between_layers():
    import networkx as nx

    g = nx.DiGraph(list(layer_edges(import_graph())))
    assert list(nx.simple_cycles(g)) == []


def test_evaluator_and_attacks_never_import_methods():
    graph = import_graph()
    bad = {m: sorted(t for t in graph[m] if _layer(t) == "methods") for m in EVALUATOR}
    assert all(not v for v in bad.values()), bad


def test_the_check_sees_function_local_and_relative_imports(tmp_path):
    """The checker itself: a relative, function-local import from the lower layer up to the runner
    is an edge core -> unlearnbench, which the rules refuse."""
    fake = tmp_path / "unlearnbench" / "core"
    fake.mkdir(parents=True)
    (fake / "x.py").write_text("def f():\n    from ..runner import Runner\n    from methods import get_method\n")
    mod = "unlearnbench.core.x"
    found = _imports(fake / "x.py", mod)
    assert "unlearnbench.runner" in found and "methods" in found
    assert _layer("unlearnbench.runner") not in ALLOWED["core"] and "methods" not in ALLOWED["core"]


@pytest.mark.parametrize("module", ["unlearnbench.core", "methods"])
def test_lower_packages_import_alone(module):
    """Importing the lower layer or the methods loads no evaluator module."""
    import subprocess
    import sys

    code = (f"import sys, {module}; "
            "bad = [m for m in sys.modules if m.startswith('unlearnbench.') and not m.startswith('unlearnbench.core')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


def test_leaderboard_sees_every_metric_without_the_evaluator():
    """Metrics are registered where they are defined: the leaderboard's HTML page (which never
    imports the evaluator) has every meaning and direction."""
    import subprocess
    import sys

    code = ("import sys, unlearnbench.leaderboard, unlearnbench.html as h; "
            "from unlearnbench.metrics import METRICS, EDIT_METRICS; "
            "assert 'unlearnbench.evaluate' not in sys.modules, 'the evaluator was imported'; "
            "assert {'ds', 'forget_rouge1', 'utility'} <= set(METRICS) and 'efficacy' in EDIT_METRICS; "
            "assert not METRICS['ds'].higher_is_better and EDIT_METRICS['efficacy'].higher_is_better")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]


def test_registries_refuse_a_second_registration():
    from methods import REGISTRY, Method, register_method
    from unlearnbench.attacks import register_attack
    from unlearnbench.core.registry import DuplicateNameError
    from unlearnbench.metrics import register_metric

    class Other(Method):
        pass

    with pytest.raises(DuplicateNameError, match="'gd' is already registered"):
        register_method("gd")(Other)
    assert REGISTRY["gd"] is not Other
    with pytest.raises(DuplicateNameError, match="metric 'ds'"):
        register_metric("ds", "another DS", True)(lambda ev, s: 0.0)
    with pytest.raises(DuplicateNameError, match="attack 'layer_skip'"):
        register_attack("layer_skip", "another")(lambda m, i, t: None)
    with pytest.raises(KeyError, match="registered methods"):
        REGISTRY["no-such-method"]
