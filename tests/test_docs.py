"""The tutorial in docs/ is built from executed code: its code is the builder's, and its blocks run as a reader
copies them (in order, in one fresh interpreter, with nothing imported for them)."""

import ast
import builtins
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"```python\n(.*?)\n```", re.S)


def _builder():
    spec = importlib.util.spec_from_file_location("build_tutorial", DOCS / "build_tutorial.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bound(tree: ast.AST) -> set[str]:
    """Every name a block binds anywhere (assignment, import, def, argument, loop or except target)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
    return names


def _unbound_names(blocks: list[str]) -> dict[int, list[str]]:
    """Per block (numbered from 1), the names it reads that neither it, an earlier block nor Python defines."""
    known, missing = set(dir(builtins)), {}
    for number, block in enumerate(blocks, 1):
        tree = ast.parse(block)
        read = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}
        known |= _bound(tree)
        if read - known:
            missing[number] = sorted(read - known)
    return missing


def test_committed_tutorial_shows_the_code_the_builder_runs():
    text = (DOCS / "tutorial.md").read_text()
    shown = BLOCK.findall(text)
    assert shown == [code.strip() for _, code in _builder().CELLS if code]
    for figure in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (DOCS / figure).is_file(), figure
    assert "Traceback" not in text


def test_every_name_the_tutorial_uses_is_imported_or_defined_before():
    # Fast, so it runs by default: the build that executes the blocks is a slow test. The tutorial once
    # used time.perf_counter() in section 4 without importing time (its builder had imported it for it).
    assert _unbound_names(BLOCK.findall((DOCS / "tutorial.md").read_text())) == {}
    assert _unbound_names(["x = 1", "import time\nprint(time.time(), x)", "print(np.pi)"]) == {3: ["np"]}


def test_the_builder_runs_cells_as_a_reader_pastes_them(tmp_path):
    builder = _builder()
    # Nothing is imported for the cells ...
    with pytest.raises(NameError, match="'time'"):
        builder.run(tmp_path, [("text", "started = time.perf_counter()")])
    # ... they share one namespace, in order, and print what they run exactly as shown ...
    text = builder.run(tmp_path, [("# one", "import time\nstarted = time.perf_counter()\n"),
                                  ("## two", "print(type(started).__name__)")])
    assert text == ("# one\n\n```python\nimport time\nstarted = time.perf_counter()\n```\n\n"
                    "## two\n\n```python\nprint(type(started).__name__)\n```\n\n```text\nfloat\n```\n")
    # ... and each run starts from a fresh namespace.
    with pytest.raises(NameError, match="'started'"):
        builder.run(tmp_path, [("", "print(started)")])


@pytest.mark.slow
def test_tutorial_builds_from_scratch_in_a_fresh_interpreter(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    # A new Python process, as a reader's: no module this test session imported, no torch setting it made.
    done = subprocess.run([sys.executable, str(DOCS / "build_tutorial.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    text = (tmp_path / "tutorial.md").read_text()
    assert BLOCK.findall(text) == BLOCK.findall((DOCS / "tutorial.md").read_text())  # what ran is what is shown
    assert text.count("```text") >= 7 and "codes (x255): [0, 253]" in text
    for figure in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (tmp_path / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure
