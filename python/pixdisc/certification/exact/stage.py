"""The certification engine's exact stage: the seconds it gets, what makes it skip, and decide_milp's outcome."""

from __future__ import annotations

import time
from typing import List, Optional, Sequence, Tuple

import numpy as np
from torch import nn

from .decide import decide_milp
from .outcome import ExactOutcome


def exact_outcome(net: nn.Module, image: np.ndarray, positions: np.ndarray, candidates: List[np.ndarray],
                  codes: np.ndarray, y: int, base_codes: np.ndarray, image_shape: Sequence[int],
                  code_channels: int, exact_seconds: float, deadline: Optional[float],
                  tolerance: float) -> Tuple[Optional[ExactOutcome], str]:
    """decide_milp on a sample that bounds and branching left open, with ``exact_seconds`` of HiGHS's time
    capped by the image's ``deadline``; (None, why) when the stage does not run or refuses the network."""
    seconds = exact_seconds
    if deadline is not None:
        seconds = min(seconds, deadline - time.monotonic())
    if seconds <= 0:
        return None, "no seconds left for the exact stage"
    if code_channels != image_shape[0]:
        return None, "the exact stage needs a codebook with the images' channels"
    try:
        return decide_milp(net, image, positions, candidates, codes, y, time_limit=seconds,
                           margin_tolerance=tolerance, base_codes=base_codes, image_shape=image_shape), ""
    except NotImplementedError as error:  # a network the program cannot encode
        return None, f"exact stage: {error}"
