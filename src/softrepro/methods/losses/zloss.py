"""Z-loss (de Brébisson & Vincent 2016, "The Z-loss: a shift and scale invariant classification
loss belonging to the Spherical Family", arXiv 1604.08859): standardise the logits o over classes,
z_k = (o_k - μ) / (σ + 1e-12) with μ, σ their mean and population std, then
L = (1/a) softplus(a (b - z_c)) for true class c; batch mean.  The loss is invariant to
shifting and positively scaling the logits.  The 1e-12 follows the authors' Theano timing example
(factored_output_layer/example/timing_example.py, which has a = 1, b = 0).
"""
from __future__ import annotations

import torch.nn.functional as F

from softrepro.registry import LOSSES

EPS = 1e-12


def zloss(o, y, a, b):
    z = (o - o.mean(1, keepdim=True)) / (o.std(1, unbiased=False, keepdim=True) + EPS)
    zc = z.gather(1, y[:, None]).squeeze(1)
    return F.softplus(a * (b - zc)) / a


@LOSSES.register("zloss")
def make_zloss(a: float = 1.0, b: float = 0.0):
    return lambda o, y, model: zloss(o, y, a, b).mean()
