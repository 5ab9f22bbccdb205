"""Cross-entropy plus a head-wise penalty on the attention entropies (``ce_entropy_reg``): each head h
has a learnable threshold θ_h (a fraction of the largest entropy E_max = log T) and a tolerance band
γ·E_max around it; a query row whose attention entropy H lies outside the band costs (H − θ_h E_max)².

    P = (1 / L) Σ_layers (1 / heads) Σ_h Σ_{batch, query rows} 1[|H − θ_h E_max| > γ E_max] (H − θ_h E_max)²
    loss = CE + λ P

Read from Jha & Reagen 2025's released regulariser (Nandan91/entropy-guided-attention-llm,
``entropy_regularization.py``): λ = ``loss_coeff`` 1e-5 and γ = ``tolerance_margin_factor`` 0.20 (L11);
E_max = log of the context size, by default the attention matrices' last dimension (L41-47); the
tolerance γ E_max (L48); the entropy of each query row, −Σ p log(p + 1e-9) (L54); one threshold weight
per head index, θ_h E_max (L59); the squared deviation where it exceeds the tolerance, 0 inside it
(L62-71), summed over the batch and the query rows (L72), divided by the heads (L75) and by the layers
(L79), times λ (L82).  Its usage example adds it to the cross-entropy in training only (usage_example.py
L55-57, L85) and passes the threshold weights of the first attention block to every layer (L68-74):
``shared: true`` in the decoder's ``entropy_thresholds``; ``shared: false`` gives each layer its own.

The model keeps the row entropies and the thresholds (the decoder's ``entropy_thresholds`` option,
``attention_entropies``).  Its entropies are ``normalisations.row_entropy`` (−Σ p log p over the attended
keys): the released formula's +1e-9 inside the logarithm changes a row's entropy by less than T·1e-9.
Rows attend to i + 1 keys in a causal model, yet E_max is log T for every row, as in the released code.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from softrepro.registry import LOSSES


def entropy_penalty(entropies: list[torch.Tensor], thresholds: torch.Tensor, tolerance: float = 0.2,
                    context: int | None = None) -> torch.Tensor:
    """P above, from per-layer row entropies [B, H, T] and thresholds [1 or layers, H] (fractions of
    E_max = log ``context``, by default the entropies' T)."""
    if not entropies:
        return thresholds.sum() * 0.0
    if thresholds.dim() != 2 or thresholds.shape[0] not in (1, len(entropies)) or thresholds.shape[1] != entropies[0].shape[1]:
        raise ValueError(f"thresholds of shape {tuple(thresholds.shape)} do not fit {len(entropies)} layers of "
                         f"{entropies[0].shape[1]} heads: [1 or layers, heads]")
    e_max = math.log(context if context is not None else entropies[0].shape[-1])
    total = 0.0
    for i, h in enumerate(entropies):
        theta = thresholds[i if thresholds.shape[0] > 1 else 0].to(h.dtype)
        deviation = h - theta[None, :, None] * e_max
        outside = deviation.abs() > tolerance * e_max
        total = total + torch.where(outside, deviation, torch.zeros_like(deviation)).square().sum() / h.shape[1]
    return total / len(entropies)


@LOSSES.register("ce_entropy_reg")
def ce_entropy_reg(coef: float = 1e-5, tolerance: float = 0.2, context: int | None = None):
    """Mean cross-entropy plus ``coef`` times the entropy penalty of the model's attention (in training;
    the cross-entropy alone in evaluation).  The model must keep its attention entropies and thresholds
    (``attention_entropies``: the decoder with ``entropy_thresholds``)."""
    def fn(logits, targets, model):
        ce = F.cross_entropy(logits, targets)
        if not model.training:
            return ce
        if not hasattr(model, "attention_entropies"):
            raise ValueError(f"loss 'ce_entropy_reg' needs a model that keeps its attention entropies "
                             f"(the decoder with entropy_thresholds), not {type(model).__name__}")
        entropies, thresholds = model.attention_entropies()
        return ce + coef * entropy_penalty(entropies, thresholds, tolerance, context)

    return fn
