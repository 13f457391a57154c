"""The package's import graph, read statically: no cycles, no module imports a layer above its own, and Ray and
MLflow stay in the layers that own them.

Layers, bottom to top: the package's root modules (errors, environment, atomic, schema, tasks, ...) <- datasets
<- models <- benchmark <- reports <- cli (the `omicsweep/cli/` package). An import inside a function counts too:
it is still a dependency. Beside the graph: no module of the package is over MAX_MODULE_LINES lines.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "omicsweep"
LAYERS = {"datasets": 1, "models": 2, "benchmark": 3, "reports": 4, "cli": 5}
CLI_LAYER = LAYERS["cli"]

MAX_MODULE_LINES = 400
# Modules allowed over MAX_MODULE_LINES, each with its reason (issue 12: "no module over 400 lines"). Empty: a
# module that grows past it is split, or named here with why it cannot be.
LONG_MODULES: dict[str, str] = {
}

# Cycles still being removed by another part of issue 12, each named with its owner. Only a cycle made of
# exactly these modules is allowed; any other cycle, or a bigger one through them, fails.
ALLOWED_CYCLES = [
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


@cache
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The package module an import names (a `from pkg import name` of a function resolves to pkg)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imported_names(module: str, path: Path, *, top_level_only: bool = False) -> set[str]:
    """Every dotted name `module` imports (absolute), anywhere in it or only where it runs at import time."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    nodes = _import_time_nodes(tree) if top_level_only else ast.walk(tree)
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = parts[: len(parts) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names.update(f"{base}.{a.name}" for a in node.names)
            if base.split(".")[0] != "omicsweep":  # `from ray import tune` imports ray; within the package,
                names.add(base)  # `from omicsweep.datasets import readers` names the module it imports
    return names


def _import_time_nodes(tree: ast.AST):
    """The nodes that run when the module is imported: everything outside function bodies."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            stack.extend(ast.iter_child_nodes(node))


def _imports(module: str, path: Path, modules: dict[str, Path], *, top_level_only: bool = False) -> set[str]:
    found = set()
    for name in _imported_names(module, path, top_level_only=top_level_only):
        if name.split(".")[0] != "omicsweep":
            continue
        target = _resolve(name, modules)
        if target and target != module:
            found.add(target)
    return found


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) < 2:
        return 0  # the package's own __init__
    return LAYERS.get(parts[1], 0)


@cache
def _graph() -> dict[str, frozenset[str]]:
    """module -> the package modules it imports.

    A module importing its own package (`omicsweep.models.base` calling the registry's `load_all` from
    `omicsweep.models`) inside a function is not an edge: Python has run the package's `__init__` before any of
    its modules, so that import cannot meet a half-initialised module. At import time it would be one.
    """
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        at_import = _imports(module, path, modules, top_level_only=True)
        graph[module] = frozenset(t for t in _imports(module, path, modules)
                                  if not module.startswith(t + ".") or t in at_import)
    return graph


def _cycles(graph: dict[str, frozenset[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def _third_party(prefixes: tuple[str, ...], *, top_level_only: bool = False) -> dict[str, set[str]]:
    """module -> the imports of `prefixes` (e.g. ray, mlflow) it makes."""
    found = {}
    for module, path in _modules().items():
        names = {n for n in _imported_names(module, path, top_level_only=top_level_only)
                 if n.split(".")[0] in prefixes}
        if names:
            found[module] = names
    return found


def test_the_graph_is_read():
    """The walk sees the package: imports inside functions and relative imports are edges."""
    graph = _graph()
    assert "omicsweep.schema" in graph and "omicsweep.benchmark.trial" in graph
    assert "omicsweep.benchmark.training" in graph["omicsweep.benchmark.trial"]  # imported inside execute_trial
    assert {"omicsweep.cli", "omicsweep.cli.sweep", "omicsweep.cli.data"} <= set(graph)
    assert _layer("omicsweep.cli.sweep") == _layer("omicsweep.cli") == CLI_LAYER
    assert _layer("omicsweep.schema") == 0 and _layer("omicsweep.datasets.readers.tenx") == LAYERS["datasets"]


def test_no_import_cycles():
    cycles = [c for c in _cycles(_graph()) if c not in ALLOWED_CYCLES]
    assert cycles == []


def test_no_upward_imports():
    graph = _graph()
    upward = sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets if _layer(t) > _layer(m))
    assert upward == []


def test_ray_and_mlflow_stay_in_their_layers():
    """Nothing below benchmark imports Ray or MLflow; reports never imports Ray itself."""
    below = {m: n for m, n in _third_party(("ray", "mlflow")).items() if _layer(m) < LAYERS["benchmark"]}
    in_reports = {m: n for m, n in _third_party(("ray",)).items() if _layer(m) == LAYERS["reports"]}
    assert below == {} and in_reports == {}


def test_report_code_imports_no_module_that_loads_ray():
    """A report module may import benchmark modules (even inside a function) only if importing them loads no Ray:
    reading runs back (tracking, leaderboard, figures, export) must not start Ray's import machinery."""
    modules, graph = _modules(), _graph()
    at_import = {m: _imports(m, p, modules, top_level_only=True) for m, p in modules.items()}
    loads_ray = set(_third_party(("ray",), top_level_only=True))
    changed = True
    while changed:  # modules whose import-time imports reach Ray
        grown = {m for m, targets in at_import.items() if targets & loads_ray}
        changed = not grown <= loads_ray
        loads_ray |= grown
    offending = sorted(f"{m} -> {t}" for m, targets in graph.items() if _layer(m) == LAYERS["reports"]
                       for t in targets if t in loads_ray)
    assert offending == []


def test_importing_the_report_modules_loads_no_ray():
    """What the static walk says, checked for real in a fresh interpreter on the modules `leaderboard` runs."""
    import subprocess
    import sys

    reports = ["omicsweep.reports.tracking", "omicsweep.reports.leaderboard", "omicsweep.reports.board_mlflow"]
    code = (f"import sys; import {', '.join(reports)}; "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.strip() == "[]"


def test_no_module_is_over_400_lines():
    lengths = {module: len(path.read_text().splitlines()) for module, path in _modules().items()}
    long = {module: n for module, n in lengths.items() if n > MAX_MODULE_LINES and module not in LONG_MODULES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines (split them, or name them in LONG_MODULES with why): {long}"
    assert not set(LONG_MODULES) - set(lengths), "LONG_MODULES names a module that is gone"
