"""The `evaluate` and `demo` jobs: the paper's six settings on a data set, attacked, certified and reported.

Layout: ``config`` (ExperimentConfig, presets, a config for a data set's profile), ``plan`` (which networks
the settings need and the recipe that trains each), ``cache`` (the output folder as a resumable cache), ``run``
(training through ``plan``, the attack suite, the certified floor, the eps curve, the report). The
per-data-set defaults live in :mod:`pixdisc.profiles`.
"""

from ..profiles import DATASET_DEFAULTS, FULL_SCALE_TRAINING
from .config import ATTACK_LABELS, DEMO_CONFIG, QUICK_CONFIG, ExperimentConfig, attack_specs, config_for_dataset
from .run import check_paper_claims, evaluate_setting, load_data, run_demo, run_experiment, summarise_result

__all__ = [
    "ATTACK_LABELS",
    "DATASET_DEFAULTS",
    "DEMO_CONFIG",
    "FULL_SCALE_TRAINING",
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

