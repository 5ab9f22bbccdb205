"""Label noise for the training split, seeded by (dataset, noise, seed).

A spec asks for ``noise: {kind, rate, class_map?}``:

* ``symmetric`` — ``round(rate * N)`` training samples, drawn without replacement, get a label
  drawn uniformly from the *other* classes (every selected label changes);
* ``uniform``   — ``round(rate * N)`` samples get a label drawn uniformly from *all* classes
  (some keep their label: the realised noise is about rate * (K-1)/K);
* ``asymmetric`` — for each ``source: target`` pair of ``class_map``, ``round(rate * N_source)``
  samples of the source class are relabelled as the target class.

The corruption depends only on (labels, spec, seed), so every run that shares them sees the same
noisy labels; ``apply`` returns a record of what was done for the run's metadata.
"""
from __future__ import annotations

import hashlib

import numpy as np


def _rng(noise: dict, seed: int) -> np.random.Generator:
    key = f"{noise['kind']}|{noise['rate']}|{sorted((noise.get('class_map') or {}).items())}|{seed}"
    return np.random.default_rng(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little"))


def apply(labels: np.ndarray, n_classes: int, noise: dict | None, seed: int) -> tuple[np.ndarray, dict]:
    """Return (noisy labels, record).  ``labels`` is not modified."""
    y = np.asarray(labels).astype(np.int64).copy()
    if not noise or noise.get("rate", 0) == 0:
        return y, {"kind": "none", "rate": 0.0, "flipped": 0, "realised_rate": 0.0}
    kind, rate = noise["kind"], float(noise["rate"])
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"noise rate must be in [0, 1], got {rate}")
    rng = _rng(noise, seed)
    if kind in ("symmetric", "uniform"):
        idx = rng.choice(len(y), size=int(round(rate * len(y))), replace=False)
        if kind == "uniform":
            y[idx] = rng.integers(0, n_classes, len(idx))
        else:  # shift by 1..K-1: uniform over the other classes
            y[idx] = (y[idx] + rng.integers(1, n_classes, len(idx))) % n_classes
    elif kind == "asymmetric":
        cmap = {int(k): int(v) for k, v in (noise.get("class_map") or {}).items()}
        if not cmap:
            raise ValueError("asymmetric noise needs a class_map {source: target}")
        clean = np.asarray(labels)
        for src in sorted(cmap):
            members = np.flatnonzero(clean == src)
            idx = rng.choice(members, size=int(round(rate * len(members))), replace=False)
            y[idx] = cmap[src]
    else:
        raise ValueError(f"unknown noise kind {kind!r} (symmetric, uniform, asymmetric)")
    flipped = int((y != np.asarray(labels)).sum())
    return y, {"kind": kind, "rate": rate, "class_map": noise.get("class_map"), "flipped": flipped,
               "realised_rate": flipped / len(y)}
