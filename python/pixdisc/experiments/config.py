"""What an experiment runs: the configuration, the demo and quick presets, the paper's per-data-set defaults."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence


from ..attacks import SUITE, adaptive_attacks, applicable_attacks, attack_spec
from ..profiles import PAPER_BUDGETS, PROFILES, dataset_key
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
    "sx_focus": "S(x) search, closest survivors",
    "sx_deep": "S(x) search x4, closest survivors",
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
    # "full": every attack of ``attacks`` on every sample still standing; "adaptive": the same attacks
    # spending their effort where they break images (pixdisc.attacks.adaptive_attacks).
    suite: str = "full"
    # Certified floor beside every attacked ceiling: certify's bound and branch-and-bound budget per
    # sample, in work (forward passes per image, the same outcomes on any machine load), no wall clock.
    # The demo's models are not trained for certification, and CROWN with 20 nodes per image proves
    # 0.2-1% of them (measured) at ~0.5 s each: the demo uses interval bounds at the root and one node per
    # image, without certify's own S(x) search (the suite has searched S(x) already);
    # `pixdisc attack --certify-nodes` spends more on a saved model.
    certify_bound: str = "ibp"
    certify_nodes: int = 1
    certify_seconds: float | None = None
    certify_work: float = 200.0
    certify_search: bool = False
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
)

def config_for_dataset(dataset: str, base: ExperimentConfig = DEMO_CONFIG, **overrides: Any) -> ExperimentConfig:
    """``base`` adapted to ``dataset``: the paper's attack budget, codebook and alpha for it, then ``overrides``.

    The values come from the data set's profile (:mod:`pixdisc.profiles`), with its training attack where
    it has its own and, for a ``base`` that trains on the whole training split (``n_train=None``), its
    full-scale training budgets.
    """
    key = dataset_key(dataset)
    changes: dict[str, Any] = {"dataset": key}
    found = PROFILES.get(key)
    if found is not None:
        budget = PAPER_BUDGETS[found.budget]
        changes.update(eps=budget["eps"], steps=budget["steps"], step_size=budget["step_size"],
                       k=found.k, r=found.r, alpha=found.alpha, **found.train_attack)
        if base.n_train is None:
            changes.update(found.full_scale_training)
    changes.update({name: value for name, value in overrides.items() if value is not None})
    return base.replace(**changes)


def setting_attacks(model: Any, config: ExperimentConfig, eps: float, steps: int, step_size: float) -> list[Any]:
    """The configured suite against ``model`` (what applies to it) at this budget: ``evaluate_robustness`` entries."""
    if config.suite == "adaptive":
        return adaptive_attacks(model, eps, steps=steps, step_size=step_size, square_queries=config.square_queries,
                                seed=config.seed, names=config.attacks)
    if config.suite != "full":
        raise ValueError(f"suite must be 'full' or 'adaptive', got {config.suite!r}")
    return attack_specs(eps, steps, step_size, applicable_attacks(model, config.attacks),
                        square_queries=config.square_queries, seed=config.seed)


def suite_names(model: Any, config: ExperimentConfig) -> list[str]:
    """The names of the configured suite's attacks against ``model``, in the order they run."""
    if config.suite != "adaptive":
        return applicable_attacks(model, config.attacks)
    return [stage.spec["name"] if isinstance(stage.spec, Mapping) else stage.spec.__name__
            for stage in adaptive_attacks(model, 0.0, names=config.attacks)]


def attack_specs(eps: float, steps: int, step_size: float, names: Sequence[str] = SUITE, *,
                 square_queries: int = 1000, seed: int = 0) -> list[Any]:
    """The named attacks (:data:`pixdisc.attacks.SUITE`) as ``evaluate_robustness`` specs, in order."""
    return [attack_spec(name, eps, steps=steps, step_size=step_size, square_queries=square_queries, seed=seed)
            for name in names]




