"""Built-in losses.  A loss is ``make(**params) -> fn(logits, targets, model) -> scalar``;
``targets`` are integer class indices.  A loss may carry ``fn.precision`` (bits) when it
computes the softmax at another precision than the model's; the trainer then measures
softmax collapse at that precision too."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from softrepro.registry import LOSSES

_BITS = {16: torch.float16, 32: torch.float32, 64: torch.float64}


def precision_dtype(precision, default: torch.dtype) -> torch.dtype:
    """The dtype of a ``precision`` given as bits (16/32/64) or a dtype; ``default`` when None."""
    if precision is None:
        return default
    return precision if isinstance(precision, torch.dtype) else _BITS[int(precision)]


@LOSSES.register("softmax_ce")
def softmax_cross_entropy(precision: int | None = None):
    """Softmax followed by the negative log-likelihood of the true class (mean over the batch);
    ``precision: 64`` casts the logits to float64 first (Prieto et al. 2025's float64 softmax)."""
    if precision is None:
        return lambda logits, targets, model: F.cross_entropy(logits, targets)
    if precision not in (32, 64):
        raise ValueError(f"precision must be 32 or 64, got {precision}")

    def fn(logits, targets, model):
        return F.cross_entropy(logits.to(precision_dtype(precision, logits.dtype)), targets)

    fn.precision = precision
    return fn
