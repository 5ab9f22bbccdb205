"""⊥Grad from Prieto, Barsbey, Mediano, Birdal 2025, "Grokking at the Edge of Numerical Stability"
(arXiv 2501.04697, Def. 7): update with grad_perp = g - (w.g / w.w) w, the part of the gradient
orthogonal to the weights.  It is taken per parameter tensor, flattened.

This follows the official ``orthograd.py`` (github.com/LucasPrietoAl/grokking-at-the-edge-of-numerical-
stability at 0cc9e8d): 1e-30 is added to w.w, and g_perp is then rescaled to the norm of the original
g, g_perp * |g| / (|g_perp| + 1e-30).  That rescale is not in Eq. 12; ``rescale=False`` turns it off.
The base optimizer's step runs after the projection.

Differences from the official wrapper, all in plumbing:
- The base optimizer here gets the given kwargs.  In the official ⊥ runs, ``load_state_dict`` swapped
  only the wrapper's param groups, so the base kept torch's defaults: AdamW betas (0.9, 0.999), eps 1e-8;
  SGD momentum 0.8.
- ``state_dict`` here is the base's, moments included.
- A closure is evaluated once, before the projection.
"""
from __future__ import annotations

import torch

from softrepro.optim import BASES, torch_kwargs
from softrepro.registry import OPTIMIZERS


@torch.no_grad()
def orthogonalize_grads_(params, rescale: bool = True, eps: float = 1e-30) -> None:
    """In place: p.grad <- g - (w.g / (w.w + eps)) w per tensor, then (``rescale``) scaled back to |g|."""
    for p in params:
        if p.grad is None:
            continue
        w, g = p.detach().reshape(-1), p.grad.reshape(-1)
        g_perp = g - (torch.dot(w, g) / (torch.dot(w, w) + eps)) * w
        if rescale:
            g_perp = g_perp * (g.norm() / (g_perp.norm() + eps))
        p.grad.copy_(g_perp.view_as(p.grad))


class OrthoGrad(torch.optim.Optimizer):
    """Wraps a base optimizer (``base``: adam | adamw | sgd, or an Optimizer class).  ``step()``
    projects every gradient with ``orthogonalize_grads_`` and then calls the base step.  Param groups,
    state and ``state_dict`` are the base's, so LR schedulers and checkpoints act on the base."""

    def __init__(self, params, base="adamw", rescale: bool = True, ortho_eps: float = 1e-30, **base_kw):
        base_cls = BASES[base] if isinstance(base, str) else base
        self.base = base_cls(params, **torch_kwargs(base_kw))
        self.rescale, self.ortho_eps = rescale, ortho_eps
        super().__init__(self.base.param_groups, self.base.defaults)
        self._share()

    def _share(self) -> None:
        self.param_groups, self.state, self.defaults = self.base.param_groups, self.base.state, self.base.defaults
        self._shared = True

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            orthogonalize_grads_(group["params"], self.rescale, self.ortho_eps)
        self.base.step()
        return loss

    def add_param_group(self, param_group: dict) -> None:
        if getattr(self, "_shared", False):
            self.base.add_param_group(param_group)
        else:  # super().__init__ registering the base's own groups
            super().add_param_group(param_group)

    def state_dict(self) -> dict:
        return self.base.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.base.load_state_dict(state_dict)
        self._share()


@OPTIMIZERS.register("orthograd", forwards_to=tuple(BASES.values()))
def make_orthograd(params, base: str = "adamw", rescale: bool = True, ortho_eps: float = 1e-30, **kw):
    """⊥Grad around ``base`` (adam | adamw | sgd); the other kwargs (lr, weight_decay, betas, eps,
    momentum, ...) go to the base optimizer."""
    if base not in BASES:
        raise ValueError(f"orthograd base must be one of {sorted(BASES)}, got {base!r}")
    return OrthoGrad(params, base, rescale=rescale, ortho_eps=ortho_eps, **kw)
