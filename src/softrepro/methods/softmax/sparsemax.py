"""Sparsemax and its multi-label losses, from Martins & Astudillo 2016, "From Softmax to Sparsemax: A
Sparse Model of Attention and Multi-Label Classification" (arXiv 1602.02068).

sparsemax(z) = argmin_{p in simplex} |p - z|^2 = max(z - tau(z), 0).  Sort z descending.  Then
k(z) = max{k : 1 + k z_(k) > sum_{j<=k} z_(j)} and tau(z) = (sum_{j<=k(z)} z_(j) - 1) / k(z).
Backward is the paper's Jacobian-vector product on the support S = {j : p_j > 0}:
v_j = 1[j in S] (g_j - sum_{i in S} g_i / |S|).

The losses take targets as a (B, K) tensor of label indicators or proportions, normalised to
q = y / |y|_1.  Integer class indices (B,) are taken as one-hot.  Each returns the batch mean.
- sparsemax_loss: L(z; q) = -q.z + 1/2 sum_{j in S(z)} (z_j^2 - tau(z)^2) + 1/2 |q|^2;
  its gradient is sparsemax(z) - q.
- softmax_multilabel_ce: -sum_k q_k log softmax(z)_k.
- logistic_multilabel: per-class binary logistic loss on the label support 1[y_k > 0].  It is summed
  over classes per sample, as in the authors' train_multilabel_classifier_lbfgs.py
  (github.com/Unbabel/sparsemax at 27d2a1a); ``class_reduction="mean"`` averages over classes instead.

Each loss callable carries ``predict(out) -> (distribution, label_mask)`` for the ``multilabel`` task
(softrepro.methods.softmax.multilabel), with ONE fixed decision rule each.  The repo tunes these rules on held-out
data (train_multilabel_classifier_lbfgs.py: sparsemax scale in {1, 1.5, ..., 5}, softmax threshold in
{1, ..., 10}/K, logistic threshold in {0.05, ..., 0.5}); here they are fixed at sparsemax support at
scale 1, softmax p > 1/K and logistic sigmoid > 0.5.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from softrepro.registry import LOSSES


def sparsemax_threshold(z: torch.Tensor) -> torch.Tensor:
    """tau(z) over the last dim, shape (..., 1); no gradient."""
    z = z.detach()
    zs = z.sort(-1, descending=True).values
    cums = zs.cumsum(-1)
    k = torch.arange(1, z.shape[-1] + 1, dtype=z.dtype, device=z.device)
    kz = ((1 + k * zs > cums) * k).amax(-1, keepdim=True)  # k(z): the largest k meeting the condition
    return (cums.gather(-1, kz.long() - 1) - 1) / kz


class SparsemaxFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z):
        p = (z - sparsemax_threshold(z)).clamp_min(0)
        ctx.save_for_backward(p)
        return p

    @staticmethod
    def backward(ctx, g):
        (p,) = ctx.saved_tensors
        support = (p > 0).to(g.dtype)
        return support * (g - (support * g).sum(-1, keepdim=True) / support.sum(-1, keepdim=True))


def sparsemax(z: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return SparsemaxFunction.apply(z.transpose(dim, -1)).transpose(dim, -1)


def label_proportions(targets: torch.Tensor, n_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """q = y / |y|_1 from (B, K) indicators/proportions or (B,) class indices; rows without labels stay 0."""
    y = F.one_hot(targets.long(), n_classes) if targets.dim() == 1 else targets
    y = y.to(dtype)
    return y / y.sum(1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)


def sparsemax_loss(z: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Per-sample sparsemax loss for logits z (B, K) and label proportions q (B, K)."""
    tau0 = sparsemax_threshold(z)
    support = (z.detach() > tau0).to(z.dtype)
    tau = ((support * z).sum(1, keepdim=True) - 1) / support.sum(1, keepdim=True)  # = tau0, with its gradient
    return -(q * z).sum(1) + 0.5 * (support * (z ** 2 - tau ** 2)).sum(1) + 0.5 * (q ** 2).sum(1)


def predict_sparsemax(z: torch.Tensor):
    """(sparsemax(z), its support): the repo's rule at scale 1 (it tunes the scale on dev data)."""
    p = sparsemax(z.detach())
    return p, p > 0


def predict_softmax(z: torch.Tensor):
    """(softmax(z), p > 1/K): the repo's smallest threshold (it tunes {1..10}/K on dev data)."""
    p = F.softmax(z.detach(), 1)
    return p, p > 1.0 / z.shape[1]


def predict_logistic(z: torch.Tensor):
    """(sigmoid(z) normalised to sum 1, sigmoid(z) > 0.5): threshold 0.5, the largest of the repo's
    {0.05, ..., 0.5} (it tunes it on dev data)."""
    s = torch.sigmoid(z.detach())
    return s / s.sum(1, keepdim=True), s > 0.5


@LOSSES.register("sparsemax_loss")
def make_sparsemax_loss():
    fn = lambda z, y, model: sparsemax_loss(z, label_proportions(y, z.shape[1], z.dtype)).mean()  # noqa: E731
    fn.predict = predict_sparsemax
    return fn


@LOSSES.register("softmax_multilabel_ce")
def make_softmax_multilabel_ce():
    fn = lambda z, y, model: -(label_proportions(y, z.shape[1], z.dtype) * F.log_softmax(z, 1)).sum(1).mean()  # noqa: E731
    fn.predict = predict_softmax
    return fn


@LOSSES.register("logistic_multilabel")
def make_logistic_multilabel(class_reduction: str = "sum"):
    if class_reduction not in ("sum", "mean"):
        raise ValueError(f"class_reduction must be 'sum' or 'mean', got {class_reduction!r}")

    def fn(z, y, model):
        labels = (label_proportions(y, z.shape[1], z.dtype) > 0).to(z.dtype)
        per_class = F.binary_cross_entropy_with_logits(z, labels, reduction="none")
        return (per_class.sum(1) if class_reduction == "sum" else per_class.mean(1)).mean()

    fn.predict = predict_logistic
    return fn
