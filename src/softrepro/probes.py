"""Built-in probes: measurements taken once after training, on the training set, for the specs
that list them under ``probes:`` (each costs a pass over the training set, so no run pays for
one it does not need).  ``softmax_collapse_fraction`` is also what the trainer logs per step."""
from __future__ import annotations

import torch

from softrepro.losses import precision_dtype
from softrepro.registry import PROBES


def softmax_collapse_fraction(logits: torch.Tensor, targets: torch.Tensor | None = None, precision=None,
                              correct_only: bool = False) -> float:
    """Softmax collapse (Prieto et al. 2025): the fraction of samples whose sum_k exp(z_k - max z)
    is exactly 1 at ``precision`` (16/32/64 or a dtype; default: the logits' dtype), as in the
    official ``logger.compute_softmax_collapse``, which ignores the target.  With ``correct_only``
    a sample counts only if its argmax is the target (the paper's Def. 3, sum == e^{z_y})."""
    z = logits.detach().to(precision_dtype(precision, logits.dtype))
    collapsed = torch.exp(z - z.amax(1, keepdim=True)).sum(1) == 1
    if correct_only:
        collapsed &= z.argmax(1) == targets.to(z.device)
    return collapsed.float().mean().item()


@PROBES.register("softmax_collapse")
def softmax_collapse_probe(model, x_train, y_train, loss_fn=None) -> dict[str, float]:
    """``train_sc_fraction``: softmax collapse over the whole training set at the loss's precision."""
    z = torch.cat([model(x_train[i : i + 4096]) for i in range(0, len(x_train), 4096)])
    return {"train_sc_fraction": softmax_collapse_fraction(z, precision=getattr(loss_fn, "precision", None))}
