"""Softmax-centroid distance and its deferral rule (Sikar et al. 2024, "When to Accept
Automated Predictions and When to Defer to Human Judgment?"): the centroid c_k of class k is the
mean softmax vector of the correctly predicted training samples of class k; a prediction's
distance is d(x) = ||softmax(x) - c_yhat|| (Euclidean); the safety threshold tau_k is the
smallest distance to c_k of an incorrect training prediction of class k (+inf if the class has
none); a prediction is accepted if d(x) < tau_yhat, else deferred.  The score is -d(x)."""
from __future__ import annotations

import torch

from softrepro.ood import Score
from softrepro.registry import SCORES


@SCORES.register("centroid")
class CentroidDistance(Score):
    def fit(self, ctx):
        logits, _ = ctx.train_outputs()
        p = logits.softmax(1)
        pred, y = p.argmax(1), ctx.y_train.cpu()
        k = ctx.n_classes
        ok = pred == y
        self.centroids = torch.stack([p[ok & (y == c)].mean(0) if (ok & (y == c)).any() else torch.full((k,), float("nan"))
                                      for c in range(k)])
        d = self._distance(p, pred)
        self.tau = torch.tensor([d[~ok & (pred == c)].min() if (~ok & (pred == c)).any() else float("inf") for c in range(k)],
                                dtype=torch.float64)

    def _distance(self, p, pred):
        return torch.linalg.vector_norm(p - self.centroids[pred], dim=1)

    def _d(self, ctx, x):
        p = ctx.outputs(x)[0].softmax(1)
        pred = p.argmax(1)
        return self._distance(p, pred), pred

    def score(self, ctx, x):
        return -self._d(ctx, x)[0]

    def accept(self, ctx, x):
        d, pred = self._d(ctx, x)
        return d < self.tau[pred]

    def chosen(self):
        return {"tau": [float(t) for t in self.tau]}
