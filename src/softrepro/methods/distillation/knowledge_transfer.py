"""Knowledge transfer over finite domains (Zhao & Zhu 2023, arXiv:2310.07838), by simulation.

A teacher pi*(a|s) over finite inputs S and labels A and an input distribution rho generate n i.i.d.
pairs (s_i, a_i).  Four tabular students, each the closed-form minimiser of its loss (paper §3-§5):

* ``ce_sgl``  hard labels (s, a): maximum likelihood, pi(a|s) = n_(s,a) / n_s                  (3.3)
* ``ce_ptl``  partial soft labels (s, a, pi*(a|s)), the naive cross-entropy
              -sum_i pi*(a_i|s_i) log pi(a_i|s_i): pi(a|s) proportional to n_(s,a) pi*(a|s)      (4.3)
* ``sel_ptl`` partial soft labels, the empirical squared-error logit loss
              sum_i (log pi(a_i|s_i) - log pi*(a_i|s_i))^2 / 2: pi(a|s) = pi*(a|s) on the labels
              seen with s, the missing mass spread evenly over the unseen labels                 (4.7, §6)
* ``ce_ful``  soft labels (s, a, pi*(.|s)): any KL minimiser, pi(.|s) = pi*(.|s) on seen inputs    (5.2)

An input never sampled gets Uniform(A) for every student (§6).  The error is
TV(pi_hat, pi* | rho) = sum_s rho(s) TV(pi_hat(.|s), pi*(.|s)), TV = half the l1 distance   (2.1),
computed exactly for each draw (a risk below 1e-12, floating-point rounding of an exact match, counts
as 0); its mean over ``repeats`` draws estimates the expected risk.

Every student reads the data only through the counts n_(s,a), so one draw of the data is one
multinomial over S x A with probabilities rho(s) pi*(a|s) (the same law as n i.i.d. pairs).

Teachers (Appendix F): ``instance0`` pi*(.|s) = Uniform(A)/2 + Dirac(s mod A)/2, rho uniform (Figure 1);
``instance1`` (1 +- 0.25 sqrt(SA/n))/A on alternate labels, rho uniform (hard labels' worst case);
``instance2`` S/(n+1) on every other label but the last, 0 between them, the rest on the last label,
rho uniform (partial soft labels' worst case); ``instance3`` the teacher of instance 2 with
rho(s) = 1/(n+1) on every input but the last (soft labels' worst case).  Instances 1-3 change with n.

A run sweeps n (or |A|) and fits, by least squares, the slope of log(mean risk) on log n (log |A|):
the exponent of the rate, -1/2 for hard labels and -1 for the other two minimax students.
"""
from __future__ import annotations

import math

import numpy as np

from softrepro.registry import BENCHMARKS

LEARNERS = ("ce_sgl", "ce_ptl", "sel_ptl", "ce_ful")
INSTANCES = ("instance0", "instance1", "instance2", "instance3")
# The exponents of each minimax student's rate (Table 1): E TV ~ S^x A^y n^z.
THEORY_SLOPE_N = {"ce_sgl": -0.5, "sel_ptl": -1.0, "ce_ful": -1.0}
THEORY_SLOPE_A = {"ce_sgl": 0.5, "sel_ptl": 1.0, "ce_ful": 0.0}
# A data set's risk below this is floating-point rounding of an exact 0: the smallest nonzero risk
# these instances allow (an input of probability >= 1/(n+1) missing, or a count off by one) is far larger.
EXACT = 1e-12


def _alternating(A: int, odd: float, even: float, last: float | None = None) -> np.ndarray:
    """Labels 1, 3, 5, ... (0, 2, 4, ... here) get ``odd``, labels 2, 4, ... get ``even``; with ``last``
    the final label takes it instead."""
    p = np.where(np.arange(A) % 2 == 0, odd, even).astype(float)
    if last is not None:
        p[-1] = last
    return p


def teacher(instance: str, S: int, A: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(rho of shape (S,), pi* of shape (S, A)) of one of the paper's instances (Appendix F)."""
    if instance == "instance0":
        pi = np.full((S, A), 0.5 / A)
        pi[np.arange(S), np.arange(S) % A] += 0.5
        return np.full(S, 1.0 / S), pi
    if instance == "instance1":
        k = A - A % 2  # odd A: the last label gets no mass and A - 1 replaces A
        delta = 0.25 * math.sqrt(S * k / n)
        if delta > 0.5:
            raise ValueError(f"instance1 needs n >= S A / 4 (Theorem 3.1): S={S}, A={k}, n={n}")
        row = np.zeros(A)
        row[:k] = _alternating(k, (1 + delta) / k, (1 - delta) / k)
        return np.full(S, 1.0 / S), np.tile(row, (S, 1))
    if instance in ("instance2", "instance3"):
        k = A - (1 - A % 2)  # even A: the last label gets no mass and A - 1 replaces A
        top = 1 - S / 2 * (k - 1) / (n + 1)
        if k < 3 or top < 0:
            raise ValueError(f"{instance} needs an odd A >= 3 and n + 1 >= S (A - 1) / 2: S={S}, A={k}, n={n}")
        row = np.zeros(A)
        row[:k] = _alternating(k, S / (n + 1), 0.0, last=top)
        rho = np.full(S, 1.0 / S)
        if instance == "instance3":
            if S < 2 or (S - 1) / (n + 1) > 1:
                raise ValueError(f"instance3 needs S >= 2 and n + 1 >= S - 1: S={S}, n={n}")
            rho = np.full(S, 1.0 / (n + 1))
            rho[-1] = 1 - (S - 1) / (n + 1)
        return rho, np.tile(row, (S, 1))
    raise ValueError(f"unknown instance {instance!r} (known: {', '.join(INSTANCES)})")


def students(counts: np.ndarray, pi: np.ndarray) -> dict[str, np.ndarray]:
    """The four students from label counts ``counts`` (..., S, A) of teacher ``pi`` (S, A)."""
    counts = np.asarray(counts, dtype=float)
    A = counts.shape[-1]
    n_s = counts.sum(-1, keepdims=True)
    seen_s = n_s > 0
    uniform = np.full_like(counts, 1.0 / A)

    def fill(p):  # an input never sampled: Uniform(A)
        return np.where(seen_s, p, uniform)

    ce_sgl = fill(counts / np.where(seen_s, n_s, 1.0))
    w = counts * pi
    ce_ptl = fill(w / np.where(seen_s, w.sum(-1, keepdims=True), 1.0))
    seen_a = counts > 0
    missing = np.clip(1.0 - np.where(seen_a, pi, 0.0).sum(-1, keepdims=True), 0.0, None)
    n_unseen = (~seen_a).sum(-1, keepdims=True)
    sel_ptl = fill(np.where(seen_a, pi, missing / np.maximum(n_unseen, 1)))
    ce_ful = fill(np.broadcast_to(pi, counts.shape))
    return {"ce_sgl": ce_sgl, "ce_ptl": ce_ptl, "sel_ptl": sel_ptl, "ce_ful": ce_ful}


def tv_given_rho(pi_hat: np.ndarray, pi: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """TV(pi_hat, pi | rho) = sum_s rho(s) * 0.5 * sum_a |pi_hat(a|s) - pi(a|s)|, over leading axes."""
    return 0.5 * np.abs(pi_hat - pi).sum(-1) @ rho


def ce_ptl_limit(pi: np.ndarray, rho: np.ndarray) -> float:
    """Lemma 4.2: on a fixed instance the naive CE student tends to pi*^2 / sum pi*^2 on every input
    (every input is eventually seen); its TV from pi* given rho (> 0 unless each pi*(.|s) is uniform
    or a Dirac: Theorem 4.3)."""
    sq = pi**2
    return float(tv_given_rho(sq / sq.sum(-1, keepdims=True), pi, rho))


def expected_risks(instance: str, S: int, A: int, n: int, repeats: int, rng: np.random.Generator,
                   chunk_cells: int = 2_000_000) -> dict[str, tuple[float, float]]:
    """Per student: (mean, standard error) of TV(pi_hat, pi* | rho) over ``repeats`` data sets of size n."""
    rho, pi = teacher(instance, S, A, n)
    joint = (rho[:, None] * pi).ravel()
    joint = joint / joint.sum()
    chunk = max(1, chunk_cells // (S * A))
    sums = {k: 0.0 for k in LEARNERS}
    squares = {k: 0.0 for k in LEARNERS}
    done = 0
    while done < repeats:
        r = min(chunk, repeats - done)
        counts = rng.multinomial(n, joint, size=r).reshape(r, S, A)
        for name, est in students(counts, pi).items():
            tv = tv_given_rho(est, pi, rho)
            tv[tv < EXACT] = 0.0  # rounding of an exact match (e.g. 1 - sum of the seen masses)
            sums[name] += float(tv.sum())
            squares[name] += float((tv**2).sum())
        done += r
    out = {}
    for k in LEARNERS:
        mean = sums[k] / repeats
        var = max(squares[k] / repeats - mean**2, 0.0) * repeats / max(repeats - 1, 1)
        out[k] = (mean, math.sqrt(var / repeats))
    return out


def loglog_slope(x, y) -> float:
    """Least-squares slope of log y on log x (nan unless every y is positive)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2 or not np.all(y > 0):
        return math.nan
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


@BENCHMARKS.register("knowledge_transfer", params=("instance", "S", "A", "n", "repeats", "fit_from"))
def run_benchmark(params: dict, seed: int, progress=None) -> tuple[dict, list[dict]]:
    """Sweep ``n`` (a list, ``A`` one value) or ``A`` (a list, ``n`` one value) on one instance.

    Metrics: ``tv_<student>_n<n>`` (or ``_a<A>``), the mean risk over ``repeats`` draws; the fitted
    ``slope_n_<student>`` over the sizes n >= ``fit_from`` (or ``slope_a_<student>``); the rate
    exponents of Table 1 as ``theory_slope_n_<student>`` / ``theory_slope_a_<student>``; and for
    ``instance0`` (fixed in n) ``ce_ptl_limit`` (Lemma 4.2).  One row per size: the mean risks
    ``tv_<student>`` and their standard errors ``se_<student>``."""
    instance, S, repeats = params["instance"], int(params["S"]), int(params["repeats"])
    ns, As = params["n"], params["A"]
    if isinstance(ns, list) == isinstance(As, list):
        raise ValueError("knowledge_transfer sweeps one axis: give a list for exactly one of n and A")
    axis, sizes = ("n", [int(v) for v in ns]) if isinstance(ns, list) else ("a", [int(v) for v in As])
    rng = np.random.default_rng(seed)
    metrics, rows = {}, []
    for i, size in enumerate(sizes):
        n, A = (size, int(As)) if axis == "n" else (int(ns), size)
        risks = expected_risks(instance, S, A, n, repeats, rng)
        rows.append({"n" if axis == "n" else "A": size, **{f"tv_{k}": m for k, (m, _) in risks.items()},
                     **{f"se_{k}": se for k, (_, se) in risks.items()}})
        metrics.update({f"tv_{k}_{axis}{size}": m for k, (m, _) in risks.items()})
        if progress:
            progress(i + 1, len(sizes))
    fit_from = params.get("fit_from", 0) if axis == "n" else 0
    used = [j for j, s in enumerate(sizes) if s >= fit_from]
    for k in LEARNERS:
        slope = loglog_slope([sizes[j] for j in used], [rows[j][f"tv_{k}"] for j in used])
        if math.isfinite(slope):  # a risk that reaches 0 (instance0's exact students) has no log-log slope
            metrics[f"slope_{axis}_{k}"] = slope
    metrics.update({f"theory_slope_{axis}_{k}": v for k, v in (THEORY_SLOPE_N if axis == "n" else THEORY_SLOPE_A).items()})
    if instance == "instance0":
        rho, pi = teacher(instance, S, int(As) if axis == "n" else sizes[-1], 1)
        metrics["ce_ptl_limit"] = ce_ptl_limit(pi, rho)
    return metrics, rows


# The report draws each student's mean risk against n (or |A|), log axes.
run_benchmark.figure = [{"kind": "sweep", "x": "n", "y_prefix": "tv_", "log": True, "ylabel": "mean TV(pi_hat, pi* | rho)"},
                        {"kind": "sweep", "x": "A", "y_prefix": "tv_", "log": True, "ylabel": "mean TV(pi_hat, pi* | rho)"}]
