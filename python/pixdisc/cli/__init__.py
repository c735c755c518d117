"""The `pixdisc` command line: one subcommand per module, errors as messages and exit codes."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import traceback
from typing import Callable, Iterator, List, Optional

from . import attack, certify, codes, evaluate, reproduce, train
from ._common import (EXIT_BUG, EXIT_INPUT_ERROR, EXIT_INTERRUPTED, CommandError, UsageError, check_device,
                      first_line, positive_int)

__all__ = ["main", "build_parser"]

_SUBCOMMANDS: List[Callable[[argparse._SubParsersAction], None]] = [
    codes.add_codebook, train.add_train, attack.add_attack, evaluate.add_evaluate, evaluate.add_demo,
    certify.add_certify, reproduce.add_reproduce,
]
# The commands (under every name argparse reports) that never import torch.
_WITHOUT_TORCH = ("codebook", "codes")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="pixdisc",
                                     description="Pixel discretization as an adversarial-robustness defense.")
    parser.add_argument("--version", action="version", version=f"pixdisc {__version__}")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="threads for the native kernels and for torch (default: all cores)")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of any error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(sub)
    for command in sub.choices.values():
        command.set_defaults(_parser=command)  # usage errors found after parsing print its usage line
    return parser


def _set_threads(count: int, command: str) -> None:
    from .. import set_num_threads

    set_num_threads(count)
    # `codebook` never needs torch, and importing it only to set its threads costs seconds.
    if "torch" in sys.modules or (command not in _WITHOUT_TORCH and _torch_available()):
        import torch

        # On a shared or oversubscribed machine fewer torch threads can be much faster.
        torch.set_num_threads(count)


def default_torch_threads() -> int:
    """torch threads when --threads is not given: the cores the machine is not already busy with.

    torch's intra-op threads lose their advantage, and can collapse, when they
    compete for busy cores (benchmarks/threads_under_load.md measures a PGD
    training epoch with 1 and 2 threads, idle and beside 2 busy processes), so
    on a loaded machine fewer threads is the default that degrades gracefully.
    """
    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this platform: use every core
        return cores
    return max(1, min(cores, cores - int(busy)))  # a core counts as taken once a whole one is busy


@contextlib.contextmanager
def _default_threads(command: str) -> Iterator[None]:
    """Apply default_torch_threads() for this command, unless the user chose (OMP_NUM_THREADS); restore after."""
    if "OMP_NUM_THREADS" in os.environ or command in _WITHOUT_TORCH:
        yield
        return
    count = default_torch_threads()
    if "torch" not in sys.modules:  # read by torch when a command imports it
        os.environ["OMP_NUM_THREADS"] = str(count)
        try:
            yield
        finally:
            os.environ.pop("OMP_NUM_THREADS", None)
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)  # main() called in-process (tests, notebooks) leaves torch as it was


def _torch_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def _check_usage(args: argparse.Namespace) -> None:
    """Checks argparse cannot express: the model file given once, under either spelling."""
    if getattr(args, "_needs_model", False):
        given = [path for path in (args.model, args.model_option) if path is not None]
        if not given:
            raise UsageError("the model file is required (pixdisc COMMAND MODEL ...)")
        if len(given) == 2 and given[0] != given[1]:
            raise UsageError(f"two model files given ({given[0]} and --model {given[1]}); give one")
        args.model = given[0]


def _is_input_error(exc: BaseException) -> bool:
    """Errors about the user's data, files or environment (exit 1); anything else is a bug (exit 3)."""
    from ..datasets import DatasetNotFoundError

    # ValueError is what pixdisc raises for bad inputs; OSError covers files and disks;
    # a missing optional dependency is an ImportError that names the extra to install.
    return isinstance(exc, (CommandError, DatasetNotFoundError, ValueError, OSError, ImportError))


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _check_usage(args)
        check_device(getattr(args, "device", None) or ("cuda" if getattr(args, "cuda", False) else None))
        if args.threads is not None:
            _set_threads(args.threads, args.command)
            return int(args.func(args))
        with _default_threads(args.command):
            return int(args.func(args))
    except UsageError as exc:
        args._parser.error(str(exc))  # prints the usage line, exits 2
        raise  # pragma: no cover - error() exits
    except KeyboardInterrupt:
        hint = ""
        if getattr(args, "checkpoint", None) is not None and args.checkpoint.exists():
            hint = f"; run the same command again to resume from {args.checkpoint}"
        elif getattr(args, "_resumes_from_output", False) and args.output is not None and args.output.is_dir():
            # The report folder is the run's cache (pixdisc.experiments.cache, reproduce): a rerun reuses it.
            hint = (f"; run the same command again to resume: finished work is saved in {args.output} and "
                    "reused (the interrupted training epoch or attack stage starts over)")
        print(f"pixdisc {args.command}: interrupted{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - every error becomes a message and an exit code
        if args.debug:
            traceback.print_exc()
        if _is_input_error(exc):
            # Includes DatasetNotFoundError, whose lines say where we looked and how to get the data.
            text = str(exc) if isinstance(exc, CommandError) or not str(exc).strip() else str(exc).strip()
            print(f"pixdisc {args.command}: error: {text or type(exc).__name__}", file=sys.stderr)
            return EXIT_INPUT_ERROR
        from .. import __version__

        print(f"pixdisc {args.command}: internal error: {type(exc).__name__}: {first_line(exc)}\n"
              f"This is a bug in pixdisc {__version__}. "
              + ("The traceback is above; " if args.debug else "Rerun with --debug for the traceback, and ")
              + "please report it with the command you ran.", file=sys.stderr)
        return EXIT_BUG


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
