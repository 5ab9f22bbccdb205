"""The distillation loss of Hinton, Vinyals & Dean 2015 (arXiv 1503.02531, §2).

q = softmax(z / T) for the student's logits z and p = softmax(v / T) for the teacher's v; the loss is

    alpha * T^2 * KL(p || q)  +  (1 - alpha) * CE(softmax(z), y)

"a weighted average of two different objective functions": cross-entropy with the soft targets at
the high temperature (here as KL(p || q), which differs from it by the teacher's entropy, a constant,
so the gradient is the same), scaled by T^2 "since the magnitudes of the gradients produced by the
soft targets scale as 1/T^2", and cross-entropy with the correct labels at temperature 1.
``alpha = 1``: soft targets alone.  Batch mean.

Without a teacher (the engine's test loss on held-out data) the loss is the plain cross-entropy.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from softrepro.registry import LOSSES


def kd_loss(z: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor, temperature: float, alpha: float) -> torch.Tensor:
    t = float(temperature)
    soft = F.kl_div(F.log_softmax(z / t, 1), F.log_softmax(teacher / t, 1), log_target=True, reduction="batchmean")
    hard = F.cross_entropy(z, y) if alpha < 1 else z.new_zeros(())
    return alpha * t * t * soft + (1 - alpha) * hard


@LOSSES.register("kd")
class KD:
    def __init__(self, temperature: float = 4.0, alpha: float = 0.9):
        if temperature <= 0 or not 0 <= alpha <= 1:
            raise ValueError(f"kd: temperature must be > 0 and alpha in [0, 1] (got {temperature}, {alpha})")
        self.temperature, self.alpha = temperature, alpha

    def __call__(self, logits, targets, model, teacher=None):
        if teacher is None:
            return F.cross_entropy(logits, targets)
        return kd_loss(logits, targets, teacher, self.temperature, self.alpha)



@LOSSES.register("self_distillation_xi")
class XiSelfDistillation:
    """Das & Sanghavi 2023 (abstract): the student's objective xi * l(teacher's predictions, student's
    predictions) + (1 - xi) * l(given labels, student's predictions) with l the cross-entropy; the
    teacher's predictions are its softmax probabilities.  xi may exceed 1 (then the given labels get a
    negative weight).  Without a teacher (the test loss) it is the plain cross-entropy."""

    def __init__(self, xi: float = 0.5):
        self.xi = float(xi)

    def __call__(self, logits, targets, model, teacher=None):
        if teacher is None:
            return F.cross_entropy(logits, targets)
        logq = F.log_softmax(logits, 1)
        soft = -(F.softmax(teacher, 1) * logq).sum(1).mean()
        return self.xi * soft + (1 - self.xi) * F.nll_loss(logq, targets)
