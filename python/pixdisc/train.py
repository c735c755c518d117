"""Natural and Madry adversarial training, and the paper's six training settings as one call each."""

from __future__ import annotations

import contextlib
import copy
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

from .attacks import pgd_perturb
from .attacks.base import derive_seed
from .inputs import as_images, as_labels, check_eps
from .models import atomic_torch_save, build_model, safe_torch_load
from .profiles import PAPER_TRAINING  # the paper's recipes, kept importable from here

__all__ = [
    "PAPER_TRAINING",
    "SETTINGS",
    "attack_member",
    "certified_loss",
    "train_certified",
    "train_model",
    "train_setting",
]

SETTINGS = ("nat_pre", "adv_pre", "disc_nat_pre", "disc_adv_pre", "disc_nat_re", "disc_adv_re")

CHECKPOINT_FORMAT = "pixdisc-train-checkpoint"
CHECKPOINT_VERSION = 1

# Streams of randomness derived from the seed, one per purpose and epoch, so
# that a resumed run draws exactly what an uninterrupted one would have.
_TORCH_STREAM, _SHUFFLE_STREAM, _ATTACK_STREAM = 0, 1, 2


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {resolved} requested but CUDA is not available")
    return resolved


@contextlib.contextmanager
def _private_rng(device: torch.device) -> Iterator[None]:
    """Seed torch freely inside, leaving the caller's global RNG state as it was."""
    devices: list[int] = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        yield


def _start_epoch(optimizer: torch.optim.Optimizer, epoch: int, lr: float, lr_gamma: float,
                 milestones: Sequence[int], seed: int, sample_count: int) -> tuple[Tensor, float]:
    """Set the epoch's step-decayed learning rate and torch seed; return its shuffle order and the rate.

    Everything derives from (seed, epoch), so a resumed run repeats exactly
    what an uninterrupted one would have done.
    """
    epoch_lr = lr * lr_gamma ** sum(1 for milestone in milestones if milestone <= epoch)
    for group in optimizer.param_groups:
        group["lr"] = epoch_lr
    torch.manual_seed(derive_seed(seed, epoch, _TORCH_STREAM))
    shuffle_generator = torch.Generator().manual_seed(derive_seed(seed, epoch, _SHUFFLE_STREAM))
    return torch.randperm(sample_count, generator=shuffle_generator), epoch_lr


def _make_optimizer(
    name: str, parameters: Any, lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose 'adam' or 'sgd'")


def _check_positive_integer(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_nonnegative(name: str, value: Any) -> None:
    numeric = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
    if not numeric or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _load_checkpoint(
    path: Path,
    device: torch.device,
    config: dict[str, Any],
    epochs: int,
) -> dict[str, Any]:
    # pixdisc writes checkpoints atomically, so a bad one was never a run's half-written file: replace it.
    start_over = f"delete {path} to start training over, or pass another checkpoint path"
    checkpoint = safe_torch_load(path, device, "pixdisc training checkpoint", start_over)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a pixdisc training checkpoint (no {CHECKPOINT_FORMAT!r} header: a "
                         f"model file or another program's file?); {start_over}")
    if checkpoint.get("version") != CHECKPOINT_VERSION:
        version = checkpoint.get("version")
        raise ValueError(f"{path} has training checkpoint version {version!r}, this pixdisc resumes version "
                         f"{CHECKPOINT_VERSION}; resume it with the pixdisc that wrote it, or {start_over}")
    try:
        saved_config = json.loads(checkpoint["config"])
        epoch = int(checkpoint["epoch"])
    except (KeyError, TypeError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{path} is a damaged training checkpoint ({reason}); {start_over}") from None
    differing = sorted(key for key in set(config) | set(saved_config) if config.get(key) != saved_config.get(key))
    if differing:
        details = ", ".join(f"{key}: {saved_config.get(key)!r} -> {config.get(key)!r}" for key in differing)
        raise ValueError(
            f"{path} was written by a different training run ({details}); delete it or change checkpoint_path"
        )
    if epoch > epochs:
        raise ValueError(f"{path} is already at epoch {epoch}, beyond the requested epochs={epochs}; ask for "
                         f"epochs >= {epoch} to use it, or {start_over}")
    return checkpoint


def _resume_training(
    checkpoint_file: Path | None,
    device: torch.device,
    config: dict[str, Any],
    epochs: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    history: dict[str, list[float]],
) -> tuple[dict[str, list[float]], int]:
    """Load a matching checkpoint into model and optimizer; returns (history, first epoch to run)."""
    if checkpoint_file is None or not checkpoint_file.exists():
        return history, 0
    checkpoint = _load_checkpoint(checkpoint_file, device, config, epochs)
    try:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
    except (KeyError, RuntimeError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{checkpoint_file} does not fit this model/optimizer ({reason}); delete it to start "
                         "training over, or pass another checkpoint path") from None
    restored = {key: list(values) for key, values in checkpoint.get("history", history).items()}
    return restored, int(checkpoint["epoch"])


def _save_training(
    checkpoint_file: Path | None,
    epoch: int,
    config: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    history: dict[str, list[float]],
) -> None:
    if checkpoint_file is None:
        return
    atomic_torch_save(
        {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "epoch": epoch, "config": json.dumps(config),
         "model": model.state_dict(), "optimizer": optimizer.state_dict(), "history": history},
        checkpoint_file,
    )


def _first_checkpoint(
    checkpoint_file: Path | None,
    config: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    history: dict[str, list[float]],
) -> None:
    """Write the untrained state (epoch 0) before the first epoch, so that "resume from the checkpoint" holds
    from the start: an interrupt in epoch 1 resumes from the same initial weights instead of finding no file."""
    if checkpoint_file is not None and not checkpoint_file.exists():
        _save_training(checkpoint_file, 0, config, model, optimizer, history)


def train_model(
    model: nn.Module,
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    *,
    epochs: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    optimizer: str = "adam",
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    lr_milestones: Sequence[int] = (),
    lr_gamma: float = 0.1,
    adversarial: bool = False,
    eps: float = 0.3,
    attack_steps: int = 40,
    step_size: float = 0.01,
    attack_loss: str = "ce",
    defense: nn.Module | None = None,
    seed: int = 0,
    progress: bool = True,
    device: str | torch.device | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
) -> tuple[nn.Module, dict[str, list[float]]]:
    """Train ``model`` in place, naturally or adversarially (Madry et al.), and return ``(model, history)``.

    With ``defense`` every batch goes through ``Sequential(defense, model)``:
    the network learns on defended inputs, and adversarial examples are
    crafted against the whole defended model (BPDA through the defense's
    backward). Only ``model``'s parameters are trained, and the bare
    ``model`` is returned (in eval mode). Adversarial training replaces every
    batch by a PGD attack with random start (``eps``, ``attack_steps``,
    ``step_size``, loss ``attack_loss``) crafted in eval mode, then takes the
    step in train mode.

    Deterministic for a given ``seed``: shuffling, random starts and torch's
    RNG are reseeded per epoch from it (the caller's global RNG state is
    restored afterwards). ``x`` is float NCHW in ``[0,1]`` (or uint8), as a
    tensor or numpy array. ``device`` defaults to CUDA when available. The lr
    is multiplied by ``lr_gamma`` at each epoch in ``lr_milestones``.

    With ``checkpoint_path`` the model, optimizer and history are written
    atomically before the first epoch and after every epoch, and an existing
    checkpoint of the same run is resumed: a killed training loses at most the
    epoch it was in, and ends with the same weights as an uninterrupted run.

    ``history`` holds per-epoch lists: ``epoch``, ``loss`` and ``accuracy``
    (on the batches trained on, adversarial ones when adversarial), ``lr``
    and ``seconds``.
    """
    _check_positive_integer("epochs", epochs, minimum=0)
    _check_positive_integer("batch_size", batch_size)
    _check_nonnegative("lr", lr)
    _check_nonnegative("weight_decay", weight_decay)
    _check_nonnegative("lr_gamma", lr_gamma)
    if adversarial:
        check_eps(eps)
        _check_nonnegative("step_size", step_size)
        _check_positive_integer("attack_steps", attack_steps, minimum=0)
    if attack_loss not in ("ce", "cw"):
        raise ValueError(f"attack_loss must be 'ce' or 'cw', got {attack_loss!r}")
    images = as_images(x)
    labels = as_labels(y, images.shape[0])
    sample_count = images.shape[0]
    if sample_count == 0:
        raise ValueError("cannot train on an empty data set")
    largest_label = int(labels.max())
    target_device = _resolve_device(device)

    model.to(target_device)
    if defense is not None:
        defense.to(target_device)
    full_model = nn.Sequential(defense, model) if defense is not None else model
    # Only the network learns; a defense's codebook is data, not a parameter.
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    if not trainable:
        raise ValueError("model has no trainable parameters")
    training_optimizer = _make_optimizer(optimizer, trainable, lr, momentum, weight_decay)
    milestones = sorted(int(milestone) for milestone in lr_milestones)

    config = {
        "samples": int(sample_count),
        "batch_size": int(batch_size),
        "lr": float(lr),
        "optimizer": optimizer,
        "momentum": float(momentum),
        "weight_decay": float(weight_decay),
        "lr_milestones": milestones,
        "lr_gamma": float(lr_gamma),
        "adversarial": bool(adversarial),
        "eps": float(eps) if adversarial else None,
        "attack_steps": int(attack_steps) if adversarial else None,
        "step_size": float(step_size) if adversarial else None,
        "attack_loss": attack_loss if adversarial else None,
        "defense": type(defense).__name__ if defense is not None else None,
        "seed": int(seed),
    }
    history: dict[str, list[float]] = {"epoch": [], "loss": [], "accuracy": [], "lr": [], "seconds": []}
    checkpoint_file = Path(checkpoint_path) if checkpoint_path is not None else None
    history, start_epoch = _resume_training(checkpoint_file, target_device, config, epochs, model,
                                            training_optimizer, history)
    _first_checkpoint(checkpoint_file, config, model, training_optimizer, history)

    with _private_rng(target_device):
        for epoch in range(start_epoch, epochs):
            started = time.perf_counter()
            order, epoch_lr = _start_epoch(training_optimizer, epoch, lr, lr_gamma, milestones, seed, sample_count)
            attack_generator = torch.Generator().manual_seed(derive_seed(seed, epoch, _ATTACK_STREAM))
            loss_sum, correct, seen = 0.0, 0, 0
            batches = range(0, sample_count, batch_size)
            bar = tqdm(batches, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", disable=not progress, leave=False)
            for start in bar:
                batch_index = order[start : start + batch_size]
                x_batch = images[batch_index].to(target_device, non_blocking=True)
                y_batch = labels[batch_index].to(target_device, non_blocking=True)
                if adversarial:
                    full_model.eval()
                    x_batch = pgd_perturb(
                        full_model, x_batch, y_batch, eps=eps, steps=attack_steps, step_size=step_size,
                        loss=attack_loss, random_start=True, generator=attack_generator,
                    )
                full_model.train()
                logits = full_model(x_batch)
                if logits.ndim != 2 or logits.shape[1] <= largest_label:
                    raise ValueError(
                        f"model returns logits of shape {tuple(logits.shape)} but the labels go up to {largest_label}"
                    )
                loss = F.cross_entropy(logits, y_batch)
                training_optimizer.zero_grad(set_to_none=True)
                # Gradients for the network only: a defense's tensors stay untouched.
                loss.backward(inputs=trainable)
                training_optimizer.step()
                loss_sum += float(loss.detach()) * len(y_batch)
                correct += int((logits.detach().argmax(dim=1) == y_batch).sum())
                seen += len(y_batch)
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.3f}")
            bar.close()
            history["epoch"].append(epoch + 1)
            history["loss"].append(loss_sum / seen)
            history["accuracy"].append(correct / seen)
            history["lr"].append(epoch_lr)
            history["seconds"].append(time.perf_counter() - started)
            _save_training(checkpoint_file, epoch + 1, config, model, training_optimizer, history)
    model.eval()
    return model, history


def _default_arch_kwargs(arch: str, images: Tensor, arch_kwargs: dict[str, Any]) -> dict[str, Any]:
    options = dict(arch_kwargs)
    if arch != "cifar_resnet" and "input_size" not in options:
        height, width = int(images.shape[2]), int(images.shape[3])
        options["input_size"] = height if height == width else [height, width]
    return options


def train_setting(
    setting: str,
    x_train: Tensor | np.ndarray,
    y_train: Tensor | np.ndarray,
    *,
    defense: nn.Module | None = None,
    arch: str = "small_cnn",
    arch_kwargs: dict[str, Any] | None = None,
    num_classes: int | None = None,
    base: nn.Module | None = None,
    epochs: int = 5,
    seed: int = 0,
    return_history: bool = False,
    **training: Any,
) -> nn.Module | tuple[nn.Module, dict[str, list[float]]]:
    """Produce the model to evaluate for one of the paper's six ``SETTINGS`` (Section IV-B).

    - ``nat_pre`` / ``adv_pre``: natural / adversarial training on raw images;
      returns the bare network (``defense`` is not used).
    - ``disc_nat_pre`` / ``disc_adv_pre``: the nat_pre / adv_pre network with
      the defense bolted in front, not retrained. Pass the trained network as
      ``base`` to reuse it (it is used as is, shared), else it is trained here.
    - ``disc_nat_re``: ``Sequential(defense, net)`` trained naturally, i.e. the
      network learns on discretized images.
    - ``disc_adv_re``: ``Sequential(defense, net)`` trained adversarially, the
      attack going through the defense's BPDA gradient.

    For the ``*_re`` settings ``base`` (a copy of it) initialises the network,
    as the paper warm-starts retraining from the pre-trained model; otherwise
    a fresh ``arch`` network is built with torch seeded by ``seed``. Every
    ``disc_*`` setting returns ``Sequential(defense, net)`` (the defense is
    module 0) in eval mode. ``arch_kwargs`` go to ``build_model`` (the input
    size defaults to the data's), ``num_classes`` defaults to
    ``max(y_train) + 1``; other keyword arguments (``batch_size``, ``lr``,
    ``eps``, ``attack_steps``, ``step_size``, ``device``, ``progress``,
    ``checkpoint_path``, ...) go to :func:`train_model`.
    """
    if setting not in SETTINGS:
        raise ValueError(f"unknown setting {setting!r}; choose one of {SETTINGS}")
    for reserved in ("adversarial", "defense"):
        if reserved in training:
            raise ValueError(f"{reserved}= is fixed by the setting {setting!r}; do not pass it")
    discretized = setting.startswith("disc_")
    if discretized and defense is None:
        raise ValueError(f"setting {setting!r} needs a defense module (e.g. pixdisc.Discretize)")
    adversarial = "_adv_" in f"_{setting}_"
    retrained = setting.endswith("_re")

    images = as_images(x_train, "x_train")
    labels = as_labels(y_train, images.shape[0], "y_train")
    empty_history: dict[str, list[float]] = {"epoch": [], "loss": [], "accuracy": [], "lr": [], "seconds": []}

    def fresh_network() -> nn.Module:
        if images.ndim != 4:
            raise ValueError(f"x_train must be NCHW images, got shape {tuple(images.shape)}")
        classes = num_classes if num_classes is not None else int(labels.max()) + 1
        options = _default_arch_kwargs(arch, images, arch_kwargs or {})
        # Seed the initialisation without disturbing the caller's RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_model(arch, in_channels=int(images.shape[1]), num_classes=classes, **options)

    if not retrained:
        if base is not None:
            network, history = base, empty_history
        else:
            network, history = train_model(
                fresh_network(), images, labels, epochs=epochs, adversarial=adversarial, seed=seed, **training
            )
        if discretized:
            assert defense is not None
            device = next(iter(network.parameters()), torch.empty(0)).device
            defended = nn.Sequential(defense.to(device), network).eval()
            return (defended, history) if return_history else defended
        network.eval()
        return (network, history) if return_history else network

    assert defense is not None
    network = copy.deepcopy(base) if base is not None else fresh_network()
    network, history = train_model(
        network, images, labels, epochs=epochs, adversarial=adversarial, defense=defense, seed=seed, **training
    )
    defended = nn.Sequential(defense, network).eval()
    return (defended, history) if return_history else defended


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
    :func:`train_model`; ``recipe`` (a :class:`pixdisc.recipes.Recipe` as a
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
