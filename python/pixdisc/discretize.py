"""The discretization defense as a torch module: hard nearest-code forward, BPDA backward."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from .codebook import Codebook

__all__ = ["Discretize", "soft_discretize", "BPDA_MODES"]

BPDA_MODES = ("soft", "identity", None)

# Pixels per chunk of the soft gradient: bounds the (pixels, k, C) temporaries
# to ~2^24 elements, so memory does not grow as k * pixels.
_CHUNK_ELEMENTS = 1 << 24


def _distances(x: torch.Tensor, codes: torch.Tensor, metric: str) -> torch.Tensor:
    """(P, C) pixels and (k, C) codes -> (P, k) distances."""
    diff = x[:, None, :] - codes[None, :, :]
    if metric == "linf":
        return diff.abs().amax(dim=-1)
    if metric == "l1":
        return diff.abs().sum(dim=-1)
    return torch.sqrt((diff * diff).sum(dim=-1) + 1e-12)


def soft_discretize(x: torch.Tensor, codes: torch.Tensor, alpha: float, metric: str = "linf") -> torch.Tensor:
    """The paper's soft approximation g on (P, C) pixels, differentiable by autograd.

    ``g(x) = sum_t c_t w_t / sum_t w_t`` with ``w_t = exp(-alpha * dist(x, c_t))``,
    computed as a softmax (log-sum-exp) so large ``alpha`` does not overflow.
    Memory is (P, k); :class:`Discretize` uses a chunked closed-form gradient.
    """
    weights = torch.softmax(-alpha * _distances(x, codes, metric), dim=-1)
    return weights @ codes


def _soft_vjp(x: torch.Tensor, codes: torch.Tensor, grad_out: torch.Tensor, alpha: float, metric: str) -> torch.Tensor:
    """grad_out^T dg/dx for (P, C) pixels, in closed form.

    With p = softmax(-alpha d) and a_t = grad_out . c_t:
    dL/dx_j = -alpha * sum_t p_t (a_t - sum_u p_u a_u) * d d_t / d x_j.
    """
    diff = x[:, None, :] - codes[None, :, :]  # (P, k, C)
    if metric == "linf":
        dist, arg = diff.abs().max(dim=-1)
        d_dist = torch.zeros_like(diff).scatter_(-1, arg[..., None], torch.sign(diff.gather(-1, arg[..., None])))
    elif metric == "l1":
        dist = diff.abs().sum(dim=-1)
        d_dist = torch.sign(diff)
    else:
        dist = torch.sqrt((diff * diff).sum(dim=-1) + 1e-12)
        d_dist = diff / dist[..., None]
    p = torch.softmax(-alpha * dist, dim=-1)  # (P, k)
    a = grad_out @ codes.T  # (P, k)
    centred = p * (a - (p * a).sum(dim=-1, keepdim=True))
    return -alpha * torch.einsum("pk,pkc->pc", centred, d_dist)


class _DiscretizeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, module: "Discretize") -> torch.Tensor:  # type: ignore[override]
        ctx.module = module
        ctx.save_for_backward(x)
        # No wait for the GPU here (check=False): a pixel outside [0, 1] comes out NaN on CUDA and the
        # next call on the codebook raises; the CPU raises at once.
        hard = module.codebook.transform(x.detach().to(torch.float32), module.channel_axis, check=False)
        return hard.to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):  # type: ignore[override]
        module: Discretize = ctx.module
        (x,) = ctx.saved_tensors
        if module.bpda == "identity":
            return grad_out, None
        if module.bpda is None:  # the true gradient of a step function, almost everywhere
            return torch.zeros_like(grad_out), None
        return module._soft_gradient(x, grad_out), None


class Discretize(nn.Module):
    """Replace every pixel by its nearest code; gradients by BPDA.

    Forward is the hard discretization ``T`` through the native kernels (CPU
    tensors, and CUDA tensors through the CUDA module). Backward is chosen by
    ``bpda``: ``"soft"`` (default) uses the gradient of the paper's soft
    approximation ``g`` with sharpness ``alpha`` (pixel scale [0, 1]: the
    paper's MNIST ``alpha=10``; its CIFAR ``alpha=0.1`` on the [0, 255] scale
    is ``25.5`` here); ``"identity"`` passes gradients straight through
    (Athalye et al.'s BPDA); ``None`` gives the gradient of the step function
    itself, zero. ``nn.Sequential(Discretize(cb), net)`` is a defended model
    that any gradient attack attacks through BPDA.

    The ``codes`` buffer is the one source of truth: ``codebook`` is the
    given codebook while the buffer holds its codes, and a codebook made from
    the buffer once ``load_state_dict`` (or any in-place write) changes them,
    so forward and backward always use the same codes.
    """

    def __init__(self, codebook: Codebook, bpda: Optional[str] = "soft", alpha: float = 10.0,
                 channel_axis: int = 1) -> None:
        super().__init__()
        if not isinstance(codebook, Codebook):
            raise TypeError(f"codebook must be a pixdisc Codebook, got {type(codebook).__name__}")
        codes = codebook.fitted_codes()
        if bpda not in BPDA_MODES:
            raise ValueError(f"bpda must be one of {BPDA_MODES}, got {bpda!r}")
        if not np.isfinite(alpha) or alpha <= 0:
            raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
        self.bpda = bpda
        self.alpha = float(alpha)
        self.channel_axis = channel_axis
        self.register_buffer("codes", torch.from_numpy(codes.copy()), persistent=True)
        self._book = (self.codes, self.codes._version, codebook)

    @property
    def codebook(self) -> Codebook:
        """The codebook of the ``codes`` buffer (rebuilt from it when the buffer was replaced or written to)."""
        buffer, version, book = self._book
        if buffer is not self.codes or version != self.codes._version:
            # load_state_dict copies into the buffer in place (a new version);
            # .to()/.cuda() replace it (same values: the codebook just follows).
            codes = self.codes.detach().to("cpu", torch.float32).numpy()
            if not np.array_equal(codes, book.codes_):
                book = Codebook(codes, metric=book.metric)
            self._book = (self.codes, self.codes._version, book)
        return self._book[2]

    @property
    def metric(self) -> str:
        return self._book[2].metric

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"Discretize expects a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(f"Discretize expects float images in [0, 1], got dtype {x.dtype}")
        return _DiscretizeFunction.apply(x, self)

    def _soft_gradient(self, x: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
        channels = self.codes.shape[1]
        codes = self.codes.to(device=x.device, dtype=x.dtype)
        if channels == 1:
            pixels, upstream = x.reshape(-1, 1), grad_out.reshape(-1, 1)
        else:
            axis = self.channel_axis % x.dim()
            pixels = x.movedim(axis, -1).reshape(-1, channels)
            upstream = grad_out.movedim(axis, -1).reshape(-1, channels)
        grad = torch.empty_like(pixels)
        step = max(1024, _CHUNK_ELEMENTS // (codes.shape[0] * channels))
        for start in range(0, pixels.shape[0], step):
            stop = start + step
            grad[start:stop] = _soft_vjp(pixels[start:stop], codes, upstream[start:stop].to(x.dtype),
                                         self.alpha, self.metric)
        if channels == 1:
            return grad.reshape(x.shape)
        axis = self.channel_axis % x.dim()
        moved_shape = list(x.movedim(axis, -1).shape)
        return grad.reshape(moved_shape).movedim(-1, axis)

    def extra_repr(self) -> str:
        return (f"n_codes={self.codes.shape[0]}, channels={self.codes.shape[1]}, metric={self.metric!r}, "
                f"bpda={self.bpda!r}, alpha={self.alpha}")
