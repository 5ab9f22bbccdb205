"""Online distillation: BD-KD (Amara, Sepahvand, Meyer, Gross & Clark 2022, "BD-KD: Balancing the
Divergences for Online Knowledge Distillation", arXiv 2212.12965) and its online baseline, deep mutual
learning (DML: each network trained on the labels and on the KL divergence to the other's predictions).

Online: teacher and student learn together, from the same batches, in one run.  The engine trains one
model per run, so the pair is one module, ``online_pair``: the engine's MLP (the student; same keys as
``mlp``) and a registered model given as ``teacher: {name: ..., ...}`` (e.g. the shared protocol's CNN).
Its forward pass returns the student's logits, which is what the engine evaluates (test accuracy, NLL,
ECE are the student's) and logs as training accuracy; the teacher's logits of the same pass are left in
``model.teacher_logits``.  The student is built first from the run's seeded generator and the teacher
from the generator as it was before the student, so both start from the weights that the same seed's
plain student run (``mlp``) and offline teacher run (the same ``teacher`` model) start from.  One
optimiser steps both: each loss term's gradient reaches one network only (the other network's
probabilities are detached), and Adam's update is per parameter, so this is two optimisers with the
same settings.

Losses (p_s, p_t the student's and the teacher's softmax at temperature T, sg a stop-gradient, KL per
sample, averaged over the batch, times T^2):

    dml:  CE(z_s, y) + T^2 KL(sg p_t || p_s)  +  CE(z_t, y) + T^2 KL(sg p_s || p_t)
    bdkd: CE(z_s, y) + T^2 [w_f KL(sg p_t || p_s) + w_r KL(p_s || sg p_t)]  +  CE(z_t, y) + T^2 KL(p_t || sg p_s)

BD-KD's student term weighs the forward and the reverse KL per sample by the entropy gap between the
two networks' predictions:

    d = (H(p_s) - H(p_t)) / log C  in [-1, 1] (detached),   w_r = (1 + d) / 2,   w_f = (1 - d) / 2.

A student less certain than its teacher (d > 0) leans on the reverse KL, which is mode-seeking and
sharpens it; a student more certain than its teacher leans on the forward KL, which is mode-covering and
softens it; at equal entropies the two KLs weigh one half each.  w_f + w_r = 1, so the divergence
weighs as much as DML's single KL.  The teacher's term is the reverse KL from the teacher's side
(its own distribution first).

What was read, and what is ours: no official code was found, and the paper's method section was not
read (the stored arXiv page, arxiv.org/html/2212.12965v2, returns its opening only).  Its abstract (v2)
says BD-KD adjusts "the conventional online distillation loss on both the student and teacher losses,
employing sample-wise weighting of forward and reverse Kullback-Leibler divergence", and a third-party
summary (sciencestack.ai/paper/2212.12965) that the student objective "combines forward KL KL(p^t||p^s)
and reverse KL KL(p^s||p^t) in a sample-wise manner, guided by the entropy gap between teacher and
student predictions, while the teacher objective uses reverse KL as a regularizer".  The weights'
formula above, the teacher's reverse KL direction, T = 1 and the unit weights are ours
(docs/sources/distillation-bdkd-mcmi.md).

In evaluation mode (the engine's test loss) both losses are the student's cross-entropy, and
``test_counts`` adds the teacher's test accuracy (``online_teacher_accuracy``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from softrepro.models import MLP
from softrepro.registry import LOSSES, MODELS


class OnlinePair(nn.Module):
    """``student`` (the engine's MLP) and ``teacher`` (any registered model) trained in one run."""

    def __init__(self, in_shape=(784,), n_classes=10, teacher: dict | None = None, **student_kw):
        super().__init__()
        if not isinstance(teacher, dict) or "name" not in teacher:
            raise ValueError("online_pair: teacher must be a model entry such as {name: convnet, channels: [8, 16], ...}")
        before = torch.get_rng_state()
        self.student = MLP(in_shape=in_shape, n_classes=n_classes, **student_kw)
        after = torch.get_rng_state()
        torch.set_rng_state(before)  # the teacher starts where an offline teacher run of this seed starts
        cfg = dict(teacher)
        self.teacher = MODELS.get(cfg.pop("name"))(in_shape=in_shape, n_classes=n_classes, **cfg)
        torch.set_rng_state(after)  # and the run goes on as a plain student run would
        self.teacher_logits: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.teacher_logits = self.teacher(x)
        return self.student(x)


@MODELS.register("online_pair", forwards_to=MLP)
def online_pair(in_shape, n_classes, teacher: dict | None = None, **kw) -> nn.Module:
    return OnlinePair(in_shape=in_shape, n_classes=n_classes, teacher=teacher, **kw)


def entropy(log_p: torch.Tensor) -> torch.Tensor:
    """Per-row entropy -sum p log p from log-probabilities."""
    return -(log_p.exp() * log_p).sum(1)


def kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Per-row KL(p || q) from log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(1)


def balance_weights(log_ps: torch.Tensor, log_pt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(w_f, w_r) per sample: d = (H(p_s) - H(p_t)) / log C, w_r = (1 + d) / 2, w_f = (1 - d) / 2 (detached)."""
    d = ((entropy(log_ps) - entropy(log_pt)) / math.log(log_ps.shape[1])).detach().clamp(-1.0, 1.0)
    return (1 - d) / 2, (1 + d) / 2


class _Online:
    """Shared by ``dml`` and ``bdkd``: reads the teacher's logits from the model (``online_pair``)."""

    def __init__(self, temperature: float = 1.0, teacher_weight: float = 1.0, kd_weight: float = 1.0):
        if temperature <= 0 or teacher_weight < 0 or kd_weight < 0:
            raise ValueError(f"{type(self).__name__}: temperature must be > 0 and the weights >= 0")
        self.temperature, self.teacher_weight, self.kd_weight = float(temperature), float(teacher_weight), float(kd_weight)
        self._teacher_eval: torch.Tensor | None = None

    def __call__(self, logits, targets, model, teacher=None):
        zt = getattr(model, "teacher_logits", None)
        if zt is None:
            raise ValueError(f"{type(self).__name__}: online distillation needs the model online_pair")
        if not model.training:  # the engine's test loss: the student's cross-entropy
            self._teacher_eval = zt
            return F.cross_entropy(logits, targets)
        t = self.temperature
        log_ps, log_pt = F.log_softmax(logits / t, 1), F.log_softmax(zt / t, 1)
        student = F.cross_entropy(logits, targets) + self.kd_weight * t * t * self.student_divergence(log_ps, log_pt).mean()
        teacher = F.cross_entropy(zt, targets) + self.kd_weight * t * t * self.teacher_divergence(log_ps, log_pt).mean()
        return student + self.teacher_weight * teacher

    def test_counts(self, outputs, labels) -> dict[str, float]:
        """The teacher's correct test predictions in this evaluation batch (its logits of the same pass)."""
        zt, self._teacher_eval = self._teacher_eval, None
        return {} if zt is None else {"online_teacher_accuracy": float((zt.argmax(1) == labels).sum())}


@LOSSES.register("dml")
class DML(_Online):
    """Deep mutual learning: each network's CE plus the KL from the other's (detached) predictions to its own."""

    @staticmethod
    def student_divergence(log_ps, log_pt):
        return kl_rows(log_pt.detach(), log_ps)

    @staticmethod
    def teacher_divergence(log_ps, log_pt):
        return kl_rows(log_ps.detach(), log_pt)


@LOSSES.register("bdkd")
class BDKD(_Online):
    """BD-KD: the student's forward and reverse KL weighed by the entropy gap; the teacher's reverse KL."""

    @staticmethod
    def student_divergence(log_ps, log_pt):
        w_f, w_r = balance_weights(log_ps, log_pt)
        sg = log_pt.detach()
        return w_f * kl_rows(sg, log_ps) + w_r * kl_rows(log_ps, sg)

    @staticmethod
    def teacher_divergence(log_ps, log_pt):
        return kl_rows(log_pt, log_ps.detach())
