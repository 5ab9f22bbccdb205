"""ViM, virtual-logit matching (Wang, Li, Feng & Zhang 2022; official ``haoqiwang/vim``,
``benchmark.py``): origin u = -pinv(W) b of the readout; principal space = the top ``dim``
eigenvectors of the (uncentred) covariance of the training features minus u; residual
r(x) = ||(f(x) - u) P_perp||; alpha = mean max training logit / mean training residual; the score
is logsumexp(logits) - alpha r(x).  ``residual`` scores -r(x) alone (the paper's ablation)."""
from __future__ import annotations

import torch

from softrepro.ood import Score
from softrepro.registry import SCORES


class _Principal(Score):
    def __init__(self, dim: int):
        self.dim = dim

    def fit(self, ctx):
        logits, feats = ctx.train_outputs()
        w, b = ctx.readout()
        if self.dim >= feats.shape[1]:
            raise ValueError(f"ViM's principal dimension {self.dim} must be below the feature width {feats.shape[1]}")
        self.u = -torch.linalg.pinv(w) @ b if b is not None else torch.zeros(feats.shape[1], dtype=feats.dtype)
        z = feats - self.u
        vals, vecs = torch.linalg.eigh(z.T @ z / len(z))  # ascending eigenvalues
        self.ns = vecs[:, : feats.shape[1] - self.dim]  # all but the top ``dim``
        self.alpha = float(logits.amax(1).mean() / self.residual(feats).mean())

    def residual(self, feats):
        return torch.linalg.vector_norm((feats - self.u) @ self.ns, dim=1)

    def chosen(self):
        return {"dim": self.dim, "alpha": getattr(self, "alpha", None)}


@SCORES.register("vim")
class ViM(_Principal):
    def score(self, ctx, x):
        logits, feats = ctx.outputs(x)
        return torch.logsumexp(logits, 1) - self.alpha * self.residual(feats)


@SCORES.register("residual")
class Residual(_Principal):
    def score(self, ctx, x):
        return -self.residual(ctx.outputs(x)[1])
