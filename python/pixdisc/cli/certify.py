"""`pixdisc certify`: certify a model behind a codebook on a data set split."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

from ._common import (CommandError, EXIT_OK, UsageError, add_checkpoint_option, add_codebook_option, add_data_options,
                      add_model_argument, add_report_options, check_codebook_fits, defense_from_meta,
                      load_codebook_file, load_model_file, load_split, nonnegative_float, positive_float_or_none,
                      positive_int, probability, unit_float)


# pixdisc.certification.BOUNDS, spelled out so that `--help` does not import torch (a test checks they agree).
BOUND_TIERS = ("ibp", "crown-ibp", "crown", "alpha-crown")


def cmd_certify(args: argparse.Namespace) -> int:
    """Certify a model behind a codebook on a data set split; print a Table-IV-style summary."""
    from ..certification import Budget, certify
    from ..report import certify_table

    net, meta = load_model_file(args.model, None)
    if args.codebook is not None:
        codebook, source = load_codebook_file(args.codebook), str(args.codebook)
    else:  # the codebook the model was trained behind, as `pixdisc attack` uses it
        codebook, source = defense_from_meta(meta), f"the codebook recorded in {args.model}"
        if codebook is None:
            raise UsageError(f"{args.model} records no codebook (it was trained without discretization): pass "
                             "--codebook FILE, the codes to certify it behind (make one with `pixdisc codes`)")
    dataset = args.dataset or meta.get("dataset") or "mnist5k"
    x, labels, data = load_split(dataset, args.data_dir, args.split, args.limit)
    check_codebook_fits(codebook, x, source, data.name)
    executor: object = "serial" if args.workers == 1 else None
    client = None
    if args.scheduler:
        from distributed import Client

        client = Client(args.scheduler)
        executor = client
    try:
        budget = Budget(nodes=args.budget_nodes, seconds=args.budget_seconds, work=args.budget_work,
                        exact_seconds=args.exact_seconds)
    except ValueError as error:
        raise CommandError(f"{error} (--budget-seconds none needs --budget-work)") from None
    rows = []
    try:
        for eps in args.eps:
            result = certify(net, codebook, x, labels, eps, mode=args.mode, b=args.b, bound=args.bound,
                             budget=budget,
                             executor=executor, workers=args.workers, delta=args.delta,
                             checkpoint=_checkpoint_for(args.checkpoint, eps, len(args.eps)),
                             progress=not (args.quiet or args.json), device="cuda" if args.cuda else "cpu")
            rows.append(result.summary())
    finally:
        if client is not None:
            client.close()
    if args.json:
        print(json.dumps(rows))
        return EXIT_OK
    print(f"{len(labels)} images of {data.name}/{args.split} behind {source}, mode={args.mode}, "
          f"bound={args.bound}, delta={args.delta}")
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
    add_model_argument(p, "model file written by `pixdisc train` (the network behind the codebook)")
    add_codebook_option(p, "codebook (.npz from `pixdisc codes`, or .npy codes; default: the one the model file "
                           "records, as written by `pixdisc train --codebook`)")
    add_data_options(p, default=None, default_text="the one the model was trained on, else mnist5k")
    p.add_argument("--split", choices=("train", "test"), default="test", help="which split to certify (default: test)")
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N images")
    p.add_argument("--eps", type=unit_float, nargs="+", required=True, help="one or more budgets (pixel scale [0,1])")
    p.add_argument("--mode", choices=("bab", "paper"), default="bab",
                   help="bab: bounds and branch and bound (default); paper: enumerate S(x) up to 2^b members")
    p.add_argument("--b", type=nonnegative_float, default=30,
                   help="paper mode: unable when log2|S(x)| > b (default 30)")
    p.add_argument("--bound", choices=BOUND_TIERS, default="crown",
                   help="bab mode: the tightest bound tier; each image escalates ibp -> crown-ibp -> crown -> "
                        "alpha-crown up to it while its budget lasts (default: crown)")
    p.add_argument("--budget-nodes", type=positive_int, default=2000,
                   help="bab mode: branch-and-bound nodes per image (default 2000)")
    p.add_argument("--budget-seconds", type=positive_float_or_none, default=20.0,
                   help="bab mode: wall seconds per image, root bounds included, or 'none' (default 20)")
    p.add_argument("--budget-work", type=positive_float_or_none, default=None,
                   help="bab mode: work per image in forward passes of the network (bound passes, enumeration), "
                        "counted from shapes, not the clock: with --budget-seconds none the outcomes do not depend "
                        "on machine load or workers (default: none)")
    p.add_argument("--exact-seconds", type=nonnegative_float, default=0.0,
                   help="then decide what is left by a mixed-integer program over S(x) (HiGHS) with this many "
                        "seconds per image (default 0: off)")
    p.add_argument("--delta", type=probability, default=0.01, help="failure probability of the lower bounds")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--workers", type=positive_int, default=None, help="local worker processes (default: all cores)")
    group.add_argument("--scheduler", metavar="ADDRESS",
                       help="Dask scheduler address (tcp://host:8786) to run on a cluster")
    add_checkpoint_option(p, "append-only checkpoint (JSON lines, one line per image); the same command with the "
                             "same file resumes")
    p.add_argument("--cuda", action="store_true", help="run the model and enumeration on the GPU")
    add_report_options(p)
    p.set_defaults(func=cmd_certify)
