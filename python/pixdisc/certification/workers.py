"""Worker processes for ``certify`` that never run the user's main code: unguarded scripts, notebooks, -c, stdin."""

from __future__ import annotations

import ast
import io
import os
import pickle
import queue
import subprocess
import sys
import threading
import tokenize
import traceback
import types
from collections import deque
from typing import IO, Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple

# multiprocessing's spawn re-runs the main script in every worker (so that pickles can refer to its classes),
# which runs an unguarded script's whole top level again, certify call included. Like joblib's loky, these
# workers are plain interpreters that import pixdisc, never the main module: the main script's definitions
# are run in a worker only when the job refers to them and the script's top level does nothing else.

# What a worker needs to run its part of the job: the main script's definitions as (file, package, source),
# when the job refers to them, and the pickled (function, state).
Shipment = Tuple[Optional[Tuple[str, Optional[str], str]], bytes]

# The worker's command line (python -c): results go back over its original stdout, so print() in user code
# goes to stderr; Ctrl-C is the driver's to handle (it stops its workers); sys.path comes from the driver
# before anything of pixdisc is imported.
_BOOT = (
    "import os, pickle, signal, sys\n"
    "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "inbox, outbox = os.fdopen(os.dup(0), 'rb'), os.fdopen(os.dup(1), 'wb')\n"
    "os.dup2(2, 1)\n"
    "null = os.open(os.devnull, os.O_RDONLY)\n"
    "os.dup2(null, 0)\n"
    "os.close(null)\n"
    "sys.path[:] = pickle.load(inbox)\n"
    f"from {__name__} import serve\n"
    "serve(inbox, outbox)\n"
)


class WorkersUnavailable(RuntimeError):
    """Worker processes cannot run this job (cannot start, or cannot rebuild it); the caller runs it itself."""


class WorkerDied(RuntimeError):
    """A worker process ended in the middle of a task (killed, out of memory, a crash in native code)."""


class WorkerTraceback(Exception):
    """The traceback of an exception raised in a worker process: the cause of the one re-raised here."""


def pickle_for_workers(job: Any) -> Tuple[Optional[Shipment], str]:
    """What workers need to rebuild ``job``, or (None, why they cannot).

    Pickle stores classes and functions by reference. Workers import every
    module but ``__main__``, so a class defined there can be rebuilt only from
    the main script's own definitions: those are shipped when the script's top
    level only imports, defines and guards the rest with ``if __name__ ==
    "__main__":``. A notebook cell, ``python -c`` or standard input has no
    script to take them from.
    """
    in_main: List[str] = []

    class _Probe(pickle.Pickler):
        def reducer_override(self, value: Any) -> Any:
            if isinstance(value, (type, types.FunctionType)) and getattr(value, "__module__", None) == "__main__":
                in_main.append(getattr(value, "__qualname__", repr(value)))
            return NotImplemented

    buffer = io.BytesIO()
    try:
        _Probe(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(job)
    except Exception as exc:  # noqa: BLE001 - any pickling failure means: run in this process
        return None, f"the model or codebook cannot be pickled ({type(exc).__name__}: {exc})"
    if not in_main:
        return (None, buffer.getvalue()), ""
    main, reason = _main_definitions(in_main[0])
    if main is None:
        return None, reason
    return (main, buffer.getvalue()), ""


def _main_definitions(name: str) -> Tuple[Optional[Tuple[str, Optional[str], str]], str]:
    """The main script as (file, package, source) when workers may run its top level, else (None, why not)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not isinstance(path, str) or not os.path.isfile(path):
        return None, (f"{name} is defined in __main__ without a file (a notebook cell, `python -c` or standard "
                      "input), which worker processes cannot import; define it in a module to use them")
    path = os.path.abspath(path)
    try:
        with tokenize.open(path) as handle:  # the source encoding the interpreter used
            source = handle.read()
        line = _first_line_that_runs(ast.parse(source, path).body)
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError) as exc:
        return None, f"{name} is defined in {path}, which worker processes cannot read ({type(exc).__name__})"
    if line:
        return None, (f"{name} is defined in {os.path.basename(path)}, whose line {line} runs outside "
                      "`if __name__ == \"__main__\":` and would run again in every worker process; guard it, "
                      f"or define {name} in a module the script imports")
    package = getattr(getattr(main, "__spec__", None), "parent", None) or None  # python -m pkg.script
    return (path, package, source), ""


def _first_line_that_runs(statements: Sequence[ast.stmt]) -> int:
    """Line of the first statement that does more than import, define or assign (0: none does).

    Calls are what run a script's work (and certify itself); definitions and
    imports are what any ``import`` of a module runs. The branch guarded by
    ``if __name__ == "__main__":`` does not run in a worker.
    """
    for node in statements:
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                             ast.Pass, ast.Global)):
            continue
        if isinstance(node, ast.If):
            branches = [node.orelse] if _is_main_guard(node.test) else [node.body, node.orelse]
            if not _calls(node.test):
                line = next((found for found in map(_first_line_that_runs, branches) if found), 0)
                if line:
                    return line
                continue
        elif isinstance(node, ast.Try):
            bodies = [node.body, node.orelse, node.finalbody] + [handler.body for handler in node.handlers]
            if not any(handler.type is not None and _calls(handler.type) for handler in node.handlers):
                line = next((found for found in map(_first_line_that_runs, bodies) if found), 0)
                if line:
                    return line
                continue
        elif isinstance(node, (ast.Expr, ast.Assign, ast.AnnAssign, ast.AugAssign, ast.Assert, ast.Delete)):
            if not _calls(node):
                continue
        return node.lineno
    return 0


def _calls(node: ast.AST) -> bool:
    return any(isinstance(part, (ast.Call, ast.Await, ast.Yield, ast.YieldFrom)) for part in ast.walk(node))


def _is_main_guard(test: ast.expr) -> bool:
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    return (any(isinstance(side, ast.Name) and side.id == "__name__" for side in sides)
            and any(isinstance(side, ast.Constant) and side.value == "__main__" for side in sides))


# --------------------------------------------------------------------------------------------- driver side


class _Worker:
    """One worker process; a thread turns what it sends into (number, message) events, then (number, None)."""

    def __init__(self, number: int, events: "queue.Queue[Tuple[int, Optional[tuple]]]") -> None:
        self.ready = False
        try:
            self.process = subprocess.Popen([sys.executable, "-c", _BOOT], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE)
        except OSError as exc:
            raise WorkersUnavailable(f"worker processes cannot start ({exc})") from None
        self.listener = threading.Thread(target=_listen, args=(number, self.process.stdout, events),
                                         name=f"pixdisc-worker-{number}", daemon=True)
        self.listener.start()

    def send(self, message: Any) -> None:
        try:
            pickle.dump(message, self.process.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            self.process.stdin.flush()
        except OSError:  # the worker is gone: its listener reports that
            pass

    def exit_status(self) -> Optional[int]:
        try:
            return self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, now: bool) -> None:
        """Ask the worker to end (it ends when its task pipe closes), or end it at once."""
        if now:
            self.process.kill()
        try:
            self.process.stdin.close()
        except OSError:  # a pipe the worker already closed
            pass

    def reap(self) -> None:
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.listener.join(timeout=5)
        self.process.stdout.close()


def _listen(number: int, stream: IO[bytes], events: "queue.Queue[Tuple[int, Optional[tuple]]]") -> None:
    try:
        while True:
            events.put((number, pickle.load(stream)))
    except Exception:  # noqa: BLE001 - end of the pipe: the worker exited (a torn last message means the same)
        pass
    events.put((number, None))


def run_on_workers(function: Callable[..., List[Dict]], state: Any, tasks: Sequence[tuple], workers: int,
                   on_records: Callable[[List[Dict]], None]) -> None:
    """Run ``function(state, *task, on_record)`` for every task on up to ``workers`` fresh processes.

    ``on_records`` gets each record as soon as a worker decides it, and each
    task's whole list when it ends (so it must drop repeats). Raises
    WorkersUnavailable (nothing was lost: run the job here instead),
    WorkerDied, or the exception a task raised; every worker is stopped on
    the way out, at once unless all tasks ended.
    """
    shipment, reason = pickle_for_workers((function, state))
    if shipment is None:
        raise WorkersUnavailable(reason)
    if not sys.executable or getattr(sys, "frozen", False):
        # A frozen application's executable is the application: started as a worker, it would run itself.
        raise WorkersUnavailable("worker processes cannot start from a frozen application or without sys.executable")
    if not tasks:
        return
    sys_path = [os.getcwd() if entry == "" else entry for entry in sys.path]
    events: "queue.Queue[Tuple[int, Optional[tuple]]]" = queue.Queue()
    pool: List[_Worker] = []
    finished = False
    try:
        for number in range(max(1, min(workers, len(tasks)))):
            pool.append(_Worker(number, events))
        for worker in pool:  # each reads its shipment once it has imported pixdisc: all start at once
            worker.send(sys_path)
            worker.send(shipment)
        todo: Deque[tuple] = deque(tasks)
        left = len(tasks)
        while left:
            try:
                number, message = events.get(timeout=0.1)  # a timeout keeps Ctrl-C prompt everywhere
            except queue.Empty:
                continue
            worker = pool[number]
            if message is None:
                status = worker.exit_status()
                if not worker.ready:
                    raise WorkersUnavailable(f"a worker process exited while starting (exit status {status}; "
                                             "its error is printed above)")
                raise WorkerDied(f"a certification worker process died (exit status {status}); pass "
                                 "executor=\"serial\" to certify in this process; with checkpoint= a rerun "
                                 "resumes where this one stopped")
            kind = message[0]
            if kind == "record":
                on_records([message[1]])
                continue
            if kind == "cannot_rebuild":
                raise WorkersUnavailable(f"worker processes cannot rebuild the model ({message[1]})")
            if kind == "failed":
                raise _remote_exception(message[1], message[2])
            if kind == "done":
                on_records(message[1])
                left -= 1
            worker.ready = True  # "ready" or "done": free for the next task
            if todo:
                worker.send(todo.popleft())
        finished = True
    finally:
        for worker in pool:
            worker.stop(now=not finished)
        for worker in pool:
            worker.reap()
        _drain(events, on_records)  # records decided while the workers wound down


def _drain(events: "queue.Queue[Tuple[int, Optional[tuple]]]", on_records: Callable[[List[Dict]], None]) -> None:
    while True:
        try:
            _, message = events.get_nowait()
        except queue.Empty:
            return
        if message is not None and message[0] == "record":
            on_records([message[1]])
        elif message is not None and message[0] == "done":
            on_records(message[1])


def _remote_exception(pickled: Optional[bytes], text: str) -> BaseException:
    error: Optional[BaseException] = None
    if pickled is not None:
        try:
            error = pickle.loads(pickled)
        except Exception:  # noqa: BLE001 - e.g. an exception class that only the worker has
            error = None
    if not isinstance(error, BaseException):
        error = RuntimeError(f"a certification worker failed: {text.strip().splitlines()[-1]}")
    error.__cause__ = WorkerTraceback(f"\n\"\"\"\n{text}\"\"\"")
    return error


# --------------------------------------------------------------------------------------------- worker side


def serve(inbox: IO[bytes], outbox: IO[bytes]) -> None:
    """Worker process body: rebuild the job once, then run tasks until the driver closes the task pipe."""
    messages: "queue.Queue[Any]" = queue.Queue()
    busy = threading.Event()
    threading.Thread(target=_read_tasks, args=(inbox, messages, busy), daemon=True).start()

    def send(*message: Any) -> None:
        pickle.dump(message, outbox, protocol=pickle.HIGHEST_PROTOCOL)
        outbox.flush()

    shipment = messages.get()
    if shipment is None:
        return
    main, blob = shipment
    try:
        if main is not None:
            _define_main(*main)
        function, state = pickle.loads(blob)
    except Exception as exc:  # noqa: BLE001 - whatever stops the rebuild, the driver runs the job itself
        send("cannot_rebuild", f"{type(exc).__name__}: {exc}")
        return
    send("ready")
    while True:
        task = messages.get()
        if task is None:
            return
        busy.set()
        try:
            records = function(state, *task, lambda record: send("record", record))
        except Exception as exc:  # noqa: BLE001 - the driver re-raises it
            busy.clear()
            try:
                pickled: Optional[bytes] = pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception:  # noqa: BLE001
                pickled = None
            send("failed", pickled, traceback.format_exc())
            return
        busy.clear()  # before "done": the driver may close the pipe as soon as it reads it
        send("done", records)


def _read_tasks(inbox: IO[bytes], messages: "queue.Queue[Any]", busy: threading.Event) -> None:
    try:
        while True:
            messages.put(pickle.load(inbox))
    except Exception:  # noqa: BLE001 - end of the pipe: the driver is done, or gone
        pass
    messages.put(None)
    if busy.is_set():
        os._exit(1)  # the driver is gone mid-task (killed): no one would read what the task decides


def _define_main(path: str, package: Optional[str], source: str) -> None:
    """Run the main script's definitions (checked: nothing else runs) as ``__mp_main__``, seen as ``__main__``."""
    module = types.ModuleType("__mp_main__")
    module.__file__ = path
    module.__package__ = package
    sys.modules["__mp_main__"] = module  # what decorators such as @dataclass look up while the class is built
    exec(compile(source, path, "exec"), module.__dict__)  # noqa: S102 - the script the user ran, checked above
    sys.modules["__main__"] = module
