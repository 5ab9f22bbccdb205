"""Loss of the ReLU classifier (Agarap 2018, "Deep Learning using Rectified Linear Units
(ReLU)", arXiv 1803.08375 v2).

The authors' notebooks build ``Dense(num_classes, activation='relu')`` and compile with
``loss='categorical_crossentropy'`` under Keras 2.1.2; the ReLU is applied by the model
(``MLP(..., output='relu')``, also VGGNet), not here.  Keras 2.1.2's probability-input
categorical cross-entropy (keras/backend/tensorflow_backend.py at tag 2.1.2, commit
26d5e10; epsilon() = 10e-8 in keras/backend/common.py) on non-negative outputs o is

    p = o / sum_k o_k,   p <- clip(p, eps, 1 - eps),   loss = -log p_y      (eps = 1e-7).

Deviation: when every output of a row is 0, Keras computes 0/0 (NaN); here the row sum is
clamped at eps, so the row gets p = 0 -> eps, loss -log(eps) and zero gradient.
Batch mean.
"""
from __future__ import annotations

import torch

from softrepro.registry import LOSSES


def keras_categorical_ce(outputs: torch.Tensor, targets: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Per-example -log clip(o_y / sum_k o_k, eps, 1 - eps)."""
    p = outputs / outputs.sum(1, keepdim=True).clamp_min(eps)
    return -torch.log(p.clamp(eps, 1.0 - eps).gather(1, targets[:, None]).squeeze(1))


@LOSSES.register("keras_categorical_ce")
def make_keras_categorical_ce(eps: float = 1e-7):
    return lambda outputs, targets, model: keras_categorical_ce(outputs, targets, eps).mean()
