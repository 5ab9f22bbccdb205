"""Label smoothing and Max Suppression (MaxSup) on logits z, true class y, K classes.

Label smoothing (Müller, Kornblith & Hinton 2019, arXiv 1906.02629, §1.1): cross-entropy
against the smoothed targets y_k^LS = y_k (1 - α) + α / K.  Expanding gives
CE_LS = CE + α (z_y - mean_k z_k).

MaxSup (Zhou et al. 2025, arXiv 2502.15798, Eq. 8 and Alg. 1) replaces z_y by the top logit:
loss = CE(hard labels) + α (max_k z_k - mean_k z_k), batch mean.

Both take ``alpha`` and an optional ``alpha_end``: with it, α rises linearly from ``alpha`` to
``alpha_end`` over training (MaxSup App. F: α = 0.1 + 0.1 t/T), set through ``set_progress``.
"""
from __future__ import annotations

import torch.nn.functional as F

from softrepro.registry import LOSSES


class Scheduled:
    """``fn(z, y, alpha)`` with α interpolated linearly in the training progress t ∈ [0, 1]."""

    def __init__(self, fn, alpha: float, alpha_end: float | None = None):
        self.fn, self.start = fn, alpha
        self.end = alpha if alpha_end is None else alpha_end
        self.alpha = alpha

    def set_progress(self, step: int, steps: int) -> None:
        """The engine's progress hook (before training step ``step`` of ``steps``)."""
        self.alpha = self.start + (self.end - self.start) * (step / steps)

    def __call__(self, logits, targets, model):
        return self.fn(logits, targets, self.alpha)


def label_smoothing(z, y, alpha):
    logp = F.log_softmax(z, 1)
    q = F.one_hot(y, z.shape[1]).to(z.dtype) * (1 - alpha) + alpha / z.shape[1]
    return -(q * logp).sum(1).mean()


def maxsup(z, y, alpha):
    return F.cross_entropy(z, y) + alpha * (z.max(1).values - z.mean(1)).mean()


@LOSSES.register("label_smoothing")
def make_label_smoothing(alpha: float = 0.1, alpha_end: float | None = None):
    return Scheduled(label_smoothing, alpha, alpha_end)


@LOSSES.register("maxsup")
def make_maxsup(alpha: float = 0.1, alpha_end: float | None = None):
    return Scheduled(maxsup, alpha, alpha_end)
