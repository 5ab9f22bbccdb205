"""ODIN (Liang, Li & Srikant 2018): temperature-scaled maximum softmax on a perturbed input,
x~ = x - eps * sign(-grad_x log S_yhat(x; T)) = x + eps * sign(grad_x log max_i softmax(f(x)/T)_i).

With lists for ``temperature`` and ``epsilon`` the pair is chosen as the paper does: the one with
the lowest FPR at 95 % TPR on tuning data, i.e. the held-out in-distribution test inputs
(``ood.holdout``) against the experiment's ``ood.tune_sets``.  Inputs here are pixels in [0, 1]
(the official code divides the gradient's sign by the per-channel std of its normalised CIFAR
inputs; with unnormalised inputs there is nothing to divide by)."""
from __future__ import annotations

import itertools

import numpy as np
import torch

from softrepro.ood import Score, detection_metrics
from softrepro.registry import SCORES


def odin_scores(ctx, x: torch.Tensor, temperature: float, epsilon: float) -> torch.Tensor:
    if epsilon:
        grad = ctx.input_gradient(x, lambda logits, _: (logits / temperature).log_softmax(1).amax(1))
        x = x + epsilon * grad.sign()
    return (ctx.outputs(x)[0] / temperature).softmax(1).amax(1)


@SCORES.register("odin")
class ODIN(Score):
    def __init__(self, temperature=1000.0, epsilon=0.0014):
        self.temperatures = list(np.atleast_1d(temperature).astype(float))
        self.epsilons = list(np.atleast_1d(epsilon).astype(float))
        self.t, self.eps = self.temperatures[0], self.epsilons[0]
        self.grid: list[dict] = []

    def fit(self, ctx):
        if len(self.temperatures) * len(self.epsilons) == 1:
            return
        if ctx.x_tune_in is None or not ctx.tune:
            raise ValueError("odin with a grid of temperatures/epsilons needs ood.holdout > 0 and ood.tune_sets")
        x_out = torch.cat(list(ctx.tune.values()))
        for t, eps in itertools.product(self.temperatures, self.epsilons):
            m = detection_metrics(odin_scores(ctx, ctx.x_tune_in, t, eps).numpy(), odin_scores(ctx, x_out, t, eps).numpy())
            self.grid.append({"temperature": t, "epsilon": eps, "fpr95": m["fpr95"], "auroc": m["auroc"]})
        best = min(self.grid, key=lambda r: (r["fpr95"], -r["auroc"]))
        self.t, self.eps = best["temperature"], best["epsilon"]

    def chosen(self):
        return {"temperature": self.t, "epsilon": self.eps, "grid": self.grid}

    def score(self, ctx, x):
        return odin_scores(ctx, x, self.t, self.eps)
