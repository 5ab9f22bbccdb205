"""StableMax and Softmax Collapse from Prieto, Barsbey, Mediano, Birdal 2025, "Grokking at the Edge of
Numerical Stability" (arXiv 2501.04697; official code github.com/LucasPrietoAl/
grokking-at-the-edge-of-numerical-stability at 0cc9e8d, files utils.py and logger.py).

s(x) = x + 1 for x >= 0 and 1 / (1 - x) for x < 0 (Def. 4);  StableMax(x)_i = s(x_i) / sum_j s(x_j);
StCE(z, y) = -log StableMax(z)_y.  Like the official ``utils.stablemax_cross_entropy``, the loss casts
the logits to float64, takes log(s / sum s), and returns the float64 batch mean (``precision=32``
keeps float32 for ablations).  The official s adds 1e-30 to 1 - x; there 1 - x > 1, so that is a
no-op in float32/64.  Here the x >= 0 entries are clamped out of the 1/(1 - x) branch instead.

Softmax Collapse (Def. 3): sum_k exp(z_k) == exp(z_y) in floating point.  It is measured as in the
official ``logger.compute_softmax_collapse``: the fraction of samples whose sum_k exp(z_k - max z) is
exactly 1 at the given precision.  The official code uses the run's ``softmax_precision`` and does
not look at the target.  When the sum is 1, the top class has probability exactly 1 and log-probability
exactly 0.  So for a correctly classified sample, the CE loss and the gradient p_y - 1 on the true
logit are exactly 0.  The other entries p_k = exp(z_k - max z) lie below half an ulp of 1.  They can
still be nonzero (gap 20 in float32: 2e-9) until they underflow.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from softrepro.losses import precision_dtype
from softrepro.probes import softmax_collapse_fraction  # noqa: F401  (the engine's SC metric, re-exported)
from softrepro.registry import LOSSES


def s(x: torch.Tensor) -> torch.Tensor:
    """The StableMax map: x + 1 for x >= 0, 1 / (1 - x) for x < 0 (continuous, C^1, positive)."""
    return torch.where(x >= 0, x + 1, 1 / (1 - x.clamp(max=0)))


def stablemax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    sx = s(x)
    return sx / sx.sum(dim, keepdim=True)


def log_stablemax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    sx = s(x)
    return torch.log(sx / sx.sum(dim, keepdim=True))


def stablemax_ce(logits: torch.Tensor, targets: torch.Tensor, precision=64) -> torch.Tensor:
    """Per-sample -log StableMax(z)_y, computed at ``precision`` (64 as in the official code)."""
    logp = log_stablemax(logits.to(precision_dtype(precision, logits.dtype)), dim=1)
    return -logp.gather(1, targets.long()[:, None]).squeeze(1)


@LOSSES.register("stablemax_ce")
def make_stablemax_ce(precision: int = 64):
    return lambda z, y, model: stablemax_ce(z, y, precision).mean()


def zero_loss_fraction(logits: torch.Tensor, targets: torch.Tensor, precision=None) -> float:
    """The official ``zero_terms`` metric for softmax CE: the fraction of per-sample losses
    -log_softmax(z)_y that are exactly 0 at ``precision`` (default: the logits' dtype)."""
    z = logits.detach().to(precision_dtype(precision, logits.dtype))
    loss = -F.log_softmax(z, 1).gather(1, targets.long().to(z.device)[:, None]).squeeze(1)
    return (loss == 0).float().mean().item()
