"""Kernelized attention with relative positional encoding computed by FFT (Luo et al. 2021,
"Stable, Fast and Accurate: Kernelized Attention with Relative Positional Encoding", arXiv 2106.12566).

The formulas, as printed in the paper (arXiv v2; docs/sources/attention-luo.md):

- Positive Random Features (PRF, their Eq. 5, the feature map of Choromanski et al.'s Performer, their
  ref. [4]): phi(x) = exp(-|x|^2 / 2) / sqrt(m) * (exp(w_1 x), ..., exp(w_m x)) with every w_r drawn
  independently from N(0, I_d), so that E[phi(x) phi(y)^T] = exp(x y^T).
- Kernelized attention with RPE (their Eq. 10): z_i = phi(q_i) sum_j e^{b_{j-i}} phi(k_j)^T v_j /
  phi(q_i) sum_j e^{b_{j-i}} phi(k_j)^T, i.e. Z = D^-1 (C o phi(Q) phi(K)^T) V with the
  positional-correlation matrix C_ij = c_{j-i} = exp(b_{j-i}) (Eqs. 12-13; C is Toeplitz) and D the
  diagonal of the row sums of C o phi(Q) phi(K)^T (the normaliser).  The two products C A_1 and C A_2,
  A_1 the rows vec(phi(k_j)^T v_j) and A_2 the rows phi(k_j), are Toeplitz matrix products: done here by
  embedding C in a circulant matrix of size 2n and multiplying in Fourier space (torch.fft), O(n log n)
  per column.
- Causal (their footnote 3): b_{j-i} = -inf, i.e. c_{j-i} = 0, for keys after the query (j > i): C is
  lower-triangular Toeplitz.
- Normalised PRF ("NPRF", their Algorithm 1): queries and keys divided by their l2 norms before phi.
- The softmax attention with RPE that Eq. 10 estimates: softmax_j(q_i k_j^T + b_{j-i}), their Eq. 6 with the
  kernel exp(x y^T) that the PRF map estimates (so without Eq. 6's 1/sqrt(d)).

``b`` is always given as a vector of the 2n - 1 offsets: ``b[..., n - 1 + k] = b_k`` for k = j - i in
-(n-1) ... n-1.

The benchmark ``kernelized_rpe`` has three parts (``parts``):

- ``exact``: the FFT computation against the dense one (explicit n x n matrix), float64, bidirectional and
  causal, over ``exact_sizes`` (odd and even n): ``max_rel_err_fft`` = max |Z_fft - Z_dense| / max |Z_dense|.
- ``timing``: seconds per forward pass (float32, ``threads`` threads, one head) of NPRF + RPE by FFT, the
  same with the dense n x n matrix, and softmax attention without RPE (the paper's Fig. 1a compares with
  the standard Transformer), over ``sizes``: the speedups dense / FFT and softmax / FFT per n, at the
  largest n (``..._nmax``) and the first n from which FFT stays faster (``crossover_...``).
- ``approx``: the paper's Fig. 1b simulation (one query and ``keys`` keys uniform on the unit sphere of
  R^d scaled by R; the L1 error |A - A_hat|_1 of the PRF attention against softmax, per R and number of
  features m), and the same L1 error per row for NPRF + RPE against softmax attention with RPE
  (``err_rpe_m<m>``) on a sequence of ``rpe_n`` tokens.
"""
from __future__ import annotations

import math
import time

import torch

from softrepro.registry import BENCHMARKS


# ----------------------------------------------------------------------------------------------
# Feature map and the Toeplitz positional-correlation matrix
# ----------------------------------------------------------------------------------------------

def draw_features(m: int, d: int, gen: torch.Generator | None = None, dtype=torch.float64) -> torch.Tensor:
    """The projection matrix W (m x d) of the PRF map: rows w_r ~ N(0, I_d), independent (Eq. 5)."""
    return torch.randn(m, d, generator=gen, dtype=dtype)


def prf(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Positive random features phi(x) = exp(w_r x - |x|^2 / 2) / sqrt(m), r = 1..m (Eq. 5), over the last
    dimension of ``x`` (..., d) -> (..., m)."""
    m = w.shape[0]
    return torch.exp(x @ w.T - 0.5 * (x * x).sum(-1, keepdim=True)) / math.sqrt(m)


def l2_normalise(x: torch.Tensor) -> torch.Tensor:
    """Rows divided by their l2 norms (Algorithm 1's NPRF queries and keys)."""
    return x / x.norm(dim=-1, keepdim=True)


def causal_offsets(b: torch.Tensor) -> torch.Tensor:
    """``b`` with every offset of a key after its query (k = j - i > 0) set to -inf (footnote 3)."""
    n = (b.shape[-1] + 1) // 2
    out = b.clone()
    out[..., n:] = -math.inf
    return out


def toeplitz(c: torch.Tensor) -> torch.Tensor:
    """The n x n matrix T_ij = c_{j-i} from the 2n - 1 offsets ``c[..., n - 1 + k] = c_k``."""
    n = (c.shape[-1] + 1) // 2
    # unfold: row r holds c[r : r + n], i.e. entry (r, j) = c[r + j]; row r = n - 1 - i gives c[n - 1 - i + j]
    return c.unfold(-1, n, 1).flip(-2)


def _circulant_spectrum(c: torch.Tensor, n: int) -> torch.Tensor:
    """The real FFT of the first column of the circulant matrix of size L = 2n whose top-left n x n block
    is T_ij = c_{j-i}: (c_0, c_-1, ..., c_-(n-1), 0, c_{n-1}, ..., c_1)."""
    if c.shape[-1] != 2 * n - 1:
        raise ValueError(f"c has {c.shape[-1]} offsets; a sequence of {n} needs {2 * n - 1}")
    zero = torch.zeros(c.shape[:-1] + (1,), dtype=c.dtype, device=c.device)
    col = torch.cat([c[..., :n].flip(-1), zero, c[..., n:].flip(-1)], dim=-1)  # (..., 2n)
    return torch.fft.rfft(col, dim=-1)


def toeplitz_rows_fft(c: torch.Tensor, xp: torch.Tensor, n: int) -> torch.Tensor:
    """T x for every row x of ``xp`` (..., F, 2n): the sequence in its first n entries, zeros after
    (the circulant embedding's padding, written by the caller).  Returns (..., F, n).  One real FFT per
    row, a product with the circulant's spectrum, an inverse FFT: a cyclic convolution of length 2n whose
    first n entries are the Toeplitz product."""
    fx = torch.fft.rfft(xp, dim=-1)
    fx.mul_(_circulant_spectrum(c, n).unsqueeze(-2))  # the same spectrum for every row
    return torch.fft.irfft(fx, n=2 * n, dim=-1)[..., :n]


def toeplitz_matmul_fft(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """T @ x for the Toeplitz T_ij = c_{j-i} (``c``: (..., 2n - 1)) and ``x``: (..., n, F), by FFT through
    the circulant embedding of size 2n (``toeplitz_rows_fft``)."""
    n = x.shape[-2]
    xp = torch.zeros(x.shape[:-2] + (x.shape[-1], 2 * n), dtype=x.dtype, device=x.device)
    xp[..., :n] = x.transpose(-1, -2)
    return toeplitz_rows_fft(c, xp, n).transpose(-1, -2)


# ----------------------------------------------------------------------------------------------
# Attention: dense reference, FFT, and softmax
# ----------------------------------------------------------------------------------------------

def _values_and_ones(v: torch.Tensor) -> torch.Tensor:
    return torch.cat([v, torch.ones(v.shape[:-1] + (1,), dtype=v.dtype, device=v.device)], dim=-1)


def kernelized_rpe_dense(phq: torch.Tensor, phk: torch.Tensor, v: torch.Tensor, b: torch.Tensor,
                         causal: bool = False) -> torch.Tensor:
    """The reference: D^-1 (C o phi(Q) phi(K)^T) V with the explicit n x n matrix C_ij = exp(b_{j-i})
    (lower-triangular when ``causal``); ``phq``, ``phk``: (..., n, m), ``v``: (..., n, d_v), ``b``: (..., 2n - 1)."""
    if causal:
        b = causal_offsets(b)
    a = phq @ phk.transpose(-1, -2)
    a.mul_(toeplitz(torch.exp(b)))  # in place: one n x n matrix fewer at the largest n
    out = a @ _values_and_ones(v)
    return out[..., :-1] / out[..., -1:]


def kernelized_rpe_fft(phq: torch.Tensor, phk: torch.Tensor, v: torch.Tensor, b: torch.Tensor,
                       causal: bool = False) -> torch.Tensor:
    """Algorithm 1 after the feature map: D_1 = C A_1 (A_1 rows vec(phi(k_j)^T v_j)) and D_2 = C A_2
    (A_2 rows phi(k_j)) by FFT, then z_i = phi(q_i) D_1,i / phi(q_i) D_2,i.  Same arguments as the dense one.
    The m (d_v + 1) columns of [A_1, A_2] are laid out as rows of length 2n (sequence, then zero padding),
    so that every transform runs along contiguous memory."""
    if causal:
        b = causal_offsets(b)
    n = v.shape[-2]
    ve = _values_and_ones(v).transpose(-1, -2)  # (..., d_v + 1, n)
    pk = phk.transpose(-1, -2)  # (..., m, n)
    a = torch.empty(pk.shape[:-1] + (ve.shape[-2], 2 * n), dtype=v.dtype, device=v.device)  # (..., m, d_v + 1, 2n)
    torch.mul(pk.unsqueeze(-2), ve.unsqueeze(-3), out=a[..., :n])
    a[..., n:] = 0
    dd = toeplitz_rows_fft(torch.exp(b).unsqueeze(-2), a, n)  # (..., m, d_v + 1, n)
    pq = phq.transpose(-1, -2).unsqueeze(-2)  # (..., m, 1, n)
    out = pq[..., 0, :, :] * dd[..., 0, :, :]  # phi(q_i) D_i, summed over the features one at a time
    for r in range(1, dd.shape[-3]):
        out.addcmul_(pq[..., r, :, :], dd[..., r, :, :])
    return (out[..., :-1, :] / out[..., -1:, :]).transpose(-1, -2)


def rpe_attention_weights_prf(phq: torch.Tensor, phk: torch.Tensor, b: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """The attention matrix that Eq. 10 implies, D^-1 (C o phi(Q) phi(K)^T), explicitly (for error measures)."""
    if causal:
        b = causal_offsets(b)
    a = (phq @ phk.transpose(-1, -2)) * toeplitz(torch.exp(b))
    return a / a.sum(-1, keepdim=True)


def rpe_attention_weights_softmax(q: torch.Tensor, k: torch.Tensor, b: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """softmax_j(q_i k_j^T + b_{j-i}): what Eq. 10 estimates (Eq. 6 with the kernel exp(x y^T))."""
    if causal:
        b = causal_offsets(b)
    return torch.softmax(q @ k.transpose(-1, -2) + toeplitz(b), dim=-1)


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The standard Transformer's softmax(Q K^T / sqrt(d)) V (Eq. 1), the baseline of the paper's Fig. 1a."""
    return torch.softmax((q / math.sqrt(q.shape[-1])) @ k.transpose(-1, -2), dim=-1) @ v


def nprf_rpe(q, k, v, b, w, causal: bool = False, method: str = "fft") -> torch.Tensor:
    """Algorithm 1 whole: l2-normalised queries and keys, the PRF map with projections ``w``, then the RPE
    product by FFT (``method="fft"``) or with the dense matrix (``"dense"``)."""
    phq, phk = prf(l2_normalise(q), w), prf(l2_normalise(k), w)
    fn = kernelized_rpe_fft if method == "fft" else kernelized_rpe_dense
    return fn(phq, phk, v, b, causal)


# ----------------------------------------------------------------------------------------------
# The benchmark
# ----------------------------------------------------------------------------------------------

def _inputs(n: int, d: int, m: int, rpe_scale: float, gen: torch.Generator, dtype):
    q, k, v = (torch.randn(n, d, generator=gen, dtype=torch.float64) for _ in range(3))
    b = rpe_scale * torch.randn(2 * n - 1, generator=gen, dtype=torch.float64)
    w = draw_features(m, d, gen)
    return [t.to(dtype) for t in (q, k, v, b, w)]


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a - ref).abs().max() / ref.abs().max())


def exact_part(p: dict, gen: torch.Generator) -> tuple[dict, list[dict]]:
    rows = []
    for n in p["exact_sizes"]:
        q, k, v, b, w = _inputs(n, p["d"], p["m"], p["rpe_scale"], gen, torch.float64)
        for causal in (False, True):
            ref = nprf_rpe(q, k, v, b, w, causal, "dense")
            row = {"n": n, "causal": int(causal), "relerr_float64": rel_err(nprf_rpe(q, k, v, b, w, causal, "fft"), ref)}
            q32, k32, v32, b32, w32 = (t.float() for t in (q, k, v, b, w))
            row["relerr_float32"] = rel_err(nprf_rpe(q32, k32, v32, b32, w32, causal, "fft").double(), ref)
            rows.append(row)
    metrics = {"max_rel_err_fft": max(r["relerr_float64"] for r in rows),
               "max_rel_err_fft_bidirectional": max(r["relerr_float64"] for r in rows if not r["causal"]),
               "max_rel_err_fft_causal": max(r["relerr_float64"] for r in rows if r["causal"]),
               "max_rel_err_fft_float32": max(r["relerr_float32"] for r in rows)}
    return metrics, rows


def _time_per_call(fn, min_time_s: float) -> float:
    """Mean seconds per call over a stretch of at least ``min_time_s`` (at least one call)."""
    calls, t0 = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_time_s:
            return elapsed / calls


TIMED = ("fft", "dense", "softmax")


def _crossover(sizes: list[int], speedups: list[float]) -> float | None:
    """The first n from which FFT is faster at every larger size, interpolated log-linearly between the
    last size where it was not and the next; None if it is not faster at the largest size."""
    if speedups[-1] <= 1:
        return None
    i = len(speedups) - 1
    while i > 0 and speedups[i - 1] > 1:
        i -= 1
    if i == 0:
        return float(sizes[0])
    (n0, s0), (n1, s1) = (sizes[i - 1], speedups[i - 1]), (sizes[i], speedups[i])
    t = (0.0 - math.log(s0)) / (math.log(s1) - math.log(s0))
    return float(math.exp(math.log(n0) + t * (math.log(n1) - math.log(n0))))


def timing_part(p: dict, gen: torch.Generator, progress=None, done: int = 0, total: int = 1) -> tuple[dict, list[dict]]:
    sizes, repeats = [int(n) for n in p["sizes"]], int(p["repeats"])
    causal = bool(p["causal"])
    rows = []
    with torch.no_grad():
        for n in sizes:
            q, k, v, b, w = _inputs(n, p["d"], p["m"], p["rpe_scale"], gen, torch.float32)
            calls = {"fft": lambda: nprf_rpe(q, k, v, b, w, causal, "fft"),
                     "dense": lambda: nprf_rpe(q, k, v, b, w, causal, "dense"),
                     "softmax": lambda: softmax_attention(q, k, v)}
            for fn in calls.values():
                fn()  # first call out of the measurement (allocations, FFT plans)
            for r in range(repeats):  # the variants one after another within a repeat: ratios of times taken moments apart
                row = {"n": n, "repeat": r}
                row.update({f"t_{name}": _time_per_call(fn, p["min_time_s"]) for name, fn in calls.items()})
                row["speedup_dense"] = row["t_dense"] / row["t_fft"]
                row["speedup_softmax"] = row["t_softmax"] / row["t_fft"]
                rows.append(row)
            done += 1
            if progress:
                progress(done, total)
    med = {}
    for n in sizes:
        sub = [r for r in rows if r["n"] == n]
        for key in [f"t_{name}" for name in TIMED] + ["speedup_dense", "speedup_softmax"]:
            med[(n, key)] = float(torch.tensor([r[key] for r in sub], dtype=torch.float64).median())
    metrics = {}
    for (n, key), val in med.items():
        metrics[f"{key}_n{n}"] = val
    top = sizes[-1]
    metrics.update({f"{key}_nmax": med[(top, key)] for key in [f"t_{name}" for name in TIMED] + ["speedup_dense", "speedup_softmax"]})
    metrics["n_max"] = top
    if len(sizes) > 1:  # how each time grows over the last step of the sweep (x: 2 for linear, 4 for quadratic on doubling n)
        metrics.update({f"growth_{name}": med[(top, f"t_{name}")] / med[(sizes[-2], f"t_{name}")] for name in TIMED})
    for base in ("dense", "softmax"):
        x = _crossover(sizes, [med[(n, f"speedup_{base}")] for n in sizes])
        if x is not None:
            metrics[f"crossover_{base}_n"] = x
    return metrics, rows


def fig1b_error(R: float, m: int, d: int, n_keys: int, gen: torch.Generator) -> float:
    """One draw of the paper's Fig. 1b simulation: |A - A_hat|_1 for one query and ``n_keys`` keys drawn
    uniformly on the unit sphere of R^d and scaled by R; A = softmax_j(q k_j^T), A_hat its PRF estimate."""
    q = R * l2_normalise(torch.randn(1, d, generator=gen, dtype=torch.float64))
    keys = R * l2_normalise(torch.randn(n_keys, d, generator=gen, dtype=torch.float64))
    w = draw_features(m, d, gen)
    a = torch.softmax((q @ keys.T)[0], dim=-1)
    # log phi, shifted by constants that cancel in the normalised estimate (phi itself underflows for large R)
    lq, lk = q @ w.T, keys @ w.T  # the -|x|^2/2 terms: R^2/2 for every query and key alike
    est = torch.exp(lq - lq.max()) @ torch.exp(lk - lk.max()).T  # (1, n_keys)
    a_hat = (est / est.sum())[0]
    return float((a - a_hat).abs().sum())


def rpe_approx_error(m: int, n: int, d: int, rpe_scale: float, causal: bool, gen: torch.Generator) -> float:
    """Mean over rows of |A - A_hat|_1 for NPRF + RPE (unit-norm queries and keys) against softmax attention
    with the same RPE, on a random sequence of n tokens."""
    q = l2_normalise(torch.randn(n, d, generator=gen, dtype=torch.float64))
    k = l2_normalise(torch.randn(n, d, generator=gen, dtype=torch.float64))
    b = rpe_scale * torch.randn(2 * n - 1, generator=gen, dtype=torch.float64)
    w = draw_features(m, d, gen)
    a = rpe_attention_weights_softmax(q, k, b, causal)
    a_hat = rpe_attention_weights_prf(prf(q, w), prf(k, w), b, causal)
    return float((a - a_hat).abs().sum(-1).mean())


def approx_part(p: dict, gen: torch.Generator) -> tuple[dict, list[dict]]:
    feats, radii, trials = [int(m) for m in p["features"]], [float(r) for r in p["radii"]], int(p["trials"])
    rows, metrics = [], {}
    for m in feats:
        row = {"m": m}
        for R in radii:
            row[f"err_R{R:g}"] = sum(fig1b_error(R, m, p["d"], p["keys"], gen) for _ in range(trials)) / trials
        if p["rpe_n"]:
            row["err_rpe"] = sum(rpe_approx_error(m, p["rpe_n"], p["d"], p["rpe_scale"], bool(p["causal"]), gen)
                                 for _ in range(trials)) / trials
        rows.append(row)
        metrics.update({f"{key}_m{m}": val for key, val in row.items() if key != "m"})
    lo, hi = feats[0], feats[-1]
    for key in rows[0]:
        if key != "m":  # how much the error falls from the fewest to the most features (x)
            metrics[f"{key}_drop"] = metrics[f"{key}_m{lo}"] / metrics[f"{key}_m{hi}"]
            metrics[f"{key}_mmin"], metrics[f"{key}_mmax"] = metrics[f"{key}_m{lo}"], metrics[f"{key}_m{hi}"]
    return metrics, rows


DEFAULTS = {"parts": ["exact", "timing", "approx"], "d": 64, "m": 16, "rpe_scale": 1.0, "causal": False,
            "exact_sizes": [1, 2, 7, 64, 127, 256, 1000], "sizes": [256, 512, 1024, 2048, 4096], "repeats": 3,
            "min_time_s": 0.05, "features": [4, 16, 64, 256, 1024], "radii": [1, 2, 4, 8], "keys": 1024,
            "trials": 10, "rpe_n": 128}


@BENCHMARKS.register("kernelized_rpe", params=tuple(k for k in DEFAULTS))
def run_benchmark(params: dict, seed: int, progress=None) -> tuple[dict, list[dict]]:
    """The parts named in ``parts`` (see the module docstring), on inputs drawn from ``seed``; metrics of
    every part together, one row per (part, size) with the part named in ``part``."""
    p = {**DEFAULTS, **{k: v for k, v in params.items() if k != "threads"}}
    unknown = set(p["parts"]) - {"exact", "timing", "approx"}
    if unknown:
        raise ValueError(f"unknown parts {sorted(unknown)} (known: exact, timing, approx)")
    saved = torch.get_num_threads()
    torch.set_num_threads(int(params.get("threads", 1)))
    try:
        metrics, rows = {}, []
        total = len(p["parts"]) - ("timing" in p["parts"]) + (len(p["sizes"]) if "timing" in p["parts"] else 0)
        done = 0
        for part in p["parts"]:
            gen = torch.Generator().manual_seed(seed * 1000 + ("exact", "timing", "approx").index(part))
            if part == "timing":
                m_, r_ = timing_part(p, gen, progress, done, total)
                done += len(p["sizes"])
            else:
                m_, r_ = exact_part(p, gen) if part == "exact" else approx_part(p, gen)
                done += 1
                if progress:
                    progress(done, total)
            metrics.update(m_)
            rows.extend({"part": part, **r} for r in r_)
    finally:
        torch.set_num_threads(saved)
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    return metrics, rows


# The report draws the timings against n, the FFT's error against n, and the approximation errors against m.
run_benchmark.figure = [
    {"kind": "sweep", "x": "n", "y_prefix": "t_", "log": True, "ylabel": "seconds per forward pass"},
    {"kind": "sweep", "x": "n", "y_prefix": "relerr_", "log": True, "ylabel": "max |Z_fft - Z_dense| / max |Z_dense|"},
    {"kind": "sweep", "x": "m", "y_prefix": "err_", "log": True, "ylabel": "L1 error of the attention weights"},
]
