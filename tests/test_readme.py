"""Every Python block of the README runs as written (in order, in one namespace, as a reader would paste them)."""

import os
import re
from pathlib import Path

import pytest

pytest.importorskip("torch")

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _python_blocks() -> list[str]:
    blocks = []
    for block in BLOCK.findall(README.read_text()):
        # Interactive examples: run the statements after the prompts.
        lines = [line[4:] if line.startswith((">>> ", "... ")) else line for line in block.splitlines()
                 if not block.lstrip().startswith(">>>") or line.startswith((">>> ", "... "))]
        blocks.append("\n".join(lines))
    return blocks


@pytest.mark.slow
def test_readme_python_blocks_run(tmp_path, single_torch_thread):
    blocks = _python_blocks()
    assert len(blocks) >= 4
    namespace: dict = {"__name__": "__readme__"}
    cwd = os.getcwd()
    os.chdir(tmp_path)  # blocks may write files (codes.npz)
    try:
        for number, block in enumerate(blocks):
            try:
                exec(compile(block, f"README python block {number + 1}", "exec"), namespace)
            except Exception as exc:  # name the block that failed
                raise AssertionError(f"README python block {number + 1} failed: {exc!r}\n{block}") from exc
    finally:
        os.chdir(cwd)
