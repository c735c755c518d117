"""Natural and Madry adversarial training, and the paper's six training settings as one call each."""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm import tqdm

from .attacks import pgd_perturb
from .attacks.base import derive_seed
from .inputs import as_images, as_labels, check_eps
from .bound_training import attack_member, certified_loss, train_certified  # pixdisc.train's public API
from .models import build_model
from .training_run import (_ATTACK_STREAM, _check_nonnegative, _check_positive_integer, _first_checkpoint,
                           _make_optimizer, _private_rng, _resolve_device, _resume_training, _save_training,
                           _start_epoch)
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
