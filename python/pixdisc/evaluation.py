"""Robust accuracy as an interval: the certified floor from :func:`pixdisc.certify`, the attacked ceiling from the suite.

An attack can only show that a sample is *not* robust, a certificate only
that it is; robust accuracy lies between the fraction certified and the
fraction no attack broke, and is exact where the two meet. The two sides must
never contradict each other: a certified sample that an attack breaks is a
bug (an unsound certificate or an attack that leaves the eps-ball), and is
raised as one.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .attacks import AttackResult, AttackSpec, contains_discretize, cw_margin_loss, evaluate_robustness
from .certification import Budget, CertifyResult, certify
from .inputs import as_images, as_labels, check_eps

__all__ = ["RobustnessInterval", "robustness_interval", "STATUSES", "DEFAULT_CERTIFY_BUDGET"]

STATUSES = ("certified", "broken", "undecided")

# Bounds at the root and a short branch and bound, about half a second per
# undecided image on 2 cores: certified-trained models decide almost everything
# with it; naturally or adversarially trained ones are barely certifiable by
# bounds at all, so more budget buys little there.
DEFAULT_CERTIFY_BUDGET = Budget(nodes=20, seconds=0.5)


@dataclass
class RobustnessInterval:
    """Per-sample status (``certified``, ``broken``, ``undecided``) and the floor/ceiling it gives.

    ``attack`` is the suite's worst case per sample, with certify's verified
    counterexamples merged in as one more attack (``attack_names[-1] ==
    "certify"``); ``certificate`` is certify's result on the samples it ran
    on (``certified_on``), or None for a model without a discretizer.
    """

    status: np.ndarray
    attack: AttackResult
    attack_names: list[str]
    certificate: CertifyResult | None
    certified_on: np.ndarray
    eps: float
    seconds: dict[str, float] = field(default_factory=dict)
    floor_unavailable: str = ""  # why there is no certificate, where there is none

    def __len__(self) -> int:
        return len(self.status)

    def count(self, status: str) -> int:
        return int((self.status == status).sum())

    @property
    def floor(self) -> float | None:
        """Certified robust accuracy; None without a certificate (undefended model)."""
        if self.certificate is None or not len(self):
            return None
        return self.count("certified") / len(self)

    @property
    def ceiling(self) -> float:
        """Robust accuracy under the strongest attacks: no attack broke the sample."""
        return (len(self) - self.count("broken")) / len(self) if len(self) else math.nan

    @property
    def exact(self) -> bool:
        """Floor and ceiling meet: every sample decided, so robust accuracy is known exactly."""
        return self.certificate is not None and self.count("undecided") == 0

    def summary(self) -> dict[str, Any]:
        """JSON-able counts and fractions (fractions of all samples, in [0, 1])."""
        n = len(self)
        counts = {name: self.count(name) for name in STATUSES}
        return {
            "n": n,
            "eps": self.eps,
            **counts,
            "clean_accuracy": self.attack.clean_accuracy,
            "floor": self.floor,
            "ceiling": self.ceiling,
            "undecided_fraction": counts["undecided"] / n if n else None,
            "decided_fraction": (n - counts["undecided"]) / n if n and self.certificate is not None else None,
            "exact": self.exact,
            "floor_unavailable": self.floor_unavailable or None,
            "seconds": dict(self.seconds),
        }


def robustness_interval(
    model: nn.Module,
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    eps: float,
    *,
    attacks: Sequence[AttackSpec] | None = None,
    steps: int = 100,
    step_size: float | None = None,
    certify_budget: Budget | None = None,
    certify_all: bool = False,
    certify_options: Mapping[str, Any] | None = None,
    batch_size: int = 256,
    seed: int = 0,
    progress: bool = True,
) -> RobustnessInterval:
    """Attack with the suite (default: the strongest, :func:`pixdisc.attacks.default_attacks`), then certify.

    For a model ``Sequential(Discretize(cb), net)``, :func:`pixdisc.certify`
    (branch and bound, ``certify_budget`` per sample, default
    :data:`DEFAULT_CERTIFY_BUDGET`) runs on the samples no attack broke (on all
    of them with ``certify_all``, which checks the two sides against each
    other everywhere); ``certify_options`` go to it as keywords (``workers``,
    ``executor``, ``checkpoint``, ...). A verified counterexample of certify
    counts as broken. Raises RuntimeError if an attack breaks a certified
    sample.
    """
    eps = check_eps(eps)
    images = as_images(x).detach()
    labels = as_labels(y, images.shape[0])
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    result = evaluate_robustness(model, images, labels, attacks, eps=eps, steps=steps, step_size=step_size,
                                 batch_size=batch_size, seed=seed, keep_adv=True, progress=progress)
    seconds["attacks"] = time.perf_counter() - started
    names = [str(entry.get("name", entry.get("attack"))) for entry in result.params["attacks"]]
    broken = result.success.cpu().numpy().copy()
    n = len(broken)
    certificate = None
    defended = contains_discretize(model)
    unavailable = "" if defended else "no discretizer: nothing to certify"
    certified_on = np.zeros(0, np.int64)
    certified = np.zeros(n, bool)
    if defended and n:
        certified_on = np.arange(n) if certify_all else np.flatnonzero(~broken)
        started = time.perf_counter()
        options = {"executor": "serial", **dict(certify_options or {})}
        try:
            certificate = certify(model, None, images[certified_on].cpu(), labels[certified_on].cpu(), eps,
                                  budget=certify_budget or DEFAULT_CERTIFY_BUDGET, progress=progress, **options)
        except TypeError as exc:
            if "does not support" not in str(exc):
                raise
            # A network the bounds cannot walk: there is no floor, and the report says why.
            unavailable = f"no certified floor: {exc}"
        seconds["certify"] = time.perf_counter() - started
    if certificate is not None:
        outcome = certificate.outcome
        certified[certified_on] = outcome == "certified"
        contradicted = certified & broken
        if contradicted.any():
            raise RuntimeError(
                f"samples {np.flatnonzero(contradicted)[:10].tolist()} were certified robust and broken by an attack: "
                "a certificate or an attack is wrong; please report this")
        # certify's checked counterexamples are attacks too.
        verified = np.flatnonzero(certificate.verified & (outcome == "failed"))
        _merge_counterexamples(model, result, certificate, certified_on, verified, len(names), images, labels)
        broken = result.success.cpu().numpy()
        names.append("certify")
    status = np.where(certified, "certified", np.where(broken, "broken", "undecided")).astype("<U9")
    return RobustnessInterval(status, result, names, certificate, certified_on, float(eps), seconds, unavailable)


def _merge_counterexamples(model: nn.Module, result: AttackResult, certificate: CertifyResult, certified_on: np.ndarray,
                           verified: np.ndarray, position: int, images: Tensor, labels: Tensor) -> None:
    for local in verified:
        sample = int(certified_on[local])
        if bool(result.success[sample]):
            continue
        x_adv = torch.from_numpy(certificate.counterexample[int(local)]).reshape(images.shape[1:])
        with torch.no_grad():
            logits = model(x_adv[None].to(images.device)).cpu()
        if int(logits.argmax(dim=1)[0]) == int(labels[sample]):
            continue  # certify checked it with its own batch; count it only if the whole model agrees here
        result.adv_pred[sample] = logits.argmax(dim=1)[0]
        result.margin[sample] = cw_margin_loss(logits, labels[sample : sample + 1].cpu())[0]
        if result.x_adv is not None:
            result.x_adv[sample] = x_adv.to(result.x_adv.dtype)
        result.success[sample] = True
        result.adv_correct[sample] = False
        if result.attack_index is not None:
            result.attack_index[sample] = position
