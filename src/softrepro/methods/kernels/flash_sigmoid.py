"""FlashSigmoid's kernel claim (Ramapuram et al. 2025) by proxy: the forward pass of one
FlashAttention-2-style Triton kernel (``_triton_attention``) in its softmax and its sigmoid variant,
timed on a GPU beside ``torch.nn.functional.scaled_dot_product_attention`` (PyTorch's own
FlashAttention-2 backend where it applies).

The grid is FlashAttention 2.5.6's ``benchmarks/benchmark_flash_attention.py`` (which the FlashSigmoid
repository ships unchanged): (batch, n) in (32, 512) ... (1, 16384), model width 2,048, head dim 64
and 128, float16, full and causal; the settings behind the paper's H100 figures were not found.
Per run and mask the statistic is the ratio of the summed forward times over the grid,
softmax / sigmoid (so the longest sequences weigh most, as at the right end of the README figures).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from softrepro.methods.kernels import _gpu
from softrepro.registry import BENCHMARKS

GRID = [(32, 512), (16, 1024), (8, 2048), (4, 4096), (2, 8192), (1, 16384)]


@BENCHMARKS.register("flash_sigmoid", params=("device", "grid", "width", "head_dims", "dtype", "repeats", "warmup_ms", "rep_ms"))
def run_benchmark(params: dict, seed: int, progress=None) -> tuple[dict, list[dict]]:
    """One row per (batch, n, head dim, mask, repeat): seconds per forward call of the Triton softmax
    (``t_softmax``) and sigmoid (``t_sigmoid``) kernels and of PyTorch's SDPA (``t_sdpa``), and
    their TFLOP/s.  Metrics: per mask the summed-time ratio softmax / sigmoid (``fwd_speedup_full``,
    ``fwd_speedup_causal``) and the largest error of each kernel against a float64 reference."""
    device = params.get("device", "cuda")
    ta = _gpu.kernels("_triton_attention", device)
    timed = _gpu.timer(device, float(params.get("warmup_ms", 25)), float(params.get("rep_ms", 100)))
    grid = [tuple(g) for g in params.get("grid", GRID)]
    width, head_dims = int(params.get("width", 2048)), [int(d) for d in params.get("head_dims", [64, 128])]
    dtype = getattr(torch, params.get("dtype", "float16"))
    repeats = int(params.get("repeats", 3))
    gen = torch.Generator(device=device).manual_seed(seed)
    rows, done, total = [], 0, repeats * len(grid) * len(head_dims) * 2
    for r in range(repeats):
        for batch, n in grid:
            for d in head_dims:
                heads = width // d
                q, k, v = (torch.randn((batch * heads, n, d), device=device, dtype=dtype, generator=gen) for _ in range(3))
                q4, k4, v4 = (t.view(batch, heads, n, d) for t in (q, k, v))
                bias = -math.log(n)  # b = -log n, the paper's recommendation (it does not change the work)
                for causal in (False, True):
                    fns = {"softmax": lambda: ta.attention(q, k, v, "softmax", causal=causal),
                           "sigmoid": lambda: ta.attention(q, k, v, "sigmoid", causal=causal, bias=bias),
                           "sdpa": lambda: F.scaled_dot_product_attention(q4, k4, v4, is_causal=causal)}
                    flops = 4 * batch * heads * n * n * d / (2 if causal else 1)
                    row = {"batch": batch, "n": n, "head_dim": d, "mask": "causal" if causal else "full", "repeat": r}
                    for name, fn in fns.items():
                        row[f"t_{name}"] = timed(fn)
                        row[f"tflops_{name}"] = flops / row[f"t_{name}"] / 1e12
                    row["speedup"] = row["t_softmax"] / row["t_sigmoid"]
                    rows.append(row)
                    done += 1
                    if progress:
                        progress(done, total)
                del q, k, v, q4, k4, v4
    import pandas as pd

    df = pd.DataFrame(rows)
    metrics = {"gpu": _gpu.device_name(device)}
    for mask, part in df.groupby("mask"):
        per_repeat = part.groupby("repeat")[["t_softmax", "t_sigmoid", "t_sdpa"]].sum()
        ratio = per_repeat["t_softmax"] / per_repeat["t_sigmoid"]
        metrics[f"fwd_speedup_{mask}"] = float(ratio.median())
        metrics[f"fwd_time_reduction_pct_{mask}"] = float(100 * (1 - 1 / ratio.median()))
        metrics[f"fwd_speedup_vs_sdpa_{mask}"] = float((per_repeat["t_sdpa"] / per_repeat["t_sigmoid"]).median())
    n = 1000 if device == "cuda" else 40
    q, k, v = (torch.randn((4, n, 64), device=device, dtype=dtype, generator=gen) for _ in range(3))
    for norm in ("softmax", "sigmoid"):
        for causal in (False, True):
            out = ta.attention(q, k, v, norm, causal=causal, bias=-math.log(n)).double()
            ref = ta.reference(q, k, v, norm, causal=causal, bias=-math.log(n))
            metrics[f"max_abs_err_{norm}_{'causal' if causal else 'full'}"] = float((out - ref).abs().max())
    return metrics, rows


run_benchmark.figure = {"kind": "sweep", "x": "n", "y_prefix": "t_", "ylabel": "seconds per forward call", "log": True}
