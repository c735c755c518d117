"""Statistics the reports print: lower bounds on a certified fraction (Proposition 2 of the 2019 paper, done
right), the two-sided interval beside every accuracy, and empirical CDFs."""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

__all__ = ["hoeffding_lower", "clopper_pearson_lower", "clopper_pearson_interval", "paper_lower",
           "certified_fraction_bounds", "accuracy_interval", "with_intervals", "empirical_cdf"]


def _check(successes: int, m: int, delta: float) -> None:
    if m <= 0:
        raise ValueError("need at least one sample")
    if not 0 <= successes <= m:
        raise ValueError(f"successes must lie in [0, {m}], got {successes}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")


def hoeffding_lower(successes: int, m: int, delta: float) -> float:
    """Additive Hoeffding bound ``s_hat - sqrt(ln(1/delta) / (2m))``: holds with probability >= 1 - delta.

    Clamped at 0: a fraction is never negative, so a negative bound says nothing more.
    """
    _check(successes, m, delta)
    return max(0.0, successes / m - math.sqrt(math.log(1 / delta) / (2 * m)))


def paper_lower(successes: int, m: int, delta: float) -> float:
    """The paper's multiplicative ``(1 - sqrt(ln(1/delta) / (2m))) * s_hat`` (reproduces its Table IV).

    It is not what Hoeffding's inequality gives; reported for comparison only.
    Clamped at 0 (for small m the factor is negative).
    """
    _check(successes, m, delta)
    return max(0.0, (1 - math.sqrt(math.log(1 / delta) / (2 * m))) * successes / m)


def clopper_pearson_lower(successes: int, m: int, delta: float) -> float:
    """Exact one-sided Clopper–Pearson lower bound at confidence 1 - delta."""
    _check(successes, m, delta)
    if successes == 0:
        return 0.0
    from scipy.stats import beta

    return float(beta.ppf(delta, successes, m - successes + 1))


def clopper_pearson_interval(successes: int, m: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided Clopper–Pearson interval for a proportion: covers it with probability >= ``confidence``.

    Conservative (never narrower than it should be), so an accuracy on n
    test images is reported with the uncertainty the sample really has.
    """
    _check(successes, m, 1 - confidence)
    from scipy.stats import beta

    tail = (1 - confidence) / 2
    lower = 0.0 if successes == 0 else float(beta.ppf(tail, successes, m - successes + 1))
    upper = 1.0 if successes == m else float(beta.ppf(1 - tail, successes + 1, m - successes))
    return lower, upper


def certified_fraction_bounds(successes: int, m: int, delta: float) -> Dict[str, float]:
    return {
        "s_hat": successes / m,
        "hoeffding": hoeffding_lower(successes, m, delta),
        "clopper_pearson": clopper_pearson_lower(successes, m, delta),
        "paper_formula": paper_lower(successes, m, delta),
    }


def accuracy_interval(value: Optional[float], n: Optional[int], confidence: float = 0.95) -> Optional[list[float]]:
    """Clopper-Pearson interval of an accuracy measured on ``n`` images (None when there is none)."""
    if value is None or not n or (isinstance(value, float) and math.isnan(value)):
        return None
    return [round(end, 6) for end in clopper_pearson_interval(int(round(value * n)), int(n), confidence)]


def with_intervals(result: Mapping[str, Any]) -> dict[str, Any]:
    """``result`` with ``ci95`` beside every accuracy of every setting (clean, each attack column, ceiling, floor)."""
    out = dict(result)
    settings = {}
    for name, row in result.get("settings", {}).items():
        n = row.get("n")
        ci = {key: accuracy_interval(row.get(key), n) for key in ("clean_accuracy", "robust_accuracy", "floor")}
        ci["robust_after"] = {attack: accuracy_interval(value, n)
                              for attack, value in row.get("robust_after", {}).items()}
        settings[name] = {**row, "ci95": ci}
    out["settings"] = settings
    return out


def empirical_cdf(values: Any) -> Tuple[np.ndarray, np.ndarray]:
    """Empirical CDF: ``(sorted values, fraction of values <= each)``; NaNs are dropped."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = np.sort(v[~np.isnan(v)])
    return v, np.arange(1, v.size + 1, dtype=np.float64) / max(v.size, 1)
