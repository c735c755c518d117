"""The tutorial in docs/ is built from executed code: its code is the builder's, and the builder runs."""

import importlib.util
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _builder():
    spec = importlib.util.spec_from_file_location("build_tutorial", DOCS / "build_tutorial.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_tutorial_shows_the_code_the_builder_runs():
    text = (DOCS / "tutorial.md").read_text()
    shown = re.findall(r"```python\n(.*?)\n```", text, re.S)
    assert shown == [code.strip() for _, code in _builder().CELLS if code]
    for figure in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (DOCS / figure).is_file(), figure
    assert "Traceback" not in text


@pytest.mark.slow
def test_tutorial_builds_from_scratch(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    path = _builder().build(tmp_path)
    text = path.read_text()
    assert text.count("```text") >= 7 and "codes (x255): [0, 253]" in text
    for figure in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (tmp_path / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure
