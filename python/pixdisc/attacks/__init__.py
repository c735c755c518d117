"""White-box l_inf attacks (PGD, the paper's Adam-on-sign attack) and worst-case robustness evaluation.

Every attack takes a plain torch.nn.Module. A defended model is
nn.Sequential(defense, net) whose defense discretizes in the forward pass and
returns a BPDA gradient in the backward pass, so every attack here is a BPDA
attack on it without knowing about the defense.

Layout: ``base`` (input checks, losses, :class:`AttackResult`), ``gradient``
(PGD, Adam-on-sign), ``sx`` (the S(x) search of the discretized set), ``suite``
(named attacks, the default suite and :func:`evaluate_robustness`). The
paper's budgets per data set live in :mod:`pixdisc.profiles`.
"""

from ..profiles import PAPER_BUDGETS
from .base import LOSSES, AttackResult, cross_entropy_loss, cw_margin_loss, result_from_inputs
from .gradient import adam_sign_attack, pgd, pgd_perturb
from .suite import (ADAPTIVE_FOCUS, ADAPTIVE_ORDER, ATTACKS, DEEP_SEARCH_FACTOR, FOCUS_SEARCH, GRADIENT_ORDER,
                    QUICK_SEARCH, SUITE, AttackSpec, Stage, adaptive_attacks, applicable_attacks, attack_spec,
                    contains_discretize, default_attacks, evaluate_robustness)
from .sx import SearchBudget, sx_attack


__all__ = [
    "ADAPTIVE_FOCUS",
    "DEEP_SEARCH_FACTOR",
    "FOCUS_SEARCH",
    "QUICK_SEARCH",
    "ADAPTIVE_ORDER",
    "GRADIENT_ORDER",
    "ATTACKS",
    "LOSSES",
    "PAPER_BUDGETS",
    "AttackResult",
    "AttackSpec",
    "SUITE",
    "SearchBudget",
    "Stage",
    "adam_sign_attack",
    "adaptive_attacks",
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
    "sx_attack",
]
