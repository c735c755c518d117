"""White-box l_inf attacks (PGD, the paper's Adam-on-sign attack) and worst-case robustness evaluation.

Every attack takes a plain torch.nn.Module. A defended model is
nn.Sequential(defense, net) whose defense discretizes in the forward pass and
returns a BPDA gradient in the backward pass, so every attack here is a BPDA
attack on it without knowing about the defense.

Layout: ``base`` (input checks, losses, :class:`AttackResult`), ``gradient``
(PGD, Adam-on-sign), ``suite`` (paper budgets, named attacks, the default
suite and :func:`evaluate_robustness`).
"""

from .base import LOSSES, AttackResult, cross_entropy_loss, cw_margin_loss
from .gradient import adam_sign_attack, pgd, pgd_perturb
from .suite import (ATTACKS, PAPER_BUDGETS, SUITE, AttackSpec, applicable_attacks, attack_spec, contains_discretize,
                    default_attacks, evaluate_robustness, result_from_inputs)


__all__ = [
    "ATTACKS",
    "LOSSES",
    "PAPER_BUDGETS",
    "AttackResult",
    "AttackSpec",
    "SUITE",
    "adam_sign_attack",
    "applicable_attacks",
    "attack_spec",
    "cross_entropy_loss",
    "contains_discretize",
    "cw_margin_loss",
    "default_attacks",
    "evaluate_robustness",
    "pgd",
    "pgd_perturb",
    "result_from_inputs",
]
