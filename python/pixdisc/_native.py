"""The one door to the native kernels: pixdisc._core (CPU) and pixdisc._cuda (CUDA), threads and build facts.

Arrays go in as NumPy arrays, torch CPU tensors, or CUDA arrays (torch CUDA
tensors; other objects with ``__cuda_array_interface__`` or ``__dlpack__``
become torch tensors without a copy). The backend follows the data: host
arrays run on ``_core``, CUDA arrays on ``_cuda`` on torch's current stream.
Both compiled modules have the same function names and arguments (``_cuda``
adds the outputs, which the caller allocates, and the stream) and check dtype,
shape, contiguity and, for CUDA, the device of every array before a kernel
runs; this module adds the one check they cannot make, host versus CUDA, and
says which it needs. Host results are NumPy arrays; CUDA results are torch
tensors on the input's device. No other module imports ``_core``/``_cuda`` or
reads a data pointer.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Dict, Optional, Tuple

import numpy as np

from . import _core

try:  # the CUDA module exists only when the build found nvcc
    from . import _cuda  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the build
    _cuda = None

__all__ = [
    "cuda_available", "set_num_threads", "get_num_threads", "build_info", "require_cuda", "is_cuda",
    "NearestIndex", "histogram", "histogram_gray_u8", "density_codebook", "kmedoids_codebook", "kmeans_codebook",
    "candidate_sets", "enumerate_candidates", "mixed_radix_strides", "mixed_radix_digits", "CandidateEnumerator",
    "summed_area_table", "neighbourhood_counts", "neighbourhood_sizes",
]


# --------------------------------------------------------------------------
# Threads, build facts, CUDA availability


def set_num_threads(n: int) -> None:
    """Set the number of threads the native CPU kernels use (``n <= 0``: all cores)."""
    _core.set_num_threads(int(n))


def get_num_threads() -> int:
    """Number of threads the native CPU kernels use."""
    return int(_core.get_num_threads())


@functools.lru_cache(maxsize=1)
def cuda_available() -> bool:
    """True when the CUDA module was built and a CUDA device is usable. Never raises."""
    if _cuda is None:
        return False
    try:
        return int(_cuda.device_count()) > 0
    except Exception:  # noqa: BLE001 - "never raises" is the contract
        return False


def require_cuda() -> Any:
    """The CUDA module, or a RuntimeError that says why it cannot be used."""
    if _cuda is None:
        raise RuntimeError(
            "CUDA not available: pixdisc was built without its CUDA module "
            "(no nvcc at build time, or -Ccmake.define.PIXDISC_CUDA=OFF); CPU arrays work"
        )
    if not cuda_available():
        raise RuntimeError("CUDA not available: no usable CUDA device or driver; CPU arrays work")
    return _cuda


def build_info() -> dict:
    """How the native modules were built, and what this machine offers."""
    info = dict(_core.build_info())
    info["cuda_module"] = _cuda is not None
    if _cuda is not None:
        info.update({f"cuda_{k}": v for k, v in dict(_cuda.build_info()).items()})
    info["cuda_available"] = cuda_available()
    info["num_threads"] = get_num_threads()
    return info


# --------------------------------------------------------------------------
# Host or CUDA: the one check the bindings cannot make


def _torch() -> Any:
    return sys.modules.get("torch")


def is_cuda(x: Any) -> bool:
    """True for a CUDA array: a torch CUDA tensor, or any object exposing ``__cuda_array_interface__``."""
    torch = _torch()
    if torch is not None and isinstance(x, torch.Tensor):
        return x.device.type == "cuda"
    if hasattr(x, "__cuda_array_interface__"):
        return True
    # DLPack device type 2 is CUDA; NumPy arrays (type 1) and others stay on the host path.
    device = getattr(x, "__dlpack_device__", None)
    return device is not None and not isinstance(x, np.ndarray) and int(device()[0]) == 2


def _describe(x: Any) -> str:
    shape = tuple(int(s) for s in getattr(x, "shape", ()))
    return f"{type(x).__name__} dtype={getattr(x, 'dtype', '?')} shape={shape}"


def _host(x: Any, name: str) -> Any:
    """x for a CPU kernel: NumPy arrays as they are, torch CPU tensors as NumPy views (no copy).

    dtype, shape and contiguity are the binding's to check, so it sees the caller's array unconverted.
    """
    torch = _torch()
    if torch is not None and isinstance(x, torch.Tensor):
        if x.device.type != "cpu":
            raise ValueError(f"{name} must be a host array (NumPy or a CPU tensor) here, got a tensor on {x.device}")
        return x.detach().numpy()
    if is_cuda(x):
        raise ValueError(f"{name} must be a host array (NumPy or a CPU tensor) here, got a CUDA array: {_describe(x)}")
    return x


def _cuda_tensor(x: Any, name: str) -> Any:
    """x as a torch CUDA tensor (no copy), detached: torch hides __cuda_array_interface__ on tensors needing grad."""
    import torch

    if not isinstance(x, torch.Tensor):
        x = torch.from_dlpack(x) if hasattr(x, "__dlpack__") else torch.as_tensor(x, device="cuda")
    if x.device.type != "cuda":
        raise ValueError(f"{name} must be a CUDA array here, got a tensor on {x.device}")
    return x.detach()


def _device_of(*named: Tuple[str, Any]) -> Optional[Any]:
    """The CUDA device of the CUDA arrays among `named` (None: all on the host); mixing the two is an error."""
    on_cuda = [(name, x) for name, x in named if x is not None and is_cuda(x)]
    if not on_cuda:
        return None
    on_host = [name for name, x in named if x is not None and not is_cuda(x)]
    if on_host:
        raise ValueError(f"{on_cuda[0][0]} is a CUDA array but {', '.join(on_host)} "
                         f"{'is a host array' if len(on_host) == 1 else 'are host arrays'}; put all on one device")
    devices = {_cuda_tensor(x, name).device for name, x in on_cuda}
    if len(devices) > 1:
        raise ValueError(f"the CUDA arrays are on different devices: {sorted(str(d) for d in devices)}")
    return devices.pop()


def _stream(device: Any) -> int:
    import torch

    return int(torch.cuda.current_stream(device).cuda_stream)


def _from_keys(keys: np.ndarray, channels: int) -> np.ndarray:
    """Dense-table keys (channel 0 most significant) as float32 (n, C) pixel values k/255."""
    shifts = 8 * np.arange(channels - 1, -1, -1)
    return (((keys[:, None] >> shifts[None, :]) & 0xFF).astype(np.float32) / np.float32(255)).reshape(-1, channels)


# --------------------------------------------------------------------------
# Nearest code


class NearestIndex:
    """The nearest-code index of one codebook on whichever device the pixels are.

    ``codes`` is float32 ``(k, C)`` (host) and ``metric`` 0 (linf), 1 (l1) or
    2 (l2). The CPU grid index is built on first host use, the device copies
    of the codes on first use per CUDA device; both are reused.
    """

    def __init__(self, codes: np.ndarray, metric: int) -> None:
        self.codes = codes
        self.metric = int(metric)
        self._cpu: Any = None
        self._devices: Dict[Any, Any] = {}

    @property
    def k(self) -> int:
        return int(self.codes.shape[0])

    @property
    def channels(self) -> int:
        return int(self.codes.shape[1])

    @property
    def cpu(self) -> Any:
        """The CPU index (``_core.NearestIndex``)."""
        if self._cpu is None:
            self._cpu = _core.NearestIndex(self.codes, self.metric)
        return self._cpu

    def _on(self, device: Any) -> Any:
        if device not in self._devices:
            self._devices[device] = require_cuda().NearestIndex(self.codes, self.metric, device.index or 0)
        return self._devices[device]

    def assign(self, x: Any, outer: int, channels: int, inner: int) -> Any:
        """Nearest code index of every pixel of x viewed as ``(outer, channels, inner)``: int32 ``(outer*inner,)``."""
        device = _device_of(("x", x))
        if device is None:
            return self.cpu.assign(_host(x, "x"), outer, channels, inner)
        import torch

        x = _cuda_tensor(x, "x")
        index = torch.empty(outer * inner, dtype=torch.int32, device=device)
        self._on(device).assign(x, outer, channels, inner, index, _stream(device), True)
        return index

    def transform(self, x: Any, outer: int, channels: int, inner: int, with_index: bool = False,
                  check: bool = True) -> Any:
        """x with every pixel replaced by its nearest code (x's dtype and shape), and the index if asked.

        A float pixel outside [0, 1] raises ValueError. On CUDA, ``check=False``
        does not wait for the GPU: such a pixel comes out NaN and the error is
        raised by a later call on this index instead (the BPDA forward pass
        uses it; the CPU always raises at once).
        """
        device = _device_of(("x", x))
        if device is None:
            return self.cpu.transform(_host(x, "x"), outer, channels, inner, with_index)
        import torch

        x = _cuda_tensor(x, "x")
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
        index = torch.empty(outer * inner, dtype=torch.int32, device=device) if with_index else None
        self._on(device).transform(x, outer, channels, inner, out, index, _stream(device), check)
        return (out, index) if with_index else out

    def __getstate__(self) -> Dict[str, Any]:
        # Native indexes are caches, rebuilt on first use: the index pickles to worker processes.
        return {"codes": self.codes, "metric": self.metric, "_cpu": None, "_devices": {}}


# --------------------------------------------------------------------------
# Histograms


def histogram(x: Any, outer: int, channels: int, inner: int) -> Tuple[np.ndarray, np.ndarray, bool]:
    """Distinct pixel values (float32 ``(n, C)``, lexicographic), their int64 counts, and whether x was on the 1/255 grid.

    Always NumPy. CUDA data that is uint8, or float32 on the grid (the native
    on-grid test decides), with at most 3 channels is counted on its GPU;
    anything else is copied to the host and counted there.
    """
    device = _device_of(("x", x))
    if device is None:
        return _core.histogram(_host(x, "x"), outer, channels, inner)
    import torch

    x = _cuda_tensor(x, "x")
    if channels <= 3:
        table = torch.zeros(1 << (8 * channels), dtype=torch.int64, device=device)
        if require_cuda().histogram(x, outer, channels, inner, table, _stream(device)):
            keys = torch.nonzero(table, as_tuple=True)[0]
            counts = table[keys].cpu().numpy()
            return _from_keys(keys.cpu().numpy(), channels), counts, True
    return _core.histogram(x.cpu().numpy().reshape(-1), outer, channels, inner)


def histogram_gray_u8(x: Any) -> np.ndarray:
    """Counts of each byte value of uint8 x: int64 ``(256,)`` (host)."""
    return _core.histogram_gray_u8(_host(x, "x"))


# --------------------------------------------------------------------------
# Codebook fitting (host: the inputs are histograms)


def density_codebook(values: Any, weights: Any, k: int, r: float, metric: int, kernel: int, bandwidth: float) -> dict:
    return _core.density_codebook(_host(values, "values"), _host(weights, "weights"), k, r, metric, kernel, bandwidth)


def kmedoids_codebook(values: Any, weights: Any, k: int, metric: int, seed: int, max_iter: int) -> dict:
    return _core.kmedoids_codebook(_host(values, "values"), _host(weights, "weights"), k, metric, seed, max_iter)


def kmeans_codebook(values: Any, weights: Any, k: int, seed: int, max_iter: int, tol: float) -> dict:
    return _core.kmeans_codebook(_host(values, "values"), _host(weights, "weights"), k, seed, max_iter, tol)


# --------------------------------------------------------------------------
# Candidate sets and the enumeration of S(x)


def candidate_sets(index: NearestIndex, x: Any, outer: int, channels: int, inner: int, eps: float, rule: int,
                   counts_only: bool = False) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel candidate sets as CSR ``(nearest, offsets, members)`` (NumPy); ``rule`` 0 sound, 1 exact, 2 tight.

    float32 pixels. There is no CUDA kernel for candidate sets yet: CUDA data
    is copied to the host here, the one place that does so.
    """
    if _device_of(("x", x)) is not None:
        x = _cuda_tensor(x, "x").cpu().numpy()
    return _core.candidate_sets(index.cpu, _host(x, "x"), outer, channels, inner, float(eps), int(rule), counts_only)


def enumerate_candidates(base: Any, positions: Any, channel_stride: int, offsets: Any, members: Any, codes: Any,
                         rank_start: int, count: int) -> np.ndarray:
    """Candidate images of S(x) for ranks ``[rank_start, rank_start + count)``: float32 ``(count, image_size)`` (host)."""
    return _core.enumerate_candidates(_host(base, "base"), _host(positions, "positions"), channel_stride,
                                      _host(offsets, "offsets"), _host(members, "members"), _host(codes, "codes"),
                                      rank_start, count)


def mixed_radix_strides(offsets: Any) -> Tuple[np.ndarray, int]:
    """Place values (uint64, least significant first) of the mixed radix of the set sizes ``diff(offsets)``, and |S|."""
    strides, total = _core.mixed_radix_strides(_host(offsets, "offsets"))
    return strides, int(total)


def mixed_radix_digits(offsets: Any, rank: int) -> np.ndarray:
    """Digits (int32) of ``rank`` in the mixed radix of ``diff(offsets)``: the decoding both enumerators use."""
    return _core.mixed_radix_digits(_host(offsets, "offsets"), int(rank))


class CandidateEnumerator:
    """Batches of S(x)'s candidate images for a search, on the host or straight into a CUDA device's memory.

    The host arrays are checked once by the CPU binding (positions inside the
    image, members code indices, |S| below 2^64); for a CUDA ``device`` they
    are then uploaded once, with the mixed-radix strides the native code
    computes, and every batch is written on the device.
    """

    def __init__(self, base: np.ndarray, positions: np.ndarray, channel_stride: int, offsets: np.ndarray,
                 members: np.ndarray, codes: np.ndarray, device: Any = None) -> None:
        self._host_args = (_host(base, "base"), _host(positions, "positions"), int(channel_stride),
                           _host(offsets, "offsets"), _host(members, "members"), _host(codes, "codes"))
        _core.enumerate_candidates(*self._host_args, 0, 0)  # checks every value; writes nothing
        strides, self.total = mixed_radix_strides(self._host_args[3])
        self.image_size = int(np.asarray(self._host_args[0]).size)
        self._device = None
        if device is not None:
            import torch

            self._device = torch.device(device)
            if self._device.type != "cuda":
                self._device = None
        if self._device is not None:
            import torch

            require_cuda()
            upload = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(self._device)  # noqa: E731
            b, pos, _, off, mem, codes_ = self._host_args
            self._on_device = (upload(b), upload(pos), upload(off), upload(mem), upload(codes_),
                               upload(strides.view(np.int64)))  # the binding reads uint64 bits from int64

    def __call__(self, rank_start: int, count: int) -> Any:
        if self._device is None:
            return _core.enumerate_candidates(*self._host_args, int(rank_start), int(count))
        import torch

        if rank_start < 0 or count < 0 or rank_start + count > self.total:
            raise ValueError(f"ranks [{rank_start}, {rank_start + count}) exceed |S(x)| = {self.total}")
        b, pos, off, mem, codes_, strides = self._on_device
        out = torch.empty((int(count), self.image_size), dtype=torch.float32, device=self._device)
        require_cuda().enumerate_candidates(b, pos, self._host_args[2], off, mem, codes_, int(rank_start), int(count),
                                            strides, out, _stream(self._device))
        return out

    def digits(self, rank: int) -> np.ndarray:
        """The candidate index chosen at each ambiguous pixel by image ``rank``."""
        return mixed_radix_digits(self._host_args[3], rank)


# --------------------------------------------------------------------------
# Neighbourhood sizes


def summed_area_table(table: Any) -> None:
    """In place: inclusive prefix sums along every axis of a 256 or 256^3 int64 count table (host or CUDA)."""
    device = _device_of(("table", table))
    if device is None:
        _core.summed_area_table(_host(table, "table"))
        return
    require_cuda().summed_area_table(_cuda_tensor(table, "table"), _stream(device))


def neighbourhood_counts(points: Any, weights: Any, queries: Any, radius: int) -> np.ndarray:
    """Weighted number of points within ``radius`` levels (l_inf) of each query colour: int64 (host)."""
    return _core.neighbourhood_counts(_host(points, "points"), None if weights is None else _host(weights, "weights"),
                                      _host(queries, "queries"), radius)


def neighbourhood_sizes(x: Any, outer: int, channels: int, inner: int, radius: int) -> Tuple[np.ndarray, np.ndarray]:
    """Distinct colours of 8-bit x (float32 ``(n, C)``, lexicographic) and how many pixels lie within ``radius`` levels.

    ValueError when float x is off the 1/255 grid. CUDA data is counted on its
    GPU (summed-area table of the dense count table); results are NumPy.
    """
    off_grid = "neighbourhood sizes need 8-bit data: uint8, or floats that are exactly v/255"
    if radius < 0:
        raise ValueError(f"radius must be >= 0 levels, got {radius}")
    device = _device_of(("x", x))
    if device is None:
        values, counts, on_grid = _core.histogram(_host(x, "x"), outer, channels, inner)
        if not on_grid:
            raise ValueError(off_grid)
        colours = np.rint(values * np.float32(255)).astype(np.uint8)
        return values, _core.neighbourhood_counts(colours, counts, colours, radius)
    import torch

    cuda = require_cuda()
    x = _cuda_tensor(x, "x")
    stream = _stream(device)
    if channels not in (1, 3):
        raise ValueError(f"neighbourhood sizes need gray or RGB pixels, got {channels} channels")
    table = torch.zeros(1 << (8 * channels), dtype=torch.int64, device=device)
    if not cuda.histogram(x, outer, channels, inner, table, stream):
        raise ValueError(off_grid)
    # The distinct colours are the non-empty bins, read before the table becomes its own prefix sums.
    keys = torch.nonzero(table, as_tuple=True)[0].contiguous()
    cuda.summed_area_table(table, stream)
    sizes = torch.empty_like(keys)
    cuda.neighbourhood_query(table, keys, int(radius), sizes, stream)
    return _from_keys(keys.cpu().numpy(), channels), sizes.cpu().numpy()
