"""Calibration metrics from predicted probabilities: ECE, NLL, Brier, reliability bins.

ECE is computed from the reliability bins themselves (float64), so the report's reliability
diagram and the ECE it prints are one computation.  Binning follows torchmetrics'
``multiclass_calibration_error`` (equal-width bins ``[lo, hi)``, confidence 1.0 in the last bin,
L1 norm); tests check the two agree.  torchmetrics is not imported here: with scipy.signal and
matplotlib it costs about 1.3 s per job, more than a small run's training.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _binned(probs: torch.Tensor, targets: torch.Tensor, n_bins: int):
    conf, pred = probs.double().max(1)
    correct = (pred == targets).double()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    which = (torch.bucketize(conf, edges, right=True) - 1).clamp(0, n_bins - 1)
    count = torch.zeros(n_bins, dtype=torch.float64).scatter_add_(0, which, torch.ones_like(conf))
    conf_sum = torch.zeros(n_bins, dtype=torch.float64).scatter_add_(0, which, conf)
    acc_sum = torch.zeros(n_bins, dtype=torch.float64).scatter_add_(0, which, correct)
    return edges, count, conf_sum, acc_sum


def expected_calibration_error(probs: torch.Tensor, targets: torch.Tensor, n_bins: int = 15) -> float:
    """Top-label ECE: sum over bins of (share of samples) * |accuracy - mean confidence|."""
    _, count, conf_sum, acc_sum = _binned(probs, targets, n_bins)
    return float((acc_sum - conf_sum).abs().sum() / count.sum())


def calibration_metrics(probs: torch.Tensor, targets: torch.Tensor, n_bins: int = 15) -> dict:
    """ECE with ``n_bins`` equal-width confidence bins (L1), mean NLL and Brier score (sum over classes)."""
    probs = probs.double()
    onehot = F.one_hot(targets, probs.shape[1]).double()
    return {
        "test_ece": expected_calibration_error(probs, targets, n_bins),
        "test_nll": float(-torch.log(probs.gather(1, targets[:, None]).clamp_min(1e-300)).mean()),
        "test_brier": float(((probs - onehot) ** 2).sum(1).mean()),
    }


def reliability_bins(probs: torch.Tensor, targets: torch.Tensor, n_bins: int = 15) -> list[dict]:
    """Per equal-width confidence bin: count, mean confidence, accuracy (empty bins omitted)."""
    edges, count, conf_sum, acc_sum = _binned(probs, targets, n_bins)
    return [{"bin": b, "lo": float(edges[b]), "hi": float(edges[b + 1]), "count": int(count[b]),
             "confidence": float(conf_sum[b] / count[b]), "accuracy": float(acc_sum[b] / count[b])}
            for b in range(n_bins) if count[b]]


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, bounds=(0.05, 20.0)) -> float:
    """Post-hoc temperature scaling (Guo et al. 2017): the T > 0 minimising the mean NLL of
    softmax(logits / T) on held-out data, by a bounded scalar search over log T (scipy)."""
    from scipy.optimize import minimize_scalar

    z, y = logits.double(), targets.long()

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(z / float(np.exp(log_t)), y))

    res = minimize_scalar(nll, bounds=tuple(np.log(bounds)), method="bounded", options={"xatol": 1e-6})
    return float(np.exp(res.x))
