"""Worker processes never run the user's main code: unguarded scripts, `python -c` and stdin certify in parallel."""

import ast
import json
import os
import subprocess
import sys
import textwrap
import time
import types

import pytest

torch = pytest.importorskip("torch")

from pixdisc.certification import workers  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_torch_thread")

# A layer from a module beside the script: the workers import it through the script's sys.path, and it notes
# which process ran each forward pass.
_PIDS_MODULE = '''
import os, torch


class Pids(torch.nn.Module):
    def forward(self, x):
        with open(os.environ["PIXDISC_TEST_PIDS"], "a") as handle:
            handle.write(f"{os.getpid()}\\n")
        return x
'''

_PROBLEM = '''
torch.manual_seed(5)
book = pixdisc.Codebook(np.array([[0.0], [0.5], [1.0]], np.float32))
x = np.random.default_rng(11).random((40, 1, 2, 2)).astype(np.float32)
y = np.random.default_rng(12).integers(0, 2, 40)
'''

_REPORT = '''
def summary(result):
    fields = {name: np.asarray(getattr(result, name)).tolist()
              for name in ("outcome", "log2_size", "n_ambiguous", "nodes", "verified", "method", "reason", "tier",
                           "work")}
    fields["z_codes"] = {str(i): np.asarray(z).tolist() for i, z in result.z_codes.items()}
    fields["counterexample"] = {str(i): np.asarray(c).tolist() for i, c in result.counterexample.items()}
    return fields


# Same chunks: the work of batched root bounds is shared out over a chunk.
parallel = pixdisc.certify(net, book, x, y, 0.2, chunk_size=10, workers=2, progress=False)
serial = pixdisc.certify(net, book, x, y, 0.2, chunk_size=10, executor="serial", progress=False)
print("RESULTS " + json.dumps([summary(parallel), summary(serial)]))
'''

# No `if __name__ == "__main__":` anywhere: spawned workers used to run all of this again and die.
_UNGUARDED = ('import json, os, numpy as np, torch, pixdisc\n'
              'from pids import Pids\n'
              'print("top level ran in", os.getpid())\n'
              + _PROBLEM
              + 'net = torch.nn.Sequential(Pids(), torch.nn.Flatten(), torch.nn.Linear(4, 10), torch.nn.ReLU(),\n'
                '                          torch.nn.Linear(10, 2)).eval()\n'
              + _REPORT)

_MAIN_CLASS = '''
class Net(torch.nn.Module):  # defined in __main__: workers cannot import it from anywhere
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(Pids(), torch.nn.Flatten(), torch.nn.Linear(4, 10), torch.nn.ReLU(),
                                        torch.nn.Linear(10, 2))

    def forward(self, x):
        return self.body(x)
'''

_UNGUARDED_MAIN_CLASS = ('import json, os, numpy as np, torch, pixdisc\n'
                         'from pids import Pids\n'
                         'print("top level ran in", os.getpid())\n'
                         + _MAIN_CLASS + _PROBLEM + 'net = Net().eval()\n' + _REPORT)

# Only definitions outside the guard: workers may run them to rebuild Net (never the guarded part).
_GUARDED_MAIN_CLASS = ('"""A guarded script whose model class lives in it."""\n'
                       'import json, os\n'
                       'from dataclasses import dataclass\n'
                       'import numpy as np, torch, pixdisc\n'
                       'from pids import Pids\n'
                       'EPS = 0.2\n\n\n'
                       '@dataclass\n'
                       'class Settings:  # @dataclass looks its module up while the class is built\n'
                       '    workers: int = 2\n'
                       + _MAIN_CLASS
                       + '\n\nif __name__ == "__main__":\n'
                       + textwrap.indent('print("top level ran in", os.getpid())\n' + _PROBLEM
                                         + 'net = Net().eval()\n' + _REPORT, "    "))


def _run(tmp_path, how, code):
    """Run ``code`` as a script file, with `python -c` or from stdin; returns (stdout, stderr, pids of forwards)."""
    (tmp_path / "pids.py").write_text(_PIDS_MODULE)
    pids = tmp_path / "pids.txt"
    env = dict(os.environ, PIXDISC_TEST_PIDS=str(pids))
    if how == "file":
        (tmp_path / "script.py").write_text(code)
        command = [sys.executable, str(tmp_path / "script.py")]
    else:
        command = [sys.executable, "-c", code] if how == "-c" else [sys.executable, "-"]
    done = subprocess.run(command, input=code if how == "stdin" else None, cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, done.stderr, {int(line) for line in pids.read_text().split()}


def _check_outputs(stdout):
    """The script's main code ran once, and the default executor's results equal serial ones; returns its pid."""
    ran = [line for line in stdout.splitlines() if line.startswith("top level ran in")]
    assert len(ran) == 1, stdout
    parallel, serial = json.loads(next(line for line in stdout.splitlines() if line.startswith("RESULTS "))[8:])
    assert parallel == serial
    assert {"certified", "failed"} <= set(serial["outcome"])  # a test that decides both ways
    return int(ran[0].split()[-1])


@pytest.mark.slow  # spawns Python processes (seconds each on a busy machine)
@pytest.mark.parametrize("how", ["file", "-c", "stdin"])
def test_unguarded_code_certifies_on_worker_processes(tmp_path, how):
    stdout, stderr, pids = _run(tmp_path, how, _UNGUARDED)
    main_pid = _check_outputs(stdout)
    assert "running in this process" not in stderr, stderr
    assert pids - {main_pid}, "no forward pass ran in a worker process"


@pytest.mark.slow  # spawns Python processes (seconds each on a busy machine)
def test_main_class_of_an_unguarded_script_certifies_here_and_says_why(tmp_path):
    stdout, stderr, pids = _run(tmp_path, "file", _UNGUARDED_MAIN_CLASS)
    main_pid = _check_outputs(stdout)
    reason = [line for line in stderr.splitlines() if "running in this process" in line]
    assert len(reason) == 1 and "Net is defined in script.py, whose line 3 runs outside" in reason[0], stderr
    assert pids == {main_pid}


@pytest.mark.slow  # spawns Python processes (seconds each on a busy machine)
def test_main_class_of_a_guarded_script_certifies_on_worker_processes(tmp_path):
    stdout, stderr, pids = _run(tmp_path, "file", _GUARDED_MAIN_CLASS)
    main_pid = _check_outputs(stdout)
    assert "running in this process" not in stderr, stderr
    assert pids - {main_pid}, "no forward pass ran in a worker process"


# ------------------------------------------------------------------------ which main scripts workers may run


@pytest.mark.parametrize("source, line", [
    ('"""Doc."""\nimport os\nfrom typing import List\nX = 1\nY: List[int] = [X, 2]\n\n\n'
     'def f():\n    print(1)\n\n\nclass A:\n    z = f()\n\n\nif __name__ == "__main__":\n    f()\n', 0),
    ('import os\ntry:\n    import numpy\nexcept ImportError:\n    numpy = None\n'
     'if "__main__" == __name__:\n    os.remove("x")\n', 0),
    ("import os\nprint('hi')\n", 2),
    ("import torch\nNET = torch.nn.Linear(2, 2)\n", 2),
    ("import os\nif __name__ == '__main__':\n    pass\nelse:\n    os.remove('x')\n", 5),
    ("import os\nif os.environ.get('A'):\n    import sys\n", 2),
    ("import os\nfor name in []:\n    pass\n", 2),
    ("import os\nwith open('x'):\n    pass\n", 2),
    ("import os\nif __name__ != '__main__':\n    os.remove('x')\n", 3),
])
def test_only_definitions_outside_the_guard_let_workers_run_a_script(source, line):
    assert workers._first_line_that_runs(ast.parse(source).body) == line


def test_probe_ships_the_definitions_of_a_guarded_main_script(monkeypatch, tmp_path):
    Net = type("Net", (torch.nn.Module,), {"forward": lambda self, x: x})
    Net.__module__ = "__main__"
    fake_main = types.ModuleType("__main__")
    fake_main.Net = Net
    monkeypatch.setitem(sys.modules, "__main__", fake_main)
    script = tmp_path / "guarded.py"
    script.write_text("import torch\n\nif __name__ == '__main__':\n    print('main')\n")
    fake_main.__file__ = str(script)
    shipment, why = workers.pickle_for_workers(Net())
    assert why == "" and shipment[0] == (str(script), None, script.read_text())
    script.write_text("import torch\nprint('main')\n")
    shipment, why = workers.pickle_for_workers(Net())
    assert shipment is None and "Net is defined in guarded.py, whose line 2 runs outside" in why
    # Objects of imported modules never need the main script.
    shipment, why = workers.pickle_for_workers(torch.nn.Linear(2, 2))
    assert why == "" and shipment[0] is None


# ------------------------------------------------------------------------ the pool: failures and Ctrl-C


def _raise_value_error(state, on_record):
    raise ValueError(f"bad task {state}")


def _exit_at_once(state, on_record):
    os._exit(3)


def _one_record_then_sleep(state, on_record):
    on_record({"index": 0})
    time.sleep(600)
    return []


def _refuse_to_rebuild_elsewhere(pid):
    if os.getpid() != pid:
        raise OSError("rebuilt in another process")
    return pid


class _OnlyHere:
    """Pickles fine; unpickling fails in any process but this one."""

    def __reduce__(self):
        return _refuse_to_rebuild_elsewhere, (os.getpid(),)


def test_worker_failures_reach_the_driver():
    with pytest.raises(ValueError, match="bad task 7") as caught:
        workers.run_on_workers(_raise_value_error, 7, [()], 1, lambda records: None)
    assert isinstance(caught.value.__cause__, workers.WorkerTraceback)
    assert "_raise_value_error" in str(caught.value.__cause__)
    with pytest.raises(workers.WorkerDied, match="exit status 3"):
        workers.run_on_workers(_exit_at_once, None, [()], 1, lambda records: None)
    with pytest.raises(workers.WorkersUnavailable, match="cannot rebuild the model.*another process"):
        workers.run_on_workers(_raise_value_error, _OnlyHere(), [()], 1, lambda records: None)


def test_interrupt_stops_the_workers_at_once():
    received = []

    def interrupt(records):
        received.extend(records)
        raise KeyboardInterrupt

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        workers.run_on_workers(_one_record_then_sleep, None, [(), ()], 2, interrupt)
    # run_on_workers returns only once its workers have exited: they were stopped, not waited for.
    assert time.monotonic() - started < 120 and received[0] == {"index": 0}
