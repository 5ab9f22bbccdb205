"""Noise-robust losses of Ma et al. 2020, "Normalized Loss Functions for Deep Learning with
Noisy Labels" (and the ones it compares with), on softmax probabilities p and true class y.

Constants follow the authors' released loss.py (docs/sources/losses-family-a.md):
MAE is the "reduced" 1 - p_y (half of sum|p - q|); RCE takes log 0 as log(1e-4), so
RCE = -log(1e-4) * (1 - p_y); GCE and RCE clamp p to [1e-7, 1].  Every loss is a batch mean.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from softrepro.registry import LOSSES

RCE_A = math.log(1e-4)


def _logp_py(logits, y):
    logp = F.log_softmax(logits, 1)
    return logp, logp.gather(1, y[:, None]).squeeze(1)


def focal(logits, y, gamma):
    logp, logpy = _logp_py(logits, y)
    return -((1 - logpy.exp()) ** gamma) * logpy


def nce(logits, y):
    logp, logpy = _logp_py(logits, y)
    return logpy / logp.sum(1)  # (-log p_y) / (-sum_k log p_k)


def nfl(logits, y, gamma):
    logp, _ = _logp_py(logits, y)
    per_class = -((1 - logp.exp()) ** gamma) * logp
    return per_class.gather(1, y[:, None]).squeeze(1) / per_class.sum(1)


def _p_y(logits, y, clamp: bool = False):
    p = F.softmax(logits, 1)
    return (p.clamp(1e-7, 1.0) if clamp else p).gather(1, y[:, None]).squeeze(1)


def mae(logits, y):
    return 1 - _p_y(logits, y)


def rce(logits, y):
    return -RCE_A * (1 - _p_y(logits, y, clamp=True))


def gce(logits, y, q):
    return (1 - _p_y(logits, y, clamp=True) ** q) / q


ACTIVE = {"ce": lambda z, y, g: F.cross_entropy(z, y, reduction="none"), "fl": lambda z, y, g: focal(z, y, g),
          "nce": lambda z, y, g: nce(z, y), "nfl": lambda z, y, g: nfl(z, y, g)}
PASSIVE = {"mae": mae, "rce": rce}


@LOSSES.register("focal")
def make_focal(gamma: float = 0.5):
    return lambda z, y, model: focal(z, y, gamma).mean()


@LOSSES.register("gce")
def make_gce(q: float = 0.7):
    return lambda z, y, model: gce(z, y, q).mean()


@LOSSES.register("mae")
def make_mae(scale: float = 1.0):
    return lambda z, y, model: scale * mae(z, y).mean()


@LOSSES.register("rce")
def make_rce(scale: float = 1.0):
    return lambda z, y, model: scale * rce(z, y).mean()


@LOSSES.register("nce")
def make_nce(scale: float = 1.0):
    return lambda z, y, model: scale * nce(z, y).mean()


@LOSSES.register("nfl")
def make_nfl(scale: float = 1.0, gamma: float = 0.5):
    return lambda z, y, model: scale * nfl(z, y, gamma).mean()


@LOSSES.register("active_passive")
def make_active_passive(active: str, passive: str, alpha: float = 1.0, beta: float = 1.0, gamma: float = 0.5):
    """alpha * active + beta * passive: NCE+RCE, NCE+MAE, NFL+RCE, NFL+MAE, and SCE (= CE+RCE)."""
    if active not in ACTIVE or passive not in PASSIVE:
        raise ValueError(f"active must be one of {sorted(ACTIVE)}, passive one of {sorted(PASSIVE)}")
    a, p = ACTIVE[active], PASSIVE[passive]
    return lambda z, y, model: (alpha * a(z, y, gamma) + beta * p(z, y)).mean()
