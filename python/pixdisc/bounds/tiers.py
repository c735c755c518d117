"""Bound tiers, escalated box by box: each runs only on the boxes the ones before left open.

The tiers, cheapest first, each sound and intersected with the ones before
(so a later tier never proves less): ``"ibp"`` interval bounds;
``"crown-ibp"`` one CROWN pass of the output margins over interval
intermediate bounds; ``"crown"`` CROWN intermediate bounds for the neurons
the intervals leave unstable, then the output; ``"alpha-crown"`` the output
again with optimised lower ReLU slopes. Work spent goes to the meter, which
may stop a tier part-way: the margins of the tiers that finished still hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch
from torch import Tensor, nn

from .crown import _Propagator
from .meter import BudgetExhausted, Meter

TIERS = ("ibp", "crown-ibp", "crown", "alpha-crown")


@dataclass
class Escalation:
    """Margin bounds per box and how far the escalation went."""

    margins: Tensor  # (N, K) lower bounds of logit_y - logit_j (0 at j == y)
    tier: List[str]  # per box: the last tier that ran on it (the one that proved it, if proven)
    exhausted: Optional[BudgetExhausted] = None  # set when the meter stopped a tier

    def worst(self, y: Tensor) -> Tensor:
        """(N,) the smallest margin over j != y."""
        return self.margins.scatter(1, y.unsqueeze(1), float("inf")).min(1).values


def margin_matrix(y: Tensor, num_classes: int, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """Specification (N, K, K) whose row j is ``e_y - e_j``: ``C @ logits`` are the margins ``logit_y - logit_j``."""
    y = torch.as_tensor(y)
    if y.dim() != 1 or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(f"y must be a 1-d integer tensor of labels, got dtype {y.dtype} and shape {tuple(y.shape)}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{int(y.min())}, {int(y.max())}]")
    eye = torch.eye(num_classes, dtype=dtype, device=y.device)
    return eye[y].unsqueeze(1) - eye.unsqueeze(0)


def check_tier(tier: str, what: str = "bound tier") -> str:
    if tier not in TIERS:
        raise ValueError(f"{what} must be one of {TIERS}, got {tier!r}")
    return tier


def escalate(
    net: nn.Module,
    lower: Tensor,
    upper: Tensor,
    y: Tensor,
    top: str = "crown",
    *,
    tolerance: float = 0.0,
    dtype: Optional[torch.dtype] = None,
    meter: Optional[Meter] = None,
    first: str = "ibp",
) -> Escalation:
    """Bound every margin of every box, escalating from ``first`` to ``top`` while a box stays open.

    A box is proven when its smallest margin bound over j != y exceeds
    ``tolerance``. Runs without autograd except inside alpha-CROWN's slope
    optimisation. ``meter`` counts the work (and checks a deadline); when it
    runs out the result says where, and the margins are those of the tiers
    that finished.
    """
    check_tier(top)
    check_tier(first)
    with torch.no_grad():
        # The interval pass runs first, unmetered, for the output shape; it is charged inside the try below.
        prop = _Propagator(net, lower, upper, dtype)
        prop.ibp_nodes()
        prop.meter = meter
        y = torch.as_tensor(y, device=prop.lower.device)
        if y.shape != (prop.batch,):
            raise ValueError(f"y must have shape ({prop.batch},), got {tuple(y.shape)}")
        A = prop.spec(margin_matrix(y, prop.num_outputs(), dtype=prop.dtype))
        margins = torch.full(A.shape[:2], float("-inf"), dtype=prop.dtype, device=prop.lower.device)
        tiers = [first] * prop.batch
        result = Escalation(margins, tiers)
        if prop.batch == 0:
            return result

        def worst(values: Tensor, rows: Tensor) -> Tensor:
            return values.scatter(1, y[rows].unsqueeze(1), float("inf")).min(1).values

        rows = torch.arange(prop.batch, device=prop.lower.device)
        levels = TIERS[TIERS.index(first) : TIERS.index(top) + 1]
        current = prop
        try:
            for level, name in enumerate(levels):
                if level:
                    still = worst(margins[rows], rows) <= tolerance
                    if not bool(still.any()):
                        break
                    rows, current = rows[still], current.select(still)
                    for i in rows.tolist():
                        tiers[i] = name
                sub = A[rows]
                if level == 0:
                    prop.charge_interval_pass()
                if name == "ibp":
                    value = current.tail_lower(current.ibp_nodes(), sub)
                elif name == "crown-ibp":
                    value = current.crown_lower(sub, "ibp", True)
                elif name == "crown":
                    value = current.crown_lower(sub, "crown", True)
                else:
                    chosen = rows
                    value = current.alpha_lower(sub, margins[rows],
                                                proven=lambda best: worst(best, chosen) > tolerance)
                margins[rows] = torch.maximum(margins[rows], value)
        except BudgetExhausted as exhausted:
            result.exhausted = exhausted
        # Exactly 0 already (a zero row); pinned so that no rounding can differ.
        result.margins = margins.scatter(1, y.unsqueeze(1), 0.0)
        return result
