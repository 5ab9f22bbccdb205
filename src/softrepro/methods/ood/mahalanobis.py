"""Mahalanobis scores (Lee, Lee, Lee & Shin 2018, "A Simple Unified Framework for Detecting
Out-of-Distribution Samples and Adversarial Attacks"; official ``pokaxpoka/deep_Mahalanobis_detector``).

Per layer: class means mu_c and one tied covariance Sigma of the training features (the
covariance of the features minus their class mean, ``lib_generation.sample_estimator``); the
layer's score is M(x) = max_c -(f(x) - mu_c)^T Sigma^-1 (f(x) - mu_c), higher = in-distribution.
(The official code scores -1/2 of that distance; the factor changes no ranking.)

Input preprocessing (``epsilon`` > 0, ``get_Mahalanobis_score``): x~ = x - eps * sign(grad_x d(x)),
d the distance to the closest class mean at the same layer, i.e. a step that raises M; then M(x~).

- ``mahalanobis``: the penultimate layer alone.  ``epsilon`` a number, or a list from which one
  is chosen on the tuning data (held-out in-distribution test images against ``ood.tune_sets``):
  the lowest FPR at 95 % TPR, ties broken by AUROC (the official selection keeps the first best
  TNR at TPR 95 %; with a tuning set that every eps separates perfectly, that is always the first).
- ``mahalanobis_ens``: the feature ensemble.  M at every hidden layer (``softrepro.ood.feature_modules``,
  feature maps averaged over positions), combined by a logistic regression (scikit-learn's
  ``LogisticRegressionCV``, as ``OOD_Regression_Mahalanobis.py``) fitted on validation samples:
  the first half of the held-out in-distribution images (positive) and of the tuning sets
  (negative); each ``epsilon`` gets its own regression, and the one with the lowest FPR95 on the
  second halves is kept (ties as above; the official code: 500 + 500 to fit, 500 + 500 to choose,
  of 1,000 validation samples each).  The per-layer scores are standardised on the fitting half
  before the regression; its C is chosen among 10 values by 5-fold cross-validated accuracy with an
  L2 penalty (the official ``LogisticRegressionCV()`` defaults, which were 3-fold in 2018's
  scikit-learn).  The score is the regression's log-odds of "in-distribution".
"""
from __future__ import annotations

import numbers

import numpy as np
import torch

from softrepro.ood import Score, detection_metrics
from softrepro.registry import SCORES


def _epsilons(epsilon, score: str) -> list[float]:
    values = list(np.atleast_1d(epsilon))
    if not values or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and v >= 0 for v in values):
        raise ValueError(f"{score}: epsilon must be a number >= 0 or a non-empty list of them, not {epsilon!r}")
    return [float(v) for v in values]


def _tuning_data(ctx, score: str) -> tuple[torch.Tensor, torch.Tensor]:
    if ctx.x_tune_in is None or not ctx.tune:
        raise ValueError(f"{score} tunes on validation data: it needs ood.holdout > 0 and ood.tune_sets")
    return ctx.x_tune_in, torch.cat(list(ctx.tune.values()))


class Gaussians:
    """Class-conditional Gaussians with one tied covariance, fitted on features [n, d] (float64)."""

    def __init__(self, feats: torch.Tensor, y: torch.Tensor, n_classes: int):
        self.means = torch.stack([feats[y == c].mean(0) for c in range(n_classes)])
        centred = feats - self.means[y]
        self.precision = torch.linalg.pinv(centred.T @ centred / len(feats), hermitian=True)

    def min_distance(self, f: torch.Tensor) -> torch.Tensor:
        """min_c (f - mu_c)^T P (f - mu_c) for each row of f, P = Sigma^-1 (differentiable in f),
        expanded as f P f^T - 2 f P mu_c^T + mu_c P mu_c^T: one product with P for all classes."""
        mu, prec = self.means.to(f), self.precision.to(f)
        fp = f @ prec
        d = (fp * f).sum(1, keepdim=True) - 2 * fp @ mu.T + ((mu @ prec) * mu).sum(1)[None]
        return d.amin(1)


def _best(grid: list[dict]) -> int:
    """The first grid point with the lowest FPR95, ties broken by the higher AUROC (as ODIN's
    tuning here; the official code keeps the first best TNR at TPR 95 %, TNR = 1 - FPR95)."""
    return min(range(len(grid)), key=lambda i: (grid[i]["fpr95"], -grid[i]["auroc"], i))


@SCORES.register("mahalanobis")
class Mahalanobis(Score):
    def __init__(self, epsilon: float | list[float] = 0.0):
        self.epsilons = _epsilons(epsilon, "mahalanobis")
        self.epsilon = self.epsilons[0]
        self.grid: list[dict] = []

    def fit(self, ctx):
        _, feats = ctx.train_outputs()
        self.gauss = Gaussians(feats, ctx.y_train.cpu(), ctx.n_classes)
        if len(self.epsilons) == 1:
            return
        x_in, x_out = _tuning_data(ctx, "mahalanobis with a list of epsilons")
        s_in, s_out = self._scores(ctx, x_in, self.epsilons), self._scores(ctx, x_out, self.epsilons)
        for eps, a, b in zip(self.epsilons, s_in, s_out):
            m = detection_metrics(a.numpy(), b.numpy())
            self.grid.append({"epsilon": eps, "fpr95": m["fpr95"], "auroc": m["auroc"]})
        self.epsilon = self.epsilons[_best(self.grid)]

    def _scores(self, ctx, x: torch.Tensor, epsilons: list[float]) -> list[torch.Tensor]:
        """M of the penultimate features of x~ for each eps (one gradient for all of them)."""
        sign = None
        if any(epsilons):
            sign = ctx.input_gradient(x, lambda _, feats: self.gauss.min_distance(feats.double())).sign()
        return [-self.gauss.min_distance(ctx.outputs(x - eps * sign if eps else x)[1]) for eps in epsilons]

    def chosen(self):
        return {"epsilon": self.epsilon, "grid": self.grid}

    def score(self, ctx, x):
        return self._scores(ctx, x, [self.epsilon])[0]


@SCORES.register("mahalanobis_ens")
class MahalanobisEnsemble(Score):
    def __init__(self, epsilon: float | list[float] = 0.0):
        self.epsilons = _epsilons(epsilon, "mahalanobis_ens")
        self.epsilon = self.epsilons[0]
        self.grid: list[dict] = []

    def layer_scores(self, ctx, x: torch.Tensor, epsilons: list[float]) -> list[np.ndarray]:
        """For each eps: [n, layers] of M at every hidden layer, each layer with its own preprocessing."""
        per_eps = [[] for _ in epsilons]
        clean = ctx.layers(x) if 0.0 in epsilons else None
        for layer, g in enumerate(self.gauss):
            sign = None
            if any(epsilons):
                sign = ctx.layer_gradient(x, layer, g.min_distance).sign()
            for k, eps in enumerate(epsilons):
                f = ctx.layers(x - eps * sign)[layer] if eps else clean[layer]
                per_eps[k].append(-g.min_distance(f).numpy())
        return [np.stack(cols, 1) for cols in per_eps]

    def fit(self, ctx):
        from sklearn.linear_model import LogisticRegressionCV
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        feats = ctx.train_layers()
        y = ctx.y_train.cpu()
        self.gauss = [Gaussians(f, y, ctx.n_classes) for f in feats]
        self.widths = [f.shape[1] for f in feats]
        x_in, x_out = _tuning_data(ctx, "mahalanobis_ens")
        if min(len(x_in), len(x_out)) < 4:
            raise ValueError("mahalanobis_ens needs at least 4 held-out in-distribution and 4 tuning inputs")
        h_in, h_out = len(x_in) // 2, len(x_out) // 2
        s_in, s_out = self.layer_scores(ctx, x_in, self.epsilons), self.layer_scores(ctx, x_out, self.epsilons)
        fits = []
        for eps, a, b in zip(self.epsilons, s_in, s_out):
            X = np.concatenate([a[:h_in], b[:h_out]])
            t = np.r_[np.ones(h_in), np.zeros(h_out)]
            reg = make_pipeline(StandardScaler(), LogisticRegressionCV(  # the official defaults: 10 Cs, L2, accuracy
                Cs=10, l1_ratios=(0.0,), cv=5, scoring="accuracy", use_legacy_attributes=False)).fit(X, t)
            m = detection_metrics(reg.decision_function(a[h_in:]), reg.decision_function(b[h_out:]))
            lr = reg[-1]
            fits.append(reg)
            self.grid.append({"epsilon": eps, "fpr95": m["fpr95"], "auroc": m["auroc"],
                              "C": float(np.atleast_1d(lr.C_)[0]), "weights": lr.coef_[0].tolist()})
        best = _best(self.grid)
        self.epsilon, self.regression = self.epsilons[best], fits[best]

    def chosen(self):
        return {"epsilon": self.epsilon, "layers": getattr(self, "widths", None), "grid": self.grid}

    def score(self, ctx, x):
        return torch.from_numpy(self.regression.decision_function(self.layer_scores(ctx, x, [self.epsilon])[0])).double()
