"""pixdisc: pixel discretization as an adversarial-robustness defense."""

from ._native import build_info, cuda_available, get_num_threads, set_num_threads
from .codebook import (
    Codebook,
    DensityCodebook,
    KMeansCodebook,
    KMedoidsCodebook,
    NotFittedError,
    UniformCodebook,
    load_codebook,
)
from .candidates import box_hull, candidate_counts, candidate_sets, log2_set_size
from .pixels import pixel_histogram

__version__ = "0.1.0"

# torch is optional: names that need it load on first use (PEP 562).
_LAZY = {"Discretize": "discretize", "certify": "certification", "Budget": "certification",
         "CertifyResult": "certification", "robustness_interval": "evaluation"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'pixdisc' has no attribute {name!r}")

__all__ = [
    "Codebook",
    "DensityCodebook",
    "KMedoidsCodebook",
    "KMeansCodebook",
    "UniformCodebook",
    "NotFittedError",
    "load_codebook",
    "pixel_histogram",
    "cuda_available",
    "set_num_threads",
    "get_num_threads",
    "build_info",
    "candidate_counts",
    "candidate_sets",
    "log2_set_size",
    "box_hull",
    "Discretize",
    "certify",
    "Budget",
    "CertifyResult",
    "robustness_interval",
]
