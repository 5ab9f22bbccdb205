"""Plackett-Luce Distillation (PLD) of Bassam, Zhu & Bian 2025, "PLD: A Choice-Theoretic List-Wise
Knowledge Distillation" (arXiv 2506.12542).

The teacher-optimal permutation pi* puts the label y first and the other classes after it in
descending teacher logit.  With the student's logits s and the weights alpha_k = softmax(v / tau)
of the class pi*_k (the teacher's probability of that class at temperature tau),

    PLD = sum_{k=1..C} alpha_k [ log sum_{j >= k} exp(s_{pi*_j}) - s_{pi*_k} ]

(batch mean): the negative log-likelihood of pi* under the student's Plackett-Luce model, each
selection step weighted by the teacher's confidence in the class chosen there.  It is the student's
whole loss (no separate cross-entropy term).  With alpha = (1, 0, ..., 0) it is the cross-entropy.

No official code was found.  The formula is the paper's own listing, Appendix C "Implementation of
the PLD Loss" (``create_adjusted_ranking``: the teacher's logits sorted ascending, the label removed
and appended last; ``plackett_luce_loss``: ``torch.logcumsumexp`` of the student's logits in that
order minus the logit, times ``softmax(t_perm / temperature)``, summed over positions, batch mean),
with Section 4.2 (alpha_k = q^T_{pi*_k}) and Appendix A.1; read in a text copy of the paper's v3
(docs/sources/distillation-nd-sinkd-pld.md says where).  Section 5.1: on CIFAR-100 "PLD uses the same
temperature (tau = 4.0)"; the listing's default and the best ImageNet setting (Table 6) are tau = 1.

Here the order is built descending and the sums over the remaining classes come from a reversed
``logcumsumexp``; tests/test_distillation_nd_sinkd_pld.py checks it against the listing re-typed.
Without a teacher (the engine's test loss on held-out data) the loss is the plain cross-entropy.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from softrepro.registry import LOSSES


def teacher_optimal_permutation(v: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N, C) class indices: the label first, then the other classes by descending teacher logit."""
    order = torch.sort(v, dim=1, descending=True, stable=True).indices
    rest = order[order != y[:, None]].reshape(len(v), -1)
    return torch.cat([y[:, None], rest], 1)


def pld_loss(s: torch.Tensor, v: torch.Tensor, y: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    perm = teacher_optimal_permutation(v, y)
    s_perm = s.gather(1, perm)
    # log sum_{j >= k} exp(s_{pi_j}): a cumulative log-sum-exp from the last position backwards
    tail = torch.logcumsumexp(s_perm.flip(1), 1).flip(1)
    alpha = F.softmax(v.detach() / temperature, 1).gather(1, perm)
    return (alpha * (tail - s_perm)).sum(1).mean()


@LOSSES.register("pld")
class PLD:
    """The PLD loss alone; ``temperature`` is the teacher softmax's tau for the weights (1.0: the paper's
    listing default and its best ImageNet setting; 4.0 on CIFAR-100, Section 5.1)."""

    def __init__(self, temperature: float = 1.0):
        if temperature <= 0:
            raise ValueError(f"pld: temperature must be > 0 (got {temperature})")
        self.temperature = float(temperature)

    def __call__(self, logits, targets, model, teacher=None):
        if teacher is None:
            return F.cross_entropy(logits, targets)
        return pld_loss(logits, teacher, targets, self.temperature)
