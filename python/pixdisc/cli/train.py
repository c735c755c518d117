"""`pixdisc train`: one model for a setting, or bound-based (certified) training."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Dict, Optional

from ._common import (SETTINGS, EXIT_OK, UsageError, add_checkpoint_option, add_codebook_option,
                      add_data_options, add_force_option, add_output_option, add_report_options, check_codebook_fits,
                      check_model_fits, emit, load_codebook_file, load_model_file, load_split, nonnegative_int, percent,
                      positive_float, positive_int, progress_enabled, refuse_overwrite, torch_from, unit_float)


def _resolve_setting(args: argparse.Namespace) -> str:
    if args.setting is not None:
        return args.setting
    mode = args.mode or "natural"
    prefix = "nat" if mode == "natural" else "adv"
    # A codebook with --mode means training on discretized images: the paper's disc_*_re settings, which
    # re-train a --base network; without --base the network is trained from scratch (the report says which).
    return f"disc_{prefix}_re" if args.codebook is not None else f"{prefix}_pre"


def cmd_train(args: argparse.Namespace) -> int:
    """Train one model for a setting (or mode) and write it with save_model."""
    from .. import __version__
    from ..discretize import Discretize
    from ..models import predict, save_model
    from ..experiments.plan import adversarial_recipe
    from ..train import train_setting

    schedule_options = (("--warmup-epochs", args.warmup_epochs), ("--ramp-epochs", args.ramp_epochs),
                        ("--lr-milestones", args.lr_milestones), ("--kappa-end", args.kappa_end))
    certified_only = [flag for flag, value in schedule_options if value is not None]
    if certified_only and args.mode != "certified":
        raise UsageError(f"{', '.join(certified_only)}: the schedule of bound-based training, only for --mode "
                         f"certified")
    # Rerunning with an existing checkpoint continues the same run: its output may be replaced.
    refuse_overwrite(args.output, args.force or (args.checkpoint is not None and args.checkpoint.exists()))
    if args.mode == "certified":
        return _train_certified(args)
    setting = _resolve_setting(args)
    defended = setting.startswith("disc_")
    if defended and args.codebook is None:
        raise UsageError(f"setting {setting} needs --codebook FILE (make one with `pixdisc codes`)")
    if not defended and args.codebook is not None:
        raise UsageError(f"setting {setting} has no defense; drop --codebook or pick a disc_* setting")
    if args.base is not None and not defended:
        raise UsageError(f"{setting} trains a network from scratch; --base is for the disc_* settings "
                         "(disc_*_pre reuse it as is, disc_*_re start from it)")
    x_train, y_train, data = load_split(args.dataset, args.data_dir, "train", args.limit)
    x_test, y_test, _ = load_split(args.dataset, args.data_dir, "test", args.test_limit)
    codebook = defense = None
    if defended:
        codebook = load_codebook_file(args.codebook)
        check_codebook_fits(codebook, x_train, str(args.codebook), data.name)
        defense = Discretize(codebook, bpda=args.bpda, alpha=args.alpha)
    base = None
    if args.base is not None:
        base, _ = load_model_file(args.base, args.device)
        check_model_fits(base, x_train, data.num_classes, str(args.base))
    args.arch = args.arch or "small_cnn"
    recipe = adversarial_recipe(args.dataset)
    adversarial = {
        "eps": recipe["eps"] if args.eps is None else args.eps,
        "attack_steps": recipe["attack_steps"] if args.steps is None else args.steps,
        "step_size": recipe["step_size"] if args.step_size is None else args.step_size,
    }
    started = time.perf_counter()
    model, history = train_setting(
        setting, x_train, y_train, defense=defense, arch=args.arch, num_classes=data.num_classes, base=base,
        epochs=args.epochs, seed=args.seed, return_history=True, batch_size=args.batch_size, lr=args.lr,
        progress=progress_enabled(args), device=args.device, checkpoint_path=args.checkpoint, **adversarial,
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
                     "n_train": int(len(x_train)), "base": None if args.base is None else str(args.base),
                     **({"adversarial": adversarial} if "_adv_" in f"_{setting}_" else {})},
        "history": history,
        "test_accuracy": test_accuracy,
        "pixdisc": __version__,
    }
    save_model(network, args.output, meta=meta)
    how = _what_was_done(setting, args.base)
    report = {"setting": setting, "how": how, "base": None if args.base is None else str(args.base), "arch": arch,
              "dataset": data.name, "n_train": int(len(x_train)), "n_test": int(len(x_test)), "epochs": args.epochs,
              "seconds": seconds, "train_accuracy": history["accuracy"][-1] if history["accuracy"] else None,
              "test_accuracy": test_accuracy, "output": str(args.output), "history": history}
    reused = args.base is not None and setting.endswith("_pre")
    text = [f"{setting}: {how}" if reused else
            f"{setting} on {data.name} ({len(x_train)} images, {args.epochs} epoch(s), {seconds:.1f} s): "
            f"{arch} {how}",
            f"clean test accuracy {percent(test_accuracy)} on {len(x_test)} images"
            + (" (behind the defense)" if defended else ""),
            f"model written to {args.output}"]
    emit(args, report, text)
    return EXIT_OK


def _what_was_done(setting: str, base: Optional[Path]) -> str:
    """What training did, in words: a disc_*_re setting is re-training only when it started from --base."""
    how = "trained"
    if "_adv_" in f"_{setting}_":
        how = "trained adversarially (PGD through BPDA)" if setting.endswith("_re") else "trained adversarially (PGD)"
    if not setting.startswith("disc_"):
        return f"{how} from scratch"
    if setting.endswith("_pre"):
        if base is not None:
            return f"{base} behind the defense, not retrained"
        return f"{how} from scratch on raw images, then put behind the defense"
    if base is not None:
        return f"re-{how} from {base} on discretized images"
    return f"{how} from scratch on discretized images (no --base, so not re-trained)"


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model for one of the paper's settings",
                       description="Train a network naturally or adversarially (Madry PGD), on raw or discretized "
                                   "images, or with bounds for certification, and write it as a model file.")
    add_data_options(p)
    p.add_argument("--arch", default=None, choices=("small_cnn", "cert_cnn", "madry_mnist", "mlp", "cifar_resnet"),
                   help="network architecture (default: small_cnn; cert_cnn for --mode certified)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--setting", choices=SETTINGS, help="one of the paper's six settings")
    how.add_argument("--mode", choices=("natural", "adversarial", "certified"),
                     help="natural (default) or adversarial; with --codebook the network learns on discretized "
                          "images (disc_*_re: re-trained from --base, else trained from scratch). certified: "
                          "bound-based training so that `pixdisc certify` succeeds (with --codebook: over the box "
                          "hull of S(x); without: plain IBP on the eps-box)")
    add_codebook_option(p, "codebook file (.npz/.npy) for the disc_* settings")
    p.add_argument("--alpha", type=positive_float, default=10.0, help="BPDA sharpness (pixel scale [0,1]; default 10)")
    p.add_argument("--bpda", choices=("soft", "identity"), default="soft",
                   help="backward pass of the discretizer in adversarial training (default: soft)")
    p.add_argument("--base", type=Path, metavar="MODEL",
                   help="model file to start from (the pre-trained network of *_re settings; without it they "
                        "train from scratch)")
    p.add_argument("--epochs", type=positive_int, default=5, help="training epochs (default 5)")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per step (default 64)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--eps", type=unit_float, default=None,
                   help="adversarial training eps (default: the paper's); required for --mode certified")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="PGD steps in adversarial training (default: the paper's)")
    p.add_argument("--step-size", type=positive_float, default=None, help="PGD step size (default: the paper's)")
    # Defaults None: pixdisc.experiments.plan.certified_recipe derives them from --epochs (the help spells out
    # its rule; the parser is built without importing torch, so it cannot ask it).
    p.add_argument("--warmup-epochs", type=nonnegative_int, default=None, metavar="N",
                   help="--mode certified: natural epochs before the eps ramp starts (default 1)")
    p.add_argument("--ramp-epochs", type=nonnegative_int, default=None, metavar="N",
                   help="--mode certified: epochs over which eps grows linearly from 0 to --eps (default: a third "
                        "of --epochs, rounded down, at least 1: 6 for 20 epochs)")
    p.add_argument("--lr-milestones", type=nonnegative_int, nargs="*", default=None, metavar="EPOCH",
                   help="--mode certified: epochs (counted from 0) from which on the learning rate is divided by 10 "
                        "once more (default: 70%% and 85%% of --epochs, rounded down: 14 17 for 20 epochs; the "
                        "flag alone keeps the rate constant)")
    p.add_argument("--kappa-end", type=unit_float, default=None, metavar="KAPPA",
                   help="--mode certified: weight of the natural loss at the end of the eps ramp, going down from 1 "
                        "(the rest is the bound loss; default 0.7)")
    p.add_argument("--limit", type=positive_int, default=None, help="train on the first N training images")
    p.add_argument("--test-limit", type=positive_int, default=None, help="report accuracy on the first N test images")
    add_checkpoint_option(p, "write a checkpoint after every epoch (and when interrupted) and resume from it if it "
                             "exists")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of initialisation and shuffling (default 0)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    add_output_option(p, Path("model.pt"), "model file to write (default: model.pt)")
    add_force_option(p)
    add_report_options(p)
    p.set_defaults(func=cmd_train)


def _train_certified(args: argparse.Namespace) -> int:
    """`pixdisc train --mode certified`: bound-based training for the certificate."""
    import torch

    from .. import __version__
    from ..models import build_model, predict, save_model
    from ..experiments.plan import certified_recipe
    from ..train import train_certified

    if args.eps is None:
        raise UsageError("--mode certified needs --eps, the budget the certificate should hold for")
    schedule = _certified_schedule(args, certified_recipe(args.epochs))
    x_train, y_train, data = load_split(args.dataset, args.data_dir, "train", args.limit)
    x_test, y_test, _ = load_split(args.dataset, args.data_dir, "test", args.test_limit)
    codebook = load_codebook_file(args.codebook) if args.codebook is not None else None
    arch = args.arch or "cert_cnn"
    kwargs = {} if arch == "cifar_resnet" else {"input_size": list(x_train.shape[2:])}
    # --seed seeds the initialisation too (as train_setting does), without disturbing the global RNG: the
    # library's `torch.manual_seed(seed); build_model(arch)` gives the same network.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        net = build_model(arch, in_channels=int(x_train.shape[1]), num_classes=data.num_classes, **kwargs)
    started = time.perf_counter()
    net, history = train_certified(net, x_train, y_train, codebook, eps=args.eps, epochs=args.epochs,
                                   batch_size=args.batch_size, lr=args.lr, seed=args.seed, progress=progress_enabled(args),
                                   device=args.device, checkpoint_path=args.checkpoint, **schedule)
    seconds = time.perf_counter() - started
    x_eval = x_test if codebook is None else torch_from(codebook.transform(x_test.numpy(), channel_axis=1))
    test_accuracy = float((predict(net, x_eval) == y_test).float().mean())
    meta = {"setting": "certified", "dataset": data.name, "input_shape": [int(v) for v in x_train.shape[1:]],
            "num_classes": int(data.num_classes), "eps_train": args.eps,
            "defense": None if codebook is None else {"codebook": str(args.codebook), "codes": codebook.codes_.tolist(),
                                                      "metric": codebook.metric},
            "training": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
                         "n_train": int(len(x_train)), **schedule},
            "history": history, "test_accuracy": test_accuracy, "pixdisc": __version__}
    save_model(net, args.output, meta=meta)
    report = {"setting": "certified", "arch": arch, "dataset": data.name, "eps": args.eps, "seconds": seconds,
              "test_accuracy": test_accuracy, "train_verified": history["verified"][-1] if history["verified"] else None,
              "schedule": schedule, "output": str(args.output), "history": history}
    emit(args, report, [f"certified training ({arch}, eps={args.eps}) on {data.name}: {seconds:.1f} s, "
                         f"clean test accuracy {percent(test_accuracy)}"
                         + (" on discretized images" if codebook is not None else ""),
                         f"model written to {args.output}; check it with `pixdisc certify {args.output} "
                         + ("" if codebook is not None else "--codebook CODES ")  # the file records its codebook
                         + f"--eps {args.eps}`"])
    return EXIT_OK


def _certified_schedule(args: argparse.Namespace, recipe: Dict[str, Any]) -> Dict[str, Any]:
    """train_certified's schedule: the options given, the rest from ``recipe`` (certified_recipe of --epochs)."""
    given = {"warmup_epochs": args.warmup_epochs, "ramp_epochs": args.ramp_epochs, "kappa_end": args.kappa_end,
             "lr_milestones": None if args.lr_milestones is None else sorted(args.lr_milestones)}
    schedule = {name: recipe[name] if value is None else value for name, value in given.items()}
    schedule["lr_milestones"] = [int(epoch) for epoch in schedule["lr_milestones"]]
    late = [epoch for epoch in given["lr_milestones"] or () if epoch >= args.epochs]
    if late:
        raise UsageError(f"--lr-milestones {' '.join(map(str, late))}: epochs are counted from 0, so with --epochs "
                         f"{args.epochs} a milestone must be below {args.epochs} to apply")
    return schedule
