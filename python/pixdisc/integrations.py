"""Adapters that let other robustness toolkits use the discretization defense (ART)."""

from __future__ import annotations

from typing import Any, Optional, Tuple

from .codebook import Codebook
from .discretize import Discretize

__all__ = ["ArtDiscretizer"]

try:  # ART is optional; the adapter exists only when it is installed
    from art.defences.preprocessor.preprocessor import PreprocessorPyTorch as _ArtBase
except ImportError:  # pragma: no cover - depends on the environment
    _ArtBase = None


if _ArtBase is not None:

    class ArtDiscretizer(_ArtBase):
        """ART preprocessing defence: discretization with BPDA gradients.

        Pass it as ``preprocessing_defences=[ArtDiscretizer(codebook)]`` to
        ``art.estimators.classification.PyTorchClassifier``; ART's gradient
        attacks then go through :class:`pixdisc.Discretize`'s BPDA backward.
        Inputs are NCHW float arrays in [0, 1] (``channels_first=True``) or NHWC.
        """

        def __init__(self, codebook: Codebook, bpda: Optional[str] = "soft", alpha: float = 10.0,
                     channels_first: bool = True, device_type: str = "cpu",
                     apply_fit: bool = False, apply_predict: bool = True) -> None:
            super().__init__(device_type=device_type, is_fitted=True, apply_fit=apply_fit,
                             apply_predict=apply_predict)
            self.discretize = Discretize(codebook, bpda=bpda, alpha=alpha,
                                         channel_axis=1 if channels_first else -1)

        def forward(self, x: Any, y: Any = None) -> Tuple[Any, Any]:
            return self.discretize(x), y

else:  # pragma: no cover

    class ArtDiscretizer:  # type: ignore[no-redef]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise ImportError("ArtDiscretizer needs the adversarial-robustness-toolbox package "
                              "(pip install adversarial-robustness-toolbox)")
