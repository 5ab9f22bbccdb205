"""Energy score and energy-bounded fine-tuning (Liu, Wang, Owens & Li 2020, "Energy-based
Out-of-distribution Detection"; official ``wetliu/energy_ood``).

Score: E(x; T) = -T logsumexp_i f_i(x) / T; the score is -E (higher = in-distribution), T = 1 by
default.

Losses for fine-tuning with auxiliary outliers (an experiment's ``outliers``: the training loop
passes the logits of each step's outlier batch as ``outliers=``; without it, as when the test
loss is measured, they are plain cross-entropy):

- ``energy_margin``: CE + weight * (mean_in relu(E(x_in) - m_in)^2 + mean_out relu(m_out - E(x_out))^2),
  E at T = 1 (``CIFAR/train.py``, ``--score energy``);
- ``outlier_exposure``: CE + weight * mean_out (logsumexp_i f_i(x_out) - mean_i f_i(x_out)), the
  cross-entropy from the softmax to the uniform distribution (Hendrycks et al.'s outlier
  exposure, the same file's ``--score OE``, the fine-tuning the paper compares with).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from softrepro.ood import Score
from softrepro.registry import LOSSES, SCORES


@SCORES.register("energy")
class Energy(Score):
    def __init__(self, temperature: float = 1.0):
        self.temperature = temperature

    def score(self, ctx, x):
        return self.temperature * torch.logsumexp(ctx.outputs(x)[0] / self.temperature, dim=1)


def energy(logits: torch.Tensor) -> torch.Tensor:
    """E(x) = -logsumexp_i f_i(x) (T = 1)."""
    return -torch.logsumexp(logits, dim=1)


def _needs_number(loss: str, **values) -> None:
    for key, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"loss {loss!r}: {key} must be a number, not {v!r}")


@LOSSES.register("energy_margin")
def energy_margin(m_in: float = -25.0, m_out: float = -7.0, weight: float = 0.1):
    """Defaults: ``CIFAR/train.py``'s own (its ``run.sh`` passes m_in = -23, m_out = -5 for CIFAR-10)."""
    _needs_number("energy_margin", m_in=m_in, m_out=m_out, weight=weight)

    def fn(logits, targets, model=None, outliers=None):
        ce = F.cross_entropy(logits, targets)
        if outliers is None:
            return ce
        bound = F.relu(energy(logits) - m_in).pow(2).mean() + F.relu(m_out - energy(outliers)).pow(2).mean()
        return ce + weight * bound

    fn.takes_outliers = True
    return fn


@LOSSES.register("outlier_exposure")
def outlier_exposure(weight: float = 0.5):
    _needs_number("outlier_exposure", weight=weight)

    def fn(logits, targets, model=None, outliers=None):
        ce = F.cross_entropy(logits, targets)
        if outliers is None:
            return ce
        return ce + weight * (torch.logsumexp(outliers, dim=1) - outliers.mean(1)).mean()

    fn.takes_outliers = True
    return fn
