"""The package's shape: no import circles, no module over 600 lines, one data-set name normaliser (issue 20)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "pixdisc"


def _modules() -> dict[str, tuple[Path, bool]]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _compiled(name: str) -> bool:
    """A compiled extension (``_core``, ``_cuda``): it ships a stub and imports nothing of ours."""
    return (PACKAGE.parent / Path(*name.split("."))).with_suffix(".pyi").exists()


def _imports(modules: dict[str, tuple[Path, bool]]) -> dict[str, set[str]]:
    """Every pixdisc module each module imports, function-level imports included."""
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, (path, is_package) in modules.items():
        here = name.split(".") if is_package else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = here[: len(here) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module or ""
                if not target.startswith("pixdisc"):
                    continue
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    if full in modules:
                        edges[name].add(full)
                    elif not _compiled(full) and target in modules:
                        edges[name].add(target)  # a name from the module (or package __init__) itself
            elif isinstance(node, ast.Import):
                edges[name].update(alias.name for alias in node.names if alias.name in modules)
        edges[name].discard(name)
    return edges


def _circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in edges[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    return found


def test_no_import_circles():
    assert _circles(_imports(_modules())) == []


def test_the_checker_sees_a_circle():
    edges = {"pixdisc.a": {"pixdisc.b"}, "pixdisc.b": {"pixdisc.a"}, "pixdisc.c": set()}
    assert _circles(edges) == [["pixdisc.a", "pixdisc.b"]]


def test_no_module_over_600_lines():
    sizes = {name: len(path.read_text().splitlines()) for name, (path, _) in _modules().items()}
    assert {name: size for name, size in sizes.items() if size > 600} == {}


def test_one_data_set_name_normaliser():
    # The issue's seven copies of `.strip().lower().replace("-", "_")`: one is left, the profiles' dataset_key.
    normaliser = '.strip().lower().replace("-", "_")'
    copies = [name for name, (path, _) in _modules().items() if normaliser in path.read_text()]
    assert copies == ["pixdisc.profiles"]
