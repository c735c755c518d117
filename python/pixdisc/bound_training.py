"""Certified (bound-based) training: the mixed attack-and-bound loss over S(x), BatchNorm while bounding.

:func:`train_certified` is the loop; :func:`certified_loss` one batch's loss; :func:`attack_member` the
attack half of it. Named configurations of it live in :mod:`pixdisc.recipes`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm import tqdm

from .inputs import as_images, as_labels, check_eps
from .training_run import (_check_nonnegative, _check_positive_integer, _first_checkpoint, _make_optimizer,
                           _private_rng, _resolve_device, _resume_training, _save_training, _start_epoch)

__all__ = ["TRAINING_BOUNDS", "attack_member", "batch_statistics", "certified_loss", "train_certified"]

_Statistics = dict[nn.Module, tuple[Tensor, Tensor]]


def _norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]


def batch_statistics(model: nn.Module, x: Tensor) -> _Statistics:
    """Per BatchNorm layer, the mean and (biased) variance of its input on the batch ``x`` in train mode —
    the statistics the clean forward pass normalises with; running statistics are left as they were."""
    norms = _norms(model)
    if not norms:
        return {}
    statistics: _Statistics = {}

    def capture(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        value = inputs[0].detach()
        dims = [0] + list(range(2, value.dim()))
        statistics[module] = (value.mean(dims), value.var(dims, unbiased=False))

    saved = [{name: buffer.clone() for name, buffer in module.named_buffers()} for module in norms]
    modes = [module.training for module in norms]
    hooks = [module.register_forward_pre_hook(capture) for module in norms]
    try:
        for module in norms:
            module.train()
        with torch.no_grad():
            model(x)
    finally:
        for hook in hooks:
            hook.remove()
        for module, buffers, mode in zip(norms, saved, modes):
            for name, value in buffers.items():
                getattr(module, name).copy_(value)
            module.train(mode)
    return statistics


@contextlib.contextmanager
def _batchnorm_as_affine(model: nn.Module, statistics: _Statistics | None = None) -> Iterator[None]:
    """BatchNorm as a fixed affine map while bounding or attacking: a box has no batch statistics. With
    ``statistics`` (:func:`batch_statistics` of the clean batch) the map normalises as the clean forward
    pass of the same step does, so the bound trains the network that step trains (Shi et al. 2021);
    without, it uses the running statistics, as certification does. Running statistics are never moved."""
    norms = [module for module in _norms(model) if module.training or statistics]
    modes = [module.training for module in norms]
    swapped = []
    for module in norms:
        module.eval()
        if statistics and module in statistics:
            swapped.append((module, module.running_mean, module.running_var))
            module.running_mean, module.running_var = statistics[module]
    try:
        yield
    finally:
        for module, mean, var in swapped:
            module.running_mean, module.running_var = mean, var
        for module, mode in zip(norms, modes):
            module.train(mode)


def attack_member(
    model: nn.Module,
    start: Tensor,
    lower: Tensor,
    upper: Tensor,
    y: Tensor,
    steps: int,
    step_size: float | None,
    statistics: _Statistics | None = None,
) -> tuple[Tensor, Tensor]:
    """The training loss's attack member: ``steps`` signed-gradient steps on the cross-entropy from ``start``,
    kept inside the box ``[lower, upper]``. Returns (member, logits at ``start``).

    ``step_size=None`` jumps to the box's vertices: behind a one-channel codebook the box is the hull of
    S(x) and each pixel's candidates are the codes between its ends, both of which are candidates, so every
    vertex is a member of S(x) (a real discretized perturbation). A number is a plain PGD step on the eps-box.
    BatchNorm normalises with ``statistics`` (:func:`batch_statistics`) if given, else its running
    statistics; the attack never moves them.
    """
    point = start.detach()
    first_logits = None
    with _batchnorm_as_affine(model, statistics), torch.enable_grad():
        for _ in range(steps):
            point.requires_grad_(True)
            logits = model(point)
            if first_logits is None:
                first_logits = logits.detach()
            (gradient,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), point)
            if step_size is None:
                point = torch.where(gradient > 0, upper, torch.where(gradient < 0, lower, point.detach()))
            else:
                point = torch.minimum(torch.maximum(point.detach() + step_size * gradient.sign(), lower), upper)
    if first_logits is None:
        with torch.no_grad(), _batchnorm_as_affine(model, statistics):
            first_logits = model(point)
    return point.detach(), first_logits


def _bound_margins(model: nn.Module, lower: Tensor, upper: Tensor, y: Tensor, bound: str, ramp: float,
                   statistics: _Statistics | None) -> Tensor:
    """Margin lower bounds for the loss; ``crown-ibp`` blends CROWN-IBP into IBP as Zhang et al. (2020) do,
    all CROWN-IBP at the start of the eps ramp and all IBP at its end."""
    from .bounds import margin_lower_bound

    with _batchnorm_as_affine(model, statistics):
        if bound != "crown-ibp":
            return margin_lower_bound(model, lower, upper, y, method=bound)
        interval = margin_lower_bound(model, lower, upper, y, method="ibp")
        if ramp >= 1.0:
            return interval
        linear = margin_lower_bound(model, lower, upper, y, method="crown-ibp")
        return ramp * interval + (1.0 - ramp) * linear


# pixdisc.recipes.BOUNDS too (recipes is imported without torch, so it cannot read this; a test checks both).
TRAINING_BOUNDS = ("ibp", "crown-ibp", "crown")


def certified_loss(
    model: nn.Module,
    discrete: Tensor,
    lower: Tensor,
    upper: Tensor,
    y: Tensor,
    *,
    kappa: float,
    member_weight: float = 0.0,
    member_steps: int = 1,
    step_size: float | None = None,
    bound: str = "ibp",
    ramp: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """One batch's loss of :func:`train_certified` (its docstring gives the formula), with the logits of
    ``discrete`` (T(x)) and the margin lower bounds (None when ``kappa == 1``: no bound is computed)."""
    model.train()
    # Attack and bound see BatchNorm as the clean pass normalises this batch.
    statistics = batch_statistics(model, discrete) if member_weight > 0 or kappa < 1.0 else None
    loss = torch.zeros((), device=discrete.device)
    if member_weight > 0:
        member, logits = attack_member(model, discrete, lower, upper, y, member_steps, step_size, statistics)
        loss = loss + kappa * member_weight * F.cross_entropy(model(member), y)
    if member_weight < 1:
        logits = model(discrete)
        loss = loss + kappa * (1.0 - member_weight) * F.cross_entropy(logits, y)
    margins = None
    if kappa < 1.0:
        margins = _bound_margins(model, lower, upper, y, bound, ramp, statistics)
        loss = loss + (1.0 - kappa) * F.cross_entropy(-margins, y)
    return loss, logits, margins


def train_certified(
    model: nn.Module,
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    codebook: Any,
    *,
    eps: float,
    epochs: int = 30,
    warmup_epochs: int = 2,
    ramp_epochs: int = 10,
    kappa_end: float = 0.5,
    member_weight: float = 0.0,
    member_steps: int = 1,
    bound: str = "ibp",
    batch_size: int = 128,
    lr: float = 1e-3,
    lr_milestones: Sequence[int] = (),
    lr_gamma: float = 0.1,
    seed: int = 0,
    progress: bool = True,
    device: str | torch.device | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    recipe: dict[str, Any] | None = None,
) -> tuple[nn.Module, dict[str, list[float]]]:
    """Certified training: make the certificate succeed for ``F`` behind the codebook's discretization.

    Each batch is discretized (``T(x)``) and bounded over the box hull of
    ``S(x)`` at the current eps (interval bounds by default, Gowal et al.
    2018). The loss mixes a point loss with the cross-entropy of the
    worst-case logits (negated margin lower bounds):
    ``kappa * point + (1 - kappa) * CE(-margin_lb, y)``, where
    ``point = (1 - member_weight) * CE(F(T(x)), y) + member_weight * CE(F(z), y)``
    and ``z`` is the attack member: ``member_steps`` signed-gradient steps
    over the hull's vertices, each one a member of S(x) (:func:`attack_member`;
    ``member_weight=1`` is the attack-plus-bound loss of MTL-IBP, De Palma et
    al. 2023). After ``warmup_epochs`` of natural training, eps ramps linearly
    from 0 to ``eps`` over ``ramp_epochs`` while kappa goes from 1 to
    ``kappa_end``. ``bound`` is ``"ibp"``, ``"crown-ibp"`` (blended into IBP
    over the ramp) or ``"crown"``. BatchNorm layers normalise attack and
    bound with the clean batch's statistics during training (the running
    ones, which certification uses, follow the train-mode passes). ``model`` is trained in place and
    returned in eval mode with a history (``epoch``, ``loss``, ``accuracy``
    (natural), ``verified`` (fraction of batch samples the training bound
    proves), ``eps``, ``lr``, ``seconds``); ``on_epoch`` gets each epoch's
    row as it ends. A checkpoint written after every epoch is resumed as in
    :func:`pixdisc.train.train_model`; ``recipe`` (a :class:`pixdisc.recipes.Recipe` as a
    dict) is kept in it, so a run resumed under another recipe is refused. With ``codebook=None`` it is plain bound training of
    ``F`` on the eps-box around ``x`` (no discretization; the attack member is
    PGD with step ``2.5 eps / member_steps``), the baseline certified training
    is compared with.
    """
    from .candidates import box_hull, resolve_rule

    _check_positive_integer("epochs", epochs, minimum=0)
    _check_positive_integer("batch_size", batch_size)
    _check_positive_integer("warmup_epochs", warmup_epochs, minimum=0)
    _check_positive_integer("ramp_epochs", ramp_epochs, minimum=0)
    _check_positive_integer("member_steps", member_steps)
    check_eps(eps)
    _check_nonnegative("lr", lr)
    if not 0 <= kappa_end <= 1:
        raise ValueError(f"kappa_end must lie in [0, 1], got {kappa_end!r}")
    if not 0 <= member_weight <= 1:
        raise ValueError(f"member_weight must lie in [0, 1], got {member_weight!r}")
    if bound not in TRAINING_BOUNDS:
        raise ValueError(f"bound must be one of {TRAINING_BOUNDS}, got {bound!r}")
    if member_weight > 0 and codebook is not None and codebook.n_channels != 1:
        raise ValueError(f"member_weight > 0 needs a one-channel codebook (the hull's vertices are members of S(x) "
                         f"only then); this one has {codebook.n_channels}-channel codes: use member_weight=0")
    rule = resolve_rule("auto", codebook) if codebook is not None else None
    images = as_images(x)
    labels = as_labels(y, images.shape[0])
    sample_count = images.shape[0]
    if sample_count == 0:
        raise ValueError("cannot train on an empty data set")
    target_device = _resolve_device(device)
    model.to(target_device)
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = _make_optimizer("adam", trainable, lr, 0.0, 0.0)
    milestones = sorted(int(m) for m in lr_milestones)
    config = {
        "mode": "certified", "samples": int(sample_count), "batch_size": int(batch_size), "lr": float(lr),
        "eps": float(eps), "warmup_epochs": int(warmup_epochs), "ramp_epochs": int(ramp_epochs),
        "kappa_end": float(kappa_end), "bound": bound, "lr_milestones": milestones, "lr_gamma": float(lr_gamma),
        "codes": None if codebook is None else np.asarray(codebook.codes_).round(7).tolist(),
        "metric": None if codebook is None else codebook.metric, "seed": int(seed),
    }
    if member_weight > 0:  # only then, so that checkpoints of the plain loss still resume
        config.update(member_weight=float(member_weight), member_steps=int(member_steps))
    if recipe is not None:
        config["recipe"] = json.loads(json.dumps(recipe))  # as it reads back from the checkpoint
    keys = ("epoch", "loss", "accuracy", "verified", "eps", "lr", "seconds")
    history: dict[str, list[float]] = {key: [] for key in keys}
    checkpoint_file = Path(checkpoint_path) if checkpoint_path is not None else None
    history, start_epoch = _resume_training(checkpoint_file, target_device, config, epochs, model, optimizer, history)
    _first_checkpoint(checkpoint_file, config, model, optimizer, history)

    steps_per_epoch = math.ceil(sample_count / batch_size)
    ramp_steps = max(1, ramp_epochs * steps_per_epoch)
    images_np = images.numpy()
    with _private_rng(target_device):
        for epoch in range(start_epoch, epochs):
            started = time.perf_counter()
            order, epoch_lr = _start_epoch(optimizer, epoch, lr, lr_gamma, milestones, seed, sample_count)
            loss_sum, correct, verified, seen = 0.0, 0, 0, 0
            bar = tqdm(range(steps_per_epoch), desc=f"certified epoch {epoch + 1}/{epochs}", unit="batch",
                       disable=not progress, leave=False)
            current_eps = 0.0
            for step in bar:
                index = order[step * batch_size : (step + 1) * batch_size].numpy()
                global_step = (epoch - warmup_epochs) * steps_per_epoch + step + 1
                ramp = min(1.0, max(0.0, global_step / ramp_steps)) if epoch >= warmup_epochs else 0.0
                current_eps = eps * ramp
                kappa = 1.0 - (1.0 - kappa_end) * ramp
                batch = images_np[index]
                if codebook is None:  # plain bound training on the eps-box, for comparison
                    lower = np.clip(batch - current_eps, 0, 1).astype(np.float32)
                    upper = np.clip(batch + current_eps, 0, 1).astype(np.float32)
                    discrete = torch.from_numpy(batch).to(target_device)
                else:
                    lower, upper = box_hull(batch, codebook, current_eps, rule=rule, channel_axis=1)
                    discrete = torch.from_numpy(np.asarray(codebook.transform(batch, channel_axis=1))).to(target_device)
                lower_t, upper_t = torch.from_numpy(lower).to(target_device), torch.from_numpy(upper).to(target_device)
                y_batch = labels[index].to(target_device)
                # The attack member replaces T(x) in the point loss by member_weight (only once eps > 0).
                step_size = None if codebook is not None else 2.5 * current_eps / member_steps
                loss, logits, margins = certified_loss(
                    model, discrete, lower_t, upper_t, y_batch, kappa=kappa,
                    member_weight=member_weight if current_eps > 0 else 0.0, member_steps=member_steps,
                    step_size=step_size, bound=bound, ramp=ramp)
                if margins is not None:
                    margins = margins.detach().scatter(1, y_batch[:, None], float("inf"))
                    verified += int((margins.min(dim=1).values > 0).sum())
                optimizer.zero_grad(set_to_none=True)
                loss.backward(inputs=trainable)
                optimizer.step()
                loss_sum += float(loss.detach()) * len(index)
                correct += int((logits.detach().argmax(1) == y_batch).sum())
                seen += len(index)
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}",
                                verified=f"{verified / seen:.3f}", eps=f"{current_eps:.3f}")
            bar.close()
            row = dict(zip(keys, (epoch + 1, loss_sum / seen, correct / seen, verified / seen, current_eps,
                                  epoch_lr, time.perf_counter() - started)))
            for key, value in row.items():
                history[key].append(value)
            _save_training(checkpoint_file, epoch + 1, config, model, optimizer, history)
            if on_epoch is not None:
                on_epoch({**row, "epochs": epochs})
    model.eval()
    return model, history
