"""Run the paper's six settings on a data set and collect a Table-II-style result (the `evaluate` and `demo` jobs)."""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from .. import __version__, datasets
from ..attacks import (ADAPTIVE_FOCUS, ADAPTIVE_ORDER, DEEP_SEARCH_FACTOR, FOCUS_SEARCH, GRADIENT_ORDER, QUICK_SEARCH,
                       SearchBudget, evaluate_robustness)
from ..certification import Budget
from ..codebook import Codebook, DensityCodebook
from ..discretize import Discretize
from ..evaluation import robustness_interval
from ..inputs import check_channels
from ..models import model_device, save_model
from ..report import paper_reference, write_report
from ..train import SETTINGS
from .cache import _model_meta, _Resume, _resume_for
from .config import (ATTACK_LABELS, DEMO_CONFIG, QUICK_CONFIG, ExperimentConfig, attack_specs, setting_attacks,
                     suite_names)
from .plan import networks_to_train, train_settings



def load_data(config: ExperimentConfig) -> tuple[Tensor, Tensor, Tensor, Tensor, datasets.Dataset]:
    """The configured data set as float NCHW tensors in [0,1] (train and test subsets per ``n_train``/``n_test``)."""
    data = datasets.load_dataset(config.dataset, config.data_dir)
    # The loaders shuffle their splits, so a prefix is a fair subset.
    n_train = len(data.x_train) if config.n_train is None else min(config.n_train, len(data.x_train))
    n_test = len(data.x_test) if config.n_test is None else min(config.n_test, len(data.x_test))
    if n_train == 0 or n_test == 0:
        raise ValueError(f"{config.dataset}: need training and test images, got {n_train} and {n_test}")
    x_train = torch.from_numpy(datasets.as_float_nchw(data.x_train[:n_train]))
    x_test = torch.from_numpy(datasets.as_float_nchw(data.x_test[:n_test]))
    y_train = torch.from_numpy(data.y_train[:n_train])
    y_test = torch.from_numpy(data.y_test[:n_test])
    return x_train, y_train, x_test, y_test, data


def _versions() -> dict[str, Any]:
    from .. import get_num_threads

    return {
        "pixdisc": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "native_threads": get_num_threads(),
    }


def evaluate_setting(model: nn.Module, x: Tensor, y: Tensor, config: ExperimentConfig, *,
                     progress: bool = True) -> dict[str, Any]:
    """One model's row: the configured suite (what applies to it), and for a discretized model the certified floor."""
    specs = setting_attacks(model, config, config.eps, config.steps, config.step_size)
    interval = robustness_interval(model, x, y, config.eps, attacks=specs, batch_size=config.eval_batch_size,
                                   seed=config.seed, progress=progress,
                                   certify_budget=certify_budget(config),
                                   certify_options={"bound": config.certify_bound})
    row = summarise_result(interval.attack, interval.attack_names)
    row.update({key: value for key, value in interval.summary().items()
                if key in ("floor", "ceiling", "certified", "broken", "undecided", "exact")})
    row["seconds"] = interval.seconds
    return row


def certify_budget(config: ExperimentConfig) -> Budget:
    """The per-image budget of the certified floor beside each ceiling (work, not wall clock, by default)."""
    return Budget(nodes=config.certify_nodes, seconds=config.certify_seconds, work=config.certify_work,
                  search=SearchBudget() if config.certify_search else None)


def summarise_result(result: Any, attack_names: Sequence[str]) -> dict[str, Any]:
    """Clean, cumulative-per-attack and worst-case robust accuracy from an ``evaluate_robustness`` result.

    The counts split the images in three: ``clean_errors`` (wrong before any
    attack), ``broken_by`` (per attack, the images it broke first among those
    the model got right) and ``not_broken`` (right, and no attack broke them).
    """
    count = len(result)
    success = result.success
    correct = result.clean_correct
    index = result.attack_index
    robust_after: dict[str, float] = {}
    broken_by: dict[str, int] = {}
    for position, name in enumerate(attack_names):
        # A broken point's attack_index is the first attack that broke it (later ones skip it). An image the
        # model already got wrong is the first attack's "success" too; it is a clean error, not a break.
        broken_by[name] = int((success & correct & (index == position)).sum())
        robust_after[name] = (count - int((success & (index <= position)).sum())) / count
    return {
        "n": count,
        "clean_accuracy": result.clean_accuracy,
        "robust_accuracy": result.robust_accuracy,
        "robust_after": robust_after,
        "broken_by": broken_by,
        "attack_seconds": {str(entry.get("name")): entry["seconds"] for entry in result.params.get("attacks", [])
                           if "seconds" in entry},
        "clean_errors": int((~correct).sum()),
        "not_broken": int((correct & ~success).sum()),
    }


def _eps_curve(config: ExperimentConfig, models: Mapping[str, nn.Module], x_test: Tensor, y_test: Tensor,
               stages: tqdm, progress: bool, resume: _Resume | None = None) -> dict[str, Any] | None:
    names = [name for name in config.curve_settings if name in models]
    if not config.curve_eps or not names:
        return None
    count = min(config.curve_n, len(x_test))
    curve: dict[str, Any] = {"eps": list(config.curve_eps), "steps": config.curve_steps, "n": count,
                             "attacks": {}, "settings": {}}
    for name in names:
        stages.set_description(f"eps curve {name}")
        attacks = suite_names(models[name], config)  # the table's suite for this setting
        curve["attacks"][name] = attacks

        def compute(model: nn.Module = models[name], attacks: list[str] = attacks) -> list[float]:
            values = []
            for eps in config.curve_eps:
                if eps == 0:  # nothing to attack: robust accuracy is clean accuracy
                    with torch.no_grad():
                        predictions = model(x_test[:count].to(model_device(model, x_test.device))).argmax(1).cpu()
                    values.append(float((predictions == y_test[:count]).float().mean()))
                    continue
                # Madry et al.'s rule of thumb: step = 2.5 eps / steps, so the attack can cross the ball.
                step_size = 2.5 * eps / max(config.curve_steps, 1)
                specs = setting_attacks(model, config, eps, config.curve_steps, step_size)
                outcome = evaluate_robustness(model, x_test[:count], y_test[:count], specs,
                                              batch_size=config.eval_batch_size, seed=config.seed, eps=eps,
                                              keep_adv=False, progress=False)
                values.append(outcome.robust_accuracy)
            return values

        curve["settings"][name] = compute() if resume is None else resume.cached(f"curve-{name}", compute)
        stages.update(1)
    return curve


def check_paper_claims(result: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The paper's qualitative MNIST findings, checked on ``result`` (empty when a needed setting is missing).

    1. The naturally trained model has near-zero robust accuracy (<= 5%).
    2. The same model behind discretization keeps a large part of its
       accuracy under attack (robust >= half of its clean accuracy).
    3. An adversarially trained model behind discretization (disc_adv_pre or
       disc_adv_re) is the most robust of the six settings.
    """
    rows = result["settings"]
    checks: dict[str, dict[str, Any]] = {}
    if "nat_pre" in rows:
        robust = rows["nat_pre"]["robust_accuracy"]
        checks["natural_model_broken"] = {
            "description": "naturally trained model has near-zero robust accuracy (<= 5%)",
            "passed": bool(robust <= 0.05), "detail": f"nat_pre robust {100 * robust:.1f}%"}
    if "disc_nat_pre" in rows:
        row = rows["disc_nat_pre"]
        checks["discretization_keeps_accuracy"] = {
            "description": "the same model behind k=2 discretization keeps a large part of it (>= half its clean)",
            "passed": bool(row["robust_accuracy"] >= 0.5 * row["clean_accuracy"]),
            "detail": f"disc_nat_pre clean {100 * row['clean_accuracy']:.1f}%, "
                      f"robust {100 * row['robust_accuracy']:.1f}%"}
    adversarial_defended = [name for name in ("disc_adv_pre", "disc_adv_re") if name in rows]
    if adversarial_defended and len(rows) == len(SETTINGS):
        best_name = max(adversarial_defended, key=lambda name: rows[name]["robust_accuracy"])
        best = rows[best_name]["robust_accuracy"]
        others = {name: row["robust_accuracy"] for name, row in rows.items() if name not in adversarial_defended}
        runner_up = max(others, key=others.get)  # type: ignore[arg-type]
        checks["adversarial_defended_most_robust"] = {
            "description": "the adversarially trained model behind discretization is the most robust",
            "passed": bool(best >= others[runner_up]),
            "detail": f"{best_name} {100 * best:.1f}% vs best other {runner_up} {100 * others[runner_up]:.1f}%"}
    return checks


def run_experiment(
    config: ExperimentConfig,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    codebook: Codebook | None = None,
    progress: bool = True,
    save_models: bool = True,
    expected_codes_255: list[list[int]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train and attack the configured settings; return the result, and write the report into ``out_dir``.

    The result is a JSON-able dict: ``config``, ``dataset``, ``codebook``,
    ``defense``, ``attack``, ``training``, ``settings`` (per setting: ``n``,
    ``clean_accuracy``, ``robust_accuracy`` (per-sample worst case over the
    attacks), ``robust_after`` (robust accuracy after each attack, cumulative
    in attack order), ``broken_by`` (images each attack was first to break
    among those classified correctly before any attack; ``clean_errors`` and
    ``not_broken`` complete the count to ``n``), ``attack_seconds``,
    ``train_seconds``/``eval_seconds``), ``curve`` (robust accuracy vs eps, or
    None), ``paper`` (Table II where the paper has the data set, else None),
    ``checks`` (the paper's MNIST claims, MNIST only), ``timings``,
    ``versions`` and, with ``out_dir``, ``files``. With ``save_models`` the
    codebook (``codes.npz``) and one model file per setting
    (``models/<setting>.pt``, usable with ``pixdisc attack``) are written too.
    ``expected_codes_255`` adds a check that the fitted codes are those (in
    units of 1/255); ``extra`` is merged into the result as is.
    """
    started = time.perf_counter()
    folder = None if out_dir is None else Path(out_dir)
    if folder is not None:
        # At once, so that even an early interrupt leaves the folder a rerun resumes from.
        folder.mkdir(parents=True, exist_ok=True)
    # Timings mean little without the machine's load: record it with them.
    run_info = {"cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                "load_before": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}
    specs = attack_specs(config.eps, config.steps, config.step_size, config.attacks,
                         square_queries=config.square_queries, seed=config.seed)
    train_stages = len(networks_to_train(config.settings, config.adversarial_warm_start))
    timings: dict[str, float] = {}
    curve_count = len([name for name in config.curve_settings if name in config.settings]) if config.curve_eps else 0
    total_stages = 2 + train_stages + len(config.settings) + curve_count
    with tqdm(total=total_stages, desc="load data", unit="stage", disable=not progress,
              file=sys.stderr, dynamic_ncols=True) as stages:
        stage_started = time.perf_counter()
        x_train, y_train, x_test, y_test, data = load_data(config)
        timings["load data"] = time.perf_counter() - stage_started
        stages.update(1)

        stages.set_description("fit codebook")
        stage_started = time.perf_counter()
        if codebook is None:
            codebook = DensityCodebook(config.k, config.r, metric=config.metric).fit(data.x_train[: len(x_train)])
        else:
            check_channels(codebook, tuple(x_train.shape[1:]), images_name=f"{config.dataset} images")
        defense = Discretize(codebook, bpda=config.bpda, alpha=config.alpha)
        resume = None
        if folder is not None:
            if save_models:
                codebook.save(folder / "codes.npz")
            resume = _resume_for(folder, config, codebook, data, x_train, y_train, x_test, y_test, save_models,
                                 (lambda message: stages.write(message, file=sys.stderr)) if progress
                                 else (lambda message: None))
        timings["fit codebook"] = time.perf_counter() - stage_started
        stages.update(1)

        def train_stage(name: str) -> None:
            if name != networks[0]:
                stages.update(1)
            stages.set_description(f"train {name}")

        networks = networks_to_train(config.settings, config.adversarial_warm_start)
        trained = train_settings(config, x_train, y_train, defense, data.num_classes, progress=progress,
                                 on_start=train_stage, store=None if resume is None else resume.store,
                                 checkpoints=None if resume is None else resume.checkpoint)
        stages.update(1)
        models, histories, train_seconds = trained.models, trained.histories, trained.seconds
        if resume is not None:
            train_seconds.update({f"train {name}": seconds for name, seconds in resume.train_seconds.items()})
        timings.update(train_seconds)

        rows: dict[str, Any] = {}
        for name, model in models.items():
            stages.set_description(f"attack {name}")
            stage_started = time.perf_counter()

            def attack(model: nn.Module = model) -> dict[str, Any]:
                row = evaluate_setting(model, x_test, y_test, config, progress=progress)
                row["eval_seconds"] = time.perf_counter() - stage_started
                return row

            rows[name] = attack() if resume is None else resume.cached(f"attack-{name}", attack)
            rows[name]["train_seconds"] = train_seconds.get(f"train {name}", 0.0)
            timings[f"attack {name}"] = rows[name]["eval_seconds"]
            stages.update(1)
            if progress:
                floor = rows[name]["floor"]
                stages.write(f"{name:>13}: clean {100 * rows[name]['clean_accuracy']:5.1f}%  "
                             f"robust {100 * rows[name]['robust_accuracy']:5.1f}% (attacked)"
                             + ("" if floor is None else f", certified {100 * floor:5.1f}%"), file=sys.stderr)

        stage_started = time.perf_counter()
        curve = _eps_curve(config, models, x_test, y_test, stages, progress, resume)
        if curve is not None:
            timings["eps curve"] = time.perf_counter() - stage_started
        stages.set_description("done")

    codes = codebook.codes_
    result: dict[str, Any] = {
        "format": "pixdisc-experiment",
        "version": 1,
        "config": config.to_dict(),
        "dataset": {
            "name": data.name,
            "n_train": int(len(x_train)),
            "n_test": int(len(x_test)),
            "shape": [int(side) for side in x_test.shape[1:]],
            "num_classes": int(data.num_classes),
        },
        "codebook": {
            "kind": type(codebook).__name__,
            "params": {key: value for key, value in codebook.get_params().items()
                       if isinstance(value, (int, float, str, type(None)))},
            "codes": codes.tolist(),
            "codes_255": np.rint(codes * 255).astype(int).tolist(),
        },
        "defense": {"alpha": config.alpha, "bpda": config.bpda},
        "attack": {
            "eps": config.eps,
            "steps": config.steps,
            "step_size": config.step_size,
            "attacks": _attack_entries(config, specs),
            "certify_budget": {"bound": config.certify_bound, "nodes": config.certify_nodes,
                               "seconds": config.certify_seconds, "work": config.certify_work,
                               "search": config.certify_search},
            "suite": config.suite,
            "bpda": "attacks on disc_* settings go through the defense's BPDA backward",
        },
        "training": {
            "arch": config.arch,
            "arch_kwargs": dict(config.arch_kwargs),
            "natural_epochs": config.natural_epochs,
            "adversarial_epochs": config.adversarial_epochs,
            "retrain_epochs": config.retrain_epochs,
            "adversarial_retrain_epochs": config.adversarial_retrain_epochs,
            "adversarial": {"eps": config.train_eps, "steps": config.train_steps,
                            "step_size": config.train_step_size},
            "adversarial_warm_start": config.adversarial_warm_start,
            "histories": histories,
        },
        "settings": rows,
        "curve": curve,
        "paper": paper_reference(data.name),
    }
    result["checks"] = check_paper_claims(result) if result["paper"] and result["paper"]["dataset"] == "mnist" else {}
    if expected_codes_255 is not None:
        codes_255 = result["codebook"]["codes_255"]
        result["checks"]["codes_as_expected"] = {
            "description": f"Algorithm 1 (k={config.k}, r={config.r:g}) gives the codes {expected_codes_255} /255",
            "passed": codes_255 == expected_codes_255,
            "detail": f"codes {codes_255} /255",
        }
    if resume is not None:
        # What this run took from an earlier one instead of computing (its timings are the earlier run's).
        result["resumed"] = list(resume.reused)
    result.update(extra or {})

    if out_dir is not None:
        folder = Path(out_dir)
        if save_models:
            stage_started = time.perf_counter()
            _save_models(models, codebook, config, data, folder,
                         # disc_*_pre files hold the nat_pre/adv_pre network: theirs is its history.
                         {name: {"resume_key": resume.train_key, "history": histories.get(network),
                                 "train_seconds": resume.train_seconds.get(network)}
                          for name, network in ((name, name[len("disc_"):] if name.startswith("disc_") and
                                                 name.endswith("_pre") else name) for name in models)}
                         if resume is not None else {})
            timings["save models"] = time.perf_counter() - stage_started
    timings["total"] = time.perf_counter() - started
    result["timings"] = timings
    result["run"] = run_info
    result["versions"] = _versions()
    if out_dir is not None:
        result["files"] = write_report(result, out_dir)
    return result


def _attack_entries(config: ExperimentConfig, specs: Sequence[Any]) -> list[dict[str, Any]]:
    """The suite as the report lists it: name, label and budget per attack, in the order they run."""
    entries = {name: {"name": name, "label": ATTACK_LABELS[name],
                      **(spec if isinstance(spec, Mapping) else spec.params)}
               for name, spec in zip(config.attacks, specs)}
    if config.suite != "adaptive":
        return list(entries.values())
    # The adaptive suite (pixdisc.attacks.adaptive_attacks): each attack's share of the survivors it sees.
    if "sx" in entries:
        search = entries["sx"]
        entries["sx"] = {**search, "budget": dataclasses.asdict(QUICK_SEARCH)}
        entries["sx_focus"] = {**search, "name": "sx_focus", "label": ATTACK_LABELS["sx_focus"],
                               "budget": dataclasses.asdict(FOCUS_SEARCH), "focus": ADAPTIVE_FOCUS["sx_focus"]}
        entries["sx_deep"] = {**search, "name": "sx_deep", "label": ATTACK_LABELS["sx_deep"],
                              "budget": dataclasses.asdict(FOCUS_SEARCH.scaled(DEEP_SEARCH_FACTOR)),
                              "focus": ADAPTIVE_FOCUS["sx_deep"]}
    if "square" in entries:
        entries["square"] = {**entries["square"], "focus": ADAPTIVE_FOCUS["square"]}
    for name in GRADIENT_ORDER:
        if name in entries:
            entries[name] = {**entries[name], "focus": ADAPTIVE_FOCUS["gradient"], "chained": True,
                             "on_undefended": "the first runs on every sample"}
    return [entries[name] for name in ADAPTIVE_ORDER if name in entries]


def _save_models(models: Mapping[str, nn.Module], codebook: Codebook, config: ExperimentConfig,
                 data: datasets.Dataset, folder: Path, extra_meta: Mapping[str, Mapping[str, Any]]) -> None:
    codebook.save(folder / "codes.npz")
    for name, model in models.items():
        network = model[1] if name.startswith("disc_") else model
        meta = {**_model_meta(name, codebook, config, data), **extra_meta.get(name, {})}
        save_model(network, folder / "models" / f"{name}.pt", meta=meta)


def run_demo(out_dir: str | os.PathLike[str], *, quick: bool = False, seed: int = 0,
             progress: bool = True, suite: str = "adaptive") -> dict[str, Any]:
    """The main job on the embedded default: MNIST-5k, codes k=2 r=0.6, the six settings, BPDA/PGD, a report.

    Writes ``results.json``, ``results.md``, ``accuracy.png``,
    ``robustness_vs_eps.png``, ``codes.npz`` and ``models/`` into
    ``out_dir`` and returns the result of :func:`run_experiment`, whose checks
    include that the codes are the paper's {0, 253}/255. ``quick=True`` runs
    :data:`QUICK_CONFIG`, a reduced smoke run whose numbers mean nothing.
    The attacks run as the adaptive suite (:func:`pixdisc.attacks.adaptive_attacks`:
    measured on the demo's models as strong as the full suite in a fraction
    of its time, benchmarks/demo_suite.md); ``suite="full"`` runs every
    attack on every image still standing.
    """
    config = (QUICK_CONFIG if quick else DEMO_CONFIG).replace(dataset="mnist5k", seed=seed, suite=suite)
    result = run_experiment(config, out_dir, progress=progress, expected_codes_255=[[0], [253]],
                            extra={"quick": quick})
    return result
