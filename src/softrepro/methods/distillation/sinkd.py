"""Sinkhorn Knowledge Distillation (SinKD) of Cui et al. 2024, "Sinkhorn Distance Minimization for
Knowledge Distillation" (arXiv 2402.17110; the IEEE TNNLS version is titled "SinKD: ...").

Batch-wise: with P_s = softmax(z / tau) and P_t = softmax(v / tau) the student's and the teacher's
(B, C) probability matrices, the cost matrix W_ij = ||P_s[i] - P_t[j]||_1 (B x B) and the kernel
K = exp(-W / epsilon), Sinkhorn's iterations (each: divide every row of K by its sum, then every column
by its sum; ``n_iters`` times) give a transport plan Pi, and the distance is

    S(P_s, P_t) = sum_ij Pi_ij W_ij

(gradients flow through Pi and W alike).  The student's loss here is the KD loss of Hinton et al.
(``kd.kd_loss``: alpha T^2 KL + (1 - alpha) CE) plus ``sinkhorn_weight * scale * S``.

Written after the official code, github.com/2018cx/SinKD at 1ffac90, ``loss.py`` lines 119-139 (class
``Sinkhorn``: ``self.T = 2`` whatever T it is given, line 122; ``sinkhorn_normalized`` row then
column sums, lines 123-127; ``sinkhorn_loss(x, y, epsilon=0.1, n_iters=20)``: ``torch.cdist(x, y,
p=1)``, ``exp(-Wxy / epsilon)``, ``torch.sum(P * Wxy)``, lines 129-133; ``0.001 * sinkhorn_loss(p_s,
p_t)``, line 138).  In the first commit (2b91a8e) the same loss sat in a class named ``saliency_mse``
with the factor ``0.0008 * 20 / 8`` (= 0.002).  ``glue_train.py`` lines 403 and 429 combine it as
``alpha * loss_kd + (1 - alpha) * loss`` then ``loss + args.beta * saliency_loss``; the student
scripts pass ``--beta 0.8`` (``script/student/*.sh``).

Without a teacher (the engine's test loss on held-out data) the loss is the plain cross-entropy.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from softrepro.methods.distillation.kd import kd_loss
from softrepro.registry import LOSSES


def sinkhorn_plan(kernel: torch.Tensor, n_iters: int) -> torch.Tensor:
    """``n_iters`` rounds of: rows divided by their sums, then columns by theirs."""
    p = kernel
    for _ in range(n_iters):
        p = p / p.sum(1, keepdim=True)
        p = p / p.sum(0, keepdim=True)
    return p


def sinkhorn_distance(p_s: torch.Tensor, p_t: torch.Tensor, epsilon: float = 0.1, n_iters: int = 20) -> torch.Tensor:
    """sum_ij Pi_ij W_ij with W the (B, B) L1 distances between the rows of p_s and of p_t."""
    w = torch.cdist(p_s, p_t, p=1)
    return (sinkhorn_plan(torch.exp(-w / epsilon), n_iters) * w).sum()


@LOSSES.register("sinkd")
class SinKD:
    """``alpha T^2 KL(p_T || q_T) + (1 - alpha) CE + sinkhorn_weight * scale * S(softmax(z / tau), softmax(v / tau))``.
    Defaults: the shared KD baseline (T = 4, alpha = 0.9) and the official Sinkhorn term (tau = 2,
    epsilon = 0.1, 20 iterations, scale 0.001, beta = 0.8)."""

    def __init__(self, temperature: float = 4.0, alpha: float = 0.9, sinkhorn_weight: float = 0.8, scale: float = 0.001,
                 sinkhorn_temperature: float = 2.0, epsilon: float = 0.1, n_iters: int = 20):
        if temperature <= 0 or sinkhorn_temperature <= 0 or epsilon <= 0 or n_iters < 1 or not 0 <= alpha <= 1 \
                or sinkhorn_weight < 0 or scale < 0:
            raise ValueError("sinkd: temperatures and epsilon must be > 0, n_iters >= 1, alpha in [0, 1], weights >= 0")
        self.temperature, self.alpha = float(temperature), float(alpha)
        self.weight = float(sinkhorn_weight) * float(scale)
        self.tau, self.epsilon, self.n_iters = float(sinkhorn_temperature), float(epsilon), int(n_iters)

    def sinkhorn_term(self, z: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return sinkhorn_distance(F.softmax(z / self.tau, 1), F.softmax(v / self.tau, 1), self.epsilon, self.n_iters)

    def __call__(self, logits, targets, model, teacher=None):
        if teacher is None:
            return F.cross_entropy(logits, targets)
        loss = kd_loss(logits, targets, teacher, self.temperature, self.alpha)
        return loss + self.weight * self.sinkhorn_term(logits, teacher)
