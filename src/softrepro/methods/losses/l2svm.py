"""L2-SVM output layer (Tang 2013, as used by Agarap 2017's CNN-SVM).

One-vs-rest squared hinge on the raw scores with targets in {-1, +1}, plus an L2
penalty on the readout weights:  mean(W**2) + C * mean(max(0, 1 - t * o)**2),
both means over every element (as the authors' TensorFlow code takes them).

The authors' code measures this model's accuracy as argmax(sign(scores)) (``model/cnn_svm.py``),
where tied signs go to the first class; the loss reports that measure beside the plain argmax
as ``test_accuracy_sign_argmax``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from softrepro.registry import LOSSES


def l2svm_loss(scores: torch.Tensor, targets: torch.Tensor, readout_weight: torch.Tensor, C: float = 1.0) -> torch.Tensor:
    signed = 2.0 * F.one_hot(targets, scores.shape[1]).to(scores.dtype) - 1.0
    hinge = torch.clamp(1.0 - signed * scores, min=0.0).pow(2).mean()
    return readout_weight.pow(2).mean() + C * hinge


def sign_argmax_correct(scores: torch.Tensor, targets: torch.Tensor) -> int:
    """How many argmax(sign(scores)) hit the target (torch's argmax takes the first of tied maxima)."""
    return int((torch.sign(scores).argmax(1) == targets).sum())


class L2SVM:
    def __init__(self, C: float = 1.0):
        self.C = C

    def __call__(self, scores, targets, model):
        return l2svm_loss(scores, targets, model.readout.weight, self.C)

    def test_counts(self, scores, targets) -> dict:
        return {"test_accuracy_sign_argmax": sign_argmax_correct(scores, targets)}


@LOSSES.register("l2svm")
def make_l2svm(C: float = 1.0):
    return L2SVM(C)
