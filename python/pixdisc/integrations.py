"""Adapters between pixdisc and other robustness toolkits: ART runs the defense, torchattacks joins the attack suite."""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from .codebook import Codebook
from .discretize import Discretize

__all__ = ["ArtDiscretizer", "TorchattacksAttack"]

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


class TorchattacksAttack:
    """A torchattacks attack as an ``evaluate_robustness`` spec: ``(model, x, y) -> x_adv``.

    ``factory`` is the torchattacks class name (``"APGD"``, ``"Square"``, ...)
    and ``options`` its keyword arguments; the attack is built per call on
    the model it is given (gradient attacks then go through the model's BPDA
    backward, Square only queries the hard model).
    """

    def __init__(self, name: str, factory: str, **options: Any) -> None:
        self.__name__ = name
        self.factory = factory
        self.options = options
        self.params: Dict[str, Any] = {"attack": f"torchattacks.{factory}", **options}

    def __call__(self, model: Any, x: Any, y: Any) -> Any:
        import torchattacks

        if "seed" not in self.options:
            raise ValueError("torchattacks attacks need a seed for reproducible results")
        attack = getattr(torchattacks, self.factory)(model, **self.options)
        return attack(x, y)

    def __repr__(self) -> str:
        return f"TorchattacksAttack({self.__name__!r}, {self.factory!r}, {self.options!r})"

