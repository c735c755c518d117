"""Codebooks of pixel values: learn them from data, discretize with them, save and load them."""

from __future__ import annotations

import itertools
import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np

from . import _native
from ._files import atomic_write, file_kind, numpy_load_reason
from .pixels import as_pixels, histogram_of
from .profiles import CERTIFIED_CODEBOOKS, dataset_key

__all__ = [
    "Codebook",
    "DensityCodebook",
    "KMedoidsCodebook",
    "KMeansCodebook",
    "UniformCodebook",
    "NotFittedError",
    "load_codebook",
    "certified_codebook",
    "CERTIFIED_CODEBOOKS",
    "METRICS",
    "KERNELS",
]

METRICS = ("linf", "l1", "l2")
KERNELS = ("identity", "box", "gaussian")
FORMAT_VERSION = 1
MAX_CODES = 65536


class NotFittedError(ValueError, AttributeError):
    """A codebook was used before ``fit`` gave it codes."""


def _metric_id(metric: str) -> int:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return METRICS.index(metric)


def _check_codes(codes: Any) -> np.ndarray:
    arr = np.asarray(codes)
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"codes must be numeric, got dtype {arr.dtype}")
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / np.float32(255)
    arr = np.array(arr, dtype=np.float32, copy=True)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] == 0 or not 1 <= arr.shape[1] <= 4:
        raise ValueError(f"codes must be a non-empty (k, C) array with 1 <= C <= 4, got shape {arr.shape}")
    if arr.shape[0] > MAX_CODES:
        raise ValueError(f"at most {MAX_CODES} codes are supported, got {arr.shape[0]}")
    if not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1:
        raise ValueError("codes must be finite values in [0, 1]")
    return np.ascontiguousarray(arr)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class Codebook:
    """A set of codes (``codes_``, float32 ``(k, C)`` in [0, 1]) and a metric.

    ``assign`` maps every pixel to the index of its nearest code and
    ``transform`` replaces it by that code (ties go to the lowest index). Both
    accept NumPy arrays and torch tensors (CPU, or CUDA when available) and
    return the same kind on the same device. The channel axis defaults to the
    last axis for NumPy and axis 1 for torch; a one-channel codebook accepts
    any shape. uint8 input (meaning v/255) gives uint8 output with the codes
    rounded to the nearest k/255.
    """

    def __init__(self, codes: Any, metric: str = "linf") -> None:
        _metric_id(metric)
        self.metric = metric
        self.codes_ = _check_codes(codes)
        self._index = None

    # -- fitted state -------------------------------------------------------
    @property
    def is_fitted(self) -> bool:
        return getattr(self, "codes_", None) is not None

    def fitted_codes(self) -> np.ndarray:
        """``codes_``; a NotFittedError that says to call ``fit`` first when there are none yet."""
        if not self.is_fitted:
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(X) first")
        return self.codes_

    @property
    def n_codes(self) -> int:
        return int(self.fitted_codes().shape[0])

    @property
    def n_channels(self) -> int:
        return int(self.fitted_codes().shape[1])

    def _set_codes(self, codes: np.ndarray) -> None:
        self.codes_ = _check_codes(codes)
        self._index = None

    def nearest_index(self) -> _native.NearestIndex:
        """The native nearest-code index of the codes, the kernels' argument (built on first use, dropped when
        the codes change)."""
        if self._index is None:
            self._index = _native.NearestIndex(self.fitted_codes(), _metric_id(self.metric))
        return self._index

    # -- discretization -----------------------------------------------------
    def assign(self, x: Any, channel_axis: Optional[int] = None) -> Any:
        """Index of the nearest code for every pixel (int32; the channel axis removed)."""
        view = as_pixels(x, channel_axis, channels=self.n_channels)
        index = self.nearest_index().assign(view.data.reshape(-1), view.outer, view.channels, view.inner)
        return view.wrap(index.reshape(view.index_shape))

    def transform(self, x: Any, channel_axis: Optional[int] = None, *, check: bool = True) -> Any:
        """``x`` with every pixel replaced by its nearest code (same shape and dtype).

        A float pixel outside [0, 1] raises ValueError. ``check=False`` matters
        on CUDA only: the call does not wait for the GPU, such a pixel comes out
        NaN and a later call on this codebook raises (the BPDA forward pass of
        :class:`pixdisc.Discretize` uses it).
        """
        view = as_pixels(x, channel_axis, channels=self.n_channels)
        out = self.nearest_index().transform(view.data.reshape(-1), view.outer, view.channels, view.inner,
                                             check=check)
        return view.wrap(out.reshape(view.shape))

    def fit_transform(self, X: Any, y: Any = None, channel_axis: Optional[int] = None) -> Any:
        """``fit(X)`` then ``transform(X)``; ``y`` is ignored (scikit-learn pipelines pass it)."""
        return self.fit(X, channel_axis=channel_axis).transform(X, channel_axis=channel_axis)

    # -- persistence ----------------------------------------------------------
    def __getstate__(self) -> Dict[str, Any]:
        # The native index (and its device copies) is a cache: rebuilt on
        # first use, so codebooks pickle cleanly to worker processes.
        state = dict(self.__dict__)
        state["_index"] = None
        state.pop("_device_codes", None)  # the cache of pickles made before _native
        return state

    # -- scikit-learn protocol ------------------------------------------------
    def get_params(self, deep: bool = True) -> Dict[str, Any]:
        """Constructor parameters (``deep`` is scikit-learn's; a codebook holds no sub-estimators).

        The codes of a plain :class:`Codebook` are data, not a parameter:
        ``sklearn.base.clone`` copies them through ``__sklearn_clone__``.
        """
        return {"metric": self.metric}

    def set_params(self, **params: Any) -> "Codebook":
        """Change parameters, validated as the constructor validates them.

        A codebook learned from data is reset (fit it again): its codes
        belong to the old parameters. A plain :class:`Codebook` keeps its codes.
        """
        current = self.get_params()
        unknown = sorted(set(params) - set(current))
        if unknown:
            raise ValueError(f"invalid parameter(s) {unknown} for {type(self).__name__}; valid: {sorted(current)}")
        fresh = self._with_params({**current, **params})
        self.__dict__.clear()
        self.__dict__.update(fresh.__dict__)
        return self

    def fit(self, X: Any = None, y: Any = None, channel_axis: Optional[int] = None) -> "Codebook":
        """Given codes need no fitting: returns ``self`` (scikit-learn pipelines call ``fit``)."""
        return self

    def __sklearn_tags__(self) -> Any:
        """What scikit-learn (>= 1.6) pipelines and searches ask of a transformer."""
        from sklearn.utils import Tags, TargetTags, TransformerTags

        return Tags(estimator_type=None, target_tags=TargetTags(required=False),
                    transformer_tags=TransformerTags(preserves_dtype=["float32"]),
                    requires_fit=isinstance(self, _FittableCodebook))

    def __sklearn_clone__(self) -> "Codebook":
        """An unfitted copy with the same parameters (``sklearn.base.clone`` calls this)."""
        return self._with_params(self.get_params())

    def _with_params(self, params: Dict[str, Any]) -> "Codebook":
        return type(self)(self.fitted_codes(), **params)

    def save(self, path: Union[str, os.PathLike]) -> Path:
        """Write a versioned ``.npz`` (no pickles) atomically; returns the path."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        extra = {k: v for k, v in self.__dict__.items() if k.endswith("_") and k != "codes_"}
        meta = {
            "kind": type(self).__name__,
            "params": self.get_params(),
            "fitted": {k: _jsonable(v) for k, v in extra.items()},
        }
        with atomic_write(path) as f:
            np.savez(
                f,
                format_version=np.int64(FORMAT_VERSION),
                codes=self.fitted_codes(),
                metric=np.str_(self.metric),
                meta=np.str_(json.dumps(meta)),
            )
        return path

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        fitted = f", n_codes={self.n_codes}" if self.is_fitted else ""
        return f"{type(self).__name__}({params}{fitted})"


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


class _FittableCodebook(Codebook):
    """Base for codebooks learned from data (``codes_`` appears after ``fit``)."""

    def __init__(self, metric: str) -> None:
        _metric_id(metric)
        self.metric = metric
        self.codes_ = None
        self._index = None

    def _with_params(self, params: Dict[str, Any]) -> "Codebook":
        return type(self)(**params)

    def _histogram(self, X: Any, channel_axis: Optional[int]) -> Tuple[np.ndarray, np.ndarray]:
        view = as_pixels(X, channel_axis)
        if view.n_pixels == 0:
            raise ValueError("cannot fit a codebook on empty data")
        return histogram_of(view)


class DensityCodebook(_FittableCodebook):
    """Algorithm 1 of the paper: greedy selection of the densest pixel values.

    Repeat ``k`` times: take the remaining pixel value of highest density as
    the next code, then remove every remaining pixel within ``r`` of it. Stops
    early (``stopped_early_``) when no pixel remains. Kernels: ``identity``
    (density = count of that exact value, the paper's), ``box`` (pixels within
    ``bandwidth``), ``gaussian`` (weights ``exp(-d^2 / (2 bandwidth^2))``,
    truncated at 4 bandwidths). Density ties go to the smallest value.
    """

    def __init__(
        self,
        k: int,
        r: float,
        metric: str = "linf",
        kernel: str = "identity",
        bandwidth: Optional[float] = None,
    ) -> None:
        super().__init__(metric)
        self.k = _positive_int("k", k)
        if not np.isfinite(r) or r < 0:
            raise ValueError(f"r must be a finite number >= 0, got {r!r}")
        self.r = float(r)
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        if kernel != "identity" and (bandwidth is None or not np.isfinite(bandwidth) or bandwidth <= 0):
            raise ValueError(f"kernel={kernel!r} needs a bandwidth > 0 (h for box, sigma for gaussian)")
        self.kernel = kernel
        self.bandwidth = None if bandwidth is None else float(bandwidth)

    def get_params(self, deep: bool = True) -> Dict[str, Any]:
        return {"k": self.k, "r": self.r, "metric": self.metric, "kernel": self.kernel, "bandwidth": self.bandwidth}

    def fit(self, X: Any, y: Any = None, channel_axis: Optional[int] = None) -> "DensityCodebook":
        values, counts = self._histogram(X, channel_axis)
        res = _native.density_codebook(
            values, counts, self.k, self.r, _metric_id(self.metric), KERNELS.index(self.kernel),
            float(self.bandwidth or 0.0),
        )
        self._set_codes(res["codes"])
        self.n_codes_ = int(res["codes"].shape[0])
        self.stopped_early_ = bool(res["stopped_early"])
        self.densities_ = res["densities"]
        self.coverage_ = res["covered"]
        self.n_pixels_ = int(counts.sum())
        self.n_distinct_ = int(counts.shape[0])
        return self


class KMedoidsCodebook(_FittableCodebook):
    """Algorithm 2 of the paper: k-medoids (PAM swaps) on the weighted distinct values.

    Minimises the summed distance (``metric``, default ``l1``) from every pixel
    to its nearest medoid, exactly, over the distinct values weighted by their
    counts, from a start seeded by ``random_state``. The swap search is
    quadratic in the number of distinct values, so more than ``max_values``
    of them is refused (subsample the data, or raise the limit).
    """

    def __init__(self, k: int, metric: str = "l1", random_state: Optional[int] = None,
                 max_iter: int = 100, max_values: int = 50_000) -> None:
        super().__init__(metric)
        self.k = _positive_int("k", k)
        self.random_state = random_state
        self.max_iter = _positive_int("max_iter", max_iter)
        self.max_values = _positive_int("max_values", max_values)

    def get_params(self, deep: bool = True) -> Dict[str, Any]:
        return {"k": self.k, "metric": self.metric, "random_state": self.random_state,
                "max_iter": self.max_iter, "max_values": self.max_values}

    def fit(self, X: Any, y: Any = None, channel_axis: Optional[int] = None) -> "KMedoidsCodebook":
        values, counts = self._histogram(X, channel_axis)
        if values.shape[0] > self.max_values:
            raise ValueError(
                f"k-medoids on {values.shape[0]} distinct pixel values would take too long "
                f"(max_values={self.max_values}); subsample the data or raise max_values"
            )
        res = _native.kmedoids_codebook(values, counts, self.k, _metric_id(self.metric),
                                               _seed(self.random_state), self.max_iter)
        self._set_codes(res["codes"])
        self.n_codes_ = int(res["codes"].shape[0])
        self.cost_ = float(res["cost"]) / float(counts.sum())
        self.n_swaps_ = int(res["iterations"])
        self.converged_ = bool(res["converged"])
        return self


class KMeansCodebook(_FittableCodebook):
    """Weighted k-means (Lloyd from a k-means++ start) on the distinct pixel values.

    The paper reports it as worse than the density and k-medoids codebooks;
    it is kept for comparison. Codes are centroids, so they need not be
    pixel values of the data. ``metric`` only affects how the codes are used.
    """

    def __init__(self, k: int, random_state: Optional[int] = None, max_iter: int = 300,
                 tol: float = 1e-6, metric: str = "linf") -> None:
        super().__init__(metric)
        self.k = _positive_int("k", k)
        self.random_state = random_state
        self.max_iter = _positive_int("max_iter", max_iter)
        self.tol = float(tol)

    def get_params(self, deep: bool = True) -> Dict[str, Any]:
        return {"k": self.k, "random_state": self.random_state, "max_iter": self.max_iter,
                "tol": self.tol, "metric": self.metric}

    def fit(self, X: Any, y: Any = None, channel_axis: Optional[int] = None) -> "KMeansCodebook":
        values, counts = self._histogram(X, channel_axis)
        res = _native.kmeans_codebook(values, counts, self.k, _seed(self.random_state),
                                             self.max_iter, self.tol)
        self._set_codes(res["codes"])
        self.n_codes_ = int(res["codes"].shape[0])
        self.inertia_ = float(res["cost"]) / float(counts.sum())
        self.n_iter_ = int(res["iterations"])
        self.converged_ = bool(res["converged"])
        return self


class UniformCodebook(_FittableCodebook):
    """Colour-depth reduction (Xu et al.): ``k`` evenly spaced levels per channel.

    Codes are every combination of the levels ``c_t = (t-1)/(k-1)``, in
    lexicographic order. The default metric is ``l2``: with it the nearest code
    is per-channel rounding (what colour-depth reduction means), whereas
    ``linf`` ties on whole slabs of the grid for RGB data.
    """

    def __init__(self, k: int, metric: str = "l2", channels: Optional[int] = None) -> None:
        super().__init__(metric)
        self.k = _positive_int("k", k)
        if self.k < 2:
            raise ValueError("a uniform codebook needs k >= 2 levels")
        self.channels = channels
        if channels is not None:
            self._set_codes(self._grid(channels))

    def get_params(self, deep: bool = True) -> Dict[str, Any]:
        return {"k": self.k, "metric": self.metric, "channels": self.channels}

    def _grid(self, channels: int) -> np.ndarray:
        if not 1 <= channels <= 4:
            raise ValueError(f"channels must be 1 to 4, got {channels}")
        if self.k ** channels > MAX_CODES:
            raise ValueError(f"{self.k} levels on {channels} channels is {self.k ** channels} codes (max {MAX_CODES})")
        levels = np.arange(self.k, dtype=np.float64) / (self.k - 1)
        return np.array(list(itertools.product(levels, repeat=channels)), dtype=np.float32)

    def fit(self, X: Any = None, y: Any = None, channel_axis: Optional[int] = None) -> "UniformCodebook":
        channels = self.channels or 1
        if X is not None:
            channels = as_pixels(X, channel_axis).channels
        self._set_codes(self._grid(channels))
        self.n_codes_ = self.n_codes
        return self


def _seed(random_state: Optional[int]) -> int:
    if random_state is None:
        return int(np.random.SeedSequence().generate_state(1, dtype=np.uint64)[0])
    if isinstance(random_state, bool) or not isinstance(random_state, (int, np.integer)) or random_state < 0:
        raise ValueError(f"random_state must be a non-negative integer or None, got {random_state!r}")
    return int(random_state)


_KINDS = {
    "Codebook": Codebook,
    "DensityCodebook": DensityCodebook,
    "KMedoidsCodebook": KMedoidsCodebook,
    "KMeansCodebook": KMeansCodebook,
    "UniformCodebook": UniformCodebook,
}


def load_codebook(path: Union[str, os.PathLike]) -> Codebook:
    """Load a codebook written by :meth:`Codebook.save` (``.npz``), or bare codes (``.npy``, ``(k, C)``).

    Files are read with ``allow_pickle=False``; anything malformed raises a
    ``ValueError`` that names the file, says what is wrong with it and what to
    pass instead.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no codebook file at {path}")
    next_step = "pass a codebook written by Codebook.save or `pixdisc codes -o FILE.npz`, or fit the codes again"
    if path.suffix == ".npy":
        next_step += " (a .npy codebook holds bare codes: a (k, C) array of values in [0, 1])"
    try:
        if path.suffix == ".npy":
            codes, metric, meta = np.load(path, allow_pickle=False), "linf", {}
        else:
            # Our own handle: np.load leaks its file when a truncated .npz fails to open.
            with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as f:
                version = int(f["format_version"])
                codes = np.array(f["codes"])
                metric = str(f["metric"])
                meta = json.loads(str(f["meta"]))
    except Exception as exc:  # noqa: BLE001 - whatever numpy or zipfile raises, the file is at fault
        raise ValueError(f"{path} is not a valid pixdisc codebook: {_unreadable(path, exc)}; {next_step}") from exc
    if path.suffix != ".npy" and version > FORMAT_VERSION:
        raise ValueError(f"{path} is a codebook of format version {version}, newer than this pixdisc reads "
                         f"({FORMAT_VERSION}); upgrade pixdisc to read it, or pass another codebook")
    try:
        if not isinstance(meta, dict):
            raise ValueError("its 'meta' entry is not a JSON object")
        cls = _KINDS.get(meta.get("kind"), Codebook)
        if cls is Codebook:
            return Codebook(codes, metric=metric)
        params = dict(meta.get("params", {}))
        try:
            book = cls(**params)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"invalid {cls.__name__} parameters {params}: {exc}") from None
        book._set_codes(codes)
        for key, value in meta.get("fitted", {}).items():
            setattr(book, key, np.asarray(value) if isinstance(value, list) else value)
        return book
    except (TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"{path} is not a valid pixdisc codebook: {exc}; {next_step}") from exc


def _unreadable(path: Path, error: BaseException) -> str:
    """Why a codebook file could not be read, in a user's words."""
    kind = file_kind(path)
    if kind in ("empty", "text"):
        return "it is empty (0 bytes)" if kind == "empty" else "it holds text, not NumPy arrays"
    if isinstance(error, KeyError):
        if kind == "zip":
            return "it is a zip archive of other files (a torch model?), not a codebook"
        # numpy says "codes is not a file in the archive"
        name = str(error.args[0]).split(" is not a file")[0] if error.args else "?"
        return f"it has no {name!r} entry, so Codebook.save did not write it"
    if isinstance(error, json.JSONDecodeError):
        return "its 'meta' entry is not valid JSON"
    if isinstance(error, (zipfile.BadZipFile, EOFError, zlib.error)):
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return f"it is a damaged or incomplete .npz archive, e.g. cut off by an unfinished copy ({text})"
    return numpy_load_reason(error)


def certified_codebook(dataset: str, x_train: Any) -> Codebook:
    """The codebook :data:`CERTIFIED_CODEBOOKS` recommends for ``dataset``, fitted on ``x_train`` (NHWC)."""
    spec = CERTIFIED_CODEBOOKS.get(dataset_key(dataset))
    if spec is None:
        raise ValueError(f"no recommended codes for certification on {dataset!r}; known: "
                         f"{', '.join(CERTIFIED_CODEBOOKS)}")
    if spec["method"] == "kmedoids":
        return KMedoidsCodebook(spec["k"], metric="l1", random_state=0).fit(x_train)
    if spec["method"] == "uniform":
        return UniformCodebook(spec["k"]).fit(x_train)
    return DensityCodebook(spec["k"], spec["r"]).fit(x_train)
