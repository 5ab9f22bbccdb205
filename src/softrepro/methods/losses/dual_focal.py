"""Dual focal loss (Tao, Dong & Xu, ICML 2023, arXiv 2305.13665):
L = -(1 - p_k + p_j)^γ log p_k, with p_k the softmax probability of the true class and p_j
the largest probability strictly below p_k (0 when none is below).  γ = 0 is cross-entropy.

As in the authors' dual_focal_loss.py (Linwei94/DualFocalLoss), gradient flows through p_j
too.  Their default reduction is a SUM over the batch; here ``reduction`` defaults to
"mean" and "sum" reproduces theirs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from softrepro.registry import LOSSES


def dual_focal(z, y, gamma):
    logp = F.log_softmax(z, 1)
    p = logp.exp()
    logpk = logp.gather(1, y[:, None]).squeeze(1)
    pk = logpk.exp()
    below = p < pk[:, None]
    pj = torch.where(below, p, torch.zeros_like(p)).max(1).values
    return -((1 - pk + pj) ** gamma) * logpk


@LOSSES.register("dual_focal")
def make_dual_focal(gamma: float, reduction: str = "mean"):
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    if reduction == "sum":
        return lambda z, y, model: dual_focal(z, y, gamma).sum()
    return lambda z, y, model: dual_focal(z, y, gamma).mean()
