"""Cross-entropy with the output z-loss: CE + c · mean(log² Z), Z the softmax normaliser of the
output logits (PaLM's auxiliary loss; Wortsman et al. 2023 use c = 1e-4 against the divergence of
the output logits when there is no weight decay).  Not de Brébisson & Vincent's Z-loss (``zloss``)."""
from __future__ import annotations

import torch.nn.functional as F

from softrepro.registry import LOSSES


@LOSSES.register("ce_zloss")
def ce_zloss(coef: float = 1e-4):
    """Mean cross-entropy plus ``coef`` times the mean squared log-partition function of the logits."""
    def fn(logits, targets, model):
        return F.cross_entropy(logits, targets) + coef * logits.float().logsumexp(-1).pow(2).mean()

    return fn
