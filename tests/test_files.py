"""Atomic writes (every report, model, checkpoint and codebook goes through them) and figure files."""

import os
import stat

import numpy as np
import pytest

import pixdisc
from pixdisc._files import atomic_write, write_text
from pixdisc._plotting import png_figure, pyplot


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_write_text_replaces_the_file_with_umask_permissions(tmp_path):
    target = tmp_path / "sub" / "report.md"
    previous = os.umask(0o027)
    try:
        assert write_text(target, "first") == target
        write_text(target, "second ü")
    finally:
        os.umask(previous)
    assert target.read_text(encoding="utf-8") == "second ü"
    assert _mode(target) == 0o640  # what open() gives under umask 027, not mkstemp's 0600
    assert sorted(p.name for p in target.parent.iterdir()) == ["report.md"]


@pytest.mark.parametrize("durable", [False, True])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, durable):
    target = tmp_path / "model.pt"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_write(target, durable=durable) as stream:
            stream.write(b"half of the new fi")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_atomic_write_rejects_other_modes(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(tmp_path / "x", mode="a"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_codebook_save_is_atomic_and_readable(tmp_path):
    book = pixdisc.Codebook(np.array([[0.0], [1.0]], np.float32))
    path = book.save(tmp_path / "codes.npz")
    np.testing.assert_array_equal(pixdisc.load_codebook(path).codes_, book.codes_)
    assert [p.name for p in tmp_path.iterdir()] == ["codes.npz"]


def test_png_figure_writes_a_png_and_closes_the_figure(tmp_path):
    pytest.importorskip("matplotlib")
    plt = pyplot()
    open_before = len(plt.get_fignums())
    with png_figure(tmp_path / "a.png", (3, 2), title="t") as (figure, axes):
        axes.plot([0, 1], [1, 0])
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ZeroDivisionError):
        with png_figure(tmp_path / "b.png", (3, 2)) as (figure, axes):
            1 / 0
    assert not (tmp_path / "b.png").exists()
    assert len(plt.get_fignums()) == open_before
