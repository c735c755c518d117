"""`pixdisc train --mode certified` / `--recipe NAME`: certified training from a named, visible recipe."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Dict, List

from ._common import (EXIT_OK, UsageError, emit, load_codebook_file, load_split, percent, progress_enabled,
                      torch_from, unit_float)
from ..recipes import BOUNDS, RECIPES, Recipe, get_recipe

DEFAULT_RECIPE = "ibp"


def add_recipe_options(p: argparse.ArgumentParser) -> None:
    """The recipe flags; the schedule flags (--warmup-epochs ...) are added by `pixdisc train` itself."""
    names = ", ".join(f"{name} ({recipe.summary})" for name, recipe in RECIPES.items())
    p.add_argument("--recipe", choices=sorted(RECIPES), default=None, metavar="NAME",
                   help=f"certified training from a named recipe (implies --mode certified; default for --mode "
                        f"certified: {DEFAULT_RECIPE}); flags given beside it change it. Recipes: {names}")
    p.add_argument("--show-recipe", action="store_true",
                   help="print the recipe (with the flags given applied) and exit without training")
    p.add_argument("--member-weight", type=unit_float, default=None, metavar="W",
                   help="--mode certified: share of the point loss taken on the attack member (signed-gradient "
                        "steps over the vertices of S(x)'s hull) instead of T(x) (default: the recipe's)")
    p.add_argument("--bound", choices=BOUNDS, default=None,
                   help="--mode certified: bound of the loss (default: the recipe's)")


def resolve_recipe(args: argparse.Namespace) -> tuple[Recipe, List[str]]:
    """The named recipe with the flags given applied, and the names of the fields they changed."""
    recipe = get_recipe(args.recipe or DEFAULT_RECIPE)
    changes: Dict[str, Any] = {}
    if args.epochs is not None:
        changes["epochs"] = args.epochs
    epochs = changes.get("epochs", recipe.epochs)
    for field, value in (("batch_size", args.batch_size), ("lr", args.lr), ("eps", args.eps),
                         ("warmup_epochs", args.warmup_epochs), ("kappa_end", args.kappa_end),
                         ("member_weight", args.member_weight), ("bound", args.bound)):
        if value is not None:
            changes[field] = value
    if args.arch is not None and args.arch != recipe.arch:
        changes.update(arch=args.arch, arch_kwargs={})  # the recipe's sizes belong to its own architecture
    if args.ramp_epochs is not None:
        if args.ramp_epochs > epochs:
            raise UsageError(f"--ramp-epochs {args.ramp_epochs} is longer than the {epochs} epochs of the run")
        changes["ramp_share"] = args.ramp_epochs / epochs
    if args.lr_milestones is not None:
        late = [epoch for epoch in args.lr_milestones if epoch >= epochs]
        if late:
            raise UsageError(f"--lr-milestones {' '.join(map(str, late))}: epochs are counted from 0, so with "
                             f"{epochs} epochs a milestone must be below {epochs} to apply")
        changes["lr_milestone_shares"] = [epoch / epochs for epoch in sorted(args.lr_milestones)]
    try:
        resolved = recipe.replace(**changes)
    except ValueError as error:
        raise UsageError(str(error)) from None
    return resolved, sorted(changes)


def show_recipe(args: argparse.Namespace) -> int:
    recipe, changed = resolve_recipe(args)
    lines = recipe.describe()
    if changed:
        lines.append(f"  changed by flags: {', '.join(changed)}")
    emit(args, {"recipe": recipe.to_dict(), "schedule": recipe.schedule(), "changed": changed}, lines)
    return EXIT_OK


def _epoch_printer(args: argparse.Namespace):
    """One line per epoch: JSON on stdout with --json (a pipeline sees the run move), text on stderr otherwise."""
    def report(row: Dict[str, float]) -> None:
        if args.json:
            print(json.dumps({"event": "epoch", **row}), flush=True)
        elif not args.quiet:
            print(f"epoch {int(row['epoch'])}/{int(row['epochs'])}: loss {row['loss']:.4f}, clean (train) "
                  f"{percent(row['accuracy'])}, bound-verified (train) {percent(row['verified'])}, eps "
                  f"{row['eps']:.3f}, lr {row['lr']:.2g}, {row['seconds']:.0f} s", file=sys.stderr, flush=True)
    return report


def train_certified_command(args: argparse.Namespace) -> int:
    """Train from the resolved recipe, write the model with the recipe in its metadata."""
    from .. import __version__
    from ..models import predict, save_model
    from ..recipes import train_recipe

    recipe, changed = resolve_recipe(args)
    if recipe.eps is None:
        raise UsageError(f"recipe {recipe.name} needs --eps, the budget the certificate should hold for")
    x_train, y_train, data = load_split(args.dataset, args.data_dir, "train", args.limit)
    x_test, y_test, _ = load_split(args.dataset, args.data_dir, "test", args.test_limit)
    codebook = load_codebook_file(args.codebook) if args.codebook is not None else None
    started = time.perf_counter()
    net, history = train_recipe(recipe, x_train, y_train, codebook, seed=args.seed, num_classes=data.num_classes,
                                progress=progress_enabled(args), device=args.device,
                                checkpoint_path=args.checkpoint, on_epoch=_epoch_printer(args))
    seconds = time.perf_counter() - started
    x_eval = x_test if codebook is None else torch_from(codebook.transform(x_test.numpy(), channel_axis=1))
    test_accuracy = float((predict(net, x_eval) == y_test).float().mean())
    schedule = recipe.schedule()
    meta = {"setting": "certified", "dataset": data.name, "input_shape": [int(v) for v in x_train.shape[1:]],
            "num_classes": int(data.num_classes), "eps_train": recipe.eps, "recipe": recipe.to_dict(),
            "defense": None if codebook is None else {"codebook": str(args.codebook), "codes": codebook.codes_.tolist(),
                                                      "metric": codebook.metric},
            "training": {"epochs": recipe.epochs, "batch_size": recipe.batch_size, "lr": recipe.lr, "seed": args.seed,
                         "n_train": int(len(x_train)), **schedule},
            "history": history, "test_accuracy": test_accuracy, "pixdisc": __version__}
    save_model(net, args.output, meta=meta)
    report = {"event": "result", "setting": "certified", "recipe": recipe.to_dict(), "changed": changed,
              "arch": recipe.arch, "dataset": data.name, "eps": recipe.eps, "seconds": seconds,
              "test_accuracy": test_accuracy,
              "train_verified": history["verified"][-1] if history["verified"] else None,
              "schedule": schedule, "output": str(args.output), "history": history}
    emit(args, report, [f"certified training (recipe {recipe.name}{', changed: ' + ', '.join(changed) if changed else ''}"
                        f"; {recipe.arch}, eps={recipe.eps:g}) on {data.name}: {seconds:.1f} s, clean test accuracy "
                        f"{percent(test_accuracy)}" + (" on discretized images" if codebook is not None else ""),
                        f"model written to {args.output}; check it with `pixdisc certify {args.output} "
                        + ("" if codebook is not None else "--codebook CODES ")  # the file records its codebook
                        + f"--eps {recipe.certify_eps or recipe.eps:g}`"])
    return EXIT_OK
