"""Poly-1 loss (Leng et al., ICLR 2022, "PolyLoss", arXiv 2204.12511):
L = CE + ε (1 - p_y), with p_y the softmax probability of the true class; batch mean.
ε = 0 is cross-entropy.  The paper's code comments "epsilon >= -1": below that the loss
would rise again as p_y -> 1.
"""
from __future__ import annotations

import torch.nn.functional as F

from softrepro.registry import LOSSES


def poly1(z, y, epsilon):
    logpy = F.log_softmax(z, 1).gather(1, y[:, None]).squeeze(1)
    return -logpy + epsilon * (1 - logpy.exp())


@LOSSES.register("poly1")
def make_poly1(epsilon: float):
    if epsilon < -1:
        raise ValueError(f"poly1 needs epsilon >= -1, got {epsilon}")
    return lambda z, y, model: poly1(z, y, epsilon).mean()
