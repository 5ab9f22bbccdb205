"""Maximum conditional mutual information (MCMI) teachers: Ye, Mohajer Hamidi, Tan & Yang, "Bayes Conditional
Distribution Estimation for Knowledge Distillation Based on Conditional Mutual Information" (ICLR 2024).

A trained teacher is fine-tuned to maximise its log-likelihood and its conditional mutual information
CMI = I(X; Y^ | Y), estimated as

    CMI = mean over samples of KL( P_x || Q_y ),    Q_y = the mean of P_x over the samples of class y,

with P_x the teacher's softmax output; then students are distilled from it as from any teacher.

The official code, github.com/iclr2024mcmi/ICLRMCMI at d12f354 (``CIFAT-100KD/``):

- ``CE_KL_PWCE_loss`` (``CIFAR100-FewShot/losses.py`` L414-427, ``ZeroShot/losses.py`` L380-393; the
  ``CIFAT-100KD/FineTuneTeacher.py`` L24 imports it, but ``CIFAT-100KD/losses.py`` lacks it: its ``CE_KL_loss``
  L10-19 computes the same two terms): ``CE`` and ``F.kl_div(centroids.log(), F.log_softmax(output, 1),
  reduction="batchmean", log_target=True)``, i.e. the batch mean of KL(P_x || Q_y);
- ``helper/loops.py`` L92-94: ``loss = opt.param[0] * CE + opt.param[1] * KL``; the fine-tuned teachers'
  folders are named by ``param[1]`` (``FineTuneTeacher.py`` L92-93), and the CIFAR-100 student runs read
  ``resnet56_cifar100_FT_lr_0.05_decay_0.0005_CMI_-0.15_trial_0`` (``CIFAR100-FewShot/runKD0.sh`` L1):
  param = [1, -0.15], so the loss is CE - 0.15 x CMI;
- ``centroid.py`` L95-110 (``update_epoch``): Q_y is the class mean of the softmax outputs over the whole
  training set, computed once from the teacher before fine-tuning (``FineTuneTeacher.py`` L142-143); the
  per-batch moving-average update is commented out (``helper/loops.py`` L88), so the centroids stay fixed;
- ``MTCMI.py`` L33-49: the CMI of a trained model, on the training set in evaluation mode, as above.

Here (``mcmi``): ``ce_weight * CE - cmi_weight * CMI_batch`` with CMI_batch = mean_i KL(P_i || Q_{y_i}) and
Q_y the mean of the (detached) softmax outputs of the batch's samples of class y.  The engine gives a loss
no dataset, so the centroids cannot be the official full-training-set ones; the batch estimate needs no
state, so a run resumed from a checkpoint ends as an uninterrupted one.  Like the official centroids they
are constants to the gradient (detached); since the class mean is the q that minimises sum_i KL(P_i || q),
the gradient through the centroids vanishes anyway, so this is also the gradient of the batch CMI itself.
In evaluation mode (the engine's test loss) the loss is the plain CE.

The probe ``cmi`` is MTCMI.py's measurement: ``train_cmi`` on the whole training set (model in eval mode).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from softrepro.registry import LOSSES, PROBES


def class_centroids(probs: torch.Tensor, targets: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(C, C): row y is the mean of ``probs`` over the rows labelled y (zeros for a class absent here)."""
    sums = torch.zeros(n_classes, probs.shape[1], dtype=probs.dtype, device=probs.device).index_add_(0, targets, probs)
    counts = torch.bincount(targets, minlength=n_classes).to(probs.dtype).clamp(min=1)
    return sums / counts[:, None]


def cmi_estimate(logits: torch.Tensor, targets: torch.Tensor, detach_centroids: bool = True) -> torch.Tensor:
    """mean_i KL(P_i || Q_{y_i}), P = softmax(logits), Q_y the class means of P over these rows."""
    log_p = F.log_softmax(logits, 1)
    p = log_p.exp()
    q = class_centroids(p.detach() if detach_centroids else p, targets, logits.shape[1])[targets]
    log_q = torch.log(q.clamp(min=torch.finfo(q.dtype).tiny))
    return (p * (log_p - log_q)).sum(1).mean()


@LOSSES.register("mcmi")
class MCMI:
    """``ce_weight * CE - cmi_weight * CMI`` (the official ``--param 1 -0.15``: CE - 0.15 CMI), the centroids
    from the batch's own detached predictions."""

    def __init__(self, cmi_weight: float = 0.15, ce_weight: float = 1.0):
        if ce_weight < 0:
            raise ValueError(f"mcmi: ce_weight must be >= 0 (got {ce_weight})")
        self.cmi_weight, self.ce_weight = float(cmi_weight), float(ce_weight)

    def __call__(self, logits, targets, model=None, teacher=None):
        ce = F.cross_entropy(logits, targets)
        if model is not None and not model.training:  # the engine's test loss
            return ce
        return self.ce_weight * ce - self.cmi_weight * cmi_estimate(logits, targets)


@PROBES.register("cmi")
def cmi_probe(model, x_train, y_train, loss_fn=None) -> dict[str, float]:
    """``train_cmi``: the model's CMI on the whole training set (official MTCMI.py L33-49), in float64."""
    z = torch.cat([model(x_train[i : i + 4096]) for i in range(0, len(x_train), 4096)]).double()
    return {"train_cmi": float(cmi_estimate(z, y_train))}
