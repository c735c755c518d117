"""What every training loop shares: device, a private RNG, the optimizer and its epoch schedule, checkpoints.

A checkpoint is written atomically after every epoch (and before the first), holds the run's config, and
is resumed only by a run with the same config, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .attacks.base import derive_seed
from .models import atomic_torch_save, safe_torch_load

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


