"""Noisy Softmax (Chen, Deng & Du, CVPR 2017, "Noisy Softmax: Improving the Generalization
Ability of DCNN via Postponing the Early Softmax Saturation", arXiv 1708.03769).

During training the target logit f_y = W_y . x (+ b_y) is lowered by annealed noise

    f_y^noise = f_y - alpha * ||W_y|| * ||x|| * (1 - cos theta_y) * |xi|,   xi ~ N(0, 1),

where theta_y is the angle between W_y (row y of the readout weight) and the readout input
x, and the loss is softmax cross-entropy on (f_1, ..., f_y^noise, ..., f_K).  At evaluation
(``model.training`` False) it is the plain softmax CE.

Source status: the paper text was not read.  The formula is third-party: the LaTeX in
shunk031/paper-survey (commit 99c53c3, the post on this paper), which puts the noise on the
target logit only (docs/sources/losses-family-b.md, section 4).  Choices made here:
- one xi per example, drawn from torch's global RNG in the logits' dtype and device;
- ||W_y|| ||x|| (1 - cos theta_y) is computed as ||W_y|| ||x|| - W_y . x (no division, so
  x = 0 is safe) and clamped at 0 against rounding, so the noise only ever lowers f_y;
- gradients flow through the noise amplitude (the formula as written); whether the
  authors' layer does the same is unknown.
Batch mean.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from softrepro.registry import LOSSES


def noise_amplitude(weight: torch.Tensor, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """||W_y|| ||x|| (1 - cos theta_y) per example, shape (B,)."""
    w_y = weight[targets]
    return (w_y.norm(dim=1) * x.norm(dim=1) - (w_y * x).sum(1)).clamp_min(0.0)


def noisy_target_logits(logits, targets, weight, x, alpha: float, xi: torch.Tensor) -> torch.Tensor:
    """The logits with alpha * amplitude * |xi| subtracted from each example's target entry."""
    noise = alpha * noise_amplitude(weight, x, targets) * xi.abs()
    return logits - noise[:, None] * F.one_hot(targets, logits.shape[1]).to(logits.dtype)


@LOSSES.register("noisy_softmax")
def make_noisy_softmax(alpha: float = 0.1):
    def loss(logits, targets, model):
        if not model.training or alpha == 0:
            return F.cross_entropy(logits, targets)
        xi = torch.randn(logits.shape[0], dtype=logits.dtype, device=logits.device)
        noisy = noisy_target_logits(logits, targets, model.readout.weight, model.penultimate, alpha, xi)
        return F.cross_entropy(noisy, targets)

    return loss
