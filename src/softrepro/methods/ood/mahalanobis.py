"""Mahalanobis score (Lee, Lee, Lee & Shin 2018): class-conditional Gaussians with one tied
covariance on the penultimate features of the training set; the score is
max_c -(f(x) - mu_c)^T Sigma^-1 (f(x) - mu_c).  ``epsilon`` > 0 adds the paper's input
preprocessing x^ = x + eps * sign(grad_x score) (x - eps sign(grad of the distance)).  The
paper's feature ensemble over layers (combined by a logistic regression) is not implemented."""
from __future__ import annotations

import torch

from softrepro.ood import Score
from softrepro.registry import SCORES


@SCORES.register("mahalanobis")
class Mahalanobis(Score):
    def __init__(self, epsilon: float = 0.0):
        self.epsilon = epsilon

    def fit(self, ctx):
        _, feats = ctx.train_outputs()
        y = ctx.y_train.cpu()
        self.means = torch.stack([feats[y == c].mean(0) for c in range(ctx.n_classes)])
        centred = feats - self.means[y]
        cov = centred.T @ centred / len(feats)
        self.precision = torch.linalg.pinv(cov, hermitian=True)

    def _score_feats(self, f: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
        mu, prec = self.means.to(f), self.precision.to(f)
        out = []
        for i in range(0, len(f), chunk):  # [chunk, classes, width] at a time
            d = f[i : i + chunk, None, :] - mu[None]
            out.append(-torch.einsum("ncd,de,nce->nc", d, prec, d).amin(1))
        return torch.cat(out)

    def score(self, ctx, x):
        if self.epsilon:
            grad = ctx.input_gradient(x, lambda _, feats: self._score_feats(feats.double()))
            x = x + self.epsilon * grad.sign()
        return self._score_feats(ctx.outputs(x)[1])
