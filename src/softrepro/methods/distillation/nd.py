"""The ND loss of Wang, Cheng, Duan, Wang, Feng & Kong 2023, "Improving Knowledge Distillation via
Regularizing Feature Norm and Direction" (arXiv 2305.17007), added to KD ("KD++").

For a student embedding s (the feature before the logits, projected to the teacher's width where the
widths differ), the same image's teacher embedding t and the unit direction e_y of the teacher's
class mean of the label y (the mean of the teacher's embeddings of the training images of class y),

    ND = mean over the batch of [ 1 - <s, e_y> / max(||s||, ||t||) ]

which rewards aligning s with e_y and, once s points along e_y, a norm of s up to and beyond ||t||.
The student's loss here is the KD loss of Hinton et al. (``kd.kd_loss``: alpha T^2 KL + (1 - alpha)
CE) plus ``nd_weight`` x ND.

Written after the official code, github.com/WangYZ1608/Knowledge-Distillation-via-ND at fc6f3f9:
``CIFAR/utils.py`` lines 44-66 (``DirectNormLoss``: per sample ``1 - torch.dot(s, e_c) / max_norm``
with ``e_c = center / center.norm(p=2)`` and ``max_norm = max(s.norm(p=2), t.norm(p=2))``, summed,
times ``nd_loss_factor``, divided by the batch size); ``CIFAR/train_cifar_kd.py`` lines 44-56 (the
student's and the teacher's ``embed=True`` outputs, ``loss = cls_loss + div_loss + norm_dir_loss``);
the class means (``center_emb_train.json``) come from ``CIFAR/emb_fea_distribution.py`` lines 15-45:
the teacher in eval mode over the training set, the per-class mean of each embedding coordinate.  A
student narrower than its teacher gets a projector, ``CIFAR/Models/embtrans_cifar.py`` lines 3-62
(``EmbTrans``: BatchNorm1d, Dropout(0.5), Linear(s_emb, t_emb) with a zero bias, applied to the
embedding used by ND only; the logits are the student's own).

Here the engine gives the loss the teacher's penultimate features (``set_teacher_features``: all
training images once, for the class means; ``teacher_features=`` each batch's), and the model
``mlp_embed`` (the engine's MLP plus that projector) leaves the projected embedding of its last
forward pass in ``model.embedding``.  The probe ``feature_norm`` records the mean L2 norm of the
student's penultimate features (and of the projected embedding) over the training set.

Without a teacher (the engine's test loss on held-out data, in evaluation mode) the loss is the
plain cross-entropy; in training mode it needs one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from softrepro.methods.distillation.kd import kd_loss
from softrepro.models import MLP
from softrepro.registry import LOSSES, MODELS, PROBES


def class_mean_directions(features: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(n_classes, D): the unit direction of each class's mean feature (a class without images: zeros)."""
    f = features.detach().double()
    sums = torch.zeros(n_classes, f.shape[1], dtype=f.dtype, device=f.device).index_add_(0, labels, f)
    counts = torch.bincount(labels, minlength=n_classes).to(f.dtype).clamp_min(1)[:, None]
    means = sums / counts
    return (means / means.norm(dim=1, keepdim=True).clamp_min(1e-12)).to(features.dtype)


def nd_term(s: torch.Tensor, t: torch.Tensor, directions: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Batch mean of 1 - <s_n, e_{y_n}> / max(||s_n||, ||t_n||); t is constant (the teacher's)."""
    e = directions[y].to(s.dtype)
    biggest = torch.maximum(s.norm(dim=1), t.detach().to(s.dtype).norm(dim=1))
    return (1 - (s * e).sum(1) / biggest).mean()


@LOSSES.register("nd")
class NDLoss:
    """``alpha T^2 KL(p_T || q_T) + (1 - alpha) CE + nd_weight * ND``.  Defaults: the shared KD baseline
    (T = 4, alpha = 0.9) and the official KD++ weight for ResNet-56 -> ResNet-20 (``CIFAR/train_cifar.sh``
    lines 3 and 20: ``--nd_loss_factor 2.0``)."""

    def __init__(self, nd_weight: float = 2.0, temperature: float = 4.0, alpha: float = 0.9):
        if nd_weight < 0 or temperature <= 0 or not 0 <= alpha <= 1:
            raise ValueError(f"nd: nd_weight must be >= 0, temperature > 0, alpha in [0, 1] "
                             f"(got {nd_weight}, {temperature}, {alpha})")
        self.nd_weight, self.temperature, self.alpha = float(nd_weight), float(temperature), float(alpha)
        self.directions: torch.Tensor | None = None
        self._train_features = None

    def set_teacher_features(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Called once by the engine with the teacher's penultimate features of every training image and
        their labels; the class means are taken at the first step (which knows the number of classes)."""
        self._train_features, self.directions = (features, labels), None

    def __call__(self, logits, targets, model, teacher=None, teacher_features=None):
        if teacher is None:
            if model is not None and model.training:
                raise ValueError("nd: a training run needs a teacher (teacher: <experiment>)")
            return F.cross_entropy(logits, targets)
        if teacher_features is None or self._train_features is None:
            raise ValueError("nd: the engine gave no teacher features")
        if self.directions is None:
            self.directions = class_mean_directions(*self._train_features, logits.shape[1])
        s = getattr(model, "embedding", None)
        if s is None:
            s = model.penultimate
        if s.shape[1] != teacher_features.shape[1]:
            raise ValueError(f"nd: the student's embedding has {s.shape[1]} dimensions, the teacher's {teacher_features.shape[1]}"
                             " (give the model a projector: mlp_embed with embed_dim)")
        nd = nd_term(s, teacher_features, self.directions, targets)
        return kd_loss(logits, targets, teacher, self.temperature, self.alpha) + self.nd_weight * nd


class EmbedMLP(MLP):
    """The engine's MLP plus, with ``embed_dim``, the official projector of its penultimate features
    (``EmbTrans``: BatchNorm1d -> Dropout(``embed_dropout``) -> Linear to ``embed_dim``, zero bias); the
    projector is created after the MLP, so the MLP starts from the same weights as a plain ``mlp`` of
    the same seed.  After each forward pass ``embedding`` holds the (projected) embedding."""

    def __init__(self, in_shape=(784,), n_classes=10, embed_dim: int | None = None, embed_dropout: float = 0.5, **kw):
        super().__init__(in_shape=in_shape, n_classes=n_classes, **kw)
        width = self.readout.in_features
        self.projector = None
        if embed_dim is not None:
            linear = nn.Linear(width, int(embed_dim))
            nn.init.zeros_(linear.bias)
            self.projector = nn.Sequential(nn.BatchNorm1d(width), nn.Dropout(embed_dropout), linear)
        self.embedding: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        self.embedding = self.penultimate if self.projector is None else self.projector(self.penultimate)
        return out


@MODELS.register("mlp_embed", forwards_to=MLP)
def mlp_embed(in_shape, n_classes, embed_dim: int | None = None, embed_dropout: float = 0.5, **kw) -> nn.Module:
    return EmbedMLP(in_shape=in_shape, n_classes=n_classes, embed_dim=embed_dim, embed_dropout=embed_dropout, **kw)


@PROBES.register("feature_norm")
def feature_norm(model, x_train, y_train, loss_fn=None) -> dict[str, float]:
    """``train_feature_norm``: the mean L2 norm of the penultimate features (the readout's input) over the
    training set, in evaluation mode; for a model with a projected ``embedding`` also
    ``train_embedding_norm``."""
    pen, emb = [], []
    for i in range(0, len(x_train), 4096):
        model(x_train[i : i + 4096])
        pen.append(model.penultimate.norm(dim=1).double())
        if getattr(model, "projector", None) is not None:
            emb.append(model.embedding.norm(dim=1).double())
    out = {"train_feature_norm": float(torch.cat(pen).mean())}
    if emb:
        out["train_embedding_norm"] = float(torch.cat(emb).mean())
    return out
