"""`pixdisc reproduce`: the papers' tables and figures."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._common import (EXIT_OK, add_output_option, add_report_options, check_output_folder, nonnegative_int,
                      progress_enabled)


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Reproduce the papers' tables and figures into a report folder."""
    from ..reproduce import reproduce

    check_output_folder(args.output)
    results = reproduce(args.target, args.output, quick=args.quick, data_dir=args.data_dir, seed=args.seed,
                        progress=progress_enabled(args))
    if args.json:
        print(json.dumps(results, default=str))
    else:
        print(f"{args.target}: report written to {args.output / 'index.md'}")
    return EXIT_OK


def add_reproduce(sub: argparse._SubParsersAction) -> None:
    from ..report.reproduction import TARGETS

    p = sub.add_parser("reproduce", help="reproduce the paper's tables and figures on the data available",
                       description="Write index.md (our numbers beside the paper's), PNG figures and raw JSON. "
                                   "Trained models, evaluations and certificates are cached in the folder: the same "
                                   "command run again resumes.")
    p.add_argument("target", choices=TARGETS, help="a table, a figure, or all of them")
    add_output_option(p, Path("pixdisc-reproduce"), "report folder (default: pixdisc-reproduce)")
    p.add_argument("--quick", action="store_true", help="reduced budgets: minutes on 2 cores, numbers not comparable")
    p.add_argument("--data-dir", type=Path, metavar="DIR", default=None,
                   help="folder holding CIFAR-10 / GTSRB / ImageNet-dev / MNIST IDX sub-folders")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of training and attacks (default 0)")
    add_report_options(p)
    p.set_defaults(func=cmd_reproduce, _resumes_from_output=True)
