"""What an experiment runs: the configuration, the demo and quick presets, the paper's per-data-set defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence


from ..attacks import PAPER_BUDGETS, SUITE, attack_spec
from ..train import SETTINGS



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


# Training budgets for a data set's whole training split (a base config with n_train=None), where the
# demo's epochs, chosen for 4,000 images, would cost hours on 2 cores. Fashion-MNIST: 60,000 images make
# one epoch 15x the demo's; 4 adversarial epochs (3,750 batches of 64, 10 PGD steps of 0.02 each: the
# total travel 0.2 of the paper's 20 x 0.01) and one re-training epoch (938 batches, 7x the demo's two
# epochs on 4,000 images); wall times in benchmarks/fashion_mnist.md. The attack suite runs on the first
# n_test test images; reproduce adds clean accuracy on all of them.
FULL_SCALE_TRAINING: dict[str, dict[str, Any]] = {
    "fashion_mnist": {"natural_epochs": 3, "adversarial_epochs": 4, "adversarial_lr_milestones": (3,),
                      "retrain_epochs": 1, "adversarial_retrain_epochs": 1},
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
        if base.n_train is None and key in FULL_SCALE_TRAINING:
            changes.update(FULL_SCALE_TRAINING[key])
    changes.update({name: value for name, value in overrides.items() if value is not None})
    return base.replace(**changes)


def attack_specs(eps: float, steps: int, step_size: float, names: Sequence[str] = SUITE, *,
                 square_queries: int = 1000, seed: int = 0) -> list[Any]:
    """The named attacks (:data:`pixdisc.attacks.SUITE`) as ``evaluate_robustness`` specs, in order."""
    return [attack_spec(name, eps, steps=steps, step_size=step_size, square_queries=square_queries, seed=seed)
            for name in names]




