"""Normalized KD (NKD) of Yang et al. 2023, "From Knowledge Distillation to Self-Knowledge
Distillation: A Unified Approach with Normalized Loss and Customized Soft Labels" (arXiv 2303.13005).

With p = softmax(teacher logits v) and q = softmax(student logits z), both at temperature 1, and the
non-target logits (the label's column removed) renormalised at temperature T,
p̂ = softmax(v_{-y} / T), q̂ = softmax(z_{-y} / T), the distillation term is

    NKD = -p_y * log q_y  -  gamma * T^2 * sum_{j != y} p̂_j * log q̂_j

(batch mean), added to the cross-entropy with the labels at weight ``ce_weight`` (1 in the authors'
distiller, where it is the student's own classification loss).  The teacher's target probability
p_y is a constant (detached).

Written after the official mmcls implementation, github.com/yzd-v/cls_KD, branch 1.0,
``mmcls/models/dis_losses/nkd.py`` at 9466b3f (2023-10-10): the target term at lines 31-38, the
non-target mask at line 40 and the normalised non-target term at lines 41-49.  The mask bug: on
2023-07-17 both branches (master 1c2c0ff, ``mmcls/distillation/losses/nkd.py``; 1.0 e21ad37) rewrote
the loss with a mask built by ``scatter_(1, label, 1)``, which keeps every class, so the
"non-target" term ran over all classes (plain KD); 2023-10-10 fixed it (master ad4876f, 1.0 9466b3f:
``scatter_(1, label, 0)``).  The version released with the paper (master 87a7197, 2023-03-24) pushes
the target logit down by 1000 and renormalises by 1 - p_target, which is the same loss as the fixed
form.  This module computes that loss (tests/test_distillation_standins.py checks it against all
three versions).

Without a teacher (the engine's test loss on held-out data) the loss is the plain cross-entropy.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from softrepro.registry import LOSSES


def non_target(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The (N, C - 1) logits with each row's label column removed, the other columns in order."""
    keep = torch.ones_like(logits, dtype=torch.bool).scatter_(1, y[:, None], False)
    return logits[keep].reshape(len(logits), -1)


def nkd_term(z: torch.Tensor, v: torch.Tensor, y: torch.Tensor, temperature: float, gamma: float) -> torch.Tensor:
    """The NKD distillation term (without the cross-entropy with the labels), batch mean."""
    logq_y = F.log_softmax(z, 1).gather(1, y[:, None])
    p_y = F.softmax(v, 1).gather(1, y[:, None]).detach()
    target = -(p_y * logq_y).mean()
    t = float(temperature)
    p_hat = F.softmax(non_target(v, y) / t, 1)
    logq_hat = F.log_softmax(non_target(z, y) / t, 1)
    rest = -gamma * t * t * (p_hat * logq_hat).sum(1).mean()
    return target + rest


@LOSSES.register("nkd")
class NKD:
    """``ce_weight * CE(z, y) + NKD(z, v, y)``; the defaults are the official CIFAR-100 configuration
    (configs/distillers/cifar100/res34_distill_res18_cifar.py: temp=3.0, gamma=3.5)."""

    def __init__(self, temperature: float = 3.0, gamma: float = 3.5, ce_weight: float = 1.0):
        if temperature <= 0 or gamma < 0 or ce_weight < 0:
            raise ValueError(f"nkd: temperature must be > 0, gamma and ce_weight >= 0 (got {temperature}, {gamma}, {ce_weight})")
        self.temperature, self.gamma, self.ce_weight = float(temperature), float(gamma), float(ce_weight)

    def __call__(self, logits, targets, model, teacher=None):
        ce = F.cross_entropy(logits, targets)
        if teacher is None:
            return ce
        return self.ce_weight * ce + nkd_term(logits, teacher, targets, self.temperature, self.gamma)
