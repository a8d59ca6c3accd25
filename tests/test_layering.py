"""The library's import graph, read from the source with ``ast`` (nothing is imported).

- ``hdvila_jax`` never imports the scripts around it (``configs``, ``data_pipelines``, ``benchmarks``,
  ``reference``, ``tests``), neither with an import statement nor through ``importlib``.
- The parts of ``hdvila_jax`` (its subpackages and top-level modules) import each other without a
  cycle, and the lower layers never reach up: the graph reads main -> train -> config_checks ->
  tasks -> inference / variables_io -> models / data / losses, and ``storage`` (the path layer) is at the
  bottom.
- Inference (the Encoder, search, evaluation of a checkpoint) never reaches training, not even through
  another part: restoring variables and encoding live below ``train``.
"""
from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "hdvila_jax"
SCRIPTS = ("configs", "data_pipelines", "benchmarks", "reference", "tests")
# part -> the parts it must never import (directly); each list names every higher layer
LOWER_LAYERS = {
    # the path layer under everything that reads or writes files
    "storage": ("train", "tasks", "search", "main", "models", "data", "losses", "kernels", "sharding", "variables_io",
                "inference", "config_checks", "config_files", "metrics_writer", "encoder", "eval_only", "evaluate"),
    "models": ("train", "tasks", "search", "main"),
    "data": ("train", "tasks", "search", "main", "models"),
    "losses": ("train", "tasks", "search", "main", "models", "data"),
    "kernels": ("train", "tasks", "search", "main", "models", "data"),
    "sharding": ("train", "tasks", "search", "main", "models", "data"),
    "variables_io": ("train", "tasks", "search", "main", "inference", "config_checks"),
    "inference": ("train", "tasks", "search", "main", "variables_io", "config_checks"),
    "tasks": ("train", "search", "main", "config_checks", "eval_only", "encoder"),
    "config_checks": ("train", "search", "main", "eval_only", "encoder"),
    "train": ("search", "main", "eval_only", "encoder"),
}
# parts that serve a trained model and must not depend on the training code, directly or not
INFERENCE = ("encoder", "search", "evaluate", "eval_only", "inference", "variables_io")


def _sources() -> list[pathlib.Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_modules(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a file of the package."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    return _imports(path.read_text(), package)


def _imports(source: str, package: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source`` (a module of ``package``), including
    ones inside functions and ``importlib.import_module("literal")`` / ``__import__("literal")`` calls
    (of an f-string, its literal start)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # ``from pkg import name`` may import the submodule pkg.name
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names] or [(node.lineno, base)]
            found.append((node.lineno, base))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], (ast.Constant, ast.JoinedStr)):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__"):
                first = node.args[0]
                text = first.value if isinstance(first, ast.Constant) else "".join(
                    v.value for v in first.values if isinstance(v, ast.Constant))  # f"configs.{x}" -> "configs."
                if isinstance(text, str):
                    found.append((node.lineno, text))
    return found


def _part(module: str) -> str | None:
    """The part of hdvila_jax a module belongs to (``hdvila_jax.train.trainer`` -> ``train``); None
    outside the package or for the package's own ``__init__``."""
    parts = module.split(".")
    if parts[0] != "hdvila_jax" or len(parts) < 2:
        return None
    return parts[1] if (PACKAGE / parts[1]).is_dir() or (PACKAGE / f"{parts[1]}.py").is_file() else None


def _graph() -> dict[str, dict[str, list[str]]]:
    """part -> imported part -> ["file:line", ...], without a part's imports of itself."""
    graph: dict[str, dict[str, list[str]]] = {}
    for path in _sources():
        source = _part(_module_name(path))
        if source is None:
            continue
        for line, target in _imported_modules(path):
            part = _part(target)
            if part is not None and part != source:
                where = f"{path.relative_to(PACKAGE.parent)}:{line}"
                graph.setdefault(source, {}).setdefault(part, []).append(where)
    return graph


def _cycle(graph: dict[str, dict[str, list[str]]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, {})):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt, path + [nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_the_library_never_imports_the_scripts_around_it():
    bad = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}"
           for path in _sources() for line, name in _imported_modules(path)
           if name.split(".")[0] in SCRIPTS]
    assert not bad, "hdvila_jax must not import " + " / ".join(SCRIPTS) + ":\n" + "\n".join(bad)


def test_no_import_cycle_between_the_parts_of_the_library():
    graph = _graph()
    cycle = _cycle(graph)
    if cycle:
        edges = [f"{a} -> {b} ({', '.join(graph[a][b][:3])})" for a, b in zip(cycle, cycle[1:])]
        pytest.fail("import cycle between parts of hdvila_jax:\n" + "\n".join(edges))


@pytest.mark.parametrize("lower", sorted(LOWER_LAYERS))
def test_lower_layers_never_import_higher_ones(lower):
    imports = _graph().get(lower, {})
    bad = [f"{lower} -> {upper}: {', '.join(imports[upper])}" for upper in LOWER_LAYERS[lower] if upper in imports]
    assert not bad, "\n".join(bad)


def _reachable(graph: dict[str, dict[str, list[str]]], start: str) -> dict[str, list[str]]:
    """Every part ``start`` imports directly or through other parts -> the chain of parts to it."""
    paths = {start: [start]}
    todo = [start]
    while todo:
        node = todo.pop()
        for nxt in sorted(graph.get(node, {})):
            if nxt not in paths:
                paths[nxt] = paths[node] + [nxt]
                todo.append(nxt)
    return paths


@pytest.mark.parametrize("part", INFERENCE)
def test_inference_never_reaches_training(part):
    reached = _reachable(_graph(), part)
    assert "train" not in reached, " -> ".join(reached.get("train", []))


def test_the_checks_see_imports_of_every_kind():
    """The parser finds plain, from-, relative, in-function and importlib imports, and the cycle finder a cycle."""
    source = ("import configs.model\nfrom . import qa\nfrom ..train import sharding\n"
              "def f(m):\n    import benchmarks\n    return importlib.import_module(f'data_pipelines.{m}')\n")
    names = [name for _, name in _imports(source, "hdvila_jax.tasks")]
    assert "configs.model" in names and "benchmarks" in names and "data_pipelines." in names
    assert "hdvila_jax.tasks.qa" in names and "hdvila_jax.train.sharding" in names
    assert _cycle({"a": {"b": []}, "b": {"c": []}, "c": {"a": []}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b": []}, "b": {}}) is None
    assert _reachable({"a": {"b": []}, "b": {"c": []}}, "a")["c"] == ["a", "b", "c"]
