"""Progressive self-knowledge distillation (PS-KD) of Kim, Ji, Yoon & Hwang 2021, "Self-Knowledge
Distillation with Progressive Refinement of Targets" (arXiv 2006.12000).

At epoch t (0-based, of E) the model trains on the soft targets

    y~ = (1 - alpha_t) * onehot(y) + alpha_t * P_{t-1}(x),    alpha_t = alpha_T * (t + 1) / E

with the cross-entropy -sum_c y~_c log softmax(z)_c (batch mean), P_{t-1} the softmax predictions of
the model as it was at the end of the previous epoch (the paper's Figure 1: "a student at epoch
(t - 1) becomes a teacher"); in the first epoch the targets are the one-hot labels.  alpha_T = 0.8
in the official runs (README: ``--alpha_T 0.8``).

The official code, github.com/lgcnsai/PS-KD-Pytorch at 9aa0828, ``main.py``: alpha_t at line 323
(``args.alpha_T * ((epoch + 1) / args.end_epoch)``), the targets at lines 417-433 (one-hot rows stored
for every image in epoch 0, line 423), the loss ``loss/pskd_loss.py`` lines 18-20; it keeps the
softmax output of each image from the last time it was seen, indexed by the image's dataset index
(line 467), so its P_{t-1}(x) comes from the weights of the moment that image was seen during epoch
t - 1, under that epoch's augmentation.  The engine gives a loss no dataset indices, so here the model
keeps a frozen copy of its own weights taken at each epoch boundary and computes that copy's
predictions on the current batch: the model at the end of epoch t - 1, as in the paper's description,
one extra forward pass per step.  The copy is part of the model's state, so a resumed run continues
with the same copy.

``mlp_self_teacher``: the engine's MLP (same keys) plus ``epoch_steps`` (training steps per epoch);
in training mode each forward pass leaves the copy's softmax in ``model.previous_probs`` (None during
the first epoch).  The loss ``pskd`` reads it, and the epoch (``model.epoch`` of ``model.epochs``,
from the engine's ``set_progress`` hook).  In evaluation mode (the engine's test loss) the loss is the
plain cross-entropy.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from softrepro.models import MLP
from softrepro.registry import LOSSES, MODELS


class SelfTeacherMLP(MLP):
    """An MLP that keeps a frozen copy of itself from the end of the previous epoch (``previous``,
    a submodule without gradients, so it is saved and restored with the model's state)."""

    def __init__(self, in_shape=(784,), n_classes=10, epoch_steps: int = 469, **kw):
        super().__init__(in_shape=in_shape, n_classes=n_classes, **kw)
        if epoch_steps < 1:
            raise ValueError(f"mlp_self_teacher: epoch_steps must be >= 1 (got {epoch_steps})")
        self.epoch_steps = int(epoch_steps)
        self.previous = MLP(in_shape=in_shape, n_classes=n_classes, **kw)
        self.previous.requires_grad_(False)
        self.register_buffer("snapshot_epoch", torch.zeros((), dtype=torch.long))  # 0: no copy yet
        self.epoch, self.epochs = 0, 1
        self.previous_probs: torch.Tensor | None = None

    def own_parameters(self):
        return [p for name, p in self.named_parameters() if not name.startswith("previous.")]

    @torch.no_grad()
    def set_progress(self, step: int, steps: int) -> None:
        """Called by the engine before each training step: the epoch of ``step``, and at the first step
        of each epoch after the first the copy of the weights as they are then (end of the last epoch)."""
        self.epoch, self.epochs = step // self.epoch_steps, max(1, math.ceil(steps / self.epoch_steps))
        if self.epoch >= 1 and int(self.snapshot_epoch) != self.epoch:
            for mine, frozen in zip(self.own_parameters(), self.previous.parameters()):
                frozen.copy_(mine)
            self.snapshot_epoch.fill_(self.epoch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        self.previous_probs = None
        if self.training and int(self.snapshot_epoch) >= 1:
            with torch.no_grad():
                self.previous_probs = F.softmax(self.previous(x), 1)
        return out


@MODELS.register("mlp_self_teacher", forwards_to=MLP)
def mlp_self_teacher(in_shape, n_classes, epoch_steps: int = 469, **kw) -> nn.Module:
    return SelfTeacherMLP(in_shape=in_shape, n_classes=n_classes, epoch_steps=epoch_steps, **kw)


def pskd_targets(y: torch.Tensor, n_classes: int, previous: torch.Tensor | None, alpha: float) -> torch.Tensor:
    onehot = F.one_hot(y, n_classes).to(previous.dtype if previous is not None else torch.float32)
    return onehot if previous is None else (1 - alpha) * onehot + alpha * previous


@LOSSES.register("pskd")
class PSKD:
    def __init__(self, alpha_T: float = 0.8):
        if not 0 <= alpha_T <= 1:
            raise ValueError(f"pskd: alpha_T must be in [0, 1] (got {alpha_T})")
        self.alpha_T = float(alpha_T)

    def alpha(self, epoch: int, epochs: int) -> float:
        return max(0.0, self.alpha_T * (epoch + 1) / epochs)

    def __call__(self, logits, targets, model, teacher=None):
        if not model.training:
            return F.cross_entropy(logits, targets)
        if not hasattr(model, "previous_probs"):
            raise ValueError("pskd: the model must keep its previous epoch's predictions (model mlp_self_teacher)")
        soft = pskd_targets(targets, logits.shape[1], model.previous_probs, self.alpha(model.epoch, model.epochs))
        return -(soft.to(logits.dtype) * F.log_softmax(logits, 1)).sum(1).mean()
