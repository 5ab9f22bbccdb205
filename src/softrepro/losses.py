"""Built-in losses.  A loss is ``make(**params) -> fn(logits, targets, model) -> scalar``;
``targets`` are integer class indices."""
from __future__ import annotations

import torch.nn.functional as F

from softrepro.registry import LOSSES


@LOSSES.register("softmax_ce")
def softmax_cross_entropy():
    """Softmax followed by the negative log-likelihood of the true class (mean over the batch)."""
    return lambda logits, targets, model: F.cross_entropy(logits, targets)
