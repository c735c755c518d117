"""`pixdisc attack`: the strongest attack suite on a model file, with the certified floor."""

from __future__ import annotations

import argparse
import time
from typing import Any, Dict

import numpy as np

from ..profiles import profile
from ._common import (CommandError, EXIT_OK, UsageError, add_codebook_option, add_data_options, add_model_argument,
                      add_report_options, attack_budget, check_codebook_fits, check_model_fits, defense_from_meta, emit,
                      load_codebook_file, load_model_file, load_split, nonnegative_float, nonnegative_int,
                      parse_attacks, percent, positive_float, positive_int, progress_enabled, unit_float)


def cmd_attack(args: argparse.Namespace) -> int:
    """Attack a model file with the strongest suite and, behind a defense, certify: print floor and ceiling."""
    from ..attacks import SUITE, applicable_attacks
    from ..certification import Budget
    from ..discretize import Discretize
    from ..evaluation import robustness_interval
    from ..experiments import ATTACK_LABELS, attack_specs, summarise_result
    from torch import nn

    model, meta = load_model_file(args.model, args.device)
    dataset = args.dataset or meta.get("dataset") or "mnist5k"
    if args.no_defense and args.codebook is not None:
        raise UsageError("--no-defense and --codebook contradict each other")
    x, y, data = load_split(dataset, args.data_dir, args.split, args.limit)
    check_model_fits(model, x, data.num_classes, str(args.model))
    codebook = None
    if args.codebook is not None:
        codebook = load_codebook_file(args.codebook)
    elif not args.no_defense:
        codebook = defense_from_meta(meta)
    recorded = meta.get("defense") if isinstance(meta.get("defense"), dict) else {}
    found = profile(dataset)
    alpha = args.alpha if args.alpha is not None else float(
        recorded.get("alpha", 10.0 if found is None else found.alpha))
    if codebook is not None:
        check_codebook_fits(codebook, x, str(args.codebook) if args.codebook is not None else
                            f"the codebook recorded in {args.model}", data.name)
        device = next(iter(model.parameters())).device
        model = nn.Sequential(Discretize(codebook, bpda=args.bpda, alpha=alpha), model).to(device).eval()
    eps, steps, step_size = attack_budget(dataset, args.eps, args.steps, args.step_size)
    requested = parse_attacks(args.attacks) if args.attacks else list(SUITE)
    names = applicable_attacks(model, requested)
    if not names:
        raise CommandError(f"none of the attacks {', '.join(requested)} applies to this model "
                           "(the S(x) search and Square need a discretizer; APGD and Square need torchattacks)")
    specs = attack_specs(eps, steps, step_size, names, square_queries=args.square_queries, seed=args.seed)
    if args.restarts != 1:
        for spec in specs:
            if isinstance(spec, dict) and spec["attack"] in ("pgd", "adam_sign"):
                spec["restarts"] = args.restarts
                spec["random_start"] = True
    started = time.perf_counter()
    budget = None if args.no_certify else Budget(nodes=args.certify_nodes, seconds=args.certify_seconds,
                                                 exact_seconds=args.exact_seconds)
    if budget is None:
        from ..attacks import evaluate_robustness

        outcome = evaluate_robustness(model, x, y, specs, batch_size=args.batch_size, seed=args.seed, eps=eps,
                                      keep_adv=False, progress=progress_enabled(args))
        summary = summarise_result(outcome, names)
        interval: Dict[str, Any] = {}
    else:
        result = robustness_interval(model, x, y, eps, attacks=specs, batch_size=args.batch_size, seed=args.seed,
                                     certify_budget=budget, progress=progress_enabled(args))
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
            f"  clean accuracy            {percent(summary['clean_accuracy'])}"]
    for index, name in enumerate(names):
        label = ATTACK_LABELS[name] if index == 0 else "+" + ATTACK_LABELS[name]
        text.append(f"  robust after {label:<12} {percent(summary['robust_after'][name])}")
    text.append(f"  robust (attacked ceiling) {percent(summary['robust_accuracy'])}")
    if interval.get("floor") is not None:
        text.append(f"  certified (floor)         {percent(interval['floor'])}")
        text.append(f"  undecided                 {interval['undecided']} of {interval['n']} images"
                    + ("  -> robust accuracy is exact" if interval["exact"] else ""))
    text.append(f"  [{seconds:.1f} s]")
    emit(args, report, text)
    return EXIT_OK


def add_attack(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("attack", help="attack a model file; behind a defense also certify (floor and ceiling)",
                       description="The strongest l_inf suite (behind a defense: the S(x) search, BPDA gradient "
                                   "attacks, APGD and Square); per-sample worst case over the attacks, and behind "
                                   "a defense the certified floor beside that ceiling.")
    add_model_argument(p, "model file written by `pixdisc train` or `pixdisc evaluate`")
    add_codebook_option(p, "put the model behind this codebook's discretization (default: the defense the model "
                           "file records, if any)")
    p.add_argument("--no-defense", action="store_true",
                   help="attack the bare network even if the model file records a defense")
    p.add_argument("--alpha", type=positive_float, default=None,
                   help="BPDA sharpness (default: recorded, else the paper's)")
    p.add_argument("--bpda", choices=("soft", "identity"), default="soft",
                   help="backward pass of the discretizer: soft (default) or identity (straight-through)")
    add_data_options(p, default=None, default_text="the one the model was trained on")
    p.add_argument("--split", choices=("test", "train"), default="test", help="which split to attack (default: test)")
    p.add_argument("--limit", type=positive_int, default=None, help="attack the first N images of the split")
    p.add_argument("--attacks", default=None,
                   help="comma-separated subset of sx, pgd_ce, pgd_cw, adam_sign, apgd_ce, apgd_dlr, square "
                        "(default: all that apply, in this order)")
    p.add_argument("--eps", type=unit_float, default=None, help="l_inf budget (default: the paper's for the data set)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="steps of the gradient attacks (default: the paper's)")
    p.add_argument("--step-size", type=positive_float, default=None,
                   help="step of PGD and Adam-sign (default: the paper's)")
    p.add_argument("--restarts", type=positive_int, default=1, help="random restarts of PGD and Adam-sign (default 1)")
    p.add_argument("--square-queries", type=positive_int, default=1000, help="queries of the Square attack")
    p.add_argument("--certify-nodes", type=positive_int, default=20,
                   help="branch-and-bound nodes per image for the certified floor")
    p.add_argument("--certify-seconds", type=positive_float, default=0.5,
                   help="seconds per image for the certified floor")
    p.add_argument("--exact-seconds", type=nonnegative_float, default=0.0,
                   help="certify's exact stage (mixed-integer program over S(x)) per undecided image (default: off)")
    p.add_argument("--no-certify", action="store_true", help="report the attacked ceiling only")
    p.add_argument("--batch-size", type=positive_int, default=500, help="images per attack batch (default 500)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the attacks' random starts (default 0)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cpu)")
    add_report_options(p)
    p.set_defaults(func=cmd_attack)
