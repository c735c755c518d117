"""The `pixdisc` command line: subcommands, reports, errors and exit codes."""

import json

import numpy as np
import pytest

from pixdisc import cli, load_codebook


def test_codes_on_embedded_mnist(tmp_path, capsys):
    out = tmp_path / "codes.npz"
    assert cli.main(["codes", "-k", "2", "-r", "0.6", "-o", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["codes_255"] == [[0], [253]]
    np.testing.assert_array_equal(load_codebook(out).codes_.ravel() * 255, np.float32([0, 253]))


def test_codes_from_npy_all_methods(tmp_path, capsys):
    x = np.random.default_rng(0).integers(0, 256, size=(20, 6, 6, 3), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    for method, extra in [("density", ["-r", "0.2"]), ("kmedoids", []), ("kmeans", []), ("uniform", [])]:
        out = tmp_path / f"{method}.npz"
        code = cli.main(["codes", "--npy", str(tmp_path / "x.npy"), "--method", method, "-k", "3",
                         *extra, "-o", str(out)])
        assert code == 0, method
        assert load_codebook(out).n_channels == 3
    assert "codes" in capsys.readouterr().out


def test_codes_errors_are_messages(tmp_path, capsys):
    assert cli.main(["codes", "--npy", str(tmp_path / "missing.npy"), "-r", "0.1"]) == 1
    assert "missing.npy" in capsys.readouterr().err
    assert cli.main(["codes", "-k", "0", "-r", "0.1", "-o", str(tmp_path / "c.npz")]) == 1
    assert "k must be a positive integer" in capsys.readouterr().err
    assert cli.main(["codes", "-o", str(tmp_path / "c.npz")]) == 1
    assert "--radius" in capsys.readouterr().err
    np.save(tmp_path / "obj.npy", np.array([object()], dtype=object), allow_pickle=True)
    assert cli.main(["codes", "--npy", str(tmp_path / "obj.npy"), "-r", "0.1"]) == 1
    assert "obj.npy" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["codes", "--method", "bogus"])
    assert exc.value.code == 2
