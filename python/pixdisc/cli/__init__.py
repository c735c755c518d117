"""The `pixdisc` command line: one subcommand per module, errors as messages and exit codes."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, List, Optional

from . import attack, certify, codes, evaluate, reproduce, train
from ._common import EXIT_INPUT_ERROR, EXIT_INTERRUPTED, CommandError, first_line

__all__ = ["main", "build_parser"]

_SUBCOMMANDS: List[Callable[[argparse._SubParsersAction], None]] = [
    codes.add_codes, train.add_train, attack.add_attack, evaluate.add_evaluate, evaluate.add_demo,
    certify.add_certify, reproduce.add_reproduce,
]


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="pixdisc", description="Pixel discretization as an adversarial-robustness defense.")
    parser.add_argument("--version", action="version", version=f"pixdisc {__version__}")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for the native kernels and for torch (default: all cores)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


def _set_threads(count: int) -> None:
    if count < 1:
        raise CommandError(f"--threads must be >= 1, got {count}")
    from .. import set_num_threads

    set_num_threads(count)
    if "torch" in sys.modules or _torch_available():
        import torch

        # On a shared or oversubscribed machine fewer torch threads can be much faster.
        torch.set_num_threads(count)


def _torch_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.threads is not None:
            _set_threads(args.threads)
        return int(args.func(args))
    except (CommandError, ValueError, FileNotFoundError) as exc:
        # Includes DatasetNotFoundError, whose lines say where we looked and how to get the data.
        print(f"pixdisc {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except (RuntimeError, OSError, ImportError) as exc:
        # From deep inside torch or the OS: the first line says what went wrong; no traceback.
        print(f"pixdisc {args.command}: error: {first_line(exc)}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        hint = ""
        if getattr(args, "checkpoint", None) is not None:
            hint = f"; run the same command again to resume from {args.checkpoint}"
        print(f"pixdisc {args.command}: interrupted{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
