"""What every attack shares: budget checks, seeds, the losses it maximises and the per-sample result."""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from ..inputs import check_eps


# ----------------------------------------------------------------------------
# Losses (per sample; attacks maximise them)


def cross_entropy_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Per-sample cross-entropy of ``logits`` (N, classes) against labels ``y`` (N,)."""
    return F.cross_entropy(logits, y, reduction="none")


def cw_margin_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Per-sample Carlini-Wagner margin: largest other logit minus the true logit (> 0 means misclassified)."""
    true_logit = logits.gather(1, y[:, None]).squeeze(1)
    is_true = F.one_hot(y, logits.shape[1]).bool()
    other_logit = logits.masked_fill(is_true, float("-inf")).amax(dim=1)
    return other_logit - true_logit


LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "ce": cross_entropy_loss,
    "cw": cw_margin_loss,
}


# ----------------------------------------------------------------------------
# Budget checks (images, labels and eps: pixdisc.inputs)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_budget(eps: float, steps: int, step_size: float, restarts: int) -> None:
    check_eps(eps)
    if not _is_integer(steps) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    if not _is_real(step_size) or step_size < 0:
        raise ValueError(f"step_size must be a finite number >= 0, got {step_size!r}")
    if not _is_integer(restarts) or restarts < 1:
        raise ValueError(f"restarts must be an integer >= 1, got {restarts!r}")


def _loss_function(loss: str | Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    if callable(loss):
        return loss
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[loss]


def _check_logits(logits: Tensor, y: Tensor) -> None:
    if logits.ndim != 2 or logits.shape[0] != y.shape[0] or logits.shape[1] < 2:
        raise ValueError(f"model must return logits of shape ({y.shape[0]}, classes>=2), got {tuple(logits.shape)}")
    if y.numel() and int(y.max()) >= logits.shape[1]:
        raise ValueError(f"label {int(y.max())} is out of range for a model with {logits.shape[1]} classes")


def derive_seed(*keys: int) -> int:
    """A 63-bit seed mixed from integer keys (well spread even for consecutive keys)."""
    # SeedSequence takes non-negative entropy only; wrap negatives into 64 bits.
    state = np.random.SeedSequence([int(key) % 2**64 for key in keys]).generate_state(1, np.uint64)[0]
    return int(state) >> 1


def _jsonable(value: Any) -> Any:
    """Attack parameters as JSON-able values: callables by name, anything else exotic by repr."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if is_dataclass(value) and not isinstance(value, type):
        return _jsonable(asdict(value))
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if callable(value):
        return getattr(value, "__name__", type(value).__name__)
    return repr(value)


def _generator(seed: int | None) -> torch.Generator:
    # CPU generator: random starts are then identical whatever device the model is on.
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    return torch.Generator().manual_seed(int(seed))


# ----------------------------------------------------------------------------
# Results


@dataclass
class AttackResult:
    """Per-sample outcome of an attack (or of several, worst case per sample).

    ``success`` means the attack met its goal (misclassification, or the
    target class). ``loss`` is the attack's own loss at ``x_adv``; ``margin``
    is the CW margin w.r.t. the true label (> 0: misclassified), comparable
    across attacks. ``attack_index`` says which attack of an
    ``evaluate_robustness`` list produced ``x_adv``.
    """

    x_adv: Tensor | None
    success: Tensor
    clean_correct: Tensor
    adv_correct: Tensor
    clean_pred: Tensor
    adv_pred: Tensor
    loss: Tensor
    margin: Tensor
    params: dict[str, Any] = field(default_factory=dict)
    attack_index: Tensor | None = None

    def __len__(self) -> int:
        return int(self.success.shape[0])

    @property
    def clean_accuracy(self) -> float:
        return int(self.clean_correct.sum()) / len(self) if len(self) else float("nan")

    @property
    def robust_accuracy(self) -> float:
        return int(self.adv_correct.sum()) / len(self) if len(self) else float("nan")

    def summary(self) -> dict[str, Any]:
        """Counts, accuracies and the attack parameters as strict-JSON values (an undefined rate is None)."""
        count = len(self)
        clean_correct = int(self.clean_correct.sum())
        robust = int(self.adv_correct.sum())
        # Successes on points the model got right: the attack's own merit.
        broken = int((self.clean_correct & self.success).sum())
        return {
            "n": count,
            "clean_correct": clean_correct,
            "robust": robust,
            "successes": int(self.success.sum()),
            "clean_accuracy": clean_correct / count if count else None,
            "robust_accuracy": robust / count if count else None,
            "attack_success_rate": broken / clean_correct if clean_correct else None,
            "params": self.params,
        }

    @staticmethod
    def concatenate(results: Sequence[AttackResult]) -> AttackResult:
        """Join results over consecutive batches of the same attack(s)."""
        if not results:
            raise ValueError("nothing to concatenate")

        def join(name: str) -> Tensor | None:
            parts = [getattr(result, name) for result in results]
            if any(part is None for part in parts):
                return None
            return torch.cat(parts)

        return AttackResult(
            x_adv=join("x_adv"),
            success=join("success"),
            clean_correct=join("clean_correct"),
            adv_correct=join("adv_correct"),
            clean_pred=join("clean_pred"),
            adv_pred=join("adv_pred"),
            loss=join("loss"),
            margin=join("margin"),
            params=results[0].params,
            attack_index=join("attack_index"),
        )

    def to(self, device: str | torch.device) -> AttackResult:
        def move(tensor: Tensor | None) -> Tensor | None:
            return None if tensor is None else tensor.to(device)

        return AttackResult(
            x_adv=move(self.x_adv),
            success=move(self.success),
            clean_correct=move(self.clean_correct),
            adv_correct=move(self.adv_correct),
            clean_pred=move(self.clean_pred),
            adv_pred=move(self.adv_pred),
            loss=move(self.loss),
            margin=move(self.margin),
            params=self.params,
            attack_index=move(self.attack_index),
        )


def result_from_inputs(x: Tensor, y: Tensor, x_adv: Tensor, clean_logits: Tensor, adv_logits: Tensor,
                       params: dict[str, Any]) -> AttackResult:
    """The AttackResult of checked adversarial inputs, success judged by the model's own logits on them."""
    clean_pred = clean_logits.argmax(dim=1)
    # A misclassified clean point counts as broken with no perturbation, as in pgd.
    use_clean = clean_pred != y
    x_adv = torch.where(use_clean.view(-1, *([1] * (x.ndim - 1))), x, x_adv)
    adv_logits = torch.where(use_clean[:, None], clean_logits, adv_logits)
    adv_pred = adv_logits.argmax(dim=1)
    margin = cw_margin_loss(adv_logits, y)
    return AttackResult(
        x_adv=x_adv,
        success=adv_pred != y,
        clean_correct=clean_pred == y,
        adv_correct=adv_pred == y,
        clean_pred=clean_pred,
        adv_pred=adv_pred,
        loss=margin,
        margin=margin,
        params=params,
    )
