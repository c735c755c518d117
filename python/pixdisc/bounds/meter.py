"""What a bound computation may spend: work counted in forward passes, and an optional wall-clock deadline.

Work is counted from shapes, never from the clock, so a work limit stops a
computation at the same place on an idle or a busy machine. One unit is the
work of one forward pass of the network on one image: a bound pass charges
the elements it writes (interval bounds: two per activation; a backward step:
its coefficients) divided by the activations of one forward pass.
"""

from __future__ import annotations

import time
from typing import Optional, Tuple


class BudgetExhausted(Exception):
    """A bound computation ran out of its work or its seconds; ``where`` says in which step."""

    def __init__(self, resource: str, where: str) -> None:
        super().__init__(f"ran out of {resource} in {where}")
        self.resource = resource  # "work" or "seconds"
        self.where = where


class Meter:
    """Counts work and checks it, and the clock, against their limits (None: no limit)."""

    def __init__(self, work: Optional[float] = None, deadline: Optional[float] = None) -> None:
        self.work = work
        self.deadline = deadline  # time.monotonic() value
        self.spent = 0.0
        self._held: Optional[Tuple[Optional[float], Optional[float]]] = None

    def hold_back(self, share: float) -> None:
        """Keep ``share`` of the work and seconds left out of reach until :meth:`release` (a reserve for a
        last stage, so the stages before it run out early)."""
        if self._held is not None:
            raise RuntimeError("this meter already holds a reserve back")
        self._held = (self.work, self.deadline)
        if self.work is not None:
            self.work = self.spent + (1.0 - share) * max(0.0, self.work - self.spent)
        if self.deadline is not None:
            now = time.monotonic()
            self.deadline = now + (1.0 - share) * max(0.0, self.deadline - now)

    def release(self) -> None:
        """The limits as they were before :meth:`hold_back` (nothing when nothing is held)."""
        if self._held is not None:
            self.work, self.deadline = self._held
            self._held = None

    def charge(self, units: float, where: str) -> None:
        self.spent += units
        self.check(where)

    def check(self, where: str) -> None:
        if self.work is not None and self.spent > self.work:
            raise BudgetExhausted("work", where)
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise BudgetExhausted("seconds", where)

    @property
    def left(self) -> Optional[float]:
        return None if self.work is None else max(0.0, self.work - self.spent)
