"""Run the paper's six settings on a data set and collect a Table-II-style result (the `evaluate` and `demo` jobs)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from . import __version__, datasets
from ._files import write_text
from .attacks import PAPER_BUDGETS, SUITE, applicable_attacks, attack_spec, evaluate_robustness
from .certification import Budget
from .codebook import Codebook, DensityCodebook
from .discretize import Discretize
from .evaluation import robustness_interval
from .models import _model_device, load_model, save_model
from .report import paper_reference, write_report
from .plan import TRAINED_NETWORKS, networks_to_train, train_settings
from .train import SETTINGS

__all__ = [
    "ATTACK_LABELS",
    "DATASET_DEFAULTS",
    "DEMO_CONFIG",
    "QUICK_CONFIG",
    "ExperimentConfig",
    "attack_specs",
    "check_paper_claims",
    "config_for_dataset",
    "evaluate_setting",
    "load_data",
    "run_demo",
    "run_experiment",
    "summarise_result",
]

# The suite's attacks, by the names the CLI and the reports use. Where a
# defense is present every gradient attack runs through its BPDA backward;
# "certify" is the certificate's checked counterexamples, counted as an attack.
ATTACK_LABELS: dict[str, str] = {
    "sx": "S(x) search",
    "pgd_ce": "PGD-CE",
    "pgd_cw": "PGD-CW",
    "adam_sign": "Adam-sign",
    "apgd_ce": "APGD-CE",
    "apgd_dlr": "APGD-DLR",
    "square": "Square",
    "certify": "certify",
}


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything one six-setting run depends on; stored verbatim in the JSON report.

    Codebook: ``DensityCodebook(k, r, metric)`` fitted on the training images
    (ignored when a fitted codebook is passed to :func:`run_experiment`).
    Attack budget (``eps``, ``steps``, ``step_size``) and BPDA ``alpha`` follow
    the paper per data set (:func:`config_for_dataset`). Training budgets are
    ours: the paper trained for 100k steps on full MNIST, which a CPU demo
    cannot afford; see :data:`DEMO_CONFIG` for the reasoning.
    """

    dataset: str = "mnist5k"
    data_dir: str | None = None
    arch: str = "small_cnn"
    arch_kwargs: Mapping[str, Any] = field(default_factory=dict)
    # Codebook (Algorithm 1) and the defense.
    k: int = 2
    r: float = 0.6
    metric: str = "linf"
    alpha: float = 10.0
    bpda: str = "soft"
    # Evaluation attacks (the paper's MNIST budget by default).
    eps: float = 0.3
    steps: int = 100
    step_size: float = 0.01
    attacks: tuple[str, ...] = SUITE
    square_queries: int = 1000
    # Certified floor beside every attacked ceiling: certify's bound and branch-and-bound budget per
    # sample. The demo's models are not trained for certification, and CROWN with 20 nodes per image
    # proves 0.2-1% of them (measured) at ~0.5 s each: the demo uses interval bounds at the root and one
    # counterexample guess per image; `pixdisc attack --certify-nodes` spends more on a saved model.
    certify_bound: str = "ibp"
    certify_nodes: int = 1
    certify_seconds: float = 0.5
    # Training.
    natural_epochs: int = 6
    adversarial_epochs: int = 20
    retrain_epochs: int = 2
    adversarial_retrain_epochs: int = 2
    train_eps: float = 0.3
    train_steps: int = 10
    train_step_size: float = 0.04
    adversarial_warm_start: bool = False
    lr: float = 2e-3
    adversarial_lr: float = 1e-3
    adversarial_lr_milestones: tuple[int, ...] = ()
    batch_size: int = 64
    # Data subsets (None: all).
    n_train: int | None = None
    n_test: int | None = 1000
    eval_batch_size: int = 500
    # Robustness-vs-eps curve: the table's attack suite (what applies to each setting) with
    # curve_steps steps for the gradient attacks, on the first curve_n test images. eps = 0
    # is clean accuracy; the grid should run past the eps at which every defense must fall.
    curve_eps: tuple[float, ...] = ()
    curve_settings: tuple[str, ...] = ("nat_pre", "disc_nat_pre", "adv_pre", "disc_adv_pre")
    curve_steps: int = 40
    curve_n: int = 100
    settings: tuple[str, ...] = SETTINGS
    seed: int = 0
    device: str | None = None

    def replace(self, **changes: Any) -> ExperimentConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["arch_kwargs"] = dict(self.arch_kwargs)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in values.items()}


# The demo's budget, measured on a 2-core CPU (README: wall time and table).
#
# Training. The paper reuses Madry et al.'s MNIST recipe: 40 PGD steps of 0.01
# at eps=0.3 for 100k batches of 50. We train a SmallCNN on 4,000 images:
# - natural: 6 epochs of Adam at lr 2e-3 (about 97% test accuracy);
# - adversarial: 20 epochs from scratch (as Madry et al.; warm-starting from
#   the natural network measured 20 points less robust at 15 epochs) with 10
#   PGD steps of 0.04 from a random start. 10 x 0.04 = 0.4 is the same total
#   travel as Madry's 40 x 0.01 (1.33 eps), so the attack still crosses the
#   ball, at a quarter of the cost; the lr drops 10x for the last 4 epochs.
#   More epochs keep helping (15 -> 20 epochs: 61% -> 69% worst-case robust
#   on 300 test images) but cost ~7 s each on 2 cores.
# - re-training (disc_*_re) warm-starts from the pre-trained networks, as the
#   paper does, for 2 epochs each at half the lr; adversarial re-training
#   attacks through the defense's BPDA gradient with the same 10 x 0.04 PGD.
# Evaluation uses the paper's attack budget unchanged (eps=0.3, 100 steps of
# 0.01, alpha=10) on all 1,000 test images, three attacks per point.
DEMO_CONFIG = ExperimentConfig(
    adversarial_epochs=20,
    adversarial_warm_start=False,
    adversarial_lr_milestones=(16,),
    # Codes {0, 253}/255 meet at 126.5/255 = 0.496: beyond it every pixel can take either code, so
    # every setting must reach 0 by eps = 0.5 (the gradient-masking sanity check); 0.6 shows it stays.
    curve_eps=(0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6),
)

# A reduced run for tests and smoke checks: tiny subsets, few steps. Its
# numbers mean nothing; it exercises every code path in seconds.
QUICK_CONFIG = ExperimentConfig(
    natural_epochs=1,
    adversarial_epochs=1,
    retrain_epochs=1,
    adversarial_retrain_epochs=1,
    train_steps=2,
    train_step_size=0.15,
    steps=5,
    step_size=0.08,
    n_train=600,
    n_test=60,
    eval_batch_size=60,
    curve_eps=(0.0, 0.1, 0.3),
    curve_steps=3,
    curve_n=30,
    square_queries=20,
    certify_seconds=0.1,
)

# Per data set: the paper's attack budget (PAPER_BUDGETS), codebook (Table II) and BPDA alpha.
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "mnist5k": {"budget": "mnist", "k": 2, "r": 0.6, "alpha": 10.0},
    "mnist": {"budget": "mnist", "k": 2, "r": 0.6, "alpha": 10.0},
    "digits": {"budget": "mnist", "k": 2, "r": 0.6, "alpha": 10.0},
    "fashion_mnist": {"budget": "fashion_mnist", "k": 2, "r": 0.2, "alpha": 10.0},
    # The paper's CIFAR alpha=0.1 is on the [0,255] scale: 25.5 on [0,1].
    "cifar10": {"budget": "cifar10", "k": 300, "r": 16 / 255, "alpha": 25.5, "train_eps": 8 / 255,
                "train_steps": 7, "train_step_size": 2 / 255},
    "gtsrb": {"budget": "gtsrb", "k": 300, "r": 16 / 255, "alpha": 25.5, "train_eps": 8 / 255,
              "train_steps": 7, "train_step_size": 2 / 255},
}


def config_for_dataset(dataset: str, base: ExperimentConfig = DEMO_CONFIG, **overrides: Any) -> ExperimentConfig:
    """``base`` adapted to ``dataset``: the paper's attack budget, codebook and alpha for it, then ``overrides``."""
    key = dataset.strip().lower().replace("-", "_")
    changes: dict[str, Any] = {"dataset": key}
    defaults = DATASET_DEFAULTS.get(key)
    if defaults is not None:
        budget = PAPER_BUDGETS[defaults["budget"]]
        changes.update(eps=budget["eps"], steps=budget["steps"], step_size=budget["step_size"],
                       k=defaults["k"], r=defaults["r"], alpha=defaults["alpha"])
        changes.update({name: defaults[name] for name in ("train_eps", "train_steps", "train_step_size")
                        if name in defaults})
        if key == "fashion_mnist":
            # Madry's MNIST recipe with a 20-step eps=0.1 attack (paper, Section II-F), scaled like ours.
            changes.update(train_eps=0.1, train_steps=10, train_step_size=0.02)
    changes.update({name: value for name, value in overrides.items() if value is not None})
    return base.replace(**changes)


def attack_specs(eps: float, steps: int, step_size: float, names: Sequence[str] = SUITE, *,
                 square_queries: int = 1000, seed: int = 0) -> list[Any]:
    """The named attacks (:data:`pixdisc.attacks.SUITE`) as ``evaluate_robustness`` specs, in order."""
    return [attack_spec(name, eps, steps=steps, step_size=step_size, square_queries=square_queries, seed=seed)
            for name in names]


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
    from . import get_num_threads

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
    names = applicable_attacks(model, config.attacks)
    specs = attack_specs(config.eps, config.steps, config.step_size, names, square_queries=config.square_queries,
                         seed=config.seed)
    interval = robustness_interval(model, x, y, config.eps, attacks=specs, batch_size=config.eval_batch_size,
                                   seed=config.seed, progress=progress,
                                   certify_budget=Budget(nodes=config.certify_nodes, seconds=config.certify_seconds),
                                   certify_options={"bound": config.certify_bound})
    row = summarise_result(interval.attack, interval.attack_names)
    row.update({key: value for key, value in interval.summary().items()
                if key in ("floor", "ceiling", "certified", "broken", "undecided", "exact")})
    row["seconds"] = interval.seconds
    return row


def summarise_result(result: Any, attack_names: Sequence[str]) -> dict[str, Any]:
    """Clean, cumulative-per-attack and worst-case robust accuracy from an ``evaluate_robustness`` result."""
    count = len(result)
    success = result.success
    index = result.attack_index
    robust_after: dict[str, float] = {}
    broken_by: dict[str, int] = {}
    for position, name in enumerate(attack_names):
        # A broken point's attack_index is the first attack that broke it (later ones skip it).
        broken_by[name] = int((success & (index == position)).sum())
        robust_after[name] = (count - int((success & (index <= position)).sum())) / count
    return {
        "n": count,
        "clean_accuracy": result.clean_accuracy,
        "robust_accuracy": result.robust_accuracy,
        "robust_after": robust_after,
        "broken_by": broken_by,
        "clean_errors": int((~result.clean_correct).sum()),
    }


# Config fields that change what is attacked or reported but not how a network is trained: changing them
# keeps the saved networks of an output folder (everything else retrains).
_EVALUATION_ONLY = ("eps", "steps", "step_size", "attacks", "square_queries", "certify_bound", "certify_nodes",
                    "certify_seconds", "n_test", "eval_batch_size", "curve_eps", "curve_settings", "curve_steps",
                    "curve_n", "settings")


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _data_digest(*arrays: Any) -> str:
    h = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array.numpy() if isinstance(array, Tensor) else array)
        h.update(f"{array.dtype}{array.shape}".encode())
        h.update(array.tobytes())
    return h.hexdigest()[:16]


class _Resume:
    """The output folder as a cache, so that rerunning an interrupted run redoes nothing it finished.

    Networks are saved to ``models/<name>.pt`` as each finishes (with the
    training key and history in their meta), their training checkpoints
    after every epoch go to ``cache/<key>/``, and each setting's attack
    result and eps curve to ``cache/*.json``. Every artefact carries the key
    of what produced it (config, codes, data): one written for another
    configuration is never reused, it is computed again and replaced.
    """

    def __init__(self, folder: Path, train_key: str, eval_key: str, save_networks: bool,
                 log: Callable[[str], None]) -> None:
        self.folder = folder
        self.train_key = train_key
        self.eval_key = eval_key
        self.save_networks = save_networks
        self.log = log
        self.reused: list[str] = []
        self.meta: dict[str, dict[str, Any]] = {}  # per network: what its model file's meta says
        self.train_seconds: dict[str, float] = {}  # per network: training time, the earlier run's when reused

    def checkpoint(self, name: str) -> Path:
        return self.folder / "cache" / f"train-{self.train_key}" / f"{name}.ckpt"

    def store(self, name: str, train: Callable[[], Any]) -> tuple[nn.Module, dict[str, Any] | None]:
        """The planner's store: a network this configuration already trained, else train it and save it now."""
        path = self.folder / "models" / f"{name}.pt"
        if self.save_networks and path.exists():
            try:
                network, meta = load_model(path, return_meta=True)  # type: ignore[misc]
            except ValueError as error:  # a damaged file: train again
                self.log(f"{path}: cannot be read ({error}); training {name} again")
            else:
                if meta.get("resume_key") == self.train_key:
                    self.reused.append(f"models/{name}.pt")
                    self.train_seconds[name] = float(meta.get("train_seconds") or 0.0)
                    self.log(f"{name}: reusing {path} (trained by an earlier run of this configuration)")
                    return network, meta.get("history")
                self.log(f"{path} was trained for another configuration: training {name} again")
        started = time.perf_counter()
        network, history = train()
        self.train_seconds[name] = time.perf_counter() - started
        if self.save_networks:
            save_model(network, path, meta={**self.meta.get(name, {"setting": name}), "resume_key": self.train_key,
                                            "history": history, "train_seconds": self.train_seconds[name]})
        checkpoint = self.checkpoint(name)
        checkpoint.unlink(missing_ok=True)  # finished: the model file supersedes its epoch checkpoint
        return network, history

    def cached(self, name: str, compute: Callable[[], Any]) -> Any:
        """``cache/<name>.json`` when this configuration wrote it, else compute and write it."""
        path = self.folder / "cache" / f"{name}.json"
        if path.exists():
            try:
                saved = json.loads(path.read_text())
            except ValueError:
                saved = None  # a torn write: compute again
            if isinstance(saved, dict) and saved.get("key") == self.eval_key:
                self.reused.append(f"cache/{name}.json")
                return saved["value"]
        value = compute()
        write_text(path, json.dumps({"key": self.eval_key, "value": value}, default=_plain))
        return value


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
        attacks = applicable_attacks(models[name], config.attacks)  # the table's suite for this setting
        curve["attacks"][name] = attacks

        def compute(model: nn.Module = models[name], attacks: list[str] = attacks) -> list[float]:
            values = []
            for eps in config.curve_eps:
                if eps == 0:  # nothing to attack: robust accuracy is clean accuracy
                    with torch.no_grad():
                        predictions = model(x_test[:count].to(_model_device(model, x_test.device))).argmax(1).cpu()
                    values.append(float((predictions == y_test[:count]).float().mean()))
                    continue
                # Madry et al.'s rule of thumb: step = 2.5 eps / steps, so the attack can cross the ball.
                step_size = 2.5 * eps / max(config.curve_steps, 1)
                specs = attack_specs(eps, config.curve_steps, step_size, attacks,
                                     square_queries=config.square_queries, seed=config.seed)
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
    in attack order), ``broken_by`` (points first broken by each attack),
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
        elif codebook.n_channels != x_train.shape[1]:
            raise ValueError(f"the codebook has {codebook.n_channels} channel(s) but {config.dataset} images have "
                             f"{x_train.shape[1]}")
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
            "attacks": [{"name": name, "label": ATTACK_LABELS[name],
                         **(spec if isinstance(spec, Mapping) else spec.params)}
                        for name, spec in zip(config.attacks, specs)],
            "certify_budget": {"bound": config.certify_bound, "nodes": config.certify_nodes,
                               "seconds": config.certify_seconds},
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


def _model_meta(name: str, codebook: Codebook, config: ExperimentConfig, data: datasets.Dataset) -> dict[str, Any]:
    height, width, channels = data.shape
    return {
        "setting": name,
        "dataset": data.name,
        "input_shape": [channels, height, width],
        "num_classes": int(data.num_classes),
        "defense": None if not name.startswith("disc_") else {
            "codebook": "codes.npz",
            "codes": codebook.codes_.tolist(),
            "metric": codebook.metric,
            "alpha": config.alpha,
            "bpda": config.bpda,
        },
        "pixdisc": __version__,
    }


def _save_models(models: Mapping[str, nn.Module], codebook: Codebook, config: ExperimentConfig,
                 data: datasets.Dataset, folder: Path, extra_meta: Mapping[str, Mapping[str, Any]]) -> None:
    codebook.save(folder / "codes.npz")
    for name, model in models.items():
        network = model[1] if name.startswith("disc_") else model
        meta = {**_model_meta(name, codebook, config, data), **extra_meta.get(name, {})}
        save_model(network, folder / "models" / f"{name}.pt", meta=meta)


def _resume_for(folder: Path, config: ExperimentConfig, codebook: Codebook, data: datasets.Dataset,
                x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, save_networks: bool,
                log: Callable[[str], None]) -> _Resume:
    """The output folder's cache, keyed by everything that decides the networks and the attack results."""
    settings = config.to_dict()
    codes = {"codes": np.asarray(codebook.codes_).tolist(), "metric": codebook.metric}
    train_key = _digest({"config": {key: value for key, value in settings.items() if key not in _EVALUATION_ONLY},
                         **codes, "data": _data_digest(x_train, y_train)})
    eval_key = _digest({"config": settings, "train": train_key, "data": _data_digest(x_test, y_test)})
    resume = _Resume(folder, train_key, eval_key, save_networks, log)
    resume.meta = {name: _model_meta(name, codebook, config, data) for name in TRAINED_NETWORKS}
    return resume


def run_demo(out_dir: str | os.PathLike[str], *, quick: bool = False, seed: int = 0,
             progress: bool = True) -> dict[str, Any]:
    """The main job on the embedded default: MNIST-5k, codes k=2 r=0.6, the six settings, BPDA/PGD, a report.

    Writes ``results.json``, ``results.md``, ``accuracy.png``,
    ``robustness_vs_eps.png``, ``codes.npz`` and ``models/`` into
    ``out_dir`` and returns the result of :func:`run_experiment`, whose checks
    include that the codes are the paper's {0, 253}/255. ``quick=True`` runs
    :data:`QUICK_CONFIG`, a reduced smoke run whose numbers mean nothing.
    """
    config = (QUICK_CONFIG if quick else DEMO_CONFIG).replace(dataset="mnist5k", seed=seed)
    result = run_experiment(config, out_dir, progress=progress, expected_codes_255=[[0], [253]],
                            extra={"quick": quick})
    return result
