"""The package's layer contract, read from the source with ``ast`` (no import needed).

* each module imports only from its own layer and the layers below it
  (``ALLOWED``), so data flows one way;
* the graph of jrnn-internal imports has no cycle;
* no jrnn-internal import hides in a function body, except in the command
  line's entry module (``jrnn/cli/__init__.py``), whose lazy imports keep
  ``jrnn --help`` from loading JAX -- each of those has a comment saying so.

A failure names the module, the line and the rule.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "jrnn"

# layer -> the layers its modules may import from (its own included).
ALLOWED = {
    "reference": set(),
    "data": set(),
    "core": {"core"},
    "models": {"core", "models"},
    "training": {"core", "models", "data", "training"},
    "analysis": {"core", "models", "data", "training", "analysis"},
    "interop": {"core", "interop"},
    "top": {"core", "models", "training"},
    "cli": {"reference", "data", "core", "models", "training", "analysis", "interop", "top", "cli"},
}

LAZY_IMPORTS_ALLOWED = {"jrnn.cli"}  # the entry module of the command line


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _layer(module: str) -> str:
    if module == "jrnn":
        return "top"
    if module == "jrnn.__main__":
        return "cli"
    return module.split(".")[1]


def _resolve(name: str) -> str:
    """The jrnn module an imported dotted name lives in (``jrnn`` for names of the package)."""
    while name not in MODULES:
        name = name.rsplit(".", 1)[0]
    return name


def _imports(module: str):
    """``(target module, line, inside a function, has a comment)`` for each jrnn import."""
    source = MODULES[module].read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    out = []

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            targets = []
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                targets = [f"{child.module}.{a.name}" for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level:
                raise AssertionError(f"{module}:{child.lineno}: relative import; use jrnn.<path>")
            for t in targets:
                if t == "jrnn" or t.startswith("jrnn."):
                    above = lines[child.lineno - 2] if child.lineno >= 2 else ""
                    out.append((_resolve(t), child.lineno, in_function,
                                above.strip().startswith("#") or "#" in lines[child.lineno - 1]))
            visit(child, nested)

    visit(tree, False)
    return out


GRAPH = {m: {t for t, *_ in _imports(m) if t != m} for m in MODULES}


def _find_cycle(graph: dict) -> list:
    """One cycle of ``graph`` (a list of nodes, first == last), or ``[]``."""
    state: dict = {}  # 1: on the current path, 2: done

    def walk(node, path):
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = walk(nxt, path + [nxt])
                if found:
                    return found
        state[node] = 2
        return []

    for m in sorted(graph):
        if m not in state:
            found = walk(m, [m])
            if found:
                return found
    return []


def _violations(module: str, imports) -> list:
    layer = _layer(module)
    return [f"{module}:{line} imports {target}: layer {layer!r} may import only from "
            f"{sorted(ALLOWED[layer])}, not {_layer(target)!r}"
            for target, line, _, _ in imports
            if target != module and _layer(target) not in ALLOWED[layer]]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_layers(module):
    assert _violations(module, _imports(module)) == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_jrnn_import_inside_a_function(module):
    for target, line, in_function, commented in _imports(module):
        if not in_function:
            continue
        assert module in LAZY_IMPORTS_ALLOWED, (
            f"{module}:{line} imports {target} inside a function: move the import to the top, "
            "or the piece to the layer it belongs to")
        assert commented, f"{module}:{line}: a lazy import needs a comment saying why"


def test_no_import_cycle():
    cycle = _find_cycle(GRAPH)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_the_contract_can_fail():
    """The checks see a planted upward import and a planted cycle; names resolve to modules."""
    assert _violations("jrnn.core.cells", [("jrnn.models.lm", 1, False, False)])
    assert _violations("jrnn.models.lm", [("jrnn.training.step", 1, False, False)])
    assert not _violations("jrnn.training.step", [("jrnn.models.lm", 1, False, False)])
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) == []
    assert _resolve("jrnn.models.lm.rnn_lm") == "jrnn.models.lm"
    assert _resolve("jrnn.rnn_lm") == "jrnn"
    assert "jrnn.core.cells" in GRAPH["jrnn.core.unroll"]  # the graph is read, not empty


def test_import_jrnn_loads_no_research_module():
    """``import jrnn`` leaves diagnostics, tasks, distributed, interop and the CLI unloaded."""
    import subprocess
    import sys

    code = ("import sys, jrnn; print(sorted(m for m in sys.modules if m.startswith('jrnn.') and "
            "m.split('.')[1] in ('analysis', 'interop', 'cli', 'data', 'reference') "
            "or m == 'jrnn.training.distributed'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
