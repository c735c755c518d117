"""Native backends: the compiled CPU core, the optional CUDA module, threads and build facts."""

from __future__ import annotations

import functools
from typing import Any

from . import _core

try:  # the CUDA module exists only when the build found nvcc
    from . import _cuda  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the build
    _cuda = None

__all__ = ["cuda_available", "set_num_threads", "get_num_threads", "build_info", "require_cuda"]


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
