"""`pixdisc reproduce`: the papers' tables and figures."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._common import EXIT_OK, progress_enabled


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Reproduce the papers' tables and figures into a report folder."""
    from ..reproduce import reproduce

    results = reproduce(args.target, args.out, quick=args.quick, data_dir=args.data_dir, seed=args.seed,
                        progress=progress_enabled(args))
    if args.json:
        print(json.dumps(results, default=str))
    else:
        print(f"{args.target}: report written to {args.out / 'index.md'}")
    return EXIT_OK


def add_reproduce(sub: argparse._SubParsersAction) -> None:
    from ..reproduce import TARGETS

    p = sub.add_parser("reproduce", help="reproduce the paper's tables and figures on the data available",
                       description="Write index.md (our numbers beside the paper's), PNG figures and raw JSON.")
    p.add_argument("target", choices=TARGETS)
    p.add_argument("-o", "--out", type=Path, default=Path("pixdisc-reproduce"))
    p.add_argument("--quick", action="store_true", help="reduced budgets: minutes on 2 cores, numbers not comparable")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="folder holding CIFAR-10 / GTSRB / ImageNet-dev / MNIST IDX sub-folders")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_reproduce)
