"""The `evaluate` and `demo` jobs: the paper's six settings on a data set, attacked, certified and reported.

Layout: ``config`` (ExperimentConfig, presets, per-data-set defaults), ``cache`` (the output folder as a
resumable cache), ``run`` (training through :mod:`pixdisc.plan`, the attack suite, the certified floor,
the eps curve, the report).
"""

from .config import (ATTACK_LABELS, DATASET_DEFAULTS, DEMO_CONFIG, FULL_SCALE_TRAINING, QUICK_CONFIG,
                     ExperimentConfig, attack_specs, config_for_dataset)
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

