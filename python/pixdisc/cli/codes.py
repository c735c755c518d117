"""`pixdisc codebook` (alias `codes`): fit a codebook, write the file ``--codebook`` takes, print the codes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict

import numpy as np

from ..profiles import CERTIFIED_CODEBOOKS, PROFILES, dataset_key, profile
from ._common import (CommandError, EXIT_OK, UsageError, add_force_option, add_output_option, dataset_name,
                      nonnegative_int, positive_float, positive_int, refuse_overwrite, unit_float)


def _load_pixels(args: argparse.Namespace) -> np.ndarray:
    from ..pixels import load_pixel_file

    if args.npy is not None:
        try:
            return load_pixel_file(args.npy)
        except FileNotFoundError as exc:
            raise CommandError(f"no such file: {args.npy}") from exc
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
    from .. import datasets

    data = datasets.load_dataset(args.dataset, args.data_dir)
    if args.split == "train":
        return data.x_train
    if args.split == "test":
        return data.x_test
    return np.concatenate([data.x_train, data.x_test])


def _paper_codebook(args: argparse.Namespace) -> Dict[str, Any]:
    """Fill in the -k/-r of Algorithm 1 left out with the paper's values for the data set; return those taken.

    The values are the ones `pixdisc evaluate` fits with (the data set's profile, pixdisc.profiles).
    """
    if args.npy is not None:
        if args.r is None:
            raise UsageError("--method density needs -r/--radius for --npy pixels: there is no data set to take "
                             "the paper's radius from")
        return {}
    found = profile(args.dataset)
    if found is None:
        if args.r is None:
            raise UsageError(f"--method density needs -r/--radius: no default codebook for {args.dataset} "
                             f"(defaults exist for {', '.join(PROFILES)})")
        return {}
    taken = {name: getattr(found, name) for name in ("k", "r") if getattr(args, name) is None}
    for name, value in taken.items():
        setattr(args, name, value)
    return taken


def _make_codebook(args: argparse.Namespace):
    import pixdisc

    if args.method == "density":
        return pixdisc.DensityCodebook(args.k, args.r, metric=args.metric or "linf", kernel=args.kernel,
                                       bandwidth=args.bandwidth)
    if args.method == "kmedoids":
        return pixdisc.KMedoidsCodebook(args.k, metric=args.metric or "l1", random_state=args.seed)
    if args.method == "kmeans":
        return pixdisc.KMeansCodebook(args.k, random_state=args.seed, metric=args.metric or "linf")
    return pixdisc.UniformCodebook(args.k, metric=args.metric or "l2")


def _certified_codebook(args: argparse.Namespace):
    """--certified: the data set's recommended codes for certification (pixdisc.profiles.CERTIFIED_CODEBOOKS)."""
    from ..codebook import certified_codebook

    if args.npy is not None:
        raise UsageError("--certified picks the codes of a data set: use --dataset, not --npy")
    if args.method is not None or args.r is not None or args.k is not None:
        raise UsageError("--certified chooses the method and k itself: drop --method/-k/-r")
    key = dataset_key(args.dataset)
    if key not in CERTIFIED_CODEBOOKS:
        raise UsageError(f"no recommended codes for certification on {args.dataset}; known: "
                         f"{', '.join(CERTIFIED_CODEBOOKS)} (choose --method and -k yourself)")
    args.method, args.k = CERTIFIED_CODEBOOKS[key]["method"], CERTIFIED_CODEBOOKS[key]["k"]
    return certified_codebook(key, _load_pixels(args))


def cmd_codebook(args: argparse.Namespace) -> int:
    """Fit a codebook, write it, print the codes."""
    refuse_overwrite(args.output, args.force)
    paper: Dict[str, Any] = {}
    if args.certified:
        book = _certified_codebook(args)
    else:
        args.method = args.method or "density"
        if args.method == "density" and (args.k is None or args.r is None):
            paper = _paper_codebook(args)
        args.k = args.k or 2
        book = _make_codebook(args)  # usage errors (a missing -r) before any data is read
        book.fit(_load_pixels(args), channel_axis=args.channel_axis)
    path = book.save(args.output)
    codes = book.codes_
    report = {
        "method": args.method,
        "params": book.get_params(),
        "n_codes": int(codes.shape[0]),
        "channels": int(codes.shape[1]),
        "codes": codes.tolist(),
        "codes_255": np.rint(codes * 255).astype(int).tolist(),
        "stopped_early": bool(getattr(book, "stopped_early_", False)),
        "paper_defaults": paper,  # the -k/-r left out and taken from the paper's values for the data set
        "output": str(path),
    }
    if args.json:
        print(json.dumps(report))
        return EXIT_OK
    print(f"{report['n_codes']} codes ({report['channels']} channel(s)) from {args.method}, written to {path}")
    if paper:
        print(", ".join(f"{name}={value:.4g}" for name, value in paper.items())
              + f": the paper's Algorithm 1 defaults for {args.dataset} (as `pixdisc evaluate` uses); pass "
              + "/".join(f"-{name}" for name in paper) + " to choose")
    if report["stopped_early"]:
        print(f"note: stopped early: no pixel was left after {report['n_codes']} of k={args.k} codes")
    for i, (c, c255) in enumerate(zip(codes, report["codes_255"])):
        print(f"  {i:4d}  " + "  ".join(f"{v:.4f}" for v in c) + "   (" + ", ".join(str(v) for v in c255) + ")/255")
    return EXIT_OK


def add_codebook(sub: argparse._SubParsersAction) -> None:
    from ..codebook import KERNELS, METRICS
    from ..datasets import DATASETS

    # `codes` is the command's earlier name, still accepted.
    p = sub.add_parser("codebook", aliases=["codes"],
                       help="fit a codebook (the file --codebook takes) from a data set or an .npy file",
                       description="Fit a codebook of pixel values, write it as .npz (the file the other commands' "
                                   "--codebook takes) and print the codes.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--dataset", type=dataset_name, default="mnist5k", metavar="NAME",
                     help=f"data set, one of {', '.join(DATASETS)} (default: mnist5k, the embedded MNIST subset)")
    src.add_argument("--npy", type=Path, metavar="FILE", help="fit on the pixels of this .npy array instead")
    p.add_argument("--data-dir", type=Path, metavar="DIR", help="folder holding the data set's files")
    p.add_argument("--split", choices=("train", "test", "all"), default="train",
                   help="which images of the data set to fit on (default: train)")
    p.add_argument("--method", choices=("density", "kmedoids", "kmeans", "uniform"), default=None,
                   help="density: Algorithm 1; kmedoids: Algorithm 2; kmeans; uniform: colour-depth "
                        "reduction (default: density)")
    p.add_argument("-k", type=positive_int, default=None,
                   help="number of codes (levels per channel for uniform; default: for density the paper's k for "
                        "the data set, else 2)")
    p.add_argument("--certified", action="store_true",
                   help="the data set's recommended codes for certified training and certify (fashion_mnist: "
                        "k-medoids k=4, from the sweep in benchmarks/fashion_mnist.md; mnist/mnist5k: density k=2, "
                        "r=0.6)")
    p.add_argument("-r", "--radius", dest="r", type=unit_float, default=None,
                   help="removal radius of Algorithm 1 (pixel scale [0,1]; default: the paper's for the data set; "
                        "required with --npy)")
    p.add_argument("--metric", choices=METRICS, default=None,
                   help="default: linf (density, kmeans), l1 (kmedoids), l2 (uniform)")
    p.add_argument("--kernel", choices=KERNELS, default="identity",
                   help="density kernel of Algorithm 1 (default: identity, the paper's counts)")
    p.add_argument("--bandwidth", type=positive_float, default=None, help="h for box, sigma for gaussian")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="random seed of kmedoids/kmeans (default 0)")
    p.add_argument("--channel-axis", type=int, default=None,
                   help="channel axis of the data (default: last; data sets are NHWC)")
    add_output_option(p, Path("codes.npz"), "codebook file to write (default: codes.npz)")
    add_force_option(p)
    p.add_argument("--json", action="store_true", help="print a JSON report instead of text")
    p.set_defaults(func=cmd_codebook)
