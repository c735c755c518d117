"""What every target shares: where the data are, the configs, and the networks, evaluations and curves
cached in the output folder so that a rerun computes nothing twice."""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from .. import datasets
from .._files import write_text
from ..attacks import evaluate_robustness
from ..certification import Budget
from ..codebook import Codebook, DensityCodebook, KMedoidsCodebook, UniformCodebook
from ..discretize import Discretize
from ..experiments import DEMO_CONFIG, QUICK_CONFIG, ExperimentConfig, attack_specs, config_for_dataset, \
    evaluate_setting
from ..models import load_model, predict, save_model
from ..experiments.plan import train_settings
from ..train import SETTINGS


# Where each paper data set lives here, in the order tables list them.
_PAPER_DATASETS = ("mnist", "fashion_mnist", "cifar10", "gtsrb", "imagenet")
_LOADER_NAME = {"imagenet": "imagenet_dev"}
# Sub-folders of --data-dir tried for each data set before data_dir itself.
_SUBDIRS = {
    "mnist": ("mnist", "MNIST"),
    "fashion_mnist": ("fashion_mnist", "fashion-mnist", "FashionMNIST"),
    "cifar10": ("cifar10", "cifar-10", "cifar-10-batches-py", "cifar-10-batches-bin"),
    "gtsrb": ("gtsrb", "GTSRB"),
    "imagenet": ("imagenet", "imagenet_dev", "nips2017_dev"),
}
# ImageNet rows need the paper's pretrained ImageNet classifiers, which cannot be downloaded here.
_NO_IMAGENET_MODEL = ("not available here: the paper attacks pretrained ImageNet classifiers (Inception / "
                      "adversarially trained ResNet); no pretrained weights can be downloaded on this machine")

# Robustness-curve eps grids (the figures' ranges are ours; the paper gives curves only).
_CURVE_EPS = {"mnist": (0.05, 0.1, 0.2, 0.3, 0.4), "fashion_mnist": (0.02, 0.05, 0.1, 0.15, 0.2),
              "cifar10": (2 / 255, 4 / 255, 8 / 255, 16 / 255), "gtsrb": (2 / 255, 4 / 255, 8 / 255, 16 / 255)}
_CURVE_EPS_QUICK = {"mnist": (0.1, 0.3), "fashion_mnist": (0.05, 0.1), "cifar10": (4 / 255, 8 / 255),
                    "gtsrb": (4 / 255, 8 / 255)}
_FRAGMENTATION_EPS = {"mnist": 0.3, "fashion_mnist": 0.1, "cifar10": 8 / 255}

# Quick mode: tiny budgets so that `reproduce all --quick` takes about a minute on 2 cores.
# Its network is a 4-channel SmallCNN: the numbers only show that every code path runs.
_QUICK = QUICK_CONFIG.replace(arch_kwargs={"width": 8, "hidden": 64}, n_train=1000, n_test=64, eval_batch_size=64,
                              natural_epochs=2, attacks=("pgd_ce",), steps=3, curve_steps=3, curve_n=32)
_QUICK_CERT = {"n": 8, "budget": Budget(nodes=6, seconds=0.2), "eps": (0.0, 0.1, 0.3)}
# Full runs: 5 s per image at most, so the hopeless (huge S(x)) images cannot take hours each eps.
_FULL_CERT = {"n": None, "budget": Budget(nodes=2000, seconds=5.0), "eps": None}


# ----------------------------------------------------------------------------------------- context


@dataclass
class _Context:
    out: Path
    quick: bool
    data_dir: Path | Mapping[str, Any] | None
    seed: int
    progress: bool
    data: dict[str, tuple[datasets.Dataset | None, str]] = field(default_factory=dict)
    memo: dict[str, Any] = field(default_factory=dict)

    @property
    def tag(self) -> str:
        # Quick and full runs never share cached models or evaluations.
        return f"{'quick' if self.quick else 'full'}-seed{self.seed}"

    def log(self, message: str) -> None:
        if self.progress:
            tqdm.write(message, file=sys.stderr)


def _candidate_dirs(ctx: _Context, name: str) -> list[Path | None]:
    if ctx.data_dir is None:
        return [None]
    if isinstance(ctx.data_dir, Mapping):
        given = ctx.data_dir.get(name) or ctx.data_dir.get(_LOADER_NAME.get(name, name))
        return [Path(given).expanduser()] if given is not None else [None]
    root = Path(ctx.data_dir).expanduser()
    found: list[Path | None] = [root / sub for sub in _SUBDIRS.get(name, ()) if (root / sub).is_dir()] + [root]
    # A data_dir for other data sets must not hide the Debian package's Fashion-MNIST.
    return found + [None] if name == "fashion_mnist" else found


def _dataset(ctx: _Context, name: str) -> tuple[datasets.Dataset | None, str]:
    """The paper's data set ``name`` as available here, or ``(None, why missing and how to get it)``.

    MNIST falls back to the embedded 5,000-image subset (real MNIST) when no
    IDX files are given; Fashion-MNIST defaults to the Debian package.
    """
    if name in ctx.data:
        return ctx.data[name]
    loader = _LOADER_NAME.get(name, name)
    message = ""
    found: datasets.Dataset | None = None
    for directory in _candidate_dirs(ctx, name):
        if directory is None and name == "mnist":
            break
        try:
            found = datasets.load_dataset(loader, directory)
            break
        except datasets.DatasetNotFoundError as error:
            message = message or str(error)
    if found is None and name == "mnist":
        found = datasets.load_dataset("mnist5k")
        message = "full MNIST not given (--data-dir with the IDX files): using the embedded MNIST-5k subset"
    ctx.data[name] = (found, message)
    return found, message


def _float_split(data: datasets.Dataset, n_train: int | None, n_test: int | None
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    n_tr = len(data.x_train) if n_train is None else min(n_train, len(data.x_train))
    n_te = len(data.x_test) if n_test is None else min(n_test, len(data.x_test))
    return (torch.from_numpy(datasets.as_float_nchw(data.x_train[:n_tr])), torch.from_numpy(data.y_train[:n_tr]),
            torch.from_numpy(datasets.as_float_nchw(data.x_test[:n_te])), torch.from_numpy(data.y_test[:n_te]))


def _config(ctx: _Context, data: datasets.Dataset) -> ExperimentConfig:
    base = _QUICK if ctx.quick else DEMO_CONFIG
    config = config_for_dataset(data.name, base=base, seed=ctx.seed)
    if ctx.quick:
        config = config.replace(steps=_QUICK.steps, step_size=config.eps / 2, n_train=_QUICK.n_train,
                                n_test=_QUICK.n_test)
    return config


def _cache_json(path: Path, compute: Callable[[], Any]) -> Any:
    """Load ``path`` when a previous run wrote it; otherwise compute and write it (resumable at this grain)."""
    if path.exists():
        try:
            return json.loads(path.read_text())
        except ValueError:
            pass  # a torn write from a killed run: recompute
    value = compute()
    write_text(path, json.dumps(_jsonable(value)))
    return value


# ----------------------------------------------------------------------------------- six settings


def _network(ctx: _Context, path: Path, train: Callable[[], nn.Module], meta: Mapping[str, Any]) -> nn.Module:
    """A trained network from ``path`` when a previous run saved it; else train it and save it there."""
    if path.exists():
        return load_model(path)  # type: ignore[return-value]
    ctx.log(f"training {path.relative_to(ctx.out)}")
    network = train()
    save_model(network, path, meta=dict(meta))
    return network


def _store(ctx: _Context, data: datasets.Dataset, codebook: Codebook | None, book_tag: str, config: ExperimentConfig
           ) -> Callable[[str, Callable[[], Any]], tuple[nn.Module, None]]:
    """Where the planner's networks live: nat_pre/adv_pre once per data set (every table shares them),
    re-trained networks once per codebook; each saved as it finishes, so a rerun trains nothing twice."""

    def store(name: str, train: Callable[[], Any]) -> tuple[nn.Module, None]:
        shared = name in ("nat_pre", "adv_pre")
        key = f"network:{data.name}:{name}" + ("" if shared else f":{book_tag}")
        if key not in ctx.memo:
            folder = ctx.out / "models" / ctx.tag / data.name
            if shared:
                x_train, _, _, _ = _float_split(data, config.n_train, config.n_test)
                meta = {"dataset": data.name, "n_train": int(len(x_train)), "quick": ctx.quick, "setting": name}
            else:
                assert codebook is not None
                folder = folder / book_tag
                meta = {"dataset": data.name, "codebook": book_tag, "codes": codebook.codes_.tolist(),
                        "alpha": config.alpha, "quick": ctx.quick, "setting": name}
            ctx.memo[key] = _network(ctx, folder / f"{name}.pt", lambda: train()[0], meta)
        return ctx.memo[key], None

    return store


def _six_settings(ctx: _Context, data: datasets.Dataset, codebook: Codebook | None, book_tag: str,
                  settings: Sequence[str] = SETTINGS) -> dict[str, nn.Module]:
    """The paper's settings for one codebook, trained by the planner (pixdisc.experiments.plan) and cached on disk."""
    config = _config(ctx, data).replace(settings=tuple(settings))
    defense = None if codebook is None else Discretize(codebook, bpda=config.bpda, alpha=config.alpha)
    x_train, y_train, _, _ = _float_split(data, config.n_train, config.n_test)
    def checkpoint(name: str) -> Path:
        # Beside where _store saves the finished network: an interrupt loses at most the epoch it was in.
        folder = ctx.out / "checkpoints" / ctx.tag / data.name
        return folder / (f"{name}.ckpt" if name in ("nat_pre", "adv_pre") else f"{book_tag}-{name}.ckpt")

    return train_settings(config, x_train, y_train, defense, data.num_classes, progress=ctx.progress,
                          store=_store(ctx, data, codebook, book_tag, config), checkpoints=checkpoint).models


def _evaluate(ctx: _Context, data: datasets.Dataset, models: Mapping[str, nn.Module], book_tag: str
              ) -> dict[str, dict[str, Any]]:
    """Clean accuracy, attacked ceiling (the default suite) and certified floor per setting; cached as JSON."""
    config = _config(ctx, data)
    _, _, x_test, y_test = _float_split(data, config.n_train, config.n_test)
    rows: dict[str, dict[str, Any]] = {}
    for name, model in models.items():
        # The undefended settings do not depend on the codebook: one evaluation serves every table.
        stem = name if name in ("nat_pre", "adv_pre") else f"{book_tag}-{name}"
        path = ctx.out / "cache" / ctx.tag / data.name / f"eval-{stem}.json"

        def run(model: nn.Module = model) -> dict[str, Any]:
            started = time.perf_counter()
            row = evaluate_setting(model, x_test, y_test, config, progress=ctx.progress)
            if len(data.x_test) > len(x_test):
                # The suite runs on n_test images; clean accuracy is cheap on all of them.
                row["clean_accuracy_all"], row["n_all"] = _clean_accuracy(model, data, config.eval_batch_size)
            row["eval_seconds"] = time.perf_counter() - started
            return row

        rows[name] = _cache_json(path, run)
    return rows


def _clean_accuracy(model: nn.Module, data: datasets.Dataset, batch_size: int) -> tuple[float, int]:
    labels = predict(model, datasets.as_float_nchw(data.x_test), batch_size=batch_size).numpy()
    return float((labels == data.y_test).mean()), len(data.x_test)


def _curves(ctx: _Context, data: datasets.Dataset, models: Mapping[str, nn.Module], book_tag: str,
            eps_grid: Sequence[float], x: Tensor | None = None, y: Tensor | None = None,
            split: str = "test") -> dict[str, list[float]]:
    """Robust accuracy vs eps (PGD-CE, Madry's step rule 2.5 eps / steps) per setting; cached as JSON."""
    config = _config(ctx, data)
    if x is None or y is None:
        _, _, x, y = _float_split(data, config.n_train, config.n_test)
    count = min(config.curve_n, len(x))
    curves: dict[str, list[float]] = {}
    for name, model in models.items():
        grid = "_".join(f"{eps:.4g}" for eps in eps_grid)
        path = ctx.out / "cache" / ctx.tag / data.name / f"curve-{split}-{book_tag}-{name}-eps{grid}.json"

        def run(model: nn.Module = model) -> list[float]:
            values = []
            for eps in eps_grid:
                if eps == 0:
                    with torch.no_grad():
                        values.append(float((model(x[:count]).argmax(1) == y[:count]).float().mean()))
                    continue
                spec = attack_specs(eps, config.curve_steps, 2.5 * eps / max(config.curve_steps, 1), ["pgd_ce"])
                values.append(evaluate_robustness(model, x[:count], y[:count], spec, batch_size=config.eval_batch_size,
                                                  seed=config.seed, eps=eps, keep_adv=False,
                                                  progress=False).robust_accuracy)
            return values

        curves[name] = _cache_json(path, run)
    return {"eps": list(eps_grid), "n": count, "steps": config.curve_steps,
            "settings": curves}  # type: ignore[dict-item]


# ------------------------------------------------------------------------------------- codebooks


def _density(ctx: _Context, data: datasets.Dataset, k: int | None = None, r: float | None = None) -> Codebook:
    config = _config(ctx, data)
    k = config.k if k is None else k
    r = config.r if r is None else r
    key = f"density:{data.name}:{k}:{r}"
    if key not in ctx.memo:
        # Fitted on the full training split even in quick mode: Algorithm 1 is cheap (a histogram).
        ctx.memo[key] = DensityCodebook(k, r, metric=config.metric).fit(data.x_train)
    return ctx.memo[key]


def _uniform(data: datasets.Dataset, k: int) -> Codebook:
    return UniformCodebook(k).fit(data.x_train[:1])


def _kmedoids(ctx: _Context, data: datasets.Dataset, k: int) -> Codebook:
    key = f"kmedoids:{data.name}:{k}"
    if key not in ctx.memo:
        # PAM is quadratic in distinct colours (KMedoidsCodebook refuses > 50,000): RGB data is
        # subsampled to 40 images (<= 40,960 colours; 10 in quick mode), gray data has only 256 anyway.
        x = data.x_train if data.x_train.shape[-1] == 1 else data.x_train[:10 if ctx.quick else 40]
        ctx.memo[key] = KMedoidsCodebook(k, metric="l1", random_state=ctx.seed).fit(x)
    return ctx.memo[key]


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value
