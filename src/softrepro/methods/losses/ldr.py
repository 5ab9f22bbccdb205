"""LDR-KL and ALDR-KL losses (Zhu, Ying & Yang 2023, "Label Distributionally Robust Losses
for Multi-class Classification: Consistency, Robustness and Adaptivity", ICML 2023,
arXiv 2112.14869), as the authors' code computes them (github.com/Optimization-AI/ICML2023_LDR,
commit 732fc85, ``loss.py``: ``LDRLoss_V1`` and ``ALDRLoss_V1``).

With margin m, temperature lam and rescaled scores z~ (below), per example

    LDR-KL_lam(z, y) = lam * log( (1/K) * sum_k exp((m * [k != y] + z~_k - z~_y) / lam) ),

computed with log-sum-exp.  It lies between the mean and the max over k of
m * [k != y] + z~_k - z~_y, reaching the max as lam -> 0 and the mean as lam -> inf.

Choices reproduced from the official code:
- LDR-KL rescales the logits as z~ = softplus(z) / mean_k softplus(z) (always).
- ALDR-KL rescales them as z~ = z / (||z||_1 / K) (softplus first only when ``softplus=True``;
  the authors' experiment.py sets it for CIFAR-100 only).  The rescaling is not detached.
- ALDR-KL uses a per-example lam_i in closed form,
      p = normalize_L1(softmax(z~ / lam_prev) + 1e-5),   KL = sum_k p_k log(K p_k),
      lam_i = lam0 - lam0 * KL / (alpha * log K),
  detached (no gradient), with no clipping: the code clips nothing, and since KL <= log K,
  lam_i >= lam0 * (1 - 1/alpha) > 0 for alpha > 1.  The loss adds the (constant in the
  gradient) term -alpha * log K / (2 lam0) * (lam_i - lam0)**2.

Deviations, both forced by our trainer or by numerics:
- The official code stores lam_i per training example (indexed by the example id) and
  evaluates the softmax in the KL at that example's lam from its previous visit.  Our trainer
  passes no example ids, so lam_prev = lam0 for every example every step: lam_i is recomputed
  from the current batch's logits, which is exactly what the code does on an example's first
  visit.  Evaluation calls compute lam_i the same way.
- ALDR-KL divides by ||z||_1 / K, which is 0/0 for an all-zero logit row in the official code;
  here the divisor is clamped at 1e-12.
Batch mean.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from softrepro.registry import LOSSES

NORM_FLOOR = 1e-12
PROB_SMOOTH = 1e-5  # added to the softmax before the KL, as in the official code


def _shifted(z: torch.Tensor, y: torch.Tensor, margin: float) -> torch.Tensor:
    """m * [k != y] + z_k - z_y, shape (B, K)."""
    not_y = 1.0 - F.one_hot(y, z.shape[1]).to(z.dtype)
    return margin * not_y + z - z.gather(1, y[:, None])


def _kl_dro(a: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """lam * log mean_k exp(a_k / lam), per row; lam a float or a (B, 1) tensor."""
    return lam * (torch.logsumexp(a / lam, 1, keepdim=True) - math.log(a.shape[1]))


def ldr_rescale(z: torch.Tensor) -> torch.Tensor:
    s = F.softplus(z)
    return s / s.mean(1, keepdim=True)


def aldr_rescale(z: torch.Tensor, softplus: bool = False) -> torch.Tensor:
    if softplus:
        z = F.softplus(z)
    return z / (z.abs().sum(1, keepdim=True) / z.shape[1]).clamp_min(NORM_FLOOR)


def ldr_kl(logits, targets, lam: float, margin: float) -> torch.Tensor:
    """Per-example LDR-KL."""
    return _kl_dro(_shifted(ldr_rescale(logits), targets, margin), lam).squeeze(1)


@torch.no_grad()
def aldr_lambda(z_rescaled: torch.Tensor, lam0: float, alpha: float) -> torch.Tensor:
    """Closed-form lam_i, shape (B, 1), from rescaled scores (softmax taken at lam0)."""
    k = z_rescaled.shape[1]
    p = F.softmax(z_rescaled / lam0, 1) + PROB_SMOOTH
    p = p / p.sum(1, keepdim=True)
    kl = (p * torch.log(k * p)).sum(1, keepdim=True)
    return lam0 - lam0 * kl / (alpha * math.log(k))


def aldr_kl(logits, targets, lam0: float, alpha: float, margin: float, softplus: bool = False):
    """Per-example ALDR-KL (lam_i detached, plus its constant penalty)."""
    z = aldr_rescale(logits, softplus)
    lam = aldr_lambda(z, lam0, alpha)
    penalty = -0.5 * alpha * math.log(z.shape[1]) / lam0 * (lam - lam0) ** 2
    return (_kl_dro(_shifted(z, targets, margin), lam) + penalty).squeeze(1)


@LOSSES.register("ldr_kl")
def make_ldr_kl(lam: float = 10.0, margin: float = 0.1):
    return lambda logits, targets, model: ldr_kl(logits, targets, lam, margin).mean()


@LOSSES.register("aldr_kl")
def make_aldr_kl(lam0: float = 10.0, alpha: float = 2.0, margin: float = 0.1, softplus: bool = False):
    return lambda logits, targets, model: aldr_kl(logits, targets, lam0, alpha, margin, softplus).mean()
