"""White-box l_inf attacks (PGD, the paper's Adam-on-sign attack) and worst-case robustness evaluation."""

# Every attack takes a plain torch.nn.Module. A defended model is
# nn.Sequential(defense, net) whose defense discretizes in the forward pass and
# returns a BPDA gradient in the backward pass, so every attack here is a BPDA
# attack on it without knowing about the defense.

from __future__ import annotations

import importlib.util
import math
import numbers
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm import tqdm

from .models import _model_device

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
]

# Attack budgets of the 2019 paper (Section II-F), on the [0,1] pixel scale.
# The paper states eps and steps; the MNIST/Fashion-MNIST step 0.01 and the
# CIFAR-10/GTSRB step 2/255 for eps=8/255 come from the authors' configs. For
# the budgets without a published step size (CIFAR-10 natural eps=2/255,
# ImageNet) we use eps/4, the ratio of the CIFAR-10 setting. The BPDA
# temperature alpha belongs to the defense, not to these budgets.
PAPER_BUDGETS: dict[str, dict[str, float | int]] = {
    "mnist": {"eps": 0.3, "steps": 100, "step_size": 0.01},
    "fashion_mnist": {"eps": 0.1, "steps": 100, "step_size": 0.01},
    "cifar10": {"eps": 8 / 255, "steps": 40, "step_size": 2 / 255},
    "cifar10_nat": {"eps": 2 / 255, "steps": 40, "step_size": 0.5 / 255},
    "gtsrb": {"eps": 8 / 255, "steps": 40, "step_size": 2 / 255},
    "imagenet": {"eps": 4 / 255, "steps": 10, "step_size": 1 / 255},
    "imagenet_nat": {"eps": 1 / 255, "steps": 1, "step_size": 1 / 255},
}


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
# Input checking


def _as_images(x: Tensor | np.ndarray, name: str = "x") -> Tensor:
    """Float images in [0,1] as a tensor; uint8 is taken as v/255 (SPEC section 1)."""
    if not isinstance(x, Tensor):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if not x.is_floating_point():
        raise ValueError(f"{name} must be float images in [0,1] or uint8, got dtype {x.dtype}")
    if x.ndim < 2:
        raise ValueError(f"{name} must have a batch axis and at least one feature axis, got shape {tuple(x.shape)}")
    if x.numel():
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} contains NaN or infinite values")
        low, high = float(x.min()), float(x.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(f"{name} must lie in [0,1], got values in [{low:g}, {high:g}]")
    return x


def _as_labels(y: Tensor | np.ndarray, count: int, name: str = "y") -> Tensor:
    if not isinstance(y, Tensor):
        y = torch.from_numpy(np.ascontiguousarray(y))
    if y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
        raise ValueError(f"{name} must hold integer class labels, got dtype {y.dtype}")
    if y.ndim != 1 or y.shape[0] != count:
        raise ValueError(f"{name} must have shape ({count},) to match x, got {tuple(y.shape)}")
    if y.numel() and int(y.min()) < 0:
        raise ValueError(f"{name} holds a negative class label")
    return y.to(torch.int64)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_budget(eps: float, steps: int, step_size: float, restarts: int) -> None:
    if not _is_real(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
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


def _derive_seed(*keys: int) -> int:
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


# ----------------------------------------------------------------------------
# The shared attack loop


def _project(candidate: Tensor, x: Tensor, eps: float) -> Tensor:
    # Ball first, then the image box: x is in [0,1], so the result is in both.
    return torch.clamp(torch.minimum(torch.maximum(candidate, x - eps), x + eps), 0.0, 1.0)


def _random_start(x: Tensor, eps: float, generator: torch.Generator) -> Tensor:
    noise = torch.empty(x.shape, dtype=x.dtype).uniform_(-eps, eps, generator=generator)
    return _project(x + noise.to(x.device), x, eps)


class _Objective:
    """The attack loss to maximise and the success test, untargeted or targeted."""

    def __init__(self, loss: Callable[[Tensor, Tensor], Tensor], y: Tensor, target: Tensor | None) -> None:
        self.loss_function = loss
        self.y = y
        self.target = target

    def subset(self, index: Tensor) -> _Objective:
        return _Objective(self.loss_function, self.y[index], None if self.target is None else self.target[index])

    def loss(self, logits: Tensor) -> Tensor:
        if self.target is None:
            return self.loss_function(logits, self.y)
        # Targeted: moving towards the target is the negated loss w.r.t. the target.
        return -self.loss_function(logits, self.target)

    def success(self, logits: Tensor) -> Tensor:
        prediction = logits.argmax(dim=1)
        if self.target is None:
            return prediction != self.y
        return prediction == self.target


def _loss_and_gradient(model: nn.Module, x_adv: Tensor, objective: _Objective) -> tuple[Tensor, Tensor, Tensor]:
    """Logits, per-sample loss and input gradient at ``x_adv`` (gradients flow through BPDA defenses)."""
    with torch.enable_grad():
        x_adv = x_adv.detach().requires_grad_(True)
        logits = model(x_adv)
        loss = objective.loss(logits)
        # autograd.grad, not backward(): the model's parameter .grad stay untouched.
        gradient = None
        if loss.requires_grad:
            (gradient,) = torch.autograd.grad(loss.sum(), x_adv, allow_unused=True)
        if gradient is None:
            raise ValueError(
                "the model's output has no gradient w.r.t. its input; wrap non-differentiable "
                "preprocessing in a module with a BPDA backward pass"
            )
    return logits.detach(), loss.detach(), gradient


class _Tracker:
    """Per-sample worst case over every input the attack evaluated.

    The first input that meets the goal is kept; until one does, the input
    with the highest attack loss.
    """

    def __init__(self, x: Tensor, logits: Tensor, objective: _Objective) -> None:
        self.x_adv = x.clone()
        self.loss = objective.loss(logits)
        self.success = objective.success(logits)
        self.logits = logits.clone()

    def update(self, index: Tensor, candidate: Tensor, logits: Tensor, objective: _Objective) -> None:
        loss = objective.loss(logits)
        success = objective.success(logits)
        known_success = self.success[index]
        take = ~known_success & (success | (loss > self.loss[index]))
        if bool(take.any()):
            chosen = index[take]
            self.x_adv[chosen] = candidate[take]
            self.loss[chosen] = loss[take]
            self.success[chosen] = success[take]
            self.logits[chosen] = logits[take]


def _prepare(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    steps: int,
    step_size: float,
    restarts: int,
    target: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    _check_budget(eps, steps, step_size, restarts)
    x = _as_images(x)
    y = _as_labels(y, x.shape[0])
    if target is not None:
        target = _as_labels(target, x.shape[0], "target")
    # Follow the model: numpy or CPU inputs to a GPU model just work.
    device = _model_device(model, x.device)
    x = x.detach().to(device)
    return x, y.to(device), None if target is None else target.to(device)


def _run_attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int,
    restarts: int,
    random_start: bool,
    seed: int | None,
    loss: str | Callable[[Tensor, Tensor], Tensor],
    target: Tensor | None,
    make_stepper: Callable[[Tensor], Callable[[Tensor, Tensor], Tensor]],
    params: dict[str, Any],
) -> AttackResult:
    objective = _Objective(_loss_function(loss), y, target)
    generator = _generator(seed)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            clean_logits = model(x)
        _check_logits(clean_logits, y)
        # The clean input is the first candidate: a misclassified point needs no perturbation.
        tracker = _Tracker(x, clean_logits, objective)
        for _ in range(restarts):
            index = torch.nonzero(~tracker.success).squeeze(1)
            if index.numel() == 0:
                break
            x_clean = x[index]
            sub_objective = objective.subset(index)
            x_adv = _random_start(x_clean, eps, generator) if random_start else x_clean.clone()
            step = make_stepper(x_clean)
            for _ in range(steps):
                logits, _, gradient = _loss_and_gradient(model, x_adv, sub_objective)
                tracker.update(index, x_adv, logits, sub_objective)
                x_adv = _project(step(x_adv, gradient), x_clean, eps).detach()
            with torch.no_grad():
                logits = model(x_adv)
            tracker.update(index, x_adv, logits, sub_objective)
        adv_logits = tracker.logits
    finally:
        model.train(was_training)
    clean_pred = clean_logits.argmax(dim=1)
    adv_pred = adv_logits.argmax(dim=1)
    return AttackResult(
        x_adv=tracker.x_adv,
        success=tracker.success,
        clean_correct=clean_pred == y,
        adv_correct=adv_pred == y,
        clean_pred=clean_pred,
        adv_pred=adv_pred,
        loss=tracker.loss,
        margin=cw_margin_loss(adv_logits, y),
        params=params,
    )


# ----------------------------------------------------------------------------
# Public attacks


def pgd(
    model: nn.Module,
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    eps: float,
    steps: int,
    step_size: float,
    *,
    loss: str | Callable[[Tensor, Tensor], Tensor] = "ce",
    random_start: bool = True,
    restarts: int = 1,
    seed: int | None = None,
    target: Tensor | np.ndarray | None = None,
) -> AttackResult:
    """l_inf projected gradient descent (Madry et al.): sign-gradient ascent on ``loss`` in the eps-ball.

    Random start uniform in the eps-ball; after every step the iterate is
    projected onto the ball around ``x`` and clipped to ``[0,1]``. On
    ``Sequential(defense, net)`` this is BPDA-PGD. Per sample, the result is
    the worst case over restarts and iterates: the first input found that
    fools the model, else the one with the highest loss. Later restarts only
    run on samples not yet fooled. ``loss`` is ``"ce"``, ``"cw"`` or a callable
    ``(logits, y) -> per-sample loss``; with ``target`` the attack is targeted
    (success means predicting ``target``). The model runs in eval mode.
    """
    x, y, target = _prepare(model, x, y, eps, steps, step_size, restarts, target)

    def make_stepper(x_clean: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
        return lambda x_adv, gradient: x_adv + step_size * gradient.sign()

    params = {
        "attack": "pgd",
        "eps": float(eps),
        "steps": int(steps),
        "step_size": float(step_size),
        "loss": loss if isinstance(loss, str) else getattr(loss, "__name__", "custom"),
        "random_start": random_start,
        "restarts": int(restarts),
        "seed": None if seed is None else int(seed),
        "targeted": target is not None,
    }
    return _run_attack(
        model, x, y, eps=eps, steps=steps, restarts=restarts, random_start=random_start,
        seed=seed, loss=loss, target=target, make_stepper=make_stepper, params=params,
    )


def adam_sign_attack(
    model: nn.Module,
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    eps: float,
    steps: int,
    step_size: float,
    *,
    loss: str | Callable[[Tensor, Tensor], Tensor] = "cw",
    random_start: bool = False,
    restarts: int = 1,
    seed: int | None = None,
    betas: tuple[float, float] = (0.9, 0.999),
    adam_eps: float = 1e-8,
    target: Tensor | np.ndarray | None = None,
) -> AttackResult:
    """The attack of the paper's released code: Adam (learning rate ``step_size``) fed the *sign* of the gradient.

    The paper's text only says "BPDA"; its evaluation code for the discretized
    models minimises the margin ``z_y - max_{j!=y} z_j`` (here: maximises the
    CW margin loss) with ``tf.train.AdamOptimizer(step_size)`` applied to
    ``sign(grad)``, from the clean image (no random start), projecting onto
    the eps-ball and ``[0,1]`` after every step, for ``steps`` steps. We
    implement the same with standard bias-corrected Adam moments (``betas``,
    ``adam_eps``), which keep their state across projections as in the
    original. Unlike the original, which returned the last iterate, the
    result is the per-sample worst case over iterates and restarts as in
    :func:`pgd`; ``random_start=True`` with ``restarts>1`` adds random restarts.
    """
    x, y, target = _prepare(model, x, y, eps, steps, step_size, restarts, target)
    beta1, beta2 = betas
    if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0):
        raise ValueError(f"betas must lie in [0,1), got {betas!r}")

    def make_stepper(x_clean: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
        first_moment = torch.zeros_like(x_clean)
        second_moment = torch.zeros_like(x_clean)
        count = 0

        def step(x_adv: Tensor, gradient: Tensor) -> Tensor:
            nonlocal count
            count += 1
            # Adam minimises, so it is fed the sign of the descent direction of -loss.
            direction = -gradient.sign()
            first_moment.mul_(beta1).add_(direction, alpha=1 - beta1)
            second_moment.mul_(beta2).addcmul_(direction, direction, value=1 - beta2)
            first_hat = first_moment / (1 - beta1**count)
            second_hat = second_moment / (1 - beta2**count)
            return x_adv - step_size * first_hat / (second_hat.sqrt() + adam_eps)

        return step

    params = {
        "attack": "adam_sign",
        "eps": float(eps),
        "steps": int(steps),
        "step_size": float(step_size),
        "loss": loss if isinstance(loss, str) else getattr(loss, "__name__", "custom"),
        "random_start": random_start,
        "restarts": int(restarts),
        "seed": None if seed is None else int(seed),
        "betas": [float(beta1), float(beta2)],
        "targeted": target is not None,
    }
    return _run_attack(
        model, x, y, eps=eps, steps=steps, restarts=restarts, random_start=random_start,
        seed=seed, loss=loss, target=target, make_stepper=make_stepper, params=params,
    )


def pgd_perturb(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float,
    loss: str | Callable[[Tensor, Tensor], Tensor] = "ce",
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The bare Madry inner loop for adversarial training: last PGD iterate, no bookkeeping, no input checks.

    Runs the model in whatever mode it is in; the caller picks train or eval.
    """
    objective = _Objective(_loss_function(loss), y, None)
    if random_start:
        x_adv = _random_start(x, eps, generator if generator is not None else _generator(None))
    else:
        x_adv = x.clone()
    for _ in range(steps):
        _, _, gradient = _loss_and_gradient(model, x_adv, objective)
        x_adv = _project(x_adv + step_size * gradient.sign(), x, eps).detach()
    return x_adv


def _sx_attack(*args: Any, **kwargs: Any) -> AttackResult:
    from .sx_attack import sx_attack  # imports this module: resolved at call time

    return sx_attack(*args, **kwargs)


_sx_attack.__name__ = "sx_attack"

ATTACKS: dict[str, Callable[..., AttackResult]] = {
    "pgd": pgd,
    "adam_sign": adam_sign_attack,
    "sx": _sx_attack,
}


# ----------------------------------------------------------------------------
# Evaluation over several attacks

# A mapping {"attack": "pgd" | "adam_sign", **keyword arguments}, or a callable
# (model, x, y) -> AttackResult | adversarial images (e.g. a torchattacks attack
# wrapped in a lambda).
AttackSpec = Union[Mapping[str, Any], Callable[..., Any]]


def _spec_name(spec: AttackSpec, position: int) -> str:
    if isinstance(spec, Mapping):
        return str(spec.get("name", spec.get("attack", f"attack{position}")))
    return getattr(spec, "__name__", type(spec).__name__)


def contains_discretize(model: nn.Module) -> bool:
    """Whether ``model`` has a :class:`pixdisc.Discretize` anywhere inside it."""
    from .discretize import Discretize

    return any(isinstance(module, Discretize) for module in model.modules())


# Every attack of the suite by name, strongest and cheapest first for a discretized model.
SUITE: tuple[str, ...] = ("sx", "pgd_ce", "pgd_cw", "adam_sign", "apgd_ce", "apgd_dlr", "square")
# Names that only make sense against a discretizer: the S(x) search needs one; the
# gradient-free Square is what catches gradient masking, which only a defense causes.
_DEFENSE_ONLY = ("sx", "square")
_TORCHATTACKS = ("apgd_ce", "apgd_dlr", "square")


def attack_spec(
    name: str,
    eps: float,
    *,
    steps: int = 100,
    step_size: float | None = None,
    square_queries: int = 1000,
    sx_budget: Any = None,
    seed: int = 0,
) -> AttackSpec:
    """The ``evaluate_robustness`` spec of one named attack of :data:`SUITE` (``step_size`` default ``eps / 30``)."""
    if not _is_real(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    step_size = eps / 30 if step_size is None else step_size
    budget = {"eps": float(eps), "steps": int(steps), "step_size": float(step_size)}
    if name == "sx":
        return {"name": name, "attack": "sx", "eps": float(eps), **({} if sx_budget is None else {"budget": sx_budget})}
    if name in ("pgd_ce", "pgd_cw"):
        return {"name": name, "attack": "pgd", "loss": name[-2:], **budget}
    if name == "adam_sign":
        return {"name": name, "attack": "adam_sign", "loss": "cw", **budget}
    if name in _TORCHATTACKS:
        from .integrations import TorchattacksAttack

        if name == "square":
            return TorchattacksAttack(name, "Square", norm="Linf", eps=float(eps), n_queries=int(square_queries),
                                      seed=seed)
        return TorchattacksAttack(name, "APGD", norm="Linf", eps=float(eps), steps=int(steps), loss=name[5:],
                                  seed=seed)
    raise ValueError(f"unknown attack {name!r}; choose from {list(SUITE)}")


def applicable_attacks(model: nn.Module, names: Sequence[str] = SUITE) -> list[str]:
    """``names`` without those that do not apply to ``model`` or need torchattacks when it is missing."""
    defended = contains_discretize(model)
    if defended:
        from .sx_attack import split_defended

        split_defended(model)  # a clear error now if the discretizer is not the first layer
    have_torchattacks = importlib.util.find_spec("torchattacks") is not None
    return [name for name in names
            if (defended or name not in _DEFENSE_ONLY) and (have_torchattacks or name not in _TORCHATTACKS)]


def default_attacks(model: nn.Module, eps: float, **options: Any) -> list[AttackSpec]:
    """The strongest suite pixdisc has for ``model`` (:data:`SUITE`, what applies), strongest and cheapest first.

    For a model ``Sequential(Discretize(cb), net)``: the S(x) search
    (:func:`pixdisc.sx_attack.sx_attack`), BPDA PGD with cross-entropy and CW
    margin and the paper's Adam-on-sign attack, then, when torchattacks is
    installed, APGD-CE and APGD-DLR through the BPDA gradient and the
    gradient-free Square attack on the hard model. For any other model the
    gradient attacks. ``options`` go to :func:`attack_spec`.
    """
    return [attack_spec(name, eps, **options) for name in applicable_attacks(model)]


def _run_spec(
    spec: AttackSpec,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    seed: int,
    eps: float | None,
) -> AttackResult:
    if isinstance(spec, Mapping):
        options = dict(spec)
        options.pop("name", None)
        name = options.pop("attack", None)
        if name not in ATTACKS:
            raise ValueError(f"attack spec needs 'attack' set to one of {sorted(ATTACKS)}, got {name!r}")
        options.setdefault("seed", seed)
        return ATTACKS[name](model, x, y, **options)
    outcome = spec(model, x, y)
    if isinstance(outcome, AttackResult):
        return outcome
    if not isinstance(outcome, Tensor) or outcome.shape != x.shape:
        raise ValueError(
            f"attack callable {_spec_name(spec, 0)} must return an AttackResult or images of shape "
            f"{tuple(x.shape)}, got {type(outcome).__name__}"
        )
    x_adv = outcome.detach().to(x.device, x.dtype)
    # Allow float rounding from third-party clipping; reject real violations.
    tolerance = 1e-6
    if float(x_adv.min()) < -tolerance or float(x_adv.max()) > 1 + tolerance:
        raise ValueError(f"attack callable {_spec_name(spec, 0)} returned images outside [0,1]")
    if eps is not None and float((x_adv - x).abs().max()) > eps + tolerance:
        raise ValueError(f"attack callable {_spec_name(spec, 0)} returned a perturbation larger than eps={eps}")
    x_adv = x_adv.clamp(0.0, 1.0)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            clean_logits = model(x)
            adv_logits = model(x_adv)
    finally:
        model.train(was_training)
    _check_logits(clean_logits, y)
    return result_from_inputs(x, y, x_adv, clean_logits, adv_logits,
                              {"attack": _spec_name(spec, 0), **getattr(spec, "params", {})})


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


def evaluate_robustness(
    model: nn.Module,
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    attacks: Sequence[AttackSpec] | None = None,
    *,
    batch_size: int = 256,
    seed: int = 0,
    eps: float | None = None,
    steps: int = 100,
    step_size: float | None = None,
    device: str | torch.device | None = None,
    keep_adv: bool = True,
    progress: bool = True,
) -> AttackResult:
    """Run several untargeted attacks and keep, per sample, the worst case across them.

    With ``attacks=None`` the default suite runs (:func:`default_attacks`:
    for a discretized model the S(x) search, BPDA gradient attacks and, with
    torchattacks, APGD-CE/DLR and Square), which needs ``eps``; ``steps`` and
    ``step_size`` set its gradient attacks' budget.
    A sample is robust only if no attack succeeds. Its ``x_adv`` comes from the
    first attack (in list order) that succeeds, else from the attack leaving
    the highest CW margin; each attack after the first only runs on samples
    not yet broken. Data are processed in batches of ``batch_size`` on
    ``device`` (default: the model's); results come back on the CPU. Attack
    specs without their own ``seed`` get one derived from ``seed``, the
    attack's position and the batch index. ``eps``, if given, is checked
    against the perturbations returned by callables. ``keep_adv=False`` drops
    the adversarial images to save memory.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if attacks is None:
        if eps is None:
            raise ValueError("the default attack suite needs eps")
        attacks = default_attacks(model, eps, steps=steps, step_size=step_size, seed=seed)
    if not attacks:
        raise ValueError("attacks must name at least one attack")
    for position, spec in enumerate(attacks):
        if isinstance(spec, Mapping):
            if spec.get("attack") not in ATTACKS:
                raise ValueError(f"attack spec {position} needs 'attack' set to one of {sorted(ATTACKS)}")
            if "target" in spec:
                raise ValueError("evaluate_robustness measures untargeted robustness; drop 'target'")
        elif not callable(spec):
            raise ValueError(f"attack spec {position} is neither a mapping nor a callable")
    images = _as_images(x).detach()
    labels = _as_labels(y, images.shape[0])
    target_device = torch.device(device) if device is not None else _model_device(model, images.device)
    batch_results: list[AttackResult] = []
    count = images.shape[0]
    batch_count = (count + batch_size - 1) // batch_size
    with tqdm(total=batch_count * len(attacks), desc="attacks", unit="attack", disable=not progress) as bar:
        for batch_index in range(batch_count):
            start = batch_index * batch_size
            x_batch = images[start : start + batch_size].to(target_device)
            y_batch = labels[start : start + batch_size].to(target_device)
            combined: AttackResult | None = None
            for position, spec in enumerate(attacks):
                batch_seed = _derive_seed(seed, position, batch_index)
                if isinstance(spec, Mapping) and spec.get("seed") is not None:
                    batch_seed = _derive_seed(int(spec["seed"]), position, batch_index)
                    spec = {**spec, "seed": batch_seed}
                if combined is None:
                    result = _run_spec(spec, model, x_batch, y_batch, batch_seed, eps)
                    result.attack_index = torch.zeros(len(result), dtype=torch.int64, device=result.success.device)
                    combined = result
                else:
                    remaining = torch.nonzero(~combined.success).squeeze(1)
                    if remaining.numel():
                        result = _run_spec(spec, model, x_batch[remaining], y_batch[remaining], batch_seed, eps)
                        _merge_worst(combined, result, remaining, position)
                bar.update(1)
            assert combined is not None
            if not keep_adv:
                combined.x_adv = None
            batch_results.append(combined.to("cpu"))
            bar.set_postfix(robust=f"{sum(int(r.adv_correct.sum()) for r in batch_results)}/{start + len(x_batch)}")
    if not batch_results:
        empty_bool = torch.zeros(0, dtype=torch.bool)
        empty_long = torch.zeros(0, dtype=torch.int64)
        empty_float = torch.zeros(0)
        result = AttackResult(
            x_adv=images.clone() if keep_adv else None, success=empty_bool, clean_correct=empty_bool,
            adv_correct=empty_bool, clean_pred=empty_long, adv_pred=empty_long, loss=empty_float,
            margin=empty_float, attack_index=empty_long,
        )
    else:
        result = AttackResult.concatenate(batch_results)
    result.params = {
        "attacks": [
            {key: _jsonable(value) for key, value in spec.items() if key != "seed"} if isinstance(spec, Mapping)
            else {"name": _spec_name(spec, position), **getattr(spec, "params", {})}
            for position, spec in enumerate(attacks)
        ],
        "seed": seed,
    }
    return result


def _merge_worst(combined: AttackResult, result: AttackResult, index: Tensor, position: int) -> None:
    """Fold ``result`` (on samples ``index`` of ``combined``, none broken yet) into ``combined``."""
    take = result.success | (result.margin > combined.margin[index])
    if not bool(take.any()):
        return
    chosen = index[take]
    if combined.x_adv is not None and result.x_adv is not None:
        combined.x_adv[chosen] = result.x_adv[take].to(combined.x_adv.dtype)
    combined.success[chosen] = result.success[take]
    combined.adv_correct[chosen] = result.adv_correct[take]
    combined.adv_pred[chosen] = result.adv_pred[take]
    combined.loss[chosen] = result.loss[take].to(combined.loss.dtype)
    combined.margin[chosen] = result.margin[take].to(combined.margin.dtype)
    assert combined.attack_index is not None
    combined.attack_index[chosen] = position
