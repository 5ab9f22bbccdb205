"""Self-distillation of kernel ridge regression with the ground truth mixed in (Borup & Andersen 2021).

Fit f_1 = kernel ridge regression on (X, Y); then step t refits on the targets alpha Y + (1 - alpha) Ŷ_{t-1},
where Ŷ_{t-1} = f_{t-1}(X) (Ŷ_0 = Y):

    f_t(x) = k(x, X) (K + lambda I)^-1 [alpha Y + (1 - alpha) Ŷ_{t-1}],   Ŷ_t = K (K + lambda I)^-1 [...]

and the limit t -> inf is f_inf(x) = alpha k(x, X) (alpha K + lambda I)^-1 Y (the zero function when alpha = 0).
RBF kernel exp(-gamma |x - x'|^2).  The loss is the mean squared error against the noiseless sin(2 pi x) on an
evaluation grid, as in the official toy example (Kennethborup/self_distillation, toy_example.ipynb).
Deterministic: the data are fixed, the seed is not used.
"""
from __future__ import annotations

import numpy as np

from softrepro.registry import BENCHMARKS


def rbf(a: np.ndarray, b: np.ndarray, gamma: float) -> np.ndarray:
    return np.exp(-gamma * (a[:, None] - b[None, :]) ** 2)


def self_distill(x, y, gamma: float, lambd: float, alpha: float, steps: int, grid: np.ndarray) -> tuple[list[float], float]:
    """(the loss after steps 1..steps, the loss of the limit) against sin(2 pi x) on ``grid``."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    K = rbf(x, x, gamma)
    inv = np.linalg.inv(K + lambd * np.eye(len(x)))
    k_grid = rbf(grid, x, gamma)
    truth = np.sin(2 * np.pi * grid)
    fitted, losses = y, []
    for _ in range(steps):
        targets = alpha * y + (1 - alpha) * fitted
        losses.append(float(np.mean((k_grid @ inv @ targets - truth) ** 2)))
        fitted = K @ inv @ targets
    limit = alpha * k_grid @ np.linalg.inv(alpha * K + lambd * np.eye(len(x))) @ y
    return losses, float(np.mean((limit - truth) ** 2))


def _tag(alpha: float) -> str:
    return "a" + f"{alpha:g}".replace(".", "")


@BENCHMARKS.register("kernel_self_distillation", params=("x", "y", "gamma", "lambd", "alphas", "steps", "grid"))
def run_benchmark(params: dict, seed: int, progress=None) -> tuple[dict, list[dict]]:
    """Metrics ``loss_<a>_step<k>`` and ``loss_<a>_inf`` per alpha (``a0``, ``a035`` for 0.35); one row per step."""
    grid = np.linspace(*params.get("grid", [0.0, 1.0, 101]))
    metrics, curves = {}, {}
    for alpha in params["alphas"]:
        losses, limit = self_distill(params["x"], params["y"], params["gamma"], params["lambd"], alpha, params["steps"], grid)
        tag = _tag(alpha)
        metrics.update({f"loss_{tag}_step{k}": v for k, v in enumerate(losses, 1)})
        metrics[f"loss_{tag}_inf"] = limit
        curves[tag] = losses
    rows = [{"step": k, **{f"loss_{tag}": c[k - 1] for tag, c in curves.items()}} for k in range(1, params["steps"] + 1)]
    if progress:
        progress(1, 1)
    return metrics, rows


# The report draws the loss of each alpha against the distillation step.
run_benchmark.figure = {"kind": "sweep", "x": "step", "y_prefix": "loss_", "ylabel": "MSE vs sin(2 pi x)"}
