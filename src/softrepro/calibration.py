"""Calibration metrics from predicted probabilities: ECE (torchmetrics), NLL, Brier, reliability bins."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_calibration_error


def calibration_metrics(probs: torch.Tensor, targets: torch.Tensor, n_bins: int = 15) -> dict:
    """ECE with ``n_bins`` equal-width confidence bins (L1), mean NLL and Brier score (sum over classes)."""
    probs = probs.double()
    n_classes = probs.shape[1]
    onehot = F.one_hot(targets, n_classes).double()
    return {
        "test_ece": float(multiclass_calibration_error(probs, targets, num_classes=n_classes, n_bins=n_bins, norm="l1")),
        "test_nll": float(-torch.log(probs.gather(1, targets[:, None]).clamp_min(1e-300)).mean()),
        "test_brier": float(((probs - onehot) ** 2).sum(1).mean()),
    }


def reliability_bins(probs: torch.Tensor, targets: torch.Tensor, n_bins: int = 15) -> list[dict]:
    """Per equal-width confidence bin: count, mean confidence, accuracy (empty bins omitted)."""
    conf, pred = probs.max(1)
    correct = (pred == targets).double()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=conf.dtype)
    # bin i holds [edge_i, edge_i+1), as torchmetrics bins; confidence 1.0 goes to the last bin
    which = (torch.bucketize(conf, edges, right=True) - 1).clamp(0, n_bins - 1)
    out = []
    for b in range(n_bins):
        mask = which == b
        n = int(mask.sum())
        if n:
            out.append({"bin": b, "lo": float(edges[b]), "hi": float(edges[b + 1]), "count": n,
                        "confidence": float(conf[mask].double().mean()), "accuracy": float(correct[mask].mean())})
    return out
