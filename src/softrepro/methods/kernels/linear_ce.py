"""Linear cross-entropy without the N x V logit matrix (Wijmans et al. 2025, "Cut Your Losses").

loss_i = LSE_j(s(c_j . e_i)) - s(c_{y_i} . e_i), with s(z) = softcap * tanh(z / softcap) when a softcap is set:
the classifier matmul and the cross-entropy in one operation, so that only what the loss needs
(one log-sum-exp per token) is kept for the backward pass.

Implementations compared by the benchmark ``linear_cross_entropy``:

* ``torch``   : the plain PyTorch baseline: logits = e @ c.T (N x V), softcap, ``F.cross_entropy``.
* ``chunked`` : this project's own, in plain torch: tokens in chunks of ``chunk`` rows; the forward
                keeps only each token's log-sum-exp, the backward recomputes each chunk's logits.
                Peak memory ~ chunk x V instead of N x V.  A stand-in for CCE's idea on any device
                (CCE itself tiles the vocabulary in on-chip memory, a Triton kernel).
* ``cce``     : ``cut_cross_entropy.linear_cross_entropy`` (the official package; GPU only).
* ``liger``   : ``liger_kernel``'s fused linear cross-entropy (GPU only).

The benchmark measures, per implementation, the peak memory and the time of the loss alone and of
loss + gradient (with respect to e and c), and checks each loss against the float32 baseline (absolute
difference) and its gradients (cosine similarity).  On a GPU the peak is ``torch.cuda.max_memory_allocated``
above what the inputs hold; on a CPU it is the process's peak resident memory (VmHWM, reset through
/proc/self/clear_refs) above its resident memory before the call, measured in a fresh process per
implementation and mode so that no allocator cache hides an allocation.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import re
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from softrepro.registry import BENCHMARKS, NotRun


def _cap(z: torch.Tensor, softcap: float | None) -> torch.Tensor:
    return z if not softcap else softcap * torch.tanh(z / softcap)


def naive_linear_cross_entropy(e: torch.Tensor, c: torch.Tensor, targets: torch.Tensor, softcap: float | None = None) -> torch.Tensor:
    """Mean cross-entropy of s(e @ c.T) against ``targets``, computed in float32 (the baseline)."""
    logits = _cap((e @ c.T).float(), softcap)
    return F.cross_entropy(logits, targets)


class _ChunkedLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, e, c, targets, softcap, chunk):
        n = e.shape[0]
        lse = torch.empty(n, dtype=torch.float32, device=e.device)
        picked = torch.empty(n, dtype=torch.float32, device=e.device)
        for i in range(0, n, chunk):
            z = _cap((e[i : i + chunk] @ c.T).float(), softcap)
            lse[i : i + chunk] = torch.logsumexp(z, dim=1)
            picked[i : i + chunk] = z.gather(1, targets[i : i + chunk, None])[:, 0]
            del z
        ctx.save_for_backward(e, c, targets, lse)
        ctx.softcap, ctx.chunk = softcap, chunk
        return (lse - picked).mean()

    @staticmethod
    def backward(ctx, grad_out):
        e, c, targets, lse = ctx.saved_tensors
        softcap, chunk, n = ctx.softcap, ctx.chunk, e.shape[0]
        grad_e = torch.empty_like(e) if ctx.needs_input_grad[0] else None
        grad_c = torch.zeros(c.shape, dtype=torch.float32, device=c.device) if ctx.needs_input_grad[1] else None
        scale = grad_out / n
        for i in range(0, n, chunk):
            raw = (e[i : i + chunk] @ c.T).float()
            z = _cap(raw, softcap)
            g = torch.exp(z - lse[i : i + chunk, None])  # softmax
            g.scatter_add_(1, targets[i : i + chunk, None], torch.full_like(g[:, :1], -1.0))
            if softcap:
                g *= 1 - torch.tanh(raw / softcap) ** 2  # d s(z) / dz
            g *= scale
            g = g.to(e.dtype)
            if grad_e is not None:
                grad_e[i : i + chunk] = g @ c
            if grad_c is not None:
                grad_c += (g.T @ e[i : i + chunk]).float()
            del raw, z, g
        return grad_e, (grad_c.to(c.dtype) if grad_c is not None else None), None, None, None


def chunked_linear_cross_entropy(e: torch.Tensor, c: torch.Tensor, targets: torch.Tensor, softcap: float | None = None,
                                 chunk: int = 1024) -> torch.Tensor:
    """Mean cross-entropy of s(e @ c.T) against ``targets`` with at most ``chunk`` x V logits alive at a time."""
    return _ChunkedLinearCE.apply(e, c, targets, softcap, int(chunk))


def _impl(name: str, softcap, chunk):
    if name == "torch":
        return lambda e, c, t: naive_linear_cross_entropy(e, c, t, softcap)
    if name == "chunked":
        return lambda e, c, t: chunked_linear_cross_entropy(e, c, t, softcap, chunk)
    if name == "cce":
        try:
            from cut_cross_entropy import linear_cross_entropy
        except ImportError as err:
            raise NotRun(f"needs the cut-cross-entropy package (pip install cut-cross-entropy): {err}") from None
        return lambda e, c, t: linear_cross_entropy(e, c, t, softcap=softcap)
    if name == "liger":
        try:
            from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
        except ImportError as err:
            raise NotRun(f"needs the liger-kernel package (pip install liger-kernel): {err}") from None
        return lambda e, c, t: liger_fused_linear_cross_entropy(e, c, t, softcap=softcap)
    raise ValueError(f"unknown linear cross-entropy implementation {name!r} (torch, chunked, cce, liger)")


def _inputs(p: dict, seed: int, device: str):
    g = torch.Generator(device="cpu").manual_seed(seed)
    dtype = getattr(torch, p["dtype"])
    # entries of variance d^-1/2, so that the logits have variance 1
    e = (torch.randn(p["n"], p["d"], generator=g) / p["d"] ** 0.25).to(device, dtype)
    c = (torch.randn(p["v"], p["d"], generator=g) / p["d"] ** 0.25).to(device, dtype)
    t = torch.randint(0, p["v"], (p["n"],), generator=g).to(device)
    return e, c, t


def _call(fn, e, c, t, mode: str):
    if mode == "loss":
        with torch.no_grad():
            return fn(e, c, t)
    e.grad = c.grad = None
    loss = fn(e.requires_grad_(), c.requires_grad_(), t)
    loss.backward()
    return loss


def _status_kb(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))


def _cpu_peak_child(p: dict, name: str, mode: str, seed: int, out) -> None:
    torch.set_num_threads(int(p.get("threads", 1)))
    e, c, t = _inputs(p, seed, "cpu")
    fn = _impl(name, p.get("softcap"), p["chunk"])
    _call(fn, e, c, t, mode)  # first-call allocations (GEMM buffers, thread pools) out of the measurement
    e.grad = c.grad = None
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak to the current resident size
    before = _status_kb("VmRSS")
    _call(fn, e, c, t, mode)
    out.put((_status_kb("VmHWM") - before) / 1024)


def _cpu_peak_mb(p: dict, name: str, mode: str, seed: int) -> float:
    """The child's allocator returns every freed block of 64 KiB or more to the system at once (a fixed
    glibc mmap threshold: otherwise it raises the threshold as blocks are freed and keeps later ones
    in its heap), so that its resident size follows what is live and the warm-up call hides nothing."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_cpu_peak_child, args=(p, name, mode, seed, q))
    saved = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"  # read by the child's C library at start-up
    try:
        proc.start()
    finally:
        if saved is None:
            os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
        else:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = saved
    try:
        return float(q.get(timeout=600))
    finally:
        proc.join()


def _timed(fn, e, c, t, mode: str, device: str, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            _call(fn, e, c, t, mode)
            end.record()
            torch.cuda.synchronize()
            out.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            _call(fn, e, c, t, mode)
            out.append(time.perf_counter() - t0)
    return out


@BENCHMARKS.register("linear_cross_entropy", params=("device", "n", "d", "v", "dtype", "softcap", "chunk", "impls", "repeats", "warmup"))
def run_benchmark(params: dict, seed: int, progress=None) -> tuple[dict, list[dict]]:
    """One row per (implementation, mode, repeat) with its seconds; metrics: per implementation and mode
    the peak memory (MB) and median time, the loss difference to the baseline and the gradient cosines."""
    p = {"n": 8192, "d": 2304, "v": 256000, "dtype": "bfloat16", "softcap": None, "chunk": 1024, "repeats": 5, "warmup": 2,
         "impls": ["torch", "chunked"], **params}
    device = p.get("device", "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise NotRun("needs a GPU (CUDA): none on this machine")
    torch.set_num_threads(int(p.get("threads", 1)))
    fns = {name: _impl(name, p["softcap"], p["chunk"]) for name in p["impls"]}
    e, c, t = _inputs(p, seed, device)
    ref = fns.get("torch") or next(iter(fns.values()))
    ref_loss = _call(ref, e, c, t, "loss_and_grad").item()
    ref_ge, ref_gc = e.grad.double().flatten().clone(), c.grad.double().flatten().clone()
    rows, metrics, done, total = [], {}, 0, len(fns) * 2
    for name, fn in fns.items():
        loss = _call(fn, e, c, t, "loss_and_grad").item()
        metrics[f"loss_abs_diff_{name}"] = abs(loss - ref_loss)
        metrics[f"grad_cosine_e_{name}"] = float(F.cosine_similarity(e.grad.double().flatten(), ref_ge, dim=0))
        metrics[f"grad_cosine_c_{name}"] = float(F.cosine_similarity(c.grad.double().flatten(), ref_gc, dim=0))
        for mode in ("loss", "loss_and_grad"):
            for _ in range(int(p["warmup"])):
                _call(fn, e, c, t, mode)
            if device == "cuda":
                e.grad = c.grad = None
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                _call(fn, e, c, t, mode)
                torch.cuda.synchronize()
                peak = (torch.cuda.max_memory_allocated() - base) / 2**20
            else:
                peak = _cpu_peak_mb(p, name, mode, seed)
            times = _timed(fn, e, c, t, mode, device, int(p["repeats"]))
            metrics[f"memory_MB_{mode}_{name}"] = peak
            metrics[f"seconds_{mode}_{name}"] = float(np.median(times))
            rows += [{"impl": name, "mode": mode, "repeat": r, "seconds": s, "peak_MB": peak} for r, s in enumerate(times)]
            done += 1
            if progress:
                progress(done, total)
    base = "torch" if "torch" in fns else None
    for name in fns:
        if base and name != base:
            for mode in ("loss", "loss_and_grad"):
                metrics[f"memory_ratio_{mode}_{name}"] = metrics[f"memory_MB_{mode}_{base}"] / max(metrics[f"memory_MB_{mode}_{name}"], 1e-9)
                metrics[f"speedup_{mode}_{name}"] = metrics[f"seconds_{mode}_{base}"] / metrics[f"seconds_{mode}_{name}"]
    return metrics, rows
