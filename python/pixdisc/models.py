"""Classifier architectures for pixdisc experiments, with safe save/load and batched prediction."""

from __future__ import annotations

import json
import math
import os
import pickle
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ._files import atomic_write, file_kind
from .inputs import as_images

__all__ = [
    "MODELS",
    "CertCNN",
    "MLP",
    "MadryMNIST",
    "PreActResNet",
    "SmallCNN",
    "atomic_torch_save",
    "build_model",
    "cifar_resnet",
    "ibp_initialise",
    "load_model",
    "model_device",
    "predict",
    "safe_torch_load",
    "save_model",
]

# Bumped when the on-disk layout changes; load_model refuses newer files.
MODEL_FILE_FORMAT = "pixdisc-model"
MODEL_FILE_VERSION = 1


def _spatial_size(input_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(input_size, int):
        return input_size, input_size
    height, width = (int(side) for side in input_size)
    return height, width


class MadryMNIST(nn.Sequential):
    """The MNIST CNN of Madry et al. (2018): two 5x5 conv/pool stages and a 1024-unit hidden layer.

    A plain ``nn.Sequential`` of Conv2d/ReLU/MaxPool2d/Flatten/Linear, so that
    bound propagation can walk it layer by layer.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        input_size: int | Sequence[int] = 28,
    ) -> None:
        height, width = _spatial_size(input_size)
        if height % 4 or width % 4:
            raise ValueError(f"MadryMNIST needs an input size divisible by 4, got {height}x{width}")
        super().__init__(
            nn.Conv2d(in_channels, 32, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * (height // 4) * (width // 4), 1024),
            nn.ReLU(),
            nn.Linear(1024, num_classes),
        )


class SmallCNN(nn.Sequential):
    """A small, fast CNN: two 3x3 conv/pool stages of ``width`` and ``2*width`` channels, then an MLP head.

    Trains to about 97-98% on 4,000 MNIST images in a minute or two on a
    laptop CPU. Only Conv2d/ReLU/MaxPool2d/Flatten/Linear, in a plain
    ``nn.Sequential``, so that bound propagation can handle it.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        width: int = 16,
        hidden: int = 128,
        input_size: int | Sequence[int] = 28,
    ) -> None:
        height, width_pixels = _spatial_size(input_size)
        if height % 4 or width_pixels % 4:
            raise ValueError(f"SmallCNN needs an input size divisible by 4, got {height}x{width_pixels}")
        super().__init__(
            nn.Conv2d(in_channels, width, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * width * (height // 4) * (width_pixels // 4), hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )


class CertCNN(nn.Sequential):
    """The small CNN of the interval-bound-training paper (Gowal et al. 2018): strided convs, no pooling.

    conv ``width`` 4x4 stride 2 -> conv ``2*width`` 4x4 stride 1 -> linear
    ``hidden`` (256; the paper's 100 certified less on MNIST-5k) -> linear: few unstable ReLUs and no max-pool relaxation, so
    IBP/CROWN bounds stay tight; the model certified training uses. ``batch_norm`` puts a BatchNorm after
    every conv and hidden linear layer (Shi et al. 2021: it keeps interval bounds balanced early in
    training); bounds and certificates use its running statistics, as eval mode does.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        width: int = 16,
        hidden: int = 256,
        input_size: int | Sequence[int] = 28,
        batch_norm: bool = False,
    ) -> None:
        height, width_pixels = _spatial_size(input_size)
        h1, w1 = (height - 4) // 2 + 1, (width_pixels - 4) // 2 + 1
        h2, w2 = h1 - 3, w1 - 3
        if h2 < 1 or w2 < 1:
            raise ValueError(f"CertCNN needs inputs of at least 10x10, got {height}x{width_pixels}")

        def norm(kind: type, features: int) -> list[nn.Module]:
            return [kind(features)] if batch_norm else []

        super().__init__(
            nn.Conv2d(in_channels, width, kernel_size=4, stride=2),
            *norm(nn.BatchNorm2d, width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, kernel_size=4, stride=1),
            *norm(nn.BatchNorm2d, 2 * width),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(2 * width * h2 * w2, hidden),
            *norm(nn.BatchNorm1d, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )


def ibp_initialise(model: nn.Module) -> nn.Module:
    """IBP initialisation (Shi et al. 2021): every conv/linear weight drawn from N(0, sigma^2) with
    sigma = sqrt(2 pi) / fan_in, biases zero, so that interval bounds neither explode nor vanish through
    the layers at the start of certified training. Draws from torch's global RNG; returns ``model``."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0.0, math.sqrt(2 * math.pi) / fan_in)
                if module.bias is not None:
                    module.bias.zero_()
    return model


class MLP(nn.Sequential):
    """A fully connected ReLU network on flattened images (Flatten, then Linear/ReLU layers)."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        input_size: int | Sequence[int] = 28,
        hidden: Sequence[int] = (256, 256),
    ) -> None:
        height, width = _spatial_size(input_size)
        layers: list[nn.Module] = [nn.Flatten()]
        features = in_channels * height * width
        for units in hidden:
            layers += [nn.Linear(features, int(units)), nn.ReLU()]
            features = int(units)
        layers.append(nn.Linear(features, num_classes))
        super().__init__(*layers)


class _PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016, "Identity Mappings in Deep Residual Networks")."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        # The projection shortcut sees the pre-activated input, as in the paper's
        # full pre-activation variant.
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """Pre-activation ResNet for 32x32 images; ``blocks_per_stage=(2, 2, 2, 2)`` is PreAct ResNet-18."""

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        blocks_per_stage: Sequence[int] = (2, 2, 2, 2),
        width: int = 64,
    ) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
        stages: list[nn.Module] = []
        in_planes = width
        for stage_index, block_count in enumerate(blocks_per_stage):
            planes = width * 2**stage_index
            blocks: list[nn.Module] = []
            for block_index in range(int(block_count)):
                stride = 2 if stage_index > 0 and block_index == 0 else 1
                blocks.append(_PreActBlock(in_planes, planes, stride))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(in_planes)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.stages(self.stem(x))
        out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


_RESNET_DEPTHS = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


def cifar_resnet(
    in_channels: int = 3,
    num_classes: int = 10,
    depth: int = 18,
    width: int = 64,
) -> PreActResNet:
    """A pre-activation ResNet for CIFAR-sized inputs; ``depth`` is 10, 18 or 34."""
    if depth not in _RESNET_DEPTHS:
        raise ValueError(f"cifar_resnet depth must be one of {sorted(_RESNET_DEPTHS)}, got {depth}")
    return PreActResNet(in_channels, num_classes, _RESNET_DEPTHS[depth], width)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "madry_mnist": MadryMNIST,
    "small_cnn": SmallCNN,
    "cert_cnn": CertCNN,
    "mlp": MLP,
    "cifar_resnet": cifar_resnet,
}

# Where build_model records how a model was made, so save_model can rebuild it.
_ARCH_ATTRIBUTE = "_pixdisc_arch"


def build_model(name: str, in_channels: int = 1, num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """Build the architecture ``name`` (one of ``MODELS``); extra keyword arguments go to its constructor."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    try:
        # Round-trip through JSON so that what save_model stores rebuilds the same model.
        json.dumps(kwargs)
    except TypeError as error:
        raise ValueError(f"model keyword arguments must be JSON-serialisable: {error}") from None
    try:
        model = MODELS[name](in_channels=in_channels, num_classes=num_classes, **kwargs)
    except TypeError as error:
        raise ValueError(f"bad arguments for model {name!r}: {error}") from None
    setattr(
        model,
        _ARCH_ATTRIBUTE,
        {"name": name, "kwargs": {"in_channels": in_channels, "num_classes": num_classes, **kwargs}},
    )
    return model


def atomic_torch_save(payload: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` then rename, fsynced: readers never see half a file, a crash never loses the old one."""
    with atomic_write(path, durable=True) as stream:
        torch.save(payload, stream)


_MODEL_NEXT_STEP = "pass a model file written by pixdisc.models.save_model or `pixdisc train -o FILE`"


def safe_torch_load(
    path: str | os.PathLike[str],
    map_location: Any,
    what: str,
    next_step: str = _MODEL_NEXT_STEP,
) -> Any:
    """``torch.load(weights_only=True)`` with every failure turned into an error naming the file, saying what
    is wrong with it and ending with ``next_step`` (what the user should do instead)."""
    file_path = Path(path)
    if not file_path.is_file():
        raise FileNotFoundError(f"{what} not found: {file_path}")
    try:
        with warnings.catch_warnings():
            # Legacy (non-zip) pickles trigger a protocol warning; the safe loader
            # still decides, and refusal is reported below.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(file_path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure here is the file's fault, report it as such
        raise ValueError(f"{file_path} is not a valid {what}: {_torch_load_problem(file_path, error)}; "
                         f"{next_step}") from None


def _torch_load_problem(path: Path, error: BaseException) -> str:
    """What is wrong with a file ``torch.load`` refused, in a user's words (never torch's advice to pass
    ``weights_only=False``, i.e. to run the file's code)."""
    kind = file_kind(path)
    if kind == "unreadable" or isinstance(error, PermissionError):
        return f"it cannot be read ({_first_line(error)})"
    if kind == "empty":
        return "it is empty (0 bytes)"
    if kind == "text":
        return "it holds text, not a torch file"
    if kind in ("npy", "npz"):
        return f"it is a NumPy .{kind} file (a codebook or data?), not a torch file"
    if isinstance(error, pickle.UnpicklingError):
        return ("torch's safe loader (weights_only=True) refused it: it holds objects other than tensors and "
                "plain values, or is not a torch file at all, and pixdisc never unpickles arbitrary objects")
    if kind == "zip":
        detail = _first_line(error).split(". ")[0]
        return f"it is a damaged or incomplete torch file, e.g. cut off by an unfinished copy ({detail})"
    if kind == "pickle":
        return "it is a damaged torch file in torch's older format, or a bare Python pickle"
    return "it is not a torch file (neither the zip archive torch writes nor its older format)"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def save_model(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    name: str | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> None:
    """Save ``model``'s weights with its architecture and JSON-able ``meta``, atomically.

    ``name``/``arch_kwargs`` default to what ``build_model`` recorded on the
    model; pass them for a model built directly from a class. For a defended
    model ``Sequential(defense, net)`` save the network ``net``: the defense's
    codebook is saved by the codebook module.
    """
    recorded = getattr(model, _ARCH_ATTRIBUTE, None)
    if name is None:
        if recorded is None:
            raise ValueError(
                "save_model needs name= (and arch_kwargs=) for a model not made by build_model"
            )
        name = recorded["name"]
    if arch_kwargs is None:
        arch_kwargs = recorded["kwargs"] if recorded is not None and recorded["name"] == name else {}
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    try:
        meta_json = json.dumps(meta if meta is not None else {})
        arch_kwargs_json = json.dumps(arch_kwargs)
    except (TypeError, ValueError) as error:
        raise ValueError(f"meta and arch_kwargs must be JSON-serialisable: {error}") from None
    state_dict = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    payload = {
        "format": MODEL_FILE_FORMAT,
        "version": MODEL_FILE_VERSION,
        "arch": name,
        # Stored as JSON text so the safe loader only ever sees strings and tensors.
        "arch_kwargs": arch_kwargs_json,
        "meta": meta_json,
        "state_dict": state_dict,
    }
    atomic_torch_save(payload, path)


def load_model(
    path: str | os.PathLike[str],
    map_location: Any = "cpu",
    *,
    return_meta: bool = False,
) -> nn.Module | tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model written by ``save_model`` (never unpickles arbitrary objects); eval mode.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming
    the file when it is corrupt, not a pixdisc model, or does not match its
    recorded architecture. With ``return_meta=True`` returns ``(model, meta)``.
    """
    payload = safe_torch_load(path, map_location, "pixdisc model file")
    file_path = Path(path)
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FILE_FORMAT:
        raise ValueError(f"{file_path} is not a pixdisc model file (no {MODEL_FILE_FORMAT!r} header: a bare "
                         f"state_dict or tensor does not say which architecture to build); {_MODEL_NEXT_STEP}")
    version = payload.get("version")
    if not isinstance(version, int) or version > MODEL_FILE_VERSION:
        raise ValueError(
            f"{file_path} has model file version {version!r}; this pixdisc reads up to {MODEL_FILE_VERSION}: "
            "upgrade pixdisc to read it, or pass another model file"
        )
    name = payload.get("arch")
    if name not in MODELS:
        raise ValueError(f"{file_path} names unknown architecture {name!r} (known: {sorted(MODELS)}); upgrade "
                         f"pixdisc if a newer one wrote it, or {_MODEL_NEXT_STEP}")
    try:
        arch_kwargs = json.loads(payload["arch_kwargs"])
        meta = json.loads(payload["meta"])
        state_dict = payload["state_dict"]
    except (KeyError, TypeError, json.JSONDecodeError) as error:
        raise ValueError(f"{file_path} is a damaged pixdisc model file ({_first_line(error)}); "
                         f"{_MODEL_NEXT_STEP}") from None
    try:
        model = build_model(name, **arch_kwargs)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{file_path}: cannot rebuild architecture {name!r} ({_first_line(error)}), so it was "
                         f"edited or written by another pixdisc version; {_MODEL_NEXT_STEP}") from None
    try:
        model.load_state_dict(state_dict)
    except (RuntimeError, TypeError, AttributeError) as error:
        raise ValueError(f"{file_path}: weights do not match architecture {name!r} ({_first_line(error)}), so it "
                         f"was edited or written by another pixdisc version; {_MODEL_NEXT_STEP}") from None
    if map_location is not None and not callable(map_location) and not isinstance(map_location, dict):
        model.to(map_location)
    model.eval()
    if return_meta:
        return model, meta
    return model


def model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    """Where the model's first parameter (or buffer) lives; ``fallback`` for a model with neither."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return fallback


def predict(
    model: nn.Module,
    x: Tensor | np.ndarray,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> Tensor:
    """Predicted labels (int64, on the CPU) of ``model`` on ``x``, in eval mode and without gradients.

    ``x`` is float in ``[0,1]`` or ``uint8`` (taken as ``v/255``); the model's
    train/eval mode is restored afterwards.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    images = as_images(x)
    target_device = torch.device(device) if device is not None else model_device(model, images.device)
    was_training = model.training
    model.eval()
    labels: list[Tensor] = []
    try:
        with torch.no_grad():
            for start in range(0, images.shape[0], batch_size):
                batch = images[start : start + batch_size].to(target_device)
                labels.append(model(batch).argmax(dim=1).cpu())
    finally:
        model.train(was_training)
    if not labels:
        return torch.empty(0, dtype=torch.int64)
    return torch.cat(labels).to(torch.int64)
