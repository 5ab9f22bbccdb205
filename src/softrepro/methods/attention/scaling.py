"""How attention weights and outputs scale with the number of attended keys n, before any training.

- The largest weight for the logits (-2, ..., -2, +3) of length n under softmax and Scalable-Softmax
  (closed form, ``normalisations.softmax_max_weight``): Nakanishi 2025, Fig. 1 ("attention fading").
- The norm of one attention output at initialisation, sum_j w_ij v_j, for softmax and for sigmoid
  attention with bias b = 0 and b = -log n: random tokens X ~ N(0, I_d) and projections with
  N(0, 1/d) entries (q, k, v have unit-variance entries), logits q·k/sqrt(d); Ramapuram et al. 2025
  point to large initial attention norms as what makes sigmoid attention fail without the bias.
"""
from __future__ import annotations

import math

import torch

from softrepro.methods.attention.normalisations import softmax_max_weight
from softrepro.registry import BENCHMARKS


def output_norms(n: int, d: int, trials: int, gen: torch.Generator) -> dict[str, float]:
    """Mean over ``trials`` draws of the norm of one query's attention output over n keys, divided
    by sqrt(d) (the norm of one value vector), for softmax and sigmoid(b = 0, b = -log n)."""
    out = {"softmax": 0.0, "sigmoid_b0": 0.0, "sigmoid_logn": 0.0}
    for _ in range(trials):
        x = torch.randn(n, d, generator=gen, dtype=torch.float64)
        wq, wk, wv = (torch.randn(d, d, generator=gen, dtype=torch.float64) / math.sqrt(d) for _ in range(3))
        q, k, v = x[-1:] @ wq, x @ wk, x @ wv
        z = (q @ k.T / math.sqrt(d))[0]
        for name, w in (("softmax", z.softmax(-1)), ("sigmoid_b0", torch.sigmoid(z)),
                        ("sigmoid_logn", torch.sigmoid(z - math.log(n)))):
            out[name] += float((w @ v).norm()) / math.sqrt(d) / trials
    return out


@BENCHMARKS.register("attention_scaling", params=("sizes", "s", "low", "high", "d", "trials"))
def run_benchmark(params: dict, seed: int, progress=None) -> tuple[dict, list[dict]]:
    """Per n of ``sizes``: ``max_softmax``/``max_ssmax`` (closed form, logits ``low``... ``high``, SSMax
    scale ``s``) and ``norm_<variant>`` (mean over ``trials`` random draws from ``seed``).  Metrics:
    each at every n (``..._n<n>``) and the growth of each norm from the smallest to the largest n
    (``norm_<variant>_growth``)."""
    sizes = [int(n) for n in params["sizes"]]
    trials = int(params.get("trials", 200))
    gen = torch.Generator().manual_seed(seed)
    rows, metrics = [], {}
    for i, n in enumerate(sizes):
        row = {"n": n, "max_softmax": softmax_max_weight(n, params.get("low", -2.0), params.get("high", 3.0)),
               "max_ssmax": softmax_max_weight(n, params.get("low", -2.0), params.get("high", 3.0), s=params.get("s", 0.43))}
        if trials > 0:  # trials: 0 for the closed forms alone
            row.update({f"norm_{k}": v for k, v in output_norms(n, int(params.get("d", 64)), trials, gen).items()})
        rows.append(row)
        metrics.update({f"{k}_n{n}": v for k, v in row.items() if k != "n"})
        if progress:
            progress(i + 1, len(sizes))
    for k in ("norm_softmax", "norm_sigmoid_b0", "norm_sigmoid_logn"):
        if k in rows[0]:
            metrics[f"{k}_growth"] = rows[-1][k] / rows[0][k]
    return metrics, rows


# The report draws every measure against n (log axes).
run_benchmark.figure = [{"kind": "sweep", "x": "n", "y_prefix": "max_", "log": "x", "ylabel": "largest attention weight"},
                        {"kind": "sweep", "x": "n", "y_prefix": "norm_", "log": True, "ylabel": "output norm / value norm"}]
