"""The `pixdisc` command line: one subcommand per job, errors as messages and exit codes."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

__all__ = ["main", "build_parser"]

# Exit codes: 0 success, 1 a data/input problem (message on stderr), 2 bad usage
# (argparse), 130 interrupted (Ctrl-C, the shell's 128 + SIGINT).
EXIT_OK, EXIT_INPUT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class CommandError(Exception):
    """A problem the user can fix; printed without a traceback."""


def _load_pixels(args: argparse.Namespace) -> np.ndarray:
    if args.npy is not None:
        try:
            return np.load(args.npy, allow_pickle=False)
        except FileNotFoundError as exc:
            raise CommandError(f"no such file: {args.npy}") from exc
        except ValueError as exc:
            raise CommandError(f"{args.npy} is not a plain .npy array: {exc}") from exc
    from . import datasets

    data = datasets.load_dataset(args.dataset, args.data_dir)
    if args.split == "train":
        return data.x_train
    if args.split == "test":
        return data.x_test
    return np.concatenate([data.x_train, data.x_test])


def _make_codebook(args: argparse.Namespace):
    import pixdisc

    if args.method == "density":
        if args.r is None:
            raise CommandError("--method density needs -r/--radius")
        return pixdisc.DensityCodebook(args.k, args.r, metric=args.metric or "linf", kernel=args.kernel,
                                       bandwidth=args.bandwidth)
    if args.method == "kmedoids":
        return pixdisc.KMedoidsCodebook(args.k, metric=args.metric or "l1", random_state=args.seed)
    if args.method == "kmeans":
        return pixdisc.KMeansCodebook(args.k, random_state=args.seed, metric=args.metric or "linf")
    return pixdisc.UniformCodebook(args.k, metric=args.metric or "l2")


def cmd_codes(args: argparse.Namespace) -> int:
    """Fit a codebook, write it, print the codes."""
    x = _load_pixels(args)
    book = _make_codebook(args)
    book.fit(x, channel_axis=args.channel_axis)
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
        "output": str(path),
    }
    if args.json:
        print(json.dumps(report))
        return EXIT_OK
    print(f"{report['n_codes']} codes ({report['channels']} channel(s)) from {args.method}, written to {path}")
    if report["stopped_early"]:
        print(f"note: stopped early: no pixel was left after {report['n_codes']} of k={args.k} codes")
    for i, (c, c255) in enumerate(zip(codes, report["codes_255"])):
        print(f"  {i:4d}  " + "  ".join(f"{v:.4f}" for v in c) + "   (" + ", ".join(str(v) for v in c255) + ")/255")
    return EXIT_OK


def _add_codes(sub: argparse._SubParsersAction) -> None:
    from .codebook import KERNELS, METRICS

    p = sub.add_parser("codes", help="fit a codebook from a data set or an .npy file",
                       description="Fit a codebook of pixel values, write it as .npz and print the codes.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--dataset", default="mnist5k",
                     help="data set name (default: mnist5k, the embedded MNIST subset)")
    src.add_argument("--npy", type=Path, help="fit on the pixels of this .npy array instead")
    p.add_argument("--data-dir", type=Path, help="where the data set's files are")
    p.add_argument("--split", choices=("train", "test", "all"), default="train")
    p.add_argument("--method", choices=("density", "kmedoids", "kmeans", "uniform"), default="density")
    p.add_argument("-k", type=int, default=2, help="number of codes (levels per channel for uniform)")
    p.add_argument("-r", "--radius", dest="r", type=float, default=None,
                   help="removal radius of Algorithm 1 (pixel scale [0,1]); required for density")
    p.add_argument("--metric", choices=METRICS, default=None,
                   help="default: linf (density, kmeans), l1 (kmedoids), l2 (uniform)")
    p.add_argument("--kernel", choices=KERNELS, default="identity")
    p.add_argument("--bandwidth", type=float, default=None, help="h for box, sigma for gaussian")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--channel-axis", type=int, default=None,
                   help="channel axis of the data (default: last; data sets are NHWC)")
    p.add_argument("-o", "--output", type=Path, default=Path("codes.npz"))
    p.add_argument("--json", action="store_true", help="print a JSON report instead of text")
    p.set_defaults(func=cmd_codes)


# ----------------------------------------------------------------------------
# Helpers shared by the torch commands (train, attack, evaluate, demo). torch
# is imported inside them so that `pixdisc codes` works without it.


def _progress(args: argparse.Namespace) -> bool:
    # Bars go to stderr; they are off for --quiet, and for --json so that a
    # pipeline sees nothing but the report.
    return not (getattr(args, "quiet", False) or getattr(args, "json", False))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _dataset_key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def _load_codebook_file(path: Path):
    import zipfile

    from . import load_codebook

    if path.suffix == ".npz" and path.is_file():
        # Check the archive first: np.load leaks its file handle on a truncated .npz.
        try:
            with zipfile.ZipFile(path) as archive:
                damaged = archive.testzip()
        except (zipfile.BadZipFile, OSError) as exc:
            raise CommandError(f"{path} is not a valid pixdisc codebook (not a complete .npz archive: "
                               f"{_first_line(exc)})") from None
        if damaged is not None:
            raise CommandError(f"{path} is not a valid pixdisc codebook (damaged member {damaged})")
    try:
        return load_codebook(path)
    except FileNotFoundError as exc:
        raise CommandError(f"codebook file not found: {path} (make one with `pixdisc codes ... -o {path}`)") from exc
    except ValueError as exc:
        raise CommandError(_first_line(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - e.g. zipfile.BadZipFile from a truncated .npz
        raise CommandError(f"{path} is not a valid pixdisc codebook ({_first_line(exc)})") from exc


def _load_model_file(path: Path, device: Optional[str]) -> Tuple[Any, Dict[str, Any]]:
    from .models import load_model

    try:
        model, meta = load_model(path, map_location=device or "cpu", return_meta=True)
    except FileNotFoundError as exc:
        raise CommandError(f"model file not found: {path} (train one with `pixdisc train -o {path}`)") from exc
    except ValueError as exc:
        raise CommandError(_first_line(exc)) from exc
    return model, meta if isinstance(meta, dict) else {}


def _load_split(dataset: str, data_dir: Optional[Path], split: str, limit: Optional[int]):
    """(x, y, dataset) of one split as float NCHW / int64 tensors; ``limit`` keeps a prefix (the splits are shuffled)."""
    import torch

    from . import datasets

    if limit is not None and limit < 1:
        raise CommandError(f"--limit must be >= 1, got {limit}")
    data = datasets.load_dataset(dataset, data_dir)
    images, labels = (data.x_train, data.y_train) if split == "train" else (data.x_test, data.y_test)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    if len(images) == 0:
        raise CommandError(f"{dataset}: the {split} split is empty")
    return torch.from_numpy(datasets.as_float_nchw(images)), torch.from_numpy(labels), data


def _check_model_fits(model: Any, x: Any, num_classes: int, what: str) -> None:
    """Run the model on one image so that a shape mismatch is a message, not a traceback from inside torch."""
    import torch

    try:
        with torch.no_grad():
            logits = model.eval()(x[:1].to(next(iter(model.parameters())).device))
    except (RuntimeError, ValueError) as exc:
        raise CommandError(f"{what} does not accept images of shape {tuple(x.shape[1:])} "
                           f"({_first_line(exc)})") from None
    if logits.ndim != 2 or logits.shape[1] < num_classes:
        raise CommandError(f"{what} returns {tuple(logits.shape[1:])} outputs per image, but the data set "
                           f"has {num_classes} classes")


def _defense_from_meta(meta: Dict[str, Any]):
    from .codebook import Codebook

    spec = meta.get("defense")
    if not isinstance(spec, dict) or "codes" not in spec:
        return None
    try:
        return Codebook(np.asarray(spec["codes"], dtype=np.float32), metric=spec.get("metric", "linf"))
    except (TypeError, ValueError) as exc:
        raise CommandError(f"the model file's recorded defense is damaged: {_first_line(exc)}") from exc


def _attack_budget(dataset: str, eps: Optional[float], steps: Optional[int],
                   step_size: Optional[float]) -> Tuple[float, int, float]:
    from .attacks import PAPER_BUDGETS
    from .experiments import DATASET_DEFAULTS

    defaults = DATASET_DEFAULTS.get(_dataset_key(dataset))
    budget = PAPER_BUDGETS[defaults["budget"]] if defaults else None
    if budget is None and None in (eps, steps, step_size):
        raise CommandError(f"no paper budget for data set {dataset!r}: pass --eps, --steps and --step-size")
    eps = float(budget["eps"]) if eps is None else eps
    steps = int(budget["steps"]) if steps is None else steps
    step_size = float(budget["step_size"]) if step_size is None else step_size
    if eps < 0 or steps < 0 or step_size < 0:
        raise CommandError("--eps, --steps and --step-size must be >= 0")
    return eps, steps, step_size


def _parse_attacks(text: str) -> List[str]:
    from .attacks import SUITE

    names = [name.strip().replace("-", "_").lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SUITE]
    if unknown or not names:
        raise CommandError(f"--attacks takes a comma-separated list of {', '.join(SUITE)}; got {text!r}")
    return names


def _percent(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _emit(args: argparse.Namespace, report: Dict[str, Any], text: List[str]) -> None:
    if args.json:
        print(json.dumps(report, allow_nan=False, default=str))
    else:
        print("\n".join(text))


# ----------------------------------------------------------------------------
# train


# Which of PAPER_TRAINING's recipes (attack eps/steps/step size) a data set uses.
_TRAINING_RECIPE = {"mnist5k": "mnist", "mnist": "mnist", "digits": "mnist", "fashion_mnist": "fashion_mnist",
                    "cifar10": "cifar10", "gtsrb": "cifar10"}


def _resolve_setting(args: argparse.Namespace) -> str:
    if args.setting is not None:
        return args.setting
    mode = args.mode or "natural"
    prefix = "nat" if mode == "natural" else "adv"
    # A codebook with --mode means training on discretized images (the paper's "re-trained").
    return f"disc_{prefix}_re" if args.codebook is not None else f"{prefix}_pre"


def cmd_train(args: argparse.Namespace) -> int:
    """Train one model for a setting (or mode) and write it with save_model."""
    from . import __version__
    from .discretize import Discretize
    from .models import predict, save_model
    from .train import PAPER_TRAINING, train_setting

    if args.mode == "certified":
        return _train_certified(args)
    setting = _resolve_setting(args)
    defended = setting.startswith("disc_")
    if defended and args.codebook is None:
        raise CommandError(f"setting {setting} needs --codebook FILE (make one with `pixdisc codes`)")
    if not defended and args.codebook is not None:
        raise CommandError(f"setting {setting} has no defense; drop --codebook or pick a disc_* setting")
    if args.epochs < 0:
        raise CommandError(f"--epochs must be >= 0, got {args.epochs}")
    if args.base is not None and not defended:
        raise CommandError(f"{setting} trains a network from scratch; --base is for the disc_* settings "
                           "(disc_*_pre reuse it as is, disc_*_re start from it)")
    x_train, y_train, data = _load_split(args.dataset, args.data_dir, "train", args.limit)
    x_test, y_test, _ = _load_split(args.dataset, args.data_dir, "test", args.test_limit)
    codebook = defense = None
    if defended:
        codebook = _load_codebook_file(args.codebook)
        if codebook.n_channels != x_train.shape[1]:
            raise CommandError(f"{args.codebook} has {codebook.n_channels}-channel codes but {data.name} images have "
                               f"{x_train.shape[1]} channel(s)")
        defense = Discretize(codebook, bpda=args.bpda, alpha=args.alpha)
    base = None
    if args.base is not None:
        base, _ = _load_model_file(args.base, args.device)
        _check_model_fits(base, x_train, data.num_classes, str(args.base))
    args.arch = args.arch or "small_cnn"
    recipe = PAPER_TRAINING[_TRAINING_RECIPE.get(_dataset_key(args.dataset), "mnist")]
    adversarial = {
        "eps": recipe["eps"] if args.eps is None else args.eps,
        "attack_steps": recipe["attack_steps"] if args.steps is None else args.steps,
        "step_size": recipe["step_size"] if args.step_size is None else args.step_size,
    }
    started = time.perf_counter()
    model, history = train_setting(
        setting, x_train, y_train, defense=defense, arch=args.arch, num_classes=data.num_classes, base=base,
        epochs=args.epochs, seed=args.seed, return_history=True, batch_size=args.batch_size, lr=args.lr,
        progress=_progress(args), device=args.device, checkpoint_path=args.checkpoint, **adversarial,
    )
    seconds = time.perf_counter() - started
    test_accuracy = float((predict(model, x_test) == y_test).float().mean())
    network = model[1] if defended else model
    arch = getattr(network, "_pixdisc_arch", {}).get("name", args.arch)  # a --base brings its own
    meta = {
        "setting": setting,
        "dataset": data.name,
        "input_shape": [int(side) for side in x_train.shape[1:]],
        "num_classes": int(data.num_classes),
        "defense": None if codebook is None else {
            "codebook": str(args.codebook), "codes": codebook.codes_.tolist(), "metric": codebook.metric,
            "alpha": args.alpha, "bpda": args.bpda,
        },
        "training": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
                     "n_train": int(len(x_train)), **({"adversarial": adversarial} if "_adv_" in f"_{setting}_"
                                                      else {})},
        "history": history,
        "test_accuracy": test_accuracy,
        "pixdisc": __version__,
    }
    save_model(network, args.output, meta=meta)
    report = {"setting": setting, "arch": arch, "dataset": data.name, "n_train": int(len(x_train)),
              "n_test": int(len(x_test)), "epochs": args.epochs, "seconds": seconds,
              "train_accuracy": history["accuracy"][-1] if history["accuracy"] else None,
              "test_accuracy": test_accuracy, "output": str(args.output), "history": history}
    reused = args.base is not None and setting.endswith("_pre")
    text = [f"{setting}: {args.base} behind the defense, not retrained" if reused else
            f"trained {setting} ({arch}) on {data.name}: {len(x_train)} images, {args.epochs} epoch(s), "
            f"{seconds:.1f} s",
            f"clean test accuracy {_percent(test_accuracy)} on {len(x_test)} images"
            + (" (behind the defense)" if defended else ""),
            f"model written to {args.output}"]
    _emit(args, report, text)
    return EXIT_OK


def _add_train(sub: argparse._SubParsersAction) -> None:
    from .train import SETTINGS

    p = sub.add_parser("train", help="train a model for one of the paper's settings",
                       description="Train a network naturally or adversarially (Madry PGD), on raw or discretized "
                                   "images, and write it as a model file.")
    _add_data_options(p)
    p.add_argument("--arch", default=None, choices=("small_cnn", "cert_cnn", "madry_mnist", "mlp", "cifar_resnet"),
                   help="default: small_cnn (cert_cnn for --mode certified)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--setting", choices=SETTINGS, help="one of the paper's six settings")
    how.add_argument("--mode", choices=("natural", "adversarial", "certified"),
                     help="natural (default) or adversarial; with --codebook the network learns on discretized "
                          "images (disc_*_re). certified: bound-based training so that `pixdisc certify` succeeds "
                          "(with --codebook: over the box hull of S(x); without: plain IBP on the eps-box)")
    p.add_argument("--codebook", type=Path, help="codebook file (.npz/.npy) for the disc_* settings")
    p.add_argument("--alpha", type=float, default=10.0, help="BPDA sharpness (pixel scale [0,1]; default 10)")
    p.add_argument("--bpda", choices=("soft", "identity"), default="soft")
    p.add_argument("--base", type=Path, help="model file to start from (the pre-trained network of *_re settings)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--eps", type=float, default=None, help="adversarial training eps (default: the paper's)")
    p.add_argument("--steps", type=int, default=None, help="PGD steps in adversarial training (default: the paper's)")
    p.add_argument("--step-size", type=float, default=None, help="PGD step size (default: the paper's)")
    p.add_argument("--limit", type=int, default=None, help="train on the first N training images")
    p.add_argument("--test-limit", type=int, default=None, help="report accuracy on the first N test images")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="write a checkpoint after every epoch and resume from it if it exists")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("-o", "--output", type=Path, default=Path("model.pt"))
    _add_report_options(p)
    p.set_defaults(func=cmd_train)


# ----------------------------------------------------------------------------
# attack


def cmd_attack(args: argparse.Namespace) -> int:
    """Attack a model file with the strongest suite and, behind a defense, certify: print floor and ceiling."""
    from .attacks import SUITE, applicable_attacks
    from .certification import Budget
    from .discretize import Discretize
    from .evaluation import robustness_interval
    from .experiments import ATTACK_LABELS, DATASET_DEFAULTS, attack_specs, summarise_result
    from torch import nn

    model, meta = _load_model_file(args.model, args.device)
    dataset = args.dataset or meta.get("dataset") or "mnist5k"
    if args.no_defense and args.codebook is not None:
        raise CommandError("--no-defense and --codebook contradict each other")
    x, y, data = _load_split(dataset, args.data_dir, args.split, args.limit)
    _check_model_fits(model, x, data.num_classes, str(args.model))
    codebook = None
    if args.codebook is not None:
        codebook = _load_codebook_file(args.codebook)
    elif not args.no_defense:
        codebook = _defense_from_meta(meta)
    recorded = meta.get("defense") if isinstance(meta.get("defense"), dict) else {}
    alpha = args.alpha if args.alpha is not None else float(
        recorded.get("alpha", DATASET_DEFAULTS.get(_dataset_key(dataset), {}).get("alpha", 10.0)))
    if codebook is not None:
        if codebook.n_channels != x.shape[1]:
            raise CommandError(f"the codebook has {codebook.n_channels}-channel codes but {data.name} images have "
                               f"{x.shape[1]} channel(s)")
        device = next(iter(model.parameters())).device
        model = nn.Sequential(Discretize(codebook, bpda=args.bpda, alpha=alpha), model).to(device).eval()
    eps, steps, step_size = _attack_budget(dataset, args.eps, args.steps, args.step_size)
    requested = _parse_attacks(args.attacks) if args.attacks else list(SUITE)
    names = applicable_attacks(model, requested)
    if not names:
        raise CommandError(f"none of the attacks {', '.join(requested)} applies to this model "
                           "(the S(x) search and Square need a discretizer; APGD and Square need torchattacks)")
    if args.square_queries < 1 or args.certify_nodes < 1 or args.certify_seconds <= 0:
        raise CommandError("--square-queries and --certify-nodes must be >= 1 and --certify-seconds > 0")
    specs = attack_specs(eps, steps, step_size, names, square_queries=args.square_queries, seed=args.seed)
    if args.restarts != 1:
        if args.restarts < 1:
            raise CommandError(f"--restarts must be >= 1, got {args.restarts}")
        for spec in specs:
            if isinstance(spec, dict) and spec["attack"] in ("pgd", "adam_sign"):
                spec["restarts"] = args.restarts
                spec["random_start"] = True
    if args.batch_size < 1:
        raise CommandError(f"--batch-size must be >= 1, got {args.batch_size}")
    started = time.perf_counter()
    budget = None if args.no_certify else Budget(nodes=args.certify_nodes, seconds=args.certify_seconds,
                                                 exact_seconds=args.exact_seconds)
    if budget is None:
        from .attacks import evaluate_robustness

        outcome = evaluate_robustness(model, x, y, specs, batch_size=args.batch_size, seed=args.seed, eps=eps,
                                      keep_adv=False, progress=_progress(args))
        summary = summarise_result(outcome, names)
        interval: Dict[str, Any] = {}
    else:
        result = robustness_interval(model, x, y, eps, attacks=specs, batch_size=args.batch_size, seed=args.seed,
                                     certify_budget=budget, progress=_progress(args))
        summary = summarise_result(result.attack, result.attack_names)
        names = result.attack_names
        interval = result.summary()
    seconds = time.perf_counter() - started
    report = {
        "model": str(args.model), "setting": meta.get("setting"), "dataset": data.name, "split": args.split,
        "defense": None if codebook is None else {"codes_255": np.rint(codebook.codes_ * 255).astype(int).tolist(),
                                                  "metric": codebook.metric, "bpda": args.bpda, "alpha": alpha},
        "eps": eps, "steps": steps, "step_size": step_size,
        "attacks": [{"name": name, **(spec if isinstance(spec, dict) else spec.params)}
                    for name, spec in zip(names, specs)],
        **summary, "interval": interval or None, "seconds": seconds,
    }
    text = [f"{args.model} on {data.name} {args.split} ({summary['n']} images)"
            + (f" behind discretization (codes {report['defense']['codes_255']}/255, BPDA {args.bpda}, "
               f"alpha={alpha:g})" if codebook is not None else " without a defense"),
            f"attack budget: eps={eps:g}; gradient attacks {steps} steps of {step_size:g}",
            f"  clean accuracy            {_percent(summary['clean_accuracy'])}"]
    for index, name in enumerate(names):
        label = ATTACK_LABELS[name] if index == 0 else "+" + ATTACK_LABELS[name]
        text.append(f"  robust after {label:<12} {_percent(summary['robust_after'][name])}")
    text.append(f"  robust (attacked ceiling) {_percent(summary['robust_accuracy'])}")
    if interval.get("floor") is not None:
        text.append(f"  certified (floor)         {_percent(interval['floor'])}")
        text.append(f"  undecided                 {interval['undecided']} of {interval['n']} images"
                    + ("  -> robust accuracy is exact" if interval["exact"] else ""))
    text.append(f"  [{seconds:.1f} s]")
    _emit(args, report, text)
    return EXIT_OK


def _add_attack(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("attack", help="attack a model file; behind a defense also certify (floor and ceiling)",
                       description="The strongest l_inf suite (behind a defense: the S(x) search, BPDA gradient "
                                   "attacks, APGD and Square); per-sample worst case over the attacks, and behind "
                                   "a defense the certified floor beside that ceiling.")
    p.add_argument("model", type=Path, help="model file written by `pixdisc train` or `pixdisc evaluate`")
    p.add_argument("--codebook", type=Path, help="put the model behind this codebook's discretization")
    p.add_argument("--no-defense", action="store_true",
                   help="attack the bare network even if the model file records a defense")
    p.add_argument("--alpha", type=float, default=None, help="BPDA sharpness (default: recorded, else the paper's)")
    p.add_argument("--bpda", choices=("soft", "identity"), default="soft")
    p.add_argument("--dataset", default=None, help="data set (default: the one the model was trained on)")
    p.add_argument("--data-dir", type=Path, help="where the data set's files are")
    p.add_argument("--split", choices=("test", "train"), default="test")
    p.add_argument("--limit", type=int, default=None, help="attack the first N images of the split")
    p.add_argument("--attacks", default=None,
                   help="comma-separated subset of sx, pgd_ce, pgd_cw, adam_sign, apgd_ce, apgd_dlr, square "
                        "(default: all that apply, in this order)")
    p.add_argument("--eps", type=float, default=None, help="l_inf budget (default: the paper's for the data set)")
    p.add_argument("--steps", type=int, default=None, help="steps of the gradient attacks (default: the paper's)")
    p.add_argument("--step-size", type=float, default=None, help="step of PGD and Adam-sign (default: the paper's)")
    p.add_argument("--restarts", type=int, default=1, help="random restarts of PGD and Adam-sign")
    p.add_argument("--square-queries", type=int, default=1000, help="queries of the Square attack")
    p.add_argument("--certify-nodes", type=int, default=20,
                   help="branch-and-bound nodes per image for the certified floor")
    p.add_argument("--certify-seconds", type=float, default=0.5,
                   help="seconds per image for the certified floor")
    p.add_argument("--exact-seconds", type=float, default=0.0,
                   help="certify's exact stage (mixed-integer program over S(x)) per undecided image (default: off)")
    p.add_argument("--no-certify", action="store_true", help="report the attacked ceiling only")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cpu)")
    _add_report_options(p)
    p.set_defaults(func=cmd_attack)


# ----------------------------------------------------------------------------
# evaluate and demo


def _print_result(result: Dict[str, Any], wall: float) -> None:
    from .report import markdown_table

    print(markdown_table(result))
    if result.get("paper"):
        print(f"\npaper columns: {result['paper']['source']}")
    if result.get("quick"):
        print("quick run: reduced budgets on a few images; the numbers and checks below mean nothing")
    for check in result.get("checks", {}).values():
        print(f"check: {check['description']}: {'yes' if check['passed'] else 'NO'} ({check['detail']})")
    files = result.get("files", {})
    if files:
        print("wrote " + ", ".join(files.values()))
    print(f"wall time {wall:.1f} s")


def cmd_evaluate(args: argparse.Namespace) -> int:
    """The six-setting table for a data set: train what is needed, attack, write the report folder."""
    from .experiments import DATASET_DEFAULTS, DEMO_CONFIG, QUICK_CONFIG, config_for_dataset, run_experiment
    from .train import SETTINGS

    key = _dataset_key(args.dataset)
    codebook = _load_codebook_file(args.codebook) if args.codebook is not None else None
    if codebook is None and key not in DATASET_DEFAULTS and (args.k is None or args.r is None):
        raise CommandError(f"no default codebook for {args.dataset!r}: pass -k and -r, or --codebook")
    settings = tuple(s.strip() for s in args.settings.split(",") if s.strip()) if args.settings else SETTINGS
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        raise CommandError(f"unknown setting(s) {', '.join(unknown)}; choose from {', '.join(SETTINGS)}")
    overrides: Dict[str, Any] = {
        "data_dir": None if args.data_dir is None else str(args.data_dir), "arch": args.arch, "k": args.k,
        "r": args.r, "alpha": args.alpha, "eps": args.eps, "steps": args.steps, "step_size": args.step_size,
        "natural_epochs": args.natural_epochs, "adversarial_epochs": args.adversarial_epochs,
        "retrain_epochs": args.retrain_epochs, "adversarial_retrain_epochs": args.adversarial_retrain_epochs,
        "train_eps": args.train_eps, "train_steps": args.train_steps, "train_step_size": args.train_step_size,
        "n_train": args.n_train, "n_test": args.n_test, "seed": args.seed, "device": args.device,
        "settings": settings, "attacks": tuple(_parse_attacks(args.attacks)) if args.attacks else None,
    }
    if args.no_curve:
        overrides["curve_eps"] = ()
    config = config_for_dataset(key, QUICK_CONFIG if args.quick else DEMO_CONFIG, **overrides)
    out = args.out if args.out is not None else Path(f"pixdisc-{key}")
    return _run_and_report(args, lambda: run_experiment(config, out, codebook=codebook, progress=_progress(args)))


def _run_and_report(args: argparse.Namespace, run: Callable[[], Dict[str, Any]]) -> int:
    """Time an experiment run and print its report (JSON or the text table)."""
    started = time.perf_counter()
    result = run()
    wall = time.perf_counter() - started
    if args.json:
        print(json.dumps({**result, "wall_seconds": wall}, allow_nan=False, default=str))
    else:
        _print_result(result, wall)
    return EXIT_OK


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="the paper's six-setting table for a data set",
                       description="Fit the codebook, train the natural and adversarial models (and their "
                                   "re-trained versions), attack all six settings and write JSON, Markdown and "
                                   "PNG reports into --out.")
    _add_data_options(p)
    p.add_argument("-o", "--out", type=Path, default=None, help="report folder (default: pixdisc-DATASET)")
    p.add_argument("--codebook", type=Path, help="use this codebook instead of fitting Algorithm 1")
    p.add_argument("-k", type=int, default=None, help="codes for Algorithm 1 (default: the paper's)")
    p.add_argument("-r", "--radius", dest="r", type=float, default=None, help="removal radius (default: the paper's)")
    p.add_argument("--alpha", type=float, default=None, help="BPDA sharpness (default: the paper's)")
    p.add_argument("--arch", default=None, choices=("small_cnn", "madry_mnist", "mlp", "cifar_resnet"))
    p.add_argument("--settings", default=None, help="comma-separated subset of the six settings (default: all)")
    p.add_argument("--attacks", default=None,
                   help="comma-separated subset of sx, pgd_ce, pgd_cw, adam_sign, apgd_ce, apgd_dlr, square "
                        "(default: all; each setting runs those that apply)")
    p.add_argument("--eps", type=float, default=None, help="attack budget (default: the paper's)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--step-size", type=float, default=None)
    p.add_argument("--natural-epochs", type=int, default=None)
    p.add_argument("--adversarial-epochs", type=int, default=None)
    p.add_argument("--retrain-epochs", type=int, default=None)
    p.add_argument("--adversarial-retrain-epochs", type=int, default=None)
    p.add_argument("--train-eps", type=float, default=None)
    p.add_argument("--train-steps", type=int, default=None)
    p.add_argument("--train-step-size", type=float, default=None)
    p.add_argument("--n-train", type=int, default=None, help="train on the first N training images")
    p.add_argument("--n-test", type=int, default=None, help="attack the first N test images (default: 1000)")
    p.add_argument("--no-curve", action="store_true", help="skip the robustness-vs-eps curve")
    p.add_argument("--quick", action="store_true", help="the reduced budgets of `demo --quick` (a smoke run)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    _add_report_options(p)
    p.set_defaults(func=cmd_evaluate)


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job on the embedded MNIST-5k: codes, six settings, BPDA/PGD, a Table-II-style report."""
    from .experiments import run_demo

    return _run_and_report(args, lambda: run_demo(args.out, quick=args.quick, seed=args.seed,
                                                  progress=_progress(args)))


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the paper's MNIST experiment on the embedded data (minutes on 2 cores)",
                       description="Fit codes on MNIST-5k (k=2, r=0.6), train natural and adversarial models, run "
                                   "BPDA/PGD at eps=0.3 and write a Table-II-style report (JSON, Markdown, PNG).")
    p.add_argument("-o", "--out", type=Path, default=Path("pixdisc-demo"), help="report folder (default: pixdisc-demo)")
    p.add_argument("--quick", action="store_true", help="a reduced smoke run (seconds; numbers are meaningless)")
    p.add_argument("--seed", type=int, default=0)
    _add_report_options(p)
    p.set_defaults(func=cmd_demo)


def _add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="mnist5k", help="data set name (default: mnist5k, the embedded MNIST subset)")
    p.add_argument("--data-dir", type=Path, help="where the data set's files are")


def _add_report_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print a JSON report instead of text (no progress bars)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _train_certified(args: argparse.Namespace) -> int:
    """`pixdisc train --mode certified`: bound-based training for the certificate."""
    from . import __version__
    from .models import build_model, predict, save_model
    from .train import train_certified

    if args.eps is None:
        raise CommandError("--mode certified needs --eps, the budget the certificate should hold for")
    x_train, y_train, data = _load_split(args.dataset, args.data_dir, "train", args.limit)
    x_test, y_test, _ = _load_split(args.dataset, args.data_dir, "test", args.test_limit)
    codebook = _load_codebook_file(args.codebook) if args.codebook is not None else None
    arch = args.arch or "cert_cnn"
    kwargs = {} if arch == "cifar_resnet" else {"input_size": list(x_train.shape[2:])}
    net = build_model(arch, in_channels=int(x_train.shape[1]), num_classes=data.num_classes, **kwargs)
    started = time.perf_counter()
    net, history = train_certified(net, x_train, y_train, codebook, eps=args.eps, epochs=args.epochs,
                                   batch_size=args.batch_size, lr=args.lr, seed=args.seed, progress=_progress(args),
                                   device=args.device, checkpoint_path=args.checkpoint,
                                   warmup_epochs=min(1, args.epochs), ramp_epochs=max(1, args.epochs // 3),
                                   lr_milestones=(int(args.epochs * 0.7), int(args.epochs * 0.85)), kappa_end=0.7)
    seconds = time.perf_counter() - started
    x_eval = x_test if codebook is None else torch_from(codebook.transform(x_test.numpy(), channel_axis=1))
    test_accuracy = float((predict(net, x_eval) == y_test).float().mean())
    meta = {"setting": "certified", "dataset": data.name, "input_shape": [int(v) for v in x_train.shape[1:]],
            "num_classes": int(data.num_classes), "eps_train": args.eps,
            "defense": None if codebook is None else {"codebook": str(args.codebook), "codes": codebook.codes_.tolist(),
                                                      "metric": codebook.metric},
            "training": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed},
            "history": history, "test_accuracy": test_accuracy, "pixdisc": __version__}
    save_model(net, args.output, meta=meta)
    report = {"setting": "certified", "arch": arch, "dataset": data.name, "eps": args.eps, "seconds": seconds,
              "test_accuracy": test_accuracy, "train_verified": history["verified"][-1] if history["verified"] else None,
              "output": str(args.output), "history": history}
    _emit(args, report, [f"certified training ({arch}, eps={args.eps}) on {data.name}: {seconds:.1f} s, "
                         f"clean test accuracy {_percent(test_accuracy)}"
                         + (" on discretized images" if codebook is not None else ""),
                         f"model written to {args.output}; check it with `pixdisc certify --model {args.output} "
                         f"--codes CODES --eps {args.eps}`"])
    return EXIT_OK


def torch_from(array: Any) -> Any:
    import torch

    return torch.from_numpy(array)


def cmd_certify(args: argparse.Namespace) -> int:
    """Certify a model behind a codebook on a data set split; print a Table-IV-style summary."""
    from .certification import Budget, certify
    from .datasets import as_float_nchw, load_dataset

    net, _ = _load_model_file(args.model, None)
    codebook = _load_codebook_file(args.codes)
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
    print("| eps | b | Unable | Success (s_hat) | Fail | Hoeffding LB | Clopper-Pearson LB | paper formula | seconds |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['eps']:.3f} | {r['b']:g} | {100 * r['unable_rate']:.2f}% | {100 * r['certified_rate']:.2f}% | "
              f"{100 * r['failed_rate']:.2f}% | {100 * r['lower_hoeffding']:.2f}% | "
              f"{100 * r['lower_clopper_pearson']:.2f}% | {100 * r['lower_paper_formula']:.2f}% | "
              f"{r['wall_seconds']:.1f} |")
    return EXIT_OK


def _checkpoint_for(resume: Optional[Path], eps: float, n_eps: int) -> Optional[Path]:
    """One checkpoint file per eps: the given name, suffixed with eps when several are run."""
    if resume is None:
        return None
    if n_eps == 1:
        return resume
    return resume.with_name(f"{resume.stem}-eps{eps:g}{resume.suffix or '.jsonl'}")


def _add_certify(sub: argparse._SubParsersAction) -> None:
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


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Reproduce the papers' tables and figures into a report folder."""
    from .reproduce import reproduce

    results = reproduce(args.target, args.out, quick=args.quick, data_dir=args.data_dir, seed=args.seed,
                        progress=_progress(args))
    if args.json:
        print(json.dumps(results, default=str))
    else:
        print(f"{args.target}: report written to {args.out / 'index.md'}")
    return EXIT_OK


def _add_reproduce(sub: argparse._SubParsersAction) -> None:
    from .reproduce import TARGETS

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


_SUBCOMMANDS: List[Callable[[argparse._SubParsersAction], None]] = [
    _add_codes, _add_train, _add_attack, _add_evaluate, _add_demo, _add_certify, _add_reproduce,
]


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

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
    from . import set_num_threads

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
        print(f"pixdisc {args.command}: error: {_first_line(exc)}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except KeyboardInterrupt:
        hint = ""
        if getattr(args, "checkpoint", None) is not None:
            hint = f"; run the same command again to resume from {args.checkpoint}"
        print(f"pixdisc {args.command}: interrupted{hint}", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
