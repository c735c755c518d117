"""White-box l_inf gradient attacks: PGD and the paper's Adam-on-sign attack (BPDA through a defense)."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from ..inputs import as_images, as_labels
from ..models import model_device
from .base import AttackResult, _check_budget, _check_logits, _generator, _loss_function, cw_margin_loss


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
    x = as_images(x)
    y = as_labels(y, x.shape[0])
    if target is not None:
        target = as_labels(target, x.shape[0], "target")
    # Follow the model: numpy or CPU inputs to a GPU model just work.
    device = model_device(model, x.device)
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

