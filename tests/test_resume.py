"""Interrupted long jobs resume: experiments, certification and training lose at most one sample or epoch."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import pixdisc  # noqa: E402
from pixdisc import plan  # noqa: E402
from pixdisc.experiments import run as experiments  # noqa: E402 - the module whose names a run calls
from pixdisc import train as train_module  # noqa: E402
from pixdisc.certification import certify, engine as engine_module, workers  # noqa: E402
from pixdisc.experiments import QUICK_CONFIG, run_experiment  # noqa: E402
from pixdisc.models import load_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_torch_thread")

# Two settings sharing one network, one cheap attack, no curve: every resume path in seconds.
TINY = QUICK_CONFIG.replace(settings=("nat_pre", "disc_nat_pre"), attacks=("pgd_ce",), n_train=200, n_test=20,
                            eval_batch_size=20, natural_epochs=2, curve_eps=(0.1,), curve_n=10,
                            curve_settings=("nat_pre",))


def _interrupt_after(monkeypatch, module, name, calls):
    """Replace module.name by a wrapper that raises KeyboardInterrupt on its ``calls + 1``-th call."""
    real = getattr(module, name)
    count = {"n": 0}

    def wrapper(*args, **kwargs):
        count["n"] += 1
        if count["n"] > calls:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return count


def _forbid(monkeypatch, module, name):
    def fail(*args, **kwargs):
        raise AssertionError(f"{name} called again: the rerun should have reused the saved result")

    monkeypatch.setattr(module, name, fail)


def _counting(monkeypatch, module, name):
    real = getattr(module, name)
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


# ------------------------------------------------------------------------------------- experiments


def test_interrupted_experiment_keeps_finished_artefacts_and_resumes(monkeypatch, tmp_path):
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        _interrupt_after(patch, experiments, "evaluate_setting", 1)  # nat_pre attacked, then Ctrl-C
        with pytest.raises(KeyboardInterrupt):
            run_experiment(TINY, out, progress=False)
    # The folder exists with what finished: the codebook, the trained network, the first attack result.
    assert (out / "codes.npz").exists()
    assert load_model(out / "models" / "nat_pre.pt", return_meta=True)[1]["history"]["epoch"] == [1, 2]
    assert (out / "cache" / "attack-nat_pre.json").exists()
    assert not (out / "cache" / "attack-disc_nat_pre.json").exists()
    first = json.loads((out / "cache" / "attack-nat_pre.json").read_text())["value"]

    # The rerun trains nothing and attacks only what was left.
    _forbid(monkeypatch, plan, "train_setting")
    _forbid(monkeypatch, plan, "train_model")
    attacked = _counting(monkeypatch, experiments, "evaluate_setting")
    result = run_experiment(TINY, out, progress=False)
    assert len(attacked) == 1
    assert result["settings"]["nat_pre"]["robust_accuracy"] == first["robust_accuracy"]
    assert set(result["resumed"]) == {"models/nat_pre.pt", "cache/attack-nat_pre.json"}
    assert result["training"]["histories"]["nat_pre"]["epoch"] == [1, 2]
    assert (out / "results.json").exists()

    # Run once more: everything is reused, nothing is recomputed (the curve included).
    _forbid(monkeypatch, experiments, "evaluate_setting")
    _forbid(monkeypatch, experiments, "evaluate_robustness")
    again = run_experiment(TINY, out, progress=False)
    assert again["settings"] == result["settings"] and again["curve"] == result["curve"]


def test_an_interrupt_before_anything_finished_leaves_the_output_folder(monkeypatch, tmp_path):
    _interrupt_after(monkeypatch, experiments, "load_data", 0)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(TINY, tmp_path / "run", progress=False)
    assert (tmp_path / "run").is_dir()


def test_a_cache_of_another_configuration_is_not_reused(monkeypatch, tmp_path):
    out = tmp_path / "run"
    run_experiment(TINY, out, progress=False)
    trained = _counting(monkeypatch, plan, "train_setting")
    attacked = _counting(monkeypatch, experiments, "evaluate_setting")
    # Another attack budget: the networks still fit (not retrained), the attack results do not.
    run_experiment(TINY.replace(eps=0.2), out, progress=False)
    assert trained == [] and len(attacked) == 2
    # Another seed: everything is redone, and the saved network is replaced.
    before = load_model(out / "models" / "nat_pre.pt", return_meta=True)[1]["resume_key"]
    run_experiment(TINY.replace(seed=1), out, progress=False)
    assert len(trained) == 1 and len(attacked) == 4
    assert load_model(out / "models" / "nat_pre.pt", return_meta=True)[1]["resume_key"] != before


def test_interrupt_mid_training_resumes_from_the_last_epoch(monkeypatch, tmp_path):
    out = tmp_path / "run"
    config = TINY.replace(natural_epochs=3, settings=("nat_pre",), curve_eps=())
    with monkeypatch.context() as patch:
        _interrupt_after(patch, train_module, "_start_epoch", 2)  # epochs 1 and 2 done, Ctrl-C at the 3rd
        with pytest.raises(KeyboardInterrupt):
            run_experiment(config, out, progress=False)
    assert not (out / "models" / "nat_pre.pt").exists()
    epochs = []
    real = train_module._start_epoch
    monkeypatch.setattr(train_module, "_start_epoch",
                        lambda optimizer, epoch, *args: epochs.append(epoch) or real(optimizer, epoch, *args))
    result = run_experiment(config, out, progress=False)
    assert epochs == [2]  # only the interrupted epoch is trained again
    assert result["training"]["histories"]["nat_pre"]["epoch"] == [1, 2, 3]
    assert not list((out / "cache").glob("train-*/*.ckpt"))  # the finished network superseded its checkpoint
    uninterrupted = run_experiment(config, tmp_path / "fresh", progress=False)
    for a, b in zip(load_model(out / "models" / "nat_pre.pt").state_dict().values(),
                    load_model(tmp_path / "fresh" / "models" / "nat_pre.pt").state_dict().values()):
        torch.testing.assert_close(a, b)
    assert uninterrupted["settings"]["nat_pre"]["robust_accuracy"] == result["settings"]["nat_pre"]["robust_accuracy"]


# ------------------------------------------------------------------------------------------ training


class _Breaking(torch.nn.Module):
    """A tiny MLP whose forward raises KeyboardInterrupt on the given call (a Ctrl-C mid-epoch)."""

    def __init__(self, break_at=None):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 8), torch.nn.ReLU(),
                                        torch.nn.Linear(8, 2))
        self.break_at, self.calls = break_at, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.break_at:
            raise KeyboardInterrupt
        return self.body(x)


@pytest.mark.parametrize("trainer", ["model", "certified"])
def test_training_checkpoint_exists_before_the_first_epoch_ends(tmp_path, trainer):
    x = np.random.default_rng(0).random((64, 1, 2, 2)).astype(np.float32)
    y = (x.reshape(64, -1).mean(1) > 0.5).astype(np.int64)

    def run(model, path):
        if trainer == "model":
            return train_module.train_model(model, x, y, epochs=2, batch_size=16, progress=False,
                                            checkpoint_path=path)
        return train_module.train_certified(model, x, y, None, eps=0.05, epochs=2, warmup_epochs=0, ramp_epochs=1,
                                            batch_size=16, progress=False, checkpoint_path=path)

    path = tmp_path / "ck.pt"
    with pytest.raises(KeyboardInterrupt):
        run(_Breaking(break_at=2), path)  # in the first epoch
    assert path.exists()  # what the CLI's "run the same command again to resume from ck.pt" promises
    resumed, history = run(_Breaking(), path)
    expected, _ = run(_Breaking(), None)
    assert history["epoch"] == [1, 2]
    for a, b in zip(resumed.state_dict().values(), expected.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_cli_train_interrupted_in_the_first_epoch_leaves_the_checkpoint(monkeypatch, tmp_path, capsys):
    from pixdisc.cli import main

    _interrupt_after(monkeypatch, train_module, "_start_epoch", 0)
    checkpoint = tmp_path / "ck.pt"
    code = main(["train", "--limit", "64", "--test-limit", "16", "--epochs", "1", "--checkpoint", str(checkpoint),
                 "-o", str(tmp_path / "m.pt"), "-q"])
    assert code == 130
    assert f"resume from {checkpoint}" in capsys.readouterr().err
    assert checkpoint.exists()


# ------------------------------------------------------------------------------------- certification


def _problem(n, seed=11):
    book = pixdisc.Codebook(np.array([[0.0], [0.5], [1.0]], np.float32))
    x = np.random.default_rng(seed).random((n, 1, 2, 2)).astype(np.float32)
    torch.manual_seed(5)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 10), torch.nn.ReLU(),
                              torch.nn.Linear(10, 2)).eval()
    return net, book, x, np.zeros(n, np.int64)


def test_certify_checkpoints_each_sample_as_it_finishes(monkeypatch, tmp_path):
    net, book, x, y = _problem(40)
    expected = certify(net, book, x, y, 0.2, mode="paper", b=64, executor="serial", progress=False)
    path = tmp_path / "run.jsonl"
    searched = _interrupt_after(monkeypatch, engine_module._Engine, "_paper", 5)
    with pytest.raises(KeyboardInterrupt):
        certify(net, book, x, y, 0.2, mode="paper", b=64, executor="serial", progress=False, checkpoint=path)
    # One chunk of 40: before, nothing reached the file until the whole chunk was done.
    done = {json.loads(line)["index"] for line in path.read_text().splitlines()[1:]}
    assert searched["n"] == 6 and len(done) >= 5
    monkeypatch.undo()
    seen = []
    real = engine_module._Engine._paper
    monkeypatch.setattr(engine_module._Engine, "_paper",
                        lambda self, sample, started: seen.append(sample.index) or real(self, sample, started))
    again = certify(net, book, x, y, 0.2, mode="paper", b=64, executor="serial", progress=False, checkpoint=path)
    assert not set(seen) & done  # nothing finished is searched again
    np.testing.assert_array_equal(again.outcome, expected.outcome)
    indices = [json.loads(line)["index"] for line in path.read_text().splitlines()[1:]]
    assert sorted(indices) == list(range(40))  # nothing lost, nothing repeated


_BLOCKING_SCRIPT = r"""
import os, sys, time, numpy as np, torch, pixdisc


class Blocking(torch.nn.Module):
    # After a few forward passes in a worker, waits for a file that never comes: the chunk never ends.
    def __init__(self, net, gate):
        super().__init__()
        self.net, self.gate, self.calls = net, gate, 0

    def forward(self, x):
        self.calls += 1
        while self.calls > 8 and not os.path.exists(self.gate):
            time.sleep(0.05)
        return self.net(x)


if __name__ == "__main__":
    torch.manual_seed(5)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 10), torch.nn.ReLU(), torch.nn.Linear(10, 2))
    book = pixdisc.Codebook(np.array([[0.0], [0.5], [1.0]], np.float32))
    x = np.random.default_rng(11).random((100, 1, 2, 2)).astype(np.float32)
    pixdisc.certify(Blocking(net.eval(), sys.argv[2]), book, x, np.zeros(100, np.int64), 0.2, mode="paper", b=64,
                    workers=1, chunk_size=50, progress=False, checkpoint=sys.argv[1])
"""


@pytest.mark.slow  # spawns Python processes (seconds each on a busy machine)
def test_records_stream_from_worker_processes_before_their_chunk_ends(tmp_path):
    """A worker whose chunk of 50 never finishes still gets its decided samples into the checkpoint."""
    script = tmp_path / "run.py"
    script.write_text(_BLOCKING_SCRIPT)
    path = tmp_path / "run.jsonl"
    proc = subprocess.Popen([sys.executable, str(script), str(path), str(tmp_path / "never")],
                            start_new_session=True, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if path.exists() and len(path.read_text().splitlines()) > 3:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        records = [json.loads(line) for line in path.read_text().splitlines()[1:]]
        assert 3 <= len(records) < 50
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        errors = proc.stderr.read().decode()
        proc.stderr.close()
    assert "running in this process" not in errors  # Blocking lives in the guarded script: workers rebuild it


_NOTEBOOK_CODE = """
import numpy as np, torch, pixdisc

class Net(torch.nn.Module):  # defined in __main__ without a file, as in a notebook cell
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 10), torch.nn.ReLU(),
                                        torch.nn.Linear(10, 2))

    def forward(self, x):
        return self.body(x)

torch.manual_seed(5)
book = pixdisc.Codebook(np.array([[0.0], [0.5], [1.0]], np.float32))
x = np.random.default_rng(11).random((70, 1, 2, 2)).astype(np.float32)
result = pixdisc.certify(Net().eval(), book, x, np.zeros(70, np.int64), 0.2, workers=2, progress=False)
print("".join(o[0] for o in result.outcome))
"""


@pytest.mark.slow  # spawns Python processes (seconds each on a busy machine)
@pytest.mark.parametrize("how", ["-c", "stdin"])
def test_notebook_model_certifies_with_the_default_executor(how):
    """More than 64 images (several chunks, so a process pool) and a class workers cannot import."""
    command = [sys.executable, "-c", _NOTEBOOK_CODE] if how == "-c" else [sys.executable, "-"]
    done = subprocess.run(command, input=None if how == "-c" else _NOTEBOOK_CODE, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "running in this process: Net is defined in __main__ without a file" in done.stderr
    outcome = done.stdout.strip().splitlines()[-1]
    assert len(outcome) == 70 and set(outcome) <= {"c", "f", "u"}


_GUARDED_SCRIPT = r"""
import sys, numpy as np, torch, pixdisc

if __name__ == "__main__":
    class Net(torch.nn.Module):  # only defined in the main process: spawned workers cannot unpickle it
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))

        def forward(self, x):
            return self.body(x)

    book = pixdisc.Codebook(np.array([[0.0], [0.5], [1.0]], np.float32))
    x = np.random.default_rng(0).random((20, 1, 2, 2)).astype(np.float32)
    result = pixdisc.certify(Net().eval(), book, x, np.zeros(20, np.int64), 0.2, workers=1, chunk_size=10,
                             progress=False, checkpoint=sys.argv[1])
    print(len(result.outcome))
"""


@pytest.mark.slow  # spawns Python processes (seconds each on a busy machine)
def test_a_model_workers_cannot_rebuild_falls_back_to_this_process(tmp_path):
    script = tmp_path / "guarded.py"
    script.write_text(_GUARDED_SCRIPT)
    path = tmp_path / "run.jsonl"
    done = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "running in this process: worker processes cannot rebuild the model" in done.stderr
    assert done.stdout.strip().splitlines()[-1] == "20"
    assert sorted(json.loads(line)["index"] for line in path.read_text().splitlines()[1:]) == list(range(20))


def test_pickle_probe_finds_main_classes_workers_cannot_import(monkeypatch):
    Net = type("Net", (torch.nn.Module,), {"forward": lambda self, x: x})
    Net.__module__ = "__main__"
    fake_main = types.ModuleType("__main__")  # no __file__: python -c, stdin, a notebook
    fake_main.Net = Net
    monkeypatch.setitem(sys.modules, "__main__", fake_main)
    shipment, why = workers.pickle_for_workers(Net())
    assert shipment is None and "Net is defined in __main__ without a file" in why
    shipment, why = workers.pickle_for_workers(torch.nn.Linear(2, 2))
    main, blob = shipment
    assert why == "" and main is None and isinstance(pickle.loads(blob), torch.nn.Linear)
    fake_main.__file__ = __file__  # a script whose top level runs code (this file's does): workers never run it
    shipment, why = workers.pickle_for_workers(Net())
    assert shipment is None and "runs outside `if __name__ == \"__main__\":`" in why


def test_explicit_processes_executor_refuses_what_workers_cannot_rebuild(monkeypatch):
    net, book, x, y = _problem(8)
    monkeypatch.setattr(workers, "pickle_for_workers", lambda job: (None, "it is a test"))
    with pytest.raises(ValueError, match="it is a test"):
        certify(net, book, x, y, 0.2, executor="processes", chunk_size=4, progress=False)
    # The default executor runs it here instead, with the same outcomes as serial.
    got = certify(net, book, x, y, 0.2, chunk_size=4, workers=2, progress=False)
    np.testing.assert_array_equal(got.outcome, certify(net, book, x, y, 0.2, executor="serial",
                                                       progress=False).outcome)

