"""Online normalizer for softmax (Milakov & Gimelshein 2018), as numba CPU kernels.

Every kernel works row-wise on a C-contiguous float32 array ``x`` of shape (batch, V),
parallel over rows.  Memory traffic per element (reads + writes), as counted in the paper:

* ``naive``  : sum exp(x) | write exp(x)/d                      -> 3 accesses (overflows for large x)
* ``safe``   : max | sum exp(x-m) | write exp(x-m)/d            -> 4 accesses
* ``online`` : running (m, d) in one pass | write exp(x-m)/d    -> 3 accesses
* ``topk``                      : top-K of x                     -> 1 access
* ``safe_topk_unfused``         : safe softmax, then top-K of y  -> 5 accesses
* ``safe_topk_fused``           : max | d and top-K of x         -> 2 accesses
* ``online_topk_fused``         : (m, d) and top-K of x          -> 1 access

The benchmark times each variant over V = v_start, 2 v_start, ..., in repeats, beside a copy of
the array by the same threads (the bandwidth roofline: ``roofline_<variant>`` is each kernel's
bandwidth, with the accesses above, as a fraction of the copy's 2 accesses), and records the
speedups the paper claims per repeat: safe/online softmax ("up to 1.3x") and safe-unfused /
online-fused softmax+top-K ("up to 5x"); "up to" claims are judged on the largest per-size median.
"""
from __future__ import annotations

import math
import time

import numpy as np
from numba import njit, prange, set_num_threads, config as numba_config

from softrepro.registry import BENCHMARKS

F32 = np.float32


@njit(cache=True, inline="always")
def md_merge(m1, d1, m2, d2):
    """Merge two partial (max, sum of exp(x - max)) pairs; order independent."""
    if m1 >= m2:
        return m1, d1 + d2 * np.exp(m2 - m1)
    return m2, d2 + d1 * np.exp(m1 - m2)


@njit(parallel=True, cache=True)
def naive_softmax(x, y):
    for i in prange(x.shape[0]):
        d = F32(0.0)
        for j in range(x.shape[1]):
            d += np.exp(x[i, j])
        inv = F32(1.0) / d
        for j in range(x.shape[1]):
            y[i, j] = np.exp(x[i, j]) * inv


@njit(cache=True, inline="always")
def _row_max(row):
    m = F32(-np.inf)
    for j in range(row.shape[0]):
        m = max(m, row[j])
    return m


@njit(parallel=True, cache=True)
def safe_softmax(x, y):
    for i in prange(x.shape[0]):
        m = _row_max(x[i])
        d = F32(0.0)
        for j in range(x.shape[1]):
            d += np.exp(x[i, j] - m)
        inv = F32(1.0) / d
        for j in range(x.shape[1]):
            y[i, j] = np.exp(x[i, j] - m) * inv


@njit(cache=True, inline="always")
def _md_step(m, d, v):
    """Add one element to the running (max, sum of exp(x - max)) pair."""
    if v > m:
        return v, d * np.exp(m - v) + F32(1.0)
    return m, d + np.exp(v - m)


@njit(cache=True, inline="always")
def _online_md(row):
    m = F32(-np.inf)
    d = F32(0.0)
    for j in range(row.shape[0]):
        m, d = _md_step(m, d, row[j])
    return m, d


@njit(parallel=True, cache=True)
def online_softmax(x, y):
    for i in prange(x.shape[0]):
        m, d = _online_md(x[i])
        inv = F32(1.0) / d
        for j in range(x.shape[1]):
            y[i, j] = np.exp(x[i, j] - m) * inv


@njit(cache=True, inline="always")
def _insert(vals, idx, v, j):
    """Insert (v, j) into the descending top-K lists; equal values keep the lower index first."""
    k = vals.shape[0]
    if v <= vals[k - 1]:
        return
    p = k - 1
    while p > 0 and v > vals[p - 1]:
        vals[p] = vals[p - 1]
        idx[p] = idx[p - 1]
        p -= 1
    vals[p] = v
    idx[p] = j


@njit(cache=True, inline="always")
def _empty_topk(k):
    return np.full(k, -np.inf, dtype=F32), np.full(k, -1, dtype=np.int64)


@njit(cache=True, inline="always")
def _store_probs(out_idx, out_val, idx, vals, m, d):
    """Write the top-K indices and their probabilities exp(u - m) / d for one row."""
    inv = F32(1.0) / d
    for p in range(idx.shape[0]):
        out_idx[p] = idx[p]
        out_val[p] = np.exp(vals[p] - m) * inv


@njit(parallel=True, cache=True)
def topk(x, out_idx, out_val):
    k = out_idx.shape[1]
    for i in prange(x.shape[0]):
        vals, idx = _empty_topk(k)
        for j in range(x.shape[1]):
            _insert(vals, idx, x[i, j], j)
        out_idx[i] = idx
        out_val[i] = vals


def safe_topk_unfused(x, y, out_idx, out_val):
    """Safe softmax into ``y``, then a separate top-K pass over the probabilities."""
    safe_softmax(x, y)
    topk(y, out_idx, out_val)


@njit(parallel=True, cache=True)
def safe_topk_fused(x, out_idx, out_val):
    k = out_idx.shape[1]
    for i in prange(x.shape[0]):
        m = _row_max(x[i])
        vals, idx = _empty_topk(k)
        d = F32(0.0)
        for j in range(x.shape[1]):
            v = x[i, j]
            d += np.exp(v - m)
            _insert(vals, idx, v, j)
        _store_probs(out_idx[i], out_val[i], idx, vals, m, d)


@njit(parallel=True, cache=True)
def online_topk_fused(x, out_idx, out_val):
    k = out_idx.shape[1]
    for i in prange(x.shape[0]):
        vals, idx = _empty_topk(k)
        m = F32(-np.inf)
        d = F32(0.0)
        for j in range(x.shape[1]):
            m, d = _md_step(m, d, x[i, j])
            _insert(vals, idx, x[i, j], j)
        _store_probs(out_idx[i], out_val[i], idx, vals, m, d)


@njit(parallel=True, cache=True)
def copy(x, y):
    """y = x, parallel over rows like the kernels: the roofline (one read and one write per element)."""
    for i in prange(x.shape[0]):
        for j in range(x.shape[1]):
            y[i, j] = x[i, j]


VARIANTS = ("naive", "safe", "online", "topk", "safe_topk_unfused", "safe_topk_fused", "online_topk_fused")
ACCESSES = {"naive": 3, "safe": 4, "online": 3, "topk": 1, "safe_topk_unfused": 5, "safe_topk_fused": 2,
            "online_topk_fused": 1, "copy": 2}


def _calls(x, k):
    y = np.empty_like(x)
    oi = np.empty((x.shape[0], k), dtype=np.int64)
    ov = np.empty((x.shape[0], k), dtype=F32)
    return {
        "naive": lambda: naive_softmax(x, y),
        "safe": lambda: safe_softmax(x, y),
        "online": lambda: online_softmax(x, y),
        "topk": lambda: topk(x, oi, ov),
        "safe_topk_unfused": lambda: safe_topk_unfused(x, y, oi, ov),
        "safe_topk_fused": lambda: safe_topk_fused(x, oi, ov),
        "online_topk_fused": lambda: online_topk_fused(x, oi, ov),
        "copy": lambda: copy(x, y),
    }


def _time_once(fn, min_time_s: float) -> float:
    """Mean time per call over a stretch of at least ``min_time_s``."""
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_time_s:
            return elapsed / n


SPEEDUPS = {"softmax_speedup": ("safe", "online"), "topk_speedup": ("safe_topk_unfused", "online_topk_fused")}


@BENCHMARKS.register("online_softmax", params=("batch_size", "v_start", "v_max", "k", "min_time_s", "repeats", "max_bytes"))
def run_benchmark(params: dict, seed: int, progress=None) -> tuple[dict, list[dict]]:
    """One row per (V, repeat): each variant's time per call (``t_<variant>``, seconds) and the
    two speedups of that repeat.  Within a repeat the variants run one after another on the same
    input, so a repeat's speedup compares timings taken moments apart."""
    batch = int(params.get("batch_size", 4000))
    v_start, v_max, k = int(params.get("v_start", 63)), int(params.get("v_max", 1_000_000)), int(params.get("k", 5))
    min_time_s, repeats = float(params.get("min_time_s", 0.2)), int(params.get("repeats", 5))
    max_bytes = int(params.get("max_bytes", 512 << 20))
    set_num_threads(min(int(params.get("threads", numba_config.NUMBA_NUM_THREADS)), numba_config.NUMBA_NUM_THREADS))
    sizes = []
    v = v_start
    while v <= v_max:
        sizes.append(v)
        v *= 2
    rng = np.random.default_rng(seed)
    rows, done, total = [], 0, len(sizes) * repeats
    for V in sizes:
        b = max(1, min(batch, max_bytes // (4 * V)))
        x = rng.random((b, V), dtype=F32)  # uniform [0, 1), as the reference benchmark
        calls = _calls(x, k)
        for fn in calls.values():
            fn()  # warm caches (and JIT on first use)
        for r in range(repeats):
            row = {"V": V, "batch": b, "repeat": r}
            row.update({f"t_{name}": _time_once(fn, min_time_s) for name, fn in calls.items()})
            row.update({key: row[f"t_{base}"] / row[f"t_{new}"] for key, (base, new) in SPEEDUPS.items()})
            row.update({f"roofline_{name}": ACCESSES[name] / row[f"t_{name}"] / (ACCESSES["copy"] / row["t_copy"])
                        for name in VARIANTS})
            rows.append(row)
            done += 1
            if progress:
                progress(done, total)
    import pandas as pd

    per_size = pd.DataFrame(rows).groupby("V")[list(SPEEDUPS)].median()
    check = rng.random((4, 1000), dtype=F32) * 50
    ys, yo = np.empty_like(check), np.empty_like(check)
    safe_softmax(check, ys)
    online_softmax(check, yo)
    metrics = {"max_abs_err_online_vs_safe": float(np.abs(ys - yo).max()), "n_sizes": len(sizes)}
    for key in SPEEDUPS:  # this sweep's own "up to": the largest per-size median over its repeats
        metrics.update({f"{key}_max": float(per_size[key].max()), f"{key}_median": float(per_size[key].median()),
                        f"v_at_{key}_max": int(per_size[key].idxmax())})
    assert all(math.isfinite(val) for val in metrics.values())
    return metrics, rows


# The report draws each variant's time per call against V (log-log), one line per variant.
run_benchmark.figure = {"kind": "sweep", "x": "V", "y_prefix": "t_", "ylabel": "seconds per call", "log": True}
