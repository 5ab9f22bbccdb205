"""The online-normalizer benchmark on a GPU: the Triton kernels of ``_triton_softmax`` beside
``torch.softmax`` / ``torch.topk`` and a device-to-device copy (the roofline).

Timing: ``triton.testing.do_bench`` (CUDA events, warm-up, the L2 cache flushed before every call,
the median of many calls); repeats of the whole sweep with fresh inputs stand in for seeds.  The batch
stays fixed and V doubles from ``v_start`` while V < min(max_bytes / (12 batch), v_max), the reference
benchmark's rule (``online_softmax_benchmark.cu``: 12 bytes per element, ``max_bytes`` 90 % of the free
GPU memory, ``v_max`` 10,000,000); offsets are 64-bit, so the large-batch sweep does not overflow where
the reference's ``int`` product V * batch would on an 80 GB or larger GPU.  Per row, each kernel's achieved bandwidth is also
written as a fraction of the copy's (``roofline_<variant>``), with the bytes of the algorithm's memory
accesses as the paper counts them.
"""
from __future__ import annotations

import math

import torch

from softrepro.methods.kernels import _gpu
from softrepro.methods.kernels.online_softmax import ACCESSES, SPEEDUPS
from softrepro.registry import BENCHMARKS


def calls(ts, x: torch.Tensor, k: int) -> dict:
    """Every variant on input ``x`` as a no-argument call (outputs preallocated where the API allows)."""
    y = torch.empty_like(x)
    return {
        "naive": lambda: ts.softmax(x, "naive", out=y),
        "safe": lambda: ts.softmax(x, "safe", out=y),
        "online": lambda: ts.softmax(x, "online", out=y),
        "topk": lambda: ts.topk(x, k),
        "safe_topk_unfused": lambda: ts.softmax_topk(x, k, "safe_topk_unfused", y=y),
        "safe_topk_fused": lambda: ts.softmax_topk(x, k, "safe_topk_fused"),
        "online_topk_fused": lambda: ts.softmax_topk(x, k, "online_topk_fused"),
        "torch_softmax": lambda: torch.softmax(x, dim=1),
        "torch_softmax_topk": lambda: torch.topk(torch.softmax(x, dim=1), k, dim=1),
        "copy": lambda: y.copy_(x),
    }


def check(ts, x: torch.Tensor, k: int) -> dict:
    """Largest errors of each kernel against float64 torch on ``x`` (probabilities; top-K indices must match)."""
    ref = torch.softmax(x.double(), dim=1)
    out = {f"max_abs_err_{v}": float((ts.softmax(x, v).double() - ref).abs().max()) for v in ("safe", "online")}
    rv, ri = torch.topk(ref, k, dim=1)
    for v in ("safe_topk_unfused", "safe_topk_fused", "online_topk_fused"):
        pv, pi = ts.softmax_topk(x, k, v)
        out[f"max_abs_err_{v}"] = float((pv.double() - rv).abs().max())
        out[f"topk_index_mismatch_{v}"] = float((pi != ri).float().mean())
    return out


@BENCHMARKS.register("online_softmax_gpu", params=("device", "batch_size", "v_start", "v_max", "k", "repeats", "warmup_ms", "rep_ms", "max_bytes"))
def run_benchmark(params: dict, seed: int, progress=None) -> tuple[dict, list[dict]]:
    """One row per (V, repeat): each variant's seconds per call (``t_<variant>``), the two speedups the
    paper claims and each kernel's fraction of the copy bandwidth."""
    device = params.get("device", "cuda")
    ts = _gpu.kernels("_triton_softmax", device)
    timed = _gpu.timer(device, float(params.get("warmup_ms", 25)), float(params.get("rep_ms", 100)))
    batch, k = int(params.get("batch_size", 4000)), int(params.get("k", 5))
    v_start, v_max = int(params.get("v_start", 63)), int(params.get("v_max", 10_000_000))
    repeats = int(params.get("repeats", 5))
    max_bytes = int(params.get("max_bytes", 0)) or (int(0.9 * torch.cuda.mem_get_info()[0]) if device == "cuda" else 64 << 20)
    limit = min(max_bytes / (12 * batch), v_max)  # the reference's rule: 12 bytes per element, 90 % of the memory
    sizes, v = [], v_start
    while v < limit:
        sizes.append(v)
        v *= 2
    if not sizes:
        raise ValueError(f"no V fits: batch {batch} x V {v_start} at 12 bytes per element exceeds max_bytes = {max_bytes}")
    gen = torch.Generator(device=device).manual_seed(seed)
    rows, done, total = [], 0, len(sizes) * repeats
    for r in range(repeats):
        for V in sizes:
            x = torch.rand((batch, V), device=device, generator=gen)  # uniform [0, 1), as the reference
            row = {"V": V, "batch": batch, "repeat": r}
            for name, fn in calls(ts, x, k).items():
                row[f"t_{name}"] = timed(fn)
            row.update({key: row[f"t_{base}"] / row[f"t_{new}"] for key, (base, new) in SPEEDUPS.items()})
            copy_bw = ACCESSES["copy"] * 4 * batch * V / row["t_copy"]
            row.update({f"roofline_{name}": ACCESSES[name] * 4 * batch * V / row[f"t_{name}"] / copy_bw
                        for name in ACCESSES if name != "copy"})
            row["copy_GBps"] = copy_bw / 1e9
            rows.append(row)
            del x
            done += 1
            if progress:
                progress(done, total)
    import pandas as pd

    per_size = pd.DataFrame(rows).groupby("V")[list(SPEEDUPS)].median()
    metrics = {"n_sizes": len(sizes), "v_largest": sizes[-1], "gpu": _gpu.device_name(device),
               **check(ts, torch.rand((8, 5000), device=device, generator=gen) * 50, k)}
    for key in SPEEDUPS:  # this sweep's own "up to": the largest per-size median over its repeats
        metrics.update({f"{key}_max": float(per_size[key].max()), f"{key}_median": float(per_size[key].median()),
                        f"v_at_{key}_max": int(per_size[key].idxmax())})
    assert all(math.isfinite(val) for val in metrics.values() if isinstance(val, float))
    return metrics, rows


run_benchmark.figure = {"kind": "sweep", "x": "V", "y_prefix": "t_", "ylabel": "seconds per call", "log": True}
