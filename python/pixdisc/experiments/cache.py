"""The output folder as a cache: artefacts saved as they finish, keyed by what produced them, so a rerun
of an interrupted experiment redoes nothing it finished."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from torch import Tensor, nn

from .. import __version__, datasets
from .._files import write_text
from ..codebook import Codebook
from ..models import load_model, save_model
from .config import ExperimentConfig
from .plan import TRAINED_NETWORKS



# Config fields that change what is attacked or reported but not how a network is trained: changing them
# keeps the saved networks of an output folder (everything else retrains).
_EVALUATION_ONLY = ("eps", "steps", "step_size", "attacks", "suite", "square_queries", "certify_bound",
                    "certify_nodes", "certify_seconds", "certify_work", "certify_search", "n_test", "eval_batch_size",
                    "curve_eps", "curve_settings", "curve_steps", "curve_n", "settings")


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _data_digest(*arrays: Any) -> str:
    h = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array.numpy() if isinstance(array, Tensor) else array)
        h.update(f"{array.dtype}{array.shape}".encode())
        h.update(array.tobytes())
    return h.hexdigest()[:16]


class _Resume:
    """The output folder as a cache, so that rerunning an interrupted run redoes nothing it finished.

    Networks are saved to ``models/<name>.pt`` as each finishes (with the
    training key and history in their meta), their training checkpoints
    after every epoch go to ``cache/<key>/``, and each setting's attack
    result and eps curve to ``cache/*.json``. Every artefact carries the key
    of what produced it (config, codes, data): one written for another
    configuration is never reused, it is computed again and replaced.
    """

    def __init__(self, folder: Path, train_key: str, eval_key: str, save_networks: bool,
                 log: Callable[[str], None]) -> None:
        self.folder = folder
        self.train_key = train_key
        self.eval_key = eval_key
        self.save_networks = save_networks
        self.log = log
        self.reused: list[str] = []
        self.meta: dict[str, dict[str, Any]] = {}  # per network: what its model file's meta says
        self.train_seconds: dict[str, float] = {}  # per network: training time, the earlier run's when reused

    def checkpoint(self, name: str) -> Path:
        return self.folder / "cache" / f"train-{self.train_key}" / f"{name}.ckpt"

    def store(self, name: str, train: Callable[[], Any]) -> tuple[nn.Module, dict[str, Any] | None]:
        """The planner's store: a network this configuration already trained, else train it and save it now."""
        path = self.folder / "models" / f"{name}.pt"
        if self.save_networks and path.exists():
            try:
                network, meta = load_model(path, return_meta=True)  # type: ignore[misc]
            except ValueError as error:  # a damaged file: train again
                self.log(f"{path}: cannot be read ({error}); training {name} again")
            else:
                if meta.get("resume_key") == self.train_key:
                    self.reused.append(f"models/{name}.pt")
                    self.train_seconds[name] = float(meta.get("train_seconds") or 0.0)
                    self.log(f"{name}: reusing {path} (trained by an earlier run of this configuration)")
                    return network, meta.get("history")
                self.log(f"{path} was trained for another configuration: training {name} again")
        started = time.perf_counter()
        network, history = train()
        self.train_seconds[name] = time.perf_counter() - started
        if self.save_networks:
            save_model(network, path, meta={**self.meta.get(name, {"setting": name}), "resume_key": self.train_key,
                                            "history": history, "train_seconds": self.train_seconds[name]})
        checkpoint = self.checkpoint(name)
        checkpoint.unlink(missing_ok=True)  # finished: the model file supersedes its epoch checkpoint
        return network, history

    def cached(self, name: str, compute: Callable[[], Any]) -> Any:
        """``cache/<name>.json`` when this configuration wrote it, else compute and write it."""
        path = self.folder / "cache" / f"{name}.json"
        if path.exists():
            try:
                saved = json.loads(path.read_text())
            except ValueError:
                saved = None  # a torn write: compute again
            if isinstance(saved, dict) and saved.get("key") == self.eval_key:
                self.reused.append(f"cache/{name}.json")
                return saved["value"]
        value = compute()
        write_text(path, json.dumps({"key": self.eval_key, "value": value}, default=_plain))
        return value




def _model_meta(name: str, codebook: Codebook, config: ExperimentConfig, data: datasets.Dataset) -> dict[str, Any]:
    height, width, channels = data.shape
    return {
        "setting": name,
        "dataset": data.name,
        "input_shape": [channels, height, width],
        "num_classes": int(data.num_classes),
        "defense": None if not name.startswith("disc_") else {
            "codebook": "codes.npz",
            "codes": codebook.codes_.tolist(),
            "metric": codebook.metric,
            "alpha": config.alpha,
            "bpda": config.bpda,
        },
        "pixdisc": __version__,
    }


def _resume_for(folder: Path, config: ExperimentConfig, codebook: Codebook, data: datasets.Dataset,
                x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, save_networks: bool,
                log: Callable[[str], None]) -> _Resume:
    """The output folder's cache, keyed by everything that decides the networks and the attack results."""
    settings = config.to_dict()
    codes = {"codes": np.asarray(codebook.codes_).tolist(), "metric": codebook.metric}
    train_key = _digest({"config": {key: value for key, value in settings.items() if key not in _EVALUATION_ONLY},
                         **codes, "data": _data_digest(x_train, y_train)})
    eval_key = _digest({"config": settings, "train": train_key, "data": _data_digest(x_test, y_test)})
    resume = _Resume(folder, train_key, eval_key, save_networks, log)
    resume.meta = {name: _model_meta(name, codebook, config, data) for name in TRAINED_NETWORKS}
    return resume


