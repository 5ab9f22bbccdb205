"""Dual-Head Knowledge Distillation (Yang, Zong, Huang, Feng & An 2024, arXiv 2411.08937).

A logit-level loss, BinaryKL, treats each class's logit as a binary classifier through the sigmoid
and matches the student's to the teacher's with a Bernoulli KL divergence at temperature T:

    BinaryKL(z, v)      = T^2 / N * sum_{n, c} KL( Ber(s(v_nc / T)) || Ber(s(z_nc / T)) )
    BinaryKL-Norm(z, v) = T^2 / N * sum_{n, c} KL( Ber(1/2)       || Ber(s((z_nc - v_nc) / T)) )

(s the logistic sigmoid).  BinaryKL-Norm is smallest (0) when z = v.  Both follow the official code,
github.com/penghui-yang/DHKD at 7976c69: ``distiller_zoo/BinaryKL.py`` lines 13-20 and
``distiller_zoo/BinaryKLNorm.py`` lines 13-19 (sum over batch and classes, times T^2 / N).  There the
sigmoid is clamped to [1e-8, 1 - 1e-8] and its log taken; here the logs come from ``logsigmoid``, which
gives the same values wherever the clamp does not act (tests/test_distillation_standins.py checks
both) and stays finite where it would: in float32 the upper clamp 1 - 1e-8 rounds to 1, so a logit
above about 17 T makes the official log(1 - s) infinite.

The paper's finding: cross-entropy and BinaryKL on one shared linear head degrade the student; DHKD
puts them on two heads over the same features: ``ce_weight * CE(head 1, y) + logit_weight *
BinaryKL-Norm(head 2, teacher)`` (``helper/loops.py`` lines 101-114: ``loss_cls`` on ``logit_s[0]``,
``loss_kd`` on ``logit_s[1]``; flags -r and -a).  The model ``mlp_heads`` is the engine's MLP with
extra linear heads on the penultimate features (``models/resnet.py`` lines 121-125: ``fc`` and
``fc2``); it returns head 1, which is what the engine evaluates (``validate`` in the official
``helper/loops.py`` also takes ``output[0]``); the other heads' logits of the last forward pass are
in ``model.head_logits``.

Without a teacher (the engine's test loss on held-out data) the loss is the cross-entropy of head 1.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from softrepro.models import MLP
from softrepro.registry import LOSSES, MODELS


def binary_kl(z: torch.Tensor, v: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 / N * sum of KL(Ber(s(v / T)) || Ber(s(z / T))) over the batch and the classes."""
    t = float(temperature)
    p = torch.sigmoid(v / t)
    kl = p * (F.logsigmoid(v / t) - F.logsigmoid(z / t)) + (1 - p) * (F.logsigmoid(-v / t) - F.logsigmoid(-z / t))
    return t * t * kl.sum() / len(z)


def binary_kl_norm(z: torch.Tensor, v: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 / N * sum of KL(Ber(1/2) || Ber(s((z - v) / T))) over the batch and the classes."""
    t = float(temperature)
    x = (z - v) / t
    kl = -math.log(2.0) - 0.5 * (F.logsigmoid(x) + F.logsigmoid(-x))
    return t * t * kl.sum() / len(z)


LOGIT_LOSSES = {"binary_kl": binary_kl, "binary_kl_norm": binary_kl_norm}


class MultiHeadMLP(MLP):
    """The engine's MLP (``hidden``, ``dropout``, ... as there) with ``heads`` linear heads on the same
    penultimate features: head 1 is ``readout`` (what the model returns and the engine evaluates),
    heads 2.. are ``extra_heads``.  After each forward pass ``head_logits`` lists every head's logits."""

    def __init__(self, in_shape=(784,), n_classes=10, heads: int = 2, **kw):
        super().__init__(in_shape=in_shape, n_classes=n_classes, **kw)
        if heads < 1:
            raise ValueError(f"mlp_heads: heads must be >= 1 (got {heads})")
        width = self.readout.in_features
        self.extra_heads = nn.ModuleList(nn.Linear(width, n_classes, bias=self.readout.bias is not None)
                                         for _ in range(heads - 1))
        self.head_logits: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        self.head_logits = [out] + [head(self.penultimate) for head in self.extra_heads]
        return out


@MODELS.register("mlp_heads", forwards_to=MLP)
def mlp_heads(in_shape, n_classes, heads: int = 2, **kw) -> nn.Module:
    return MultiHeadMLP(in_shape=in_shape, n_classes=n_classes, heads=heads, **kw)


@LOSSES.register("dhkd")
class DualHeadKD:
    """``ce_weight * CE(head 1, y) + kd_weight * KD(head 1, teacher) + logit_weight * L(head h, teacher)``
    with L = ``logit_loss`` (``binary_kl_norm`` or ``binary_kl``) at ``temperature`` on head ``logit_head``
    (1-based: 1 is the main head itself, i.e. both losses on one shared head; 2 the auxiliary head).
    KD is Hinton's ``T^2 KL(p_T || q_T)`` at ``kd_temperature`` (0 weight in the official DHKD runs).
    Defaults: the official CIFAR-100 quick start (``-r 1 -a 1 --BinaryKL_T 2``)."""

    def __init__(self, ce_weight: float = 1.0, logit_weight: float = 1.0, temperature: float = 2.0,
                 logit_loss: str = "binary_kl_norm", logit_head: int = 2, kd_weight: float = 0.0,
                 kd_temperature: float = 4.0):
        if logit_loss not in LOGIT_LOSSES:
            raise ValueError(f"dhkd: unknown logit_loss {logit_loss!r} ({', '.join(LOGIT_LOSSES)})")
        if temperature <= 0 or kd_temperature <= 0 or logit_head < 1 or min(ce_weight, logit_weight, kd_weight) < 0:
            raise ValueError("dhkd: temperatures must be > 0, logit_head >= 1 and the weights >= 0")
        self.ce_weight, self.logit_weight, self.kd_weight = float(ce_weight), float(logit_weight), float(kd_weight)
        self.temperature, self.kd_temperature = float(temperature), float(kd_temperature)
        self.logit_loss, self.logit_head = LOGIT_LOSSES[logit_loss], int(logit_head)

    def __call__(self, logits, targets, model, teacher=None):
        if teacher is None:
            return F.cross_entropy(logits, targets)
        if self.logit_head == 1:
            aux = logits
        else:
            heads = getattr(model, "head_logits", None)
            if heads is None or len(heads) < self.logit_head:
                raise ValueError(f"dhkd: logit_head {self.logit_head} needs a model with that many heads "
                                 f"(e.g. mlp_heads with heads: {self.logit_head})")
            aux = heads[self.logit_head - 1]
        loss = self.logit_weight * self.logit_loss(aux, teacher, self.temperature)
        if self.ce_weight:
            loss = loss + self.ce_weight * F.cross_entropy(logits, targets)
        if self.kd_weight:
            t = self.kd_temperature
            loss = loss + self.kd_weight * t * t * F.kl_div(F.log_softmax(logits / t, 1), F.log_softmax(teacher / t, 1),
                                                            log_target=True, reduction="batchmean")
        return loss
