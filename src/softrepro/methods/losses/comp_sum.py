"""Comp-sum losses (Mao, Mohri & Zhong 2023, "Cross-Entropy Loss Functions: Theoretical
Analysis and Applications", ICML 2023, arXiv 2304.07288).

For scores h and true class y, with u = sum_{y' != y} exp(h_{y'} - h_y):

    L_tau = Phi^tau(u),   Phi^tau(u) = log(1 + u)                          if tau == 1
                                     = ((1 + u)^(1 - tau) - 1) / (1 - tau)   otherwise.

tau = 0 is the sum-exponential loss (u itself), tau = 1 the logistic loss (softmax CE),
tau in (1, 2) generalized cross-entropy with q = tau - 1, tau = 2 the MAE 1 - p_y.

Since 1 + u = 1 / p_y with p = softmax(h), Phi^tau = (p_y^(tau - 1) - 1) / (1 - tau).  It is
computed as expm1((tau - 1) * log p_y) / (1 - tau) from log_softmax, which never forms u or
p_y and stays continuous as tau -> 1.  Unlike ``robust_losses.gce`` nothing is clamped.

Source status: the paper's own text was not read in this project (see
docs/sources/losses-family-b.md, section 1); the definition above is the standard Phi^tau
family, and tests check its limiting cases.  Batch mean.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from softrepro.registry import LOSSES


def comp_sum(logits: torch.Tensor, targets: torch.Tensor, tau: float) -> torch.Tensor:
    """Per-example Phi^tau(u); see the module docstring."""
    logpy = F.log_softmax(logits, 1).gather(1, targets[:, None]).squeeze(1)
    if tau == 1:
        return -logpy
    return torch.expm1((tau - 1.0) * logpy) / (1.0 - tau)


@LOSSES.register("comp_sum")
def make_comp_sum(tau: float = 1.0):
    tau = float(tau)
    return lambda logits, targets, model: comp_sum(logits, targets, tau).mean()
