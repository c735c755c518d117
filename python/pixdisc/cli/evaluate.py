"""`pixdisc evaluate` and `pixdisc demo`: the six-setting table and its report folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable, Dict

from ..profiles import dataset_key, profile
from ._common import (EXIT_OK, UsageError, add_codebook_option, add_data_options, add_output_option,
                      add_report_options, check_output_folder, load_codebook_file, nonnegative_int, parse_attacks,
                      positive_float, positive_int, progress_enabled, unit_float)


def _print_result(result: Dict[str, Any]) -> None:
    from ..report import check_verdict, markdown_table, wall_time_text

    print(markdown_table(result))
    if result.get("paper"):
        print(f"\npaper columns: {result['paper']['source']}")
    if result.get("quick"):
        print("quick run: reduced budgets on a few images; the numbers and checks below mean nothing")
    for check in result.get("checks", {}).values():
        print(f"check: {check['description']}: {check_verdict(result, check)} ({check['detail']})")
    files = result.get("files", {})
    if files:
        print("wrote " + ", ".join(files.values()))
    # The run's own measurement, the one results.md states: one wall time per run.
    print(f"wall time {wall_time_text(result['timings']['total'])}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    """The six-setting table for a data set: train what is needed, attack, write the report folder."""
    from ..experiments import DEMO_CONFIG, QUICK_CONFIG, config_for_dataset, run_experiment
    from ..train import SETTINGS

    key = dataset_key(args.dataset)
    args.output = args.output if args.output is not None else Path(f"pixdisc-{key}")  # named in an interrupt's hint
    check_output_folder(args.output)
    codebook = load_codebook_file(args.codebook) if args.codebook is not None else None
    if codebook is None and profile(key) is None and (args.k is None or args.r is None):
        raise UsageError(f"no default codebook for {args.dataset!r}: pass -k and -r, or --codebook")
    settings = tuple(s.strip() for s in args.settings.split(",") if s.strip()) if args.settings else SETTINGS
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        raise UsageError(f"unknown setting(s) {', '.join(unknown)}; choose from {', '.join(SETTINGS)}")
    overrides: Dict[str, Any] = {
        "data_dir": None if args.data_dir is None else str(args.data_dir), "arch": args.arch, "k": args.k,
        "r": args.r, "alpha": args.alpha, "eps": args.eps, "steps": args.steps, "step_size": args.step_size,
        "natural_epochs": args.natural_epochs, "adversarial_epochs": args.adversarial_epochs,
        "retrain_epochs": args.retrain_epochs, "adversarial_retrain_epochs": args.adversarial_retrain_epochs,
        "train_eps": args.train_eps, "train_steps": args.train_steps, "train_step_size": args.train_step_size,
        "n_train": args.n_train, "n_test": args.n_test, "seed": args.seed, "device": args.device,
        "settings": settings, "attacks": tuple(parse_attacks(args.attacks)) if args.attacks else None,
        "suite": args.suite,
    }
    if args.no_curve:
        overrides["curve_eps"] = ()
    config = config_for_dataset(key, QUICK_CONFIG if args.quick else DEMO_CONFIG, **overrides)
    return _run_and_report(args, lambda: run_experiment(config, args.output, codebook=codebook,
                                                        progress=progress_enabled(args),
                                                        extra={"quick": args.quick}))


def _run_and_report(args: argparse.Namespace, run: Callable[[], Dict[str, Any]]) -> int:
    """Run an experiment and print its report (JSON or the text table)."""
    result = run()
    if args.json:
        print(json.dumps({**result, "wall_seconds": result["timings"]["total"]}, allow_nan=False, default=str))
    else:
        _print_result(result)
    return EXIT_OK


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="the paper's six-setting table for a data set",
                       description="Fit the codebook, train the natural and adversarial models (and their "
                                   "re-trained versions), attack all six settings and write JSON, Markdown and "
                                   "PNG reports into the output folder.")
    add_data_options(p)
    add_output_option(p, None, "report folder (default: pixdisc-DATASET)")
    add_codebook_option(p, "use this codebook instead of fitting Algorithm 1")
    p.add_argument("-k", type=positive_int, default=None, help="codes for Algorithm 1 (default: the paper's)")
    p.add_argument("-r", "--radius", dest="r", type=unit_float, default=None,
                   help="removal radius (default: the paper's)")
    p.add_argument("--alpha", type=positive_float, default=None, help="BPDA sharpness (default: the paper's)")
    p.add_argument("--arch", default=None, choices=("small_cnn", "madry_mnist", "mlp", "cifar_resnet"),
                   help="network architecture (default: small_cnn)")
    p.add_argument("--settings", default=None, help="comma-separated subset of the six settings (default: all)")
    p.add_argument("--attacks", default=None,
                   help="comma-separated subset of sx, pgd_ce, pgd_cw, adam_sign, apgd_ce, apgd_dlr, square "
                        "(default: all; each setting runs those that apply)")
    p.add_argument("--eps", type=unit_float, default=None, help="attack budget (default: the paper's)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="steps of the gradient attacks (default: the paper's)")
    p.add_argument("--step-size", type=positive_float, default=None,
                   help="step of the gradient attacks (default: the paper's)")
    p.add_argument("--natural-epochs", type=positive_int, default=None, help="epochs of natural training (nat_pre)")
    p.add_argument("--adversarial-epochs", type=positive_int, default=None,
                   help="epochs of adversarial training (adv_pre)")
    p.add_argument("--retrain-epochs", type=positive_int, default=None,
                   help="epochs of re-training on discretized images (disc_nat_re)")
    p.add_argument("--adversarial-retrain-epochs", type=positive_int, default=None,
                   help="epochs of adversarial re-training through BPDA (disc_adv_re)")
    p.add_argument("--train-eps", type=unit_float, default=None,
                   help="eps of adversarial training (default: the paper's)")
    p.add_argument("--train-steps", type=positive_int, default=None, help="PGD steps of adversarial training")
    p.add_argument("--train-step-size", type=positive_float, default=None, help="PGD step of adversarial training")
    p.add_argument("--n-train", type=positive_int, default=None, help="train on the first N training images")
    p.add_argument("--n-test", type=positive_int, default=None, help="attack the first N test images (default: 1000)")
    p.add_argument("--no-curve", action="store_true", help="skip the robustness-vs-eps curve")
    _add_suite_option(p, "full")
    p.add_argument("--quick", action="store_true", help="the reduced budgets of `demo --quick` (a smoke run)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of training and attacks (default 0)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    add_report_options(p)
    p.set_defaults(func=cmd_evaluate, _resumes_from_output=True)


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job on the embedded MNIST-5k: codes, six settings, BPDA/PGD, a Table-II-style report."""
    from ..experiments import run_demo

    check_output_folder(args.output)
    return _run_and_report(args, lambda: run_demo(args.output, quick=args.quick, seed=args.seed,
                                                  progress=progress_enabled(args), suite=args.suite))


def _add_suite_option(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--suite", choices=("adaptive", "full"), default=default,
                   help="adaptive: the attacks spend their effort on the images closest to breaking (a quick S(x) "
                        "search on all, stronger attacks on shares of the survivors); full: every attack on every "
                        f"image still standing (default: {default})")


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the paper's MNIST experiment on the embedded data (minutes on 2 cores)",
                       description="Fit codes on MNIST-5k (k=2, r=0.6), train natural and adversarial models, run "
                                   "the attack suite at eps=0.3 with the certified floor and write a Table-II-style "
                                   "report (JSON, Markdown, PNG).")
    add_output_option(p, Path("pixdisc-demo"), "report folder (default: pixdisc-demo)")
    p.add_argument("--quick", action="store_true", help="a reduced smoke run (seconds; numbers are meaningless)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of training and attacks (default 0)")
    _add_suite_option(p, "adaptive")
    add_report_options(p)
    p.set_defaults(func=cmd_demo, _resumes_from_output=True)
