"""Gradient descent on one attention layer from many random starts: softmax against a Gaussian kernel,
over the embedding dimension (a stand-in for Song, Han, Zhang, Ding & Hong, NeurIPS 2024, "Unraveling
the Gradient Descent Dynamics of Transformers", arXiv 2411.07538; only its abstract was reachable, so
the setting below is this project's, see docs/sources/attention-song-rela.md).

Model.  N sequences X_i of n tokens in R^D (entries N(0, 1)).  One attention head with query and key
matrices W_Q, W_K (D x D) and a value vector w_V (D): the output for sequence i is the n-vector

    f(X_i) = S(X_i) X_i w_V,

whose attention matrix S is row-normalised over the n keys:

    softmax:  S_jk ∝ exp(<q_j, k_k> / sqrt(D))
    gaussian: S_jk ∝ exp(-||q_j - k_k||^2 / (2 sqrt(D)))

with q = x W_Q and k = x W_K (the Gaussian kernel is softmax(<q, k> - ||k||^2 / 2) in disguise: the
||q||^2 term cancels in the normalisation).  Weights start as N(0, 1/D) entries (so q and k have unit-size
entries).

Targets.  A teacher with its own N(0, 1/D) weights gives the targets y_i = f*(X_i), computed with the
kernel being trained: the global optimum of the training loss is 0 for both kernels and every D.  For
D >= N n the value vector alone can fit any targets (N n linear equations in D unknowns), so D is swept
across N n.  Per seed and D one draw of X, teacher and starts serves both kernels (paired).

Training.  Full-batch gradient descent (no momentum) on L = mean over sequences and tokens of
(f(X_i) - y_i)^2 / 2, on all of W_Q, W_K, w_V, from ``trials`` independent random starts (trained together as
a batch, each start on its own loss; every D at once, zero-padded to the largest D, where the padding's
gradient is 0), ``steps`` steps at learning rate ``lr``, in float64.  A start
*reaches the global optimum* when its final loss, relative to the mean squared target (mean y^2 / 2),
is at most ``tol`` (a diverged start never does).  Within a fixed budget this counts the starts that
converge, not only those that avoid a local minimum: a slow start counts as failed.

Metrics per kernel k and dimension D: ``frac_<k>_D<D>`` (the fraction of starts that reach it),
``rel_loss_median_<k>_D<D>`` (median final relative loss), ``frac_<k>_mean`` (the fraction averaged over the
dimensions), ``frac_<k>_lo`` / ``frac_<k>_hi`` (a Wilson 95 % interval over all of this seed's starts),
``diverged_<k>_D<D>`` (the fraction of starts whose loss became non-finite).
One row per D: ``reached_<k>`` (the fraction), ``wilson_lo_<k>`` / ``wilson_hi_<k>`` and
``rel_loss_median_<k>``.
"""
from __future__ import annotations

import math

import torch

from softrepro.registry import BENCHMARKS

KERNELS = ("softmax", "gaussian")
DEFAULTS = {"n": 4, "N": 4, "dims": [2, 4, 8, 16, 32], "trials": 16, "steps": 1000, "lr": 0.2, "tol": 1e-3,
            "kernels": list(KERNELS)}


def attention(x: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, kernel: str, scale) -> torch.Tensor:
    """Row-normalised attention [B, N, n, n] of sequences x [B, N, n, D] under weights wq, wk [B, D, D];
    ``scale`` = sqrt(D) (a number, or one per batch entry [B])."""
    scale = torch.as_tensor(scale, dtype=x.dtype).reshape(-1, 1, 1, 1)
    b, n_seq, n, d = x.shape
    flat = x.reshape(b, n_seq * n, d)
    q = (flat @ wq).view(b, n_seq, n, d)  # [B, N, n, D]
    k = (flat @ wk).view(b, n_seq, n, d)
    qk = q @ k.transpose(-1, -2)
    if kernel == "softmax":
        z = qk / scale
    elif kernel == "gaussian":  # -||q - k||^2 = 2 q.k - ||q||^2 - ||k||^2
        z = (2 * qk - q.pow(2).sum(-1, keepdim=True) - k.pow(2).sum(-1)[..., None, :]) / (2 * scale)
    else:
        raise ValueError(f"unknown attention kernel {kernel!r} (known: {', '.join(KERNELS)})")
    return z.softmax(-1)


def forward(x: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor, kernel: str, scale) -> torch.Tensor:
    """f(X_i) = S(X_i) X_i w_V for every sequence: [B, N, n] (wv [B, D])."""
    s = attention(x, wq, wk, kernel, scale)
    b, n_seq, n, d = x.shape
    v = (x.reshape(b, n_seq * n, d) @ wv[..., None]).view(b, n_seq, n, 1)
    return (s @ v).squeeze(-1)


def pad(t: torch.Tensor, width: int, dims: int) -> torch.Tensor:
    """Zero-pad the last ``dims`` dimensions of ``t`` to ``width``."""
    return torch.nn.functional.pad(t, sum(((0, width - t.shape[-1 - i]) for i in range(dims)), ()))


def gd(x: torch.Tensor, y: torch.Tensor, weights: list[torch.Tensor], kernel: str, scale, steps: int, lr: float) -> torch.Tensor:
    """``steps`` full-batch GD steps from ``weights`` = [W_Q, W_K, w_V] (each [B, ...]) on each batch entry's
    own loss mean((f - y)^2) / 2; returns the final losses [B] (non-finite where a start diverged)."""
    params = [w.clone().requires_grad_(True) for w in weights]

    def losses():
        return 0.5 * (forward(x, *params, kernel, scale) - y).pow(2).mean((-1, -2))

    for _ in range(steps):
        grads = torch.autograd.grad(losses().sum(), params)  # each entry's loss depends on its own weights only
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= lr * g
    with torch.no_grad():
        return losses()


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for k successes out of n."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def draw_cells(seed: int, dims: list[int], n_seq: int, n: int, trials: int):
    """Per dimension D (its own generator, so a cell does not depend on the others): the inputs X
    [N, n, D], the teacher's (W_Q, W_K, w_V) and ``trials`` starting weights, all N(0, 1/D) but X N(0, 1).
    Both kernels use the same draws (paired)."""
    cells = []
    for d in dims:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + d)
        x = torch.randn(n_seq, n, d, generator=gen, dtype=torch.float64)
        w = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64) / math.sqrt(d)  # noqa: E731
        teacher = [w(1, d, d), w(1, d, d), w(1, d)]
        starts = [w(trials, d, d), w(trials, d, d), w(trials, d)]
        cells.append((x, teacher, starts))
    return cells


@BENCHMARKS.register("attention_gd_dynamics", params=tuple(DEFAULTS))
def run_benchmark(params: dict, seed: int, progress=None) -> tuple[dict, list[dict]]:
    p = {**DEFAULTS, **{k: v for k, v in params.items() if k != "threads"}}
    n, n_seq, trials, steps = int(p["n"]), int(p["N"]), int(p["trials"]), int(p["steps"])
    lr, tol, dims, kernels = float(p["lr"]), float(p["tol"]), [int(d) for d in p["dims"]], list(p["kernels"])
    torch.set_num_threads(max(1, int(params.get("threads", 1))))
    cells, width = draw_cells(seed, dims, n_seq, n, trials), max(dims)
    # every dimension trains at once: inputs and weights zero-padded to the largest D (the padding stays 0
    # under GD: its gradient is 0), one batch entry per (D, start)
    x = torch.cat([pad(c[0], width, 1)[None].expand(trials, -1, -1, -1) for c in cells])
    starts = [torch.cat([pad(c[2][i], width, 2 - (i == 2)) for c in cells]) for i in range(3)]
    scale = torch.tensor([math.sqrt(d) for d in dims for _ in range(trials)], dtype=torch.float64)
    metrics: dict = {}
    rows = [{"D": d} for d in dims]
    for done, kernel in enumerate(kernels, 1):
        with torch.no_grad():  # each dimension's targets from its teacher under this kernel
            y = torch.cat([forward(c[0][None], *c[1], kernel, math.sqrt(d)).expand(trials, -1, -1)
                           for c, d in zip(cells, dims)])
        final = gd(x, y, starts, kernel, scale, steps, lr)
        rel = (final / (0.5 * y.pow(2).mean((-1, -2)))).view(len(dims), trials)
        rel = torch.where(torch.isfinite(rel), rel, torch.full_like(rel, math.inf))  # a diverged start never reaches it
        reached_all = 0
        for i, (row, d) in enumerate(zip(rows, dims)):
            reached = int((rel[i] <= tol).sum())
            reached_all += reached
            lo, hi = wilson(reached, trials)
            row.update({f"reached_{kernel}": reached / trials, f"wilson_lo_{kernel}": lo, f"wilson_hi_{kernel}": hi,
                        f"rel_loss_median_{kernel}": float(rel[i].median())})
            metrics[f"frac_{kernel}_D{d}"] = reached / trials
            metrics[f"rel_loss_median_{kernel}_D{d}"] = float(rel[i].median())
            metrics[f"diverged_{kernel}_D{d}"] = float((~torch.isfinite(rel[i])).float().mean())
        metrics[f"frac_{kernel}_mean"] = sum(metrics[f"frac_{kernel}_D{d}"] for d in dims) / len(dims)
        metrics[f"frac_{kernel}_lo"], metrics[f"frac_{kernel}_hi"] = wilson(reached_all, trials * len(dims))
        if progress:
            progress(done, len(kernels))
    return metrics, rows


# The report draws each kernel's fraction of starts reaching the optimum against D.
run_benchmark.figure = {"kind": "sweep", "x": "D", "y_prefix": "reached_", "log": "x",
                        "ylabel": "fraction of random starts reaching the global optimum"}
