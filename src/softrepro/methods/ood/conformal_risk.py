"""Conformal risk control (Angelopoulos, Bates, Fisch, Lei & Schuster 2024), checked on synthetic
losses where its theorems apply exactly.

lambda_hat = inf{lambda : n/(n+1) R_n(lambda) + B/(n+1) <= alpha} (lambda_max if the set is empty),
with R_n the mean calibration loss.  Theorem 1: for losses non-increasing and right-continuous in
lambda, bounded by B, with L(lambda_max) <= alpha, E[L_{n+1}(lambda_hat)] <= alpha.  Theorem 2:
if moreover the losses are i.i.d., non-negative and jump at no fixed lambda with positive
probability, E[L_{n+1}(lambda_hat)] >= alpha - 2B/(n+1).  Proposition 1: without monotonicity,
for any eps some loss has E[L_{n+1}(lambda_hat)] >= B - eps.

Monotone losses here: L_i(lambda) = V_i 1{U_i > lambda} on [0, 1], U, V ~ U[0, 1] independent
(B = 1, L(1) = 0, jumps at the continuous U_i).  lambda_hat is found exactly on the sorted U_i and
the test risk given the calibration set is E[V] P(U > lambda_hat) = (1 - lambda_hat) / 2, so each
trial contributes its exact conditional risk.  Non-monotone losses: independent Bernoulli(p) at
each of ``grid`` points below lambda = 1, and 0 at lambda = 1 (Proposition 1's construction); with
a small calibration set some grid point has few ones by chance, lambda_hat stops there, and the
test loss there is a fresh Bernoulli(p).

Metrics per n: ``crc_risk_n<n>`` (mean over trials), ``crc_alpha``, ``crc_lower_n<n>`` = alpha -
2/(n+1); and ``crc_nonmonotone_risk`` with its ``crc_nonmonotone_alpha``.
"""
from __future__ import annotations

import numpy as np

from softrepro.registry import BENCHMARKS


def lambda_hat_step_losses(u: np.ndarray, v: np.ndarray, alpha: float, B: float = 1.0) -> np.ndarray:
    """lambda_hat for each row of calibration losses V_i 1{U_i > lambda} (rows = trials)."""
    n = u.shape[1]
    order = np.argsort(u, axis=1)
    us = np.take_along_axis(u, order, 1)
    vs = np.take_along_axis(v, order, 1)
    # on [U_(k), U_(k+1)) the losses left are those with U > lambda: sum of V_(j), j > k (k = 0..n)
    tail = np.concatenate([np.cumsum(vs[:, ::-1], axis=1)[:, ::-1], np.zeros((len(u), 1))], axis=1)
    ok = n / (n + 1) * tail / n + B / (n + 1) <= alpha  # non-decreasing in k
    k = ok.argmax(1)  # the first k where the adjusted risk is below alpha (k = n always qualifies if alpha >= B/(n+1))
    lam = np.concatenate([np.zeros((len(u), 1)), us], axis=1)[np.arange(len(u)), k]
    return np.where(ok.any(1), lam, 1.0)


@BENCHMARKS.register("conformal_risk_synthetic", params=("n_values", "alpha", "trials", "nonmonotone"))
def run(params: dict, seed: int, progress=None) -> tuple[dict, list[dict]]:
    rng = np.random.default_rng(seed)
    alpha, trials = float(params.get("alpha", 0.1)), int(params.get("trials", 10000))
    rows, metrics = [], {"crc_alpha": alpha}
    ns = [int(n) for n in params.get("n_values", [100, 1000])]
    for i, n in enumerate(ns):
        risks = []
        for start in range(0, trials, 1000):  # chunks keep the arrays small
            m = min(1000, trials - start)
            lam = lambda_hat_step_losses(rng.random((m, n)), rng.random((m, n)), alpha)
            risks.append((1 - lam) / 2)
        r = np.concatenate(risks)
        metrics[f"crc_risk_n{n}"] = float(r.mean())
        metrics[f"crc_lower_n{n}"] = alpha - 2 / (n + 1)
        rows.append({"n": n, "risk": float(r.mean()), "risk_se": float(r.std(ddof=1) / np.sqrt(len(r))),
                     "alpha": alpha, "lower_bound": alpha - 2 / (n + 1), "trials": trials})
        if progress:
            progress(i + 1, len(ns) + 1)
    nm = params.get("nonmonotone", {"n": 10, "alpha": 0.2, "p": 0.5, "grid": 2000, "trials": 2000})
    n, a, p, grid, t = int(nm["n"]), float(nm["alpha"]), float(nm["p"]), int(nm["grid"]), int(nm["trials"])
    ones = rng.binomial(n, p, size=(t, grid))  # calibration losses summed at each grid point below 1
    ok = n / (n + 1) * ones / n + 1 / (n + 1) <= a
    stopped = ok.any(1)  # else lambda_hat = 1, where every loss is 0
    test = rng.random(t) < p  # a fresh Bernoulli(p) test loss at the stopping point
    metrics["crc_nonmonotone_risk"] = float(np.where(stopped, test, 0.0).mean())
    metrics["crc_nonmonotone_alpha"] = a
    rows.append({"n": n, "risk": metrics["crc_nonmonotone_risk"], "alpha": a, "trials": t, "nonmonotone": True})
    if progress:
        progress(len(ns) + 1, len(ns) + 1)
    return metrics, rows
