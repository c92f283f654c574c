"""The package's layering, read from the source (issue 15, item 5).

Every ``import`` and ``from ... import`` in every ``.py`` file of the package
(``disentangled_ml/``, and ``export/`` and ``tuning/``, which setup.py installs as
``disentangled_ml.export`` and ``disentangled_ml.tuning``) counts, including the ones inside functions (a lazy import is still a dependency, it
only moves the moment it bites). From them we build the graph of modules and require:

* no cycle between modules, except the edges named in :data:`KNOWN_EDGES`, each with
  the reason it is still there; a new cycle fails with the modules it runs through;
* ``disentangled_ml.config`` (the bottom layer: every stage reads it) imports no other
  module of the package except the few leaf modules in :data:`CONFIG_MAY_IMPORT`;
* the edges issue 15 removed stay removed (:data:`SEPARATED`): the model and loss side
  does not reach into the data side's miner, one CLI subcommand does not import
  another, and nothing but ``dml prepare`` imports the preparer.

An import names the module it loads: ``from disentangled_ml.data import mining`` is an
edge to ``disentangled_ml.data.mining``, ``from disentangled_ml.models import X`` (a name
in the package's ``__init__``) an edge to ``disentangled_ml.models``. The parent packages
Python initialises on the way are not edges: they are in ``sys.modules`` before their
submodules run, so they cannot close a cycle at import time. Imports built at run time
(``importlib.import_module(f"...")``: the CLI's subcommand table, the evaluation
package's lazy names) are not seen; each of those names a module below its caller.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

PACKAGE = "disentangled_ml"
REPO = Path(__file__).resolve().parents[1]


def _package_dirs() -> Dict[str, Path]:
    """``{package: folder}``: ``disentangled_ml/``, and the subpackages setup.py's
    ``package_dir`` installs from elsewhere (``export/`` and ``tuning/`` at the top)."""
    dirs = {PACKAGE: REPO / PACKAGE}
    for node in ast.walk(ast.parse((REPO / "setup.py").read_text(encoding="utf-8"))):
        if isinstance(node, ast.keyword) and node.arg == "package_dir":
            dirs.update({name: REPO / folder for name, folder in ast.literal_eval(node.value).items()})
    return dirs


PACKAGE_DIRS = _package_dirs()

#: Edges (importer, imported) left out of the cycle check, each a known cycle with the
#: issue item that will remove it. Keep it short; an entry whose edge no longer exists
#: fails :func:`test_known_edges_still_exist`, so that it is removed with the cycle.
KNOWN_EDGES: Dict[Tuple[str, str], str] = {
    # (empty: the last one, training <-> distributed, went when both loops moved onto the
    # shared run set-up, callbacks and finish of disentangled_ml.training, issue 15 item 1)
}

#: What config.py may import from the package: leaf modules with no TensorFlow, which
#: themselves import nothing from the package outside this set.
CONFIG_MAY_IMPORT = frozenset({
    PACKAGE,  # __init__: the docstring and __version__, nothing else
    f"{PACKAGE}.errors",  # ConfigError
    f"{PACKAGE}.pitch_bands",  # the pitch band count (numpy and madmom)
})


#: ``(importers, imported, exempt, why)``: no module in ``importers`` imports one in
#: ``imported`` (each a module, or a package and everything in it); ``exempt`` names
#: modules let through on either side.
SEPARATED = [
    (("disentangled_ml.models", "disentangled_ml.losses", "disentangled_ml.pair_masks"),
     ("disentangled_ml.data.mining",), (),
     "the model and the loss read the pair masks from disentangled_ml.pair_masks, not from the data side's miner"),
    (("disentangled_ml.cli",), ("disentangled_ml.cli",), ("disentangled_ml.cli", "disentangled_ml.cli.common"),
     "a CLI subcommand imports no other subcommand: shared helpers are in disentangled_ml.cli.common"),
    (("disentangled_ml",), ("disentangled_ml.data.prepare",), ("disentangled_ml.cli.prepare",),
     "readers of prepared shards take the schema from disentangled_ml.data.shards, not from the preparer"),
]


def _under(module: str, names) -> bool:
    return any(module == n or module.startswith(n + ".") for n in names)


def package_modules() -> Dict[str, Path]:
    """``{module: file}`` for every ``.py`` file of the package, wherever it sits."""
    modules = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [*package.split("."), *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _in_package(name: Optional[str]) -> bool:
    return name is not None and (name == PACKAGE or name.startswith(PACKAGE + "."))


def _deepest_module(name: str, modules: Dict[str, Path]) -> str:
    """``name`` itself, or the longest prefix of it that is a module (``a.b.attr`` -> ``a.b``)."""
    parts = name.split(".")
    while parts and ".".join(parts) not in modules:
        parts.pop()
    if not parts:
        raise AssertionError(f"{name} is not a module of {PACKAGE}")
    return ".".join(parts)


def imports_of(module: str, path: Path, modules: Dict[str, Path]) -> Iterator[Tuple[str, int]]:
    """``(imported module, line)`` for every package import in ``path``, at any depth."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _in_package(alias.name):
                    yield _deepest_module(alias.name, modules), node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importer's package
                base_parts = module.split(".") if is_package else module.split(".")[:-1]
                base_parts = base_parts[:len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module
            if not _in_package(base):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield (sub if sub in modules else _deepest_module(base, modules)), node.lineno


def import_graph() -> Dict[str, Dict[str, int]]:
    """``{importer: {imported: first line}}`` over every module of the package."""
    modules = package_modules()
    graph: Dict[str, Dict[str, int]] = {m: {} for m in modules}
    for module, path in modules.items():
        for target, line in imports_of(module, path, modules):
            if target != module:
                graph[module].setdefault(target, line)
    return graph


def _strongly_connected(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Tarjan's components (iterative), those with more than one module."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    on_stack: Set[str] = set()
    stack: List[str] = []
    out: List[List[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def _shortest_cycle(graph: Dict[str, Set[str]], start: str, within: Set[str]) -> List[str]:
    """The shortest path ``start -> ... -> start`` inside one component."""
    previous: Dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(graph[node] & within):
            if child == start:
                path = [node]
                while path[-1] != start:
                    path.append(previous[path[-1]])
                return path[::-1] + [start]
            if child not in previous:
                previous[child] = node
                queue.append(child)
    raise AssertionError(f"{start} is in no cycle")


def find_cycles(graph: Dict[str, Dict[str, int]], allowed=frozenset()) -> List[List[str]]:
    """One cycle per strongly connected component, after dropping the ``allowed`` edges."""
    edges = {m: {t for t in targets if (m, t) not in allowed} for m, targets in graph.items()}
    return [_shortest_cycle(edges, component[0], set(component)) for component in _strongly_connected(edges)]


def _describe(cycle: List[str], graph: Dict[str, Dict[str, int]]) -> str:
    steps = [f"{a} (line {graph[a][b]}) -> {b}" for a, b in zip(cycle, cycle[1:])]
    return "\n    ".join(steps)


def test_the_graph_sees_every_kind_of_import():
    graph = import_graph()
    assert len(graph) > 40 and PACKAGE in graph
    # module level, package-relative names, and a lazy import inside a function
    assert "disentangled_ml.config" in graph["disentangled_ml.features"]
    assert "disentangled_ml.features" in graph["disentangled_ml.models"]  # `import disentangled_ml.features`
    assert "disentangled_ml.cli" in graph["disentangled_ml.__main__"]
    # export/ and tuning/ install as disentangled_ml.export and disentangled_ml.tuning
    assert {"disentangled_ml.export.tflite", "disentangled_ml.tuning.search"} <= set(graph)


def test_cycle_finder_reports_the_path():
    toy = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3, "d": 4}, "d": {}, "e": {"e": 5}}
    assert find_cycles(toy) == [["a", "b", "c", "a"]]
    assert find_cycles(toy, allowed={("c", "a")}) == []


def test_no_import_cycles():
    graph = import_graph()
    cycles = find_cycles(graph, allowed=set(KNOWN_EDGES))
    report = "\n  ".join(_describe(c, graph) for c in cycles)
    assert not cycles, f"import cycles in {PACKAGE} (lazy imports count too):\n  {report}"


def test_known_edges_still_exist():
    graph = import_graph()
    gone = [edge for edge in KNOWN_EDGES if edge[1] not in graph.get(edge[0], {})]
    assert not gone, f"these allowed edges are gone; remove them from KNOWN_EDGES: {gone}"


def test_config_imports_only_leaf_modules():
    graph = import_graph()
    config = f"{PACKAGE}.config"
    above = {m: line for m, line in graph[config].items() if m not in CONFIG_MAY_IMPORT}
    assert not above, (f"{config} imports modules above it (lazily or not), which makes every stage that "
                       f"reads the config load them: {above}")
    for leaf in CONFIG_MAY_IMPORT:
        heavy = set(graph[leaf]) - CONFIG_MAY_IMPORT
        assert not heavy, f"{leaf}, which config.py may import, imports {sorted(heavy)}"


def test_separated_layers_stay_apart():
    graph = import_graph()
    found = [f"{a} (line {line}) -> {b}: {why}"
             for importers, imported, exempt, why in SEPARATED
             for a, targets in graph.items() if _under(a, importers) and a not in exempt
             for b, line in targets.items() if _under(b, imported) and b not in exempt]
    report = "\n  ".join(found)
    assert not found, f"imports across layers that issue 15 separated:\n  {report}"
