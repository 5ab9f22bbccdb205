"""Gumbel-Softmax of Jang, Gu, Poole 2016, "Categorical Reparameterization with Gumbel-Softmax"
(arXiv 1611.01144).

The sample is y = softmax((logits + g) / tau), with g = -log(-log U) and U ~ Uniform(0, 1).  As tau -> 0,
y tends to the one-hot of argmax(logits + g), which is distributed as Categorical(softmax(logits)).
``hard=True`` is the Straight-Through Gumbel-Softmax: the forward pass returns the exact one-hot of
argmax y, and the backward pass uses the gradient of the soft y.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def sample_gumbel(shape, generator: torch.Generator | None = None, dtype=torch.float32, device=None) -> torch.Tensor:
    """Standard Gumbel noise -log(-log U).  U is kept >= the dtype's tiny, so -log U stays finite."""
    u = torch.rand(shape, generator=generator, dtype=dtype, device=device)
    return -torch.log(-torch.log(u.clamp_min(torch.finfo(dtype).tiny)))


class _StraightThrough(torch.autograd.Function):
    """Forward: one-hot of argmax over ``dim``; backward: identity (the soft sample's gradient)."""

    @staticmethod
    def forward(ctx, y, dim):
        return torch.zeros_like(y).scatter_(dim, y.argmax(dim, keepdim=True), 1.0)

    @staticmethod
    def backward(ctx, g):
        return g, None


def gumbel_softmax_sample(logits: torch.Tensor, tau: float = 1.0, hard: bool = False,
                          generator: torch.Generator | None = None, gumbels: torch.Tensor | None = None,
                          dim: int = -1) -> torch.Tensor:
    """One Gumbel-Softmax sample per row of ``logits`` (over ``dim``).  ``gumbels`` injects the noise g
    instead of drawing it; this is for tests and for comparing with other samplers."""
    if gumbels is None:
        gumbels = sample_gumbel(logits.shape, generator, logits.dtype, logits.device)
    y = F.softmax((logits + gumbels) / tau, dim)
    return _StraightThrough.apply(y, dim) if hard else y
