"""Atomic writes (every report, model, checkpoint and codebook goes through them), figure files, and the errors
about a user's file: each names the file, says what is wrong with it and what to do next."""

import json
import os
import pickle
import stat

import numpy as np
import pytest

import pixdisc
from pixdisc._files import atomic_write, file_kind, numpy_load_error, write_text
from pixdisc.report.figure import png_figure, pyplot


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


# ------------------------------------------------------------------------------- errors about a user's file


def _certify_problem(n=6):
    torch = pytest.importorskip("torch")
    book = pixdisc.Codebook(np.array([[0.0], [0.5], [1.0]], np.float32))
    x = np.random.default_rng(11).random((n, 1, 2, 2)).astype(np.float32)
    torch.manual_seed(5)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 10), torch.nn.ReLU(),
                              torch.nn.Linear(10, 2)).eval()
    return net, book, x, np.zeros(n, np.int64)


def _certify(problem, checkpoint):
    from pixdisc.certification import certify

    net, book, x, y = problem
    return certify(net, book, x, y, 0.2, executor="serial", progress=False, checkpoint=checkpoint)


@pytest.fixture
def certify_lines(tmp_path):
    """A finished certify checkpoint's lines (header first) and the problem it was written for."""
    problem = _certify_problem()
    path = tmp_path / "finished.jsonl"
    expected = _certify(problem, path).outcome
    lines = path.read_text().splitlines(keepends=True)
    assert len(lines) == 1 + len(expected)
    return problem, lines, expected


def test_certify_resumes_past_the_cut_off_last_line_a_killed_run_leaves(tmp_path, certify_lines, capsys):
    problem, lines, expected = certify_lines
    path = tmp_path / "killed.jsonl"
    path.write_text("".join(lines[:4]) + lines[4][:25])  # killed while appending the fourth record
    np.testing.assert_array_equal(_certify(problem, path).outcome, expected)
    err = capsys.readouterr().err
    assert f"{path}: dropped its last line" in err and "killed" in err
    indices = [json.loads(line)["index"] for line in path.read_text().splitlines()[1:]]
    assert sorted(indices) == list(range(len(expected)))  # nothing lost, nothing twice


@pytest.mark.parametrize("bad, problem", [
    ("garbage\n", "it is not JSON, probably a line cut off by a killed run"),
    ('{"index": 0, "outcome": "cert', "it is not JSON, probably a line cut off by a killed run"),  # then a record
    ('{"index": 99, "outcome": "certified", "log2_size": 0, "n_ambiguous": 0}\n', "sample index 99"),
    ('{"outcome": "certified"}\n', "its fields are not a record's"),
], ids=["garbage", "cut-off-then-appended", "foreign-index", "missing-fields"])
def test_a_bad_certify_checkpoint_line_names_the_file_the_line_and_the_next_step(tmp_path, certify_lines, bad,
                                                                                  problem):
    problem_data, lines, _ = certify_lines
    path = tmp_path / "damaged.jsonl"
    path.write_text("".join(lines[:2]) + bad + "".join(lines[3:]))
    with pytest.raises(ValueError) as error:
        _certify(problem_data, path)
    message = str(error.value)
    assert message.startswith(f"{path}, line 3, is not a record certify wrote: ") and problem in message
    assert "Delete that line" in message and f"delete {path} to start this run over" in message
    assert "\n" not in message  # the CLI shows the first line only


def test_a_file_that_is_not_a_certify_checkpoint_says_to_delete_it_or_pass_another(tmp_path):
    for name, content in [("notes.jsonl", b"my notes\nmore notes\n"), ("noise.jsonl", bytes(range(256)) * 4),
                          ("half_header.jsonl", b'{"format": "pixdisc-cer')]:
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ValueError) as error:
            _certify(_certify_problem(), path)
        assert str(error.value) == (f"{path} is not a pixdisc certification checkpoint (its first line is not the "
                                    f"header certify writes); delete {path} to start this run over, or pass "
                                    "another checkpoint file")


def _model_file(path):
    from pixdisc.models import build_model, save_model

    save_model(build_model("mlp", input_size=4, hidden=[4]), path)
    return path


MODEL_NEXT_STEP = "pass a model file written by pixdisc.models.save_model or `pixdisc train -o FILE`"
MODEL_CASES = [
    ("notes.txt", lambda path: path.write_text("hello, I am a text file\n"), "it holds text, not a torch file"),
    ("empty.pt", lambda path: path.write_bytes(b""), "it is empty (0 bytes)"),
    ("codes.npz", lambda path: pixdisc.Codebook(np.array([[0.0], [1.0]], np.float32)).save(path),
     "it is a NumPy .npz file (a codebook or data?), not a torch file"),
    ("cut.pt", lambda path: path.write_bytes(_model_file(path).read_bytes()[:300]),
     "it is a damaged or incomplete torch file, e.g. cut off by an unfinished copy"),
    ("list.pkl", lambda path: path.write_bytes(pickle.dumps([1, 2, 3])), "pixdisc never unpickles arbitrary objects"),
]


@pytest.mark.parametrize("name, write, problem", MODEL_CASES, ids=[case[0] for case in MODEL_CASES])
def test_a_file_that_is_not_a_model_names_the_file_what_it_is_and_the_next_step(tmp_path, name, write, problem):
    pytest.importorskip("torch")
    from pixdisc.models import load_model

    path = tmp_path / name
    write(path)
    with pytest.raises(ValueError) as error:
        load_model(path)
    message = str(error.value)
    assert message.startswith(f"{path} is not a valid pixdisc model file: ") and problem in message
    assert message.endswith(MODEL_NEXT_STEP) and "corrupt or unreadable" not in message
    assert "weights_only=False" not in message  # torch's advice to run the file's code is never relayed


def test_a_model_file_that_is_not_pixdiscs_says_what_to_pass(tmp_path):
    torch = pytest.importorskip("torch")
    from pixdisc.models import build_model, load_model

    path = tmp_path / "state.pt"
    torch.save(build_model("mlp", input_size=4, hidden=[4]).state_dict(), path)
    with pytest.raises(ValueError, match="state.pt is not a pixdisc model file") as error:
        load_model(path)
    assert str(error.value).endswith(MODEL_NEXT_STEP)


TRAINING_CASES = [
    ("junk.ckpt", lambda path: path.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, np.uint8).tobytes()),
     "pixdisc never unpickles arbitrary objects"),
    ("notes.ckpt", lambda path: path.write_text("epoch 3\n"), "it holds text, not a torch file"),
    ("model.ckpt", _model_file, "is not a pixdisc training checkpoint (no 'pixdisc-train-checkpoint' header"),
]


@pytest.mark.parametrize("name, write, problem", TRAINING_CASES, ids=[case[0] for case in TRAINING_CASES])
def test_a_bad_training_checkpoint_says_delete_it_or_pass_another(tmp_path, name, write, problem):
    torch = pytest.importorskip("torch")
    from pixdisc.models import build_model
    from pixdisc.train import train_model

    path = tmp_path / name
    write(path)
    with pytest.raises(ValueError) as error:
        train_model(build_model("mlp", input_size=4, hidden=[4]), torch.rand(8, 1, 2, 2),
                    torch.zeros(8, dtype=torch.long), epochs=1, checkpoint_path=path, progress=False)
    message = str(error.value)
    assert message.startswith(str(path)) and problem in message
    assert message.endswith(f"delete {path} to start training over, or pass another checkpoint path")
    assert "corrupt or unreadable" not in message and "save_model" not in message


CODEBOOK_NEXT_STEP = ("pass a codebook written by Codebook.save or `pixdisc codes -o FILE.npz`, or fit the codes "
                      "again")


def _codebook_npz(path, codes=np.array([[0.0], [1.0]], np.float32), meta=None, metric="linf"):
    meta = {"kind": "Codebook"} if meta is None else meta
    with open(path, "wb") as stream:
        np.savez(stream, format_version=np.int64(1), codes=codes, metric=np.str_(metric),
                 meta=np.str_(json.dumps(meta)))
    return path


CODEBOOK_CASES = [
    ("shape.npz", lambda path: _codebook_npz(path, codes=np.zeros((2, 3, 4), np.float32)), "got shape (2, 3, 4)"),
    ("shape.npy", lambda path: np.save(path, np.zeros((2, 3, 4), np.float32)), "got shape (2, 3, 4)"),
    ("fitted.npz", lambda path: _codebook_npz(path, codes=np.zeros((2, 3, 4), np.float32),
                                              meta={"kind": "DensityCodebook", "params": {"k": 2, "r": 0.6}}),
     "got shape (2, 3, 4)"),
    ("range.npy", lambda path: np.save(path, np.array([[0.0], [2.0]], np.float32)), "[0, 1]"),
    ("metric.npz", lambda path: _codebook_npz(path, metric="cosine"), "'cosine'"),
    ("meta.npz", lambda path: _codebook_npz(path, meta=[1]), "its 'meta' entry is not a JSON object"),
    ("cut.npz", lambda path: path.write_bytes(_codebook_npz(path).read_bytes()[:300]),
     "it is a damaged or incomplete .npz archive, e.g. cut off by an unfinished copy"),
    ("notes.npz", lambda path: path.write_text("k=2 r=0.6\n"), "it holds text, not NumPy arrays"),
    ("nocodes.npz", lambda path: np.savez(path, format_version=1), "it has no 'codes' entry"),
]


@pytest.mark.parametrize("name, write, problem", CODEBOOK_CASES, ids=[case[0] for case in CODEBOOK_CASES])
def test_a_bad_codebook_file_names_the_file_what_is_wrong_and_the_next_step(tmp_path, name, write, problem):
    path = tmp_path / name
    write(path)
    with pytest.raises(ValueError) as error:
        pixdisc.load_codebook(path)
    message = str(error.value)
    assert message.startswith(f"{path} is not a valid pixdisc codebook: ") and problem in message
    assert CODEBOOK_NEXT_STEP in message and "allow_pickle" not in message


def test_a_codebook_from_a_newer_pixdisc_says_to_upgrade(tmp_path):
    path = tmp_path / "new.npz"
    np.savez(path, format_version=np.int64(99), codes=np.zeros((2, 1), np.float32), metric="linf", meta="{}")
    with pytest.raises(ValueError, match="new.npz is a codebook of format version 99.*upgrade pixdisc"):
        pixdisc.load_codebook(path)


def test_numpy_load_error_says_what_to_pass_and_never_to_allow_pickles(tmp_path):
    path = tmp_path / "pixels.npy"
    path.write_bytes(b"\x80\x04junk")
    with pytest.raises(ValueError) as error:
        np.load(path, allow_pickle=False)
    message = numpy_load_error(path, error.value)
    assert message.startswith(f"{path} is not a plain NumPy array file: ") and "never unpickles" in message
    assert message.endswith("pass a .npy/.npz file of plain numbers (written with numpy.save or numpy.savez)")
    assert "allow_pickle" not in message


def test_file_kind_reads_only_the_first_bytes(tmp_path):
    samples = {"empty": b"", "text": "caf\u00e9 ".encode() * 2000, "pickle": pickle.dumps([1]),
               "binary": bytes(range(256)), "zip": b"PK\x03\x04 cut"}
    for kind, content in samples.items():
        (tmp_path / kind).write_bytes(content)
        assert file_kind(tmp_path / kind) == kind
    np.save(tmp_path / "a.npy", np.zeros(3))
    assert file_kind(tmp_path / "a.npy") == "npy"
    assert file_kind(_codebook_npz(tmp_path / "b.npz")) == "npz"
    assert file_kind(tmp_path / "missing") == "unreadable"
