"""`pixdisc train`: one model for a setting, or bound-based (certified) training."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Optional

from .certified_training import add_recipe_options, show_recipe, train_certified_command
from ._common import (SETTINGS, EXIT_OK, UsageError, add_checkpoint_option, add_codebook_option,
                      add_data_options, add_force_option, add_output_option, add_report_options, check_codebook_fits,
                      check_model_fits, emit, load_codebook_file, load_model_file, load_split, nonnegative_int, percent,
                      positive_float, positive_int, progress_enabled, refuse_overwrite, unit_float)


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

    if args.recipe is not None or args.show_recipe:
        if args.setting is not None or args.mode not in (None, "certified"):
            flag = "--recipe" if args.recipe is not None else "--show-recipe"
            raise UsageError(f"{flag} is certified training; drop --setting/--mode or use --mode certified")
        args.mode = "certified"
    certified_options = (("--warmup-epochs", args.warmup_epochs), ("--ramp-epochs", args.ramp_epochs),
                         ("--lr-milestones", args.lr_milestones), ("--kappa-end", args.kappa_end),
                         ("--member-weight", args.member_weight), ("--bound", args.bound))
    certified_only = [flag for flag, value in certified_options if value is not None]
    if certified_only and args.mode != "certified":
        raise UsageError(f"{', '.join(certified_only)}: the schedule of bound-based training, only for --mode "
                         f"certified")
    if args.mode == "certified" and args.show_recipe:
        return show_recipe(args)
    # Rerunning with an existing checkpoint continues the same run: its output may be replaced.
    refuse_overwrite(args.output, args.force or (args.checkpoint is not None and args.checkpoint.exists()))
    if args.mode == "certified":
        return train_certified_command(args)
    for name, default in (("epochs", 5), ("batch_size", 64), ("lr", 1e-3)):
        if getattr(args, name) is None:
            setattr(args, name, default)
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
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="training epochs (default 5; --mode certified: the recipe's, its schedule stretched to fit)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="images per step (default 64; --mode certified: the recipe's)")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="Adam learning rate (default 1e-3; --mode certified: the recipe's)")
    p.add_argument("--eps", type=unit_float, default=None,
                   help="adversarial training eps (default: the paper's); --mode certified: the training eps "
                        "(default: the recipe's; the ibp recipe has none, so it is required there)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="PGD steps in adversarial training (default: the paper's)")
    p.add_argument("--step-size", type=positive_float, default=None, help="PGD step size (default: the paper's)")
    # Defaults None: the recipe's (pixdisc.recipes; the help spells out the ibp recipe's rule, the parser is
    # built without importing torch).
    add_recipe_options(p)
    p.add_argument("--warmup-epochs", type=nonnegative_int, default=None, metavar="N",
                   help="--mode certified: natural epochs before the eps ramp starts (default: the recipe's; ibp: 1)")
    p.add_argument("--ramp-epochs", type=nonnegative_int, default=None, metavar="N",
                   help="--mode certified: epochs over which eps grows linearly from 0 to --eps (default: the "
                        "recipe's share of the epochs; ibp: a third, rounded down, at least 1: 6 for 20 epochs)")
    p.add_argument("--lr-milestones", type=nonnegative_int, nargs="*", default=None, metavar="EPOCH",
                   help="--mode certified: epochs (counted from 0) from which on the learning rate is divided by 10 "
                        "once more (default: the recipe's shares; ibp: 70%% and 85%% of the epochs, rounded down: "
                        "14 17 for 20 epochs; the flag alone keeps the rate constant)")
    p.add_argument("--kappa-end", type=unit_float, default=None, metavar="KAPPA",
                   help="--mode certified: weight of the point loss at the end of the eps ramp, going down from 1 "
                        "(the rest is the bound loss; default: the recipe's; ibp: 0.7)")
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
