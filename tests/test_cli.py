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


# --- the torch commands: train, attack, errors, exit codes ----------------------------------


@pytest.fixture(scope="module")
def digits_models(tmp_path_factory, single_torch_thread):
    """Codes, a natural model and a disc_nat_re model on sklearn's digits, made through the CLI."""
    folder = tmp_path_factory.mktemp("cli-digits")
    codes, natural, retrained = folder / "codes.npz", folder / "nat.pt", folder / "disc.pt"
    assert cli.main(["codes", "--dataset", "digits", "-k", "2", "-r", "0.6", "-o", str(codes), "--json"]) == 0
    assert cli.main(["train", "--dataset", "digits", "--epochs", "3", "--lr", "3e-3", "-o", str(natural), "-q"]) == 0
    assert cli.main(["train", "--dataset", "digits", "--setting", "disc_nat_re", "--codebook", str(codes),
                     "--base", str(natural), "--epochs", "1", "-o", str(retrained), "-q"]) == 0
    return folder


def test_train_then_attack_round_trip(digits_models, tmp_path, capsys, single_torch_thread):
    capsys.readouterr()
    natural = digits_models / "nat.pt"
    assert cli.main(["attack", str(natural), "--steps", "5", "--step-size", "0.1", "--limit", "100", "--json"]) == 0
    bare = json.loads(capsys.readouterr().out)
    assert bare["dataset"] == "digits" and bare["defense"] is None and bare["n"] == 100
    assert bare["clean_accuracy"] > 0.5
    assert bare["robust_accuracy"] <= bare["clean_accuracy"]
    # An undefended model gets the gradient attacks of the suite; the S(x) search and Square need a discretizer.
    assert list(bare["robust_after"]) == ["pgd_ce", "pgd_cw", "adam_sign", "apgd_ce", "apgd_dlr"]
    assert bare["interval"]["floor"] is None
    # The same network behind the codebook: BPDA attack through the defense.
    assert cli.main(["attack", str(natural), "--codebook", str(digits_models / "codes.npz"), "--attacks",
                     "pgd_ce", "--steps", "5", "--step-size", "0.1", "--limit", "100", "--json"]) == 0
    defended = json.loads(capsys.readouterr().out)
    assert defended["defense"]["codes_255"] == [[0], [255]]
    assert list(defended["robust_after"]) == ["pgd_ce", "certify"]
    interval = defended["interval"]
    assert interval["floor"] <= interval["ceiling"] == defended["robust_accuracy"]
    assert interval["certified"] + interval["broken"] + interval["undecided"] == 100
    # A disc_*_re model file records its defense; --no-defense attacks the bare network.
    assert cli.main(["attack", str(digits_models / "disc.pt"), "--steps", "2", "--step-size", "0.1",
                     "--limit", "30", "--square-queries", "20"]) == 0
    text = capsys.readouterr().out
    assert "behind discretization" in text and "robust after S(x) search" in text and "+Square" in text
    assert "robust (attacked ceiling)" in text and "certified (floor)" in text
    assert cli.main(["attack", str(digits_models / "disc.pt"), "--no-defense", "--steps", "2", "--step-size", "0.1",
                     "--limit", "30", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["defense"] is None


def test_train_adversarial_with_checkpoint_resumes(tmp_path, capsys, single_torch_thread):
    checkpoint, model = tmp_path / "run.ckpt", tmp_path / "adv.pt"
    args = ["train", "--dataset", "digits", "--mode", "adversarial", "--steps", "2", "--step-size", "0.15",
            "--limit", "200", "--test-limit", "50", "--checkpoint", str(checkpoint), "-o", str(model), "--json"]
    assert cli.main([*args, "--epochs", "1"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["setting"] == "adv_pre" and checkpoint.exists()
    assert cli.main([*args, "--epochs", "2"]) == 0  # resumes at epoch 1
    second = json.loads(capsys.readouterr().out)
    assert second["history"]["epoch"] == [1, 2]
    assert second["history"]["loss"][0] == first["history"]["loss"][0]


def test_model_and_codebook_errors_name_the_file(digits_models, tmp_path, capsys):
    natural = digits_models / "nat.pt"
    capsys.readouterr()
    assert cli.main(["attack", str(tmp_path / "missing.pt")]) == 1
    assert "missing.pt" in capsys.readouterr().err
    (tmp_path / "garbage.pt").write_bytes(b"not a model at all")
    assert cli.main(["attack", str(tmp_path / "garbage.pt")]) == 1
    err = capsys.readouterr().err
    assert "garbage.pt" in err and "Traceback" not in err
    (tmp_path / "truncated.pt").write_bytes(natural.read_bytes()[:2000])
    assert cli.main(["attack", str(tmp_path / "truncated.pt")]) == 1
    assert "truncated.pt" in capsys.readouterr().err
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    assert cli.main(["attack", str(natural), "--codebook", str(tmp_path / "bad.npz")]) == 1
    assert "bad.npz" in capsys.readouterr().err
    (tmp_path / "cut.npz").write_bytes((digits_models / "codes.npz").read_bytes()[:300])
    assert cli.main(["attack", str(natural), "--codebook", str(tmp_path / "cut.npz")]) == 1
    assert "cut.npz" in capsys.readouterr().err
    assert cli.main(["attack", str(natural), "--codebook", str(tmp_path / "nope.npz")]) == 1
    assert "nope.npz" in capsys.readouterr().err
    assert cli.main(["train", "--dataset", "digits", "--setting", "disc_nat_re", "--codebook",
                     str(tmp_path / "bad.npz"), "-o", str(tmp_path / "m.pt")]) == 1
    assert "bad.npz" in capsys.readouterr().err


def test_data_and_shape_errors_are_messages(digits_models, tmp_path, capsys):
    natural = digits_models / "nat.pt"
    capsys.readouterr()
    # A model for 8x8 digits on 28x28 MNIST: a message, not a traceback from inside torch.
    assert cli.main(["attack", str(natural), "--dataset", "mnist5k", "--limit", "5"]) == 1
    err = capsys.readouterr().err
    assert "does not accept images of shape (1, 28, 28)" in err and "Traceback" not in err
    # Missing data: where we looked and how to get it.
    assert cli.main(["attack", str(natural), "--dataset", "mnist", "--data-dir", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert "nowhere" in err and "IDX" in err
    assert cli.main(["train", "--dataset", "cifar10", "-o", str(tmp_path / "m.pt")]) == 1
    assert "--data-dir" in capsys.readouterr().err
    assert cli.main(["train", "--dataset", "digits", "--setting", "disc_adv_re", "-o", str(tmp_path / "m.pt")]) == 1
    assert "--codebook" in capsys.readouterr().err
    assert cli.main(["attack", str(natural), "--attacks", "fgsm"]) == 1
    assert "--attacks" in capsys.readouterr().err
    assert cli.main(["evaluate", "--dataset", "imagenet_dev"]) == 1
    assert "-k and -r" in capsys.readouterr().err
    for usage in (["attack"], ["train", "--setting", "bogus"], ["demo", "--bogus"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(usage)
        assert exc.value.code == 2


def test_interrupt_exits_130(monkeypatch, tmp_path, capsys):
    import pixdisc.experiments

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pixdisc.experiments, "run_demo", interrupted)
    assert cli.main(["demo", "--out", str(tmp_path / "demo")]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_certified_training_then_certify_cli(tmp_path, capsys):
    codes, model = tmp_path / "codes.npz", tmp_path / "m.pt"
    assert cli.main(["codes", "--dataset", "digits", "-k", "2", "-r", "0.5", "-o", str(codes)]) == 0
    assert cli.main(["train", "--dataset", "digits", "--mode", "certified", "--codebook", str(codes), "--arch", "mlp",
                     "--eps", "0.1", "--epochs", "2", "--limit", "300", "-o", str(model), "-q"]) == 0
    capsys.readouterr()
    assert cli.main(["certify", "--model", str(model), "--codes", str(codes), "--dataset", "digits", "--eps", "0.1",
                     "--limit", "40", "--workers", "1", "--resume", str(tmp_path / "run.jsonl"), "--json", "-q"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["n"] == 40 and row["certified"] + row["failed"] + row["unable"] == 40
    assert len((tmp_path / "run.jsonl").read_text().splitlines()) == 41
    assert cli.main(["train", "--dataset", "digits", "--mode", "certified", "-o", str(model)]) == 1
    assert "--eps" in capsys.readouterr().err
    assert cli.main(["certify", "--model", str(tmp_path / "nope.pt"), "--codes", str(codes), "--eps", "0.1"]) == 1
    assert "nope.pt" in capsys.readouterr().err
