"""Deprecated: the native door is pixdisc._native. Kept only while tests/test_analysis.py reaches ``_backend._core``."""

from . import _native
from ._native import build_info, cuda_available, get_num_threads, require_cuda, set_num_threads

__all__ = ["cuda_available", "set_num_threads", "get_num_threads", "build_info", "require_cuda"]

# _native offers every _core function under the same name and arguments, so the
# old spelling keeps working without a second module importing _core.
_core = _native
