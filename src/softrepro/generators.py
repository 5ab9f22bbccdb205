"""Built-in dataset generators (``format: generated`` in configs/datasets.yaml).

A generator is ``make(seed, **params) -> {"train": (x, y), "test": (x, y)}`` on numpy arrays,
drawing every random number from ``np.random.default_rng(seed)``.
"""
from __future__ import annotations

import numpy as np

from softrepro.registry import GENERATORS

OPS = {"add": lambda a, b, p: (a + b) % p, "sub": lambda a, b, p: (a - b) % p, "mul": lambda a, b, p: (a * b) % p}


@GENERATORS.register("modular_arithmetic")
def modular_arithmetic(seed: int, p: int = 113, op: str = "add", train_fraction: float = 0.4):
    """Every pair (a, b), 0 <= a, b < p, as two concatenated one-hot vectors (2p inputs), labelled
    (a op b) mod p; a random ``train_fraction`` of the p^2 pairs is the training set, the rest the test set."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r} (known: {', '.join(OPS)})")
    a, b = np.divmod(np.arange(p * p), p)
    x = np.zeros((p * p, 2 * p), dtype=np.float32)
    x[np.arange(p * p), a] = 1.0
    x[np.arange(p * p), p + b] = 1.0
    y = OPS[op](a, b, p).astype(np.int64)
    order = np.random.default_rng(seed).permutation(p * p)
    n_train = int(train_fraction * p * p)
    tr, te = order[:n_train], order[n_train:]
    return {"train": (x[tr], y[tr]), "test": (x[te], y[te])}


@GENERATORS.register("moons")
def moons(seed: int, n_samples: int = 750, noise: float = 0.125, n_train: int = 500, data_seed: int | None = None):
    """scikit-learn's two interleaving half-moons (``make_moons``), float32 [N, 2], labels 0/1; the
    first ``n_train`` points are the training set, the rest the test set.  ``data_seed`` fixes the
    data for every run (otherwise each seed draws its own)."""
    from sklearn.datasets import make_moons

    x, y = make_moons(n_samples=n_samples, noise=noise, random_state=seed if data_seed is None else data_seed)
    x, y = x.astype(np.float32), y.astype(np.int64)
    return {"train": (x[:n_train], y[:n_train]), "test": (x[n_train:], y[n_train:])}
