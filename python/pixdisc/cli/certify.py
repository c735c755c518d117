"""`pixdisc certify`: certify a model behind a codebook on a data set split."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

from ._common import EXIT_OK, load_codebook_file, load_model_file


def cmd_certify(args: argparse.Namespace) -> int:
    """Certify a model behind a codebook on a data set split; print a Table-IV-style summary."""
    from ..certification import Budget, certify
    from ..report import certify_table
    from ..datasets import as_float_nchw, load_dataset

    net, _ = load_model_file(args.model, None)
    codebook = load_codebook_file(args.codes)
    data = load_dataset(args.dataset, args.data_dir)
    images, labels = (data.x_test, data.y_test) if args.split == "test" else (data.x_train, data.y_train)
    if args.limit is not None:
        images, labels = images[: args.limit], labels[: args.limit]
    x = as_float_nchw(images)
    executor: object = "serial" if args.workers == 1 else None
    client = None
    if args.scheduler:
        from distributed import Client

        client = Client(args.scheduler)
        executor = client
    rows = []
    try:
        for eps in args.eps:
            result = certify(net, codebook, x, labels, eps, mode=args.mode, b=args.b, bound=args.bound,
                             budget=Budget(nodes=args.budget_nodes, seconds=args.budget_seconds,
                                           exact_seconds=args.exact_seconds),
                             executor=executor, workers=args.workers, delta=args.delta,
                             checkpoint=_checkpoint_for(args.resume, eps, len(args.eps)),
                             progress=not (args.quiet or args.json), device="cuda" if args.cuda else "cpu")
            rows.append(result.summary())
    finally:
        if client is not None:
            client.close()
    if args.json:
        print(json.dumps(rows))
        return EXIT_OK
    print(f"{len(labels)} images of {args.dataset}/{args.split}, mode={args.mode}, bound={args.bound}, "
          f"delta={args.delta}")
    print(certify_table(rows))
    return EXIT_OK


def _checkpoint_for(resume: Optional[Path], eps: float, n_eps: int) -> Optional[Path]:
    """One checkpoint file per eps: the given name, suffixed with eps when several are run."""
    if resume is None:
        return None
    if n_eps == 1:
        return resume
    return resume.with_name(f"{resume.stem}-eps{eps:g}{resume.suffix or '.jsonl'}")


def add_certify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("certify", help="certify robustness of a model behind a codebook on a data set",
                       description="Certify F(T(x)) = y against every l_inf perturbation of size eps.")
    p.add_argument("--model", type=Path, required=True, help="model file written by `pixdisc train`")
    p.add_argument("--codes", type=Path, required=True, help="codebook (.npz from `pixdisc codes`, or .npy codes)")
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--split", choices=("train", "test"), default="test")
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument("--eps", type=float, nargs="+", required=True, help="one or more budgets (pixel scale [0,1])")
    p.add_argument("--mode", choices=("bab", "paper"), default="bab")
    p.add_argument("--b", type=float, default=30, help="paper mode: unable when log2|S(x)| > b")
    p.add_argument("--bound", choices=("crown", "ibp"), default="crown")
    p.add_argument("--budget-nodes", type=int, default=2000)
    p.add_argument("--budget-seconds", type=float, default=20.0)
    p.add_argument("--exact-seconds", type=float, default=0.0,
                   help="then decide what is left by a mixed-integer program over S(x) (HiGHS) with this many "
                        "seconds per image (default 0: off)")
    p.add_argument("--delta", type=float, default=0.01, help="failure probability of the lower bounds")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--workers", type=int, default=None, help="local worker processes (default: all cores)")
    group.add_argument("--scheduler", help="Dask scheduler address (tcp://host:8786) to run on a cluster")
    p.add_argument("--resume", type=Path, default=None,
                   help="append-only checkpoint (JSON lines); rerun with the same file to resume")
    p.add_argument("--cuda", action="store_true", help="run the model and enumeration on the GPU")
    p.add_argument("--json", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_certify)
