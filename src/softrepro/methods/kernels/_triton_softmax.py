"""Triton GPU kernels of the online-normalizer benchmark design (Milakov & Gimelshein 2018).

Written for softrepro from the paper's algorithms and the official benchmark's list of variants
(``NVIDIA/online-softmax``), not a port of its CUDA.  As there, one program handles one vector (the
reference gives each vector a thread block); it walks the row in blocks of ``BLOCK`` elements held
in registers, so every pass over the row is one read of it from memory.  Per element:

* ``naive``  : sum exp(x) | write exp(x)/d                          (3 accesses; overflows for large x)
* ``safe``   : max | sum exp(x - m) | write exp(x - m)/d            (4 accesses)
* ``online`` : per-lane running (m, d) in one pass | write          (3 accesses)
* ``topk``   : the K largest of x                                   (1 access)
* ``safe_topk_fused``   : max | d and the top K of x                (2 accesses)
* ``online_topk_fused`` : (m, d) and the top K of x in one pass     (1 access)
* safe + top-K unfused is ``safe`` followed by ``topk`` on its output (5 accesses).

Top K: each program keeps its K largest (value, index) pairs, padded to a power of two with -inf,
and merges a block into them only when the block's largest value beats the current K-th (after the
first blocks of a long row almost never), by K rounds of "take the larger of the two maxima".
Equal values keep the lower index first.

This module needs ``triton``; softrepro imports it only when a GPU benchmark runs (or under
``TRITON_INTERPRET=1`` in ``make test-triton``, which runs the kernels on the CPU).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

LOW = -1e30  # a finite "minus infinity" for running maxima: exp(LOW - LOW) is 1 where -inf - -inf is nan


@triton.jit
def _block(row_ptr, start, V, BLOCK: tl.constexpr):
    offs = start + tl.arange(0, BLOCK)
    return tl.load(row_ptr + offs, mask=offs < V, other=float("-inf")).to(tl.float32), offs


@triton.jit
def _row_max(row_ptr, V, BLOCK: tl.constexpr):
    """The safe algorithms' first pass: the row's maximum."""
    mv = tl.full([BLOCK], LOW, tl.float32)
    for start in range(0, V, BLOCK):
        x, _ = _block(row_ptr, start, V, BLOCK)
        mv = tl.maximum(mv, x)
    return tl.max(mv, axis=0)


@triton.jit
def _online_merge(m, d, x):
    """Add a block to the per-lane running (max, sum of exp(x - max))."""
    m_new = tl.maximum(m, x)
    return m_new, d * tl.exp(m - m_new) + tl.exp(x - m_new)


@triton.jit
def _kth(tv, K: tl.constexpr, KP: tl.constexpr):
    """The K-th largest value kept so far (-inf while fewer than K are kept)."""
    return tl.max(tl.where(tl.arange(0, KP) == K - 1, tv, float("-inf")), axis=0)


@triton.jit
def _merge_topk(tv, ti, x, start, K: tl.constexpr, KP: tl.constexpr, BLOCK: tl.constexpr):
    """The K largest of the kept (tv, ti) and of the block x (indices start + lane), in descending order."""
    slots = tl.arange(0, KP)
    lanes = tl.arange(0, BLOCK)
    nv = tl.full([KP], float("-inf"), tl.float32)
    ni = tl.full([KP], -1, tl.int64)
    for k in tl.static_range(K):
        a = tl.max(tv, axis=0)
        b = tl.max(x, axis=0)
        ja = tl.argmax(tv, axis=0)
        jb = tl.argmax(x, axis=0)
        from_x = b > a  # a tie goes to the kept value: it came from an earlier block, a lower index
        ia = tl.sum(tl.where(slots == ja, ti, 0), axis=0)
        nv = tl.where(slots == k, tl.where(from_x, b, a), nv)
        ni = tl.where(slots == k, tl.where(from_x, start + jb, ia), ni)
        x = tl.where(lanes == jb, tl.where(from_x, float("-inf"), x), x)
        tv = tl.where(from_x, tv, tl.where(slots == ja, float("-inf"), tv))
    return nv, ni


@triton.jit
def _store_topk(val_ptr, idx_ptr, row, vals, ti, K: tl.constexpr, KP: tl.constexpr):
    """Write the first K of the kept values (or their probabilities) and indices."""
    slots = tl.arange(0, KP)
    keep = slots < K
    tl.store(val_ptr + row * K + slots, vals, mask=keep)
    tl.store(idx_ptr + row * K + slots, ti, mask=keep)


@triton.jit
def naive_kernel(x_ptr, y_ptr, V, stride, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    xr, yr = x_ptr + row * stride, y_ptr + row * stride
    acc = tl.zeros([BLOCK], tl.float32)
    for start in range(0, V, BLOCK):
        x, _ = _block(xr, start, V, BLOCK)
        acc += tl.exp(x)
    inv = 1.0 / tl.sum(acc, axis=0)
    for start in range(0, V, BLOCK):
        x, offs = _block(xr, start, V, BLOCK)
        tl.store(yr + offs, tl.exp(x) * inv, mask=offs < V)


@triton.jit
def safe_kernel(x_ptr, y_ptr, V, stride, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    xr, yr = x_ptr + row * stride, y_ptr + row * stride
    m = _row_max(xr, V, BLOCK)
    acc = tl.zeros([BLOCK], tl.float32)
    for start in range(0, V, BLOCK):
        x, _ = _block(xr, start, V, BLOCK)
        acc += tl.exp(x - m)
    inv = 1.0 / tl.sum(acc, axis=0)
    for start in range(0, V, BLOCK):
        x, offs = _block(xr, start, V, BLOCK)
        tl.store(yr + offs, tl.exp(x - m) * inv, mask=offs < V)


@triton.jit
def online_kernel(x_ptr, y_ptr, V, stride, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    xr, yr = x_ptr + row * stride, y_ptr + row * stride
    mv = tl.full([BLOCK], LOW, tl.float32)
    dv = tl.zeros([BLOCK], tl.float32)
    for start in range(0, V, BLOCK):
        x, _ = _block(xr, start, V, BLOCK)
        mv, dv = _online_merge(mv, dv, x)
    m = tl.max(mv, axis=0)
    inv = 1.0 / tl.sum(dv * tl.exp(mv - m), axis=0)
    for start in range(0, V, BLOCK):
        x, offs = _block(xr, start, V, BLOCK)
        tl.store(yr + offs, tl.exp(x - m) * inv, mask=offs < V)


@triton.jit
def topk_kernel(x_ptr, val_ptr, idx_ptr, V, stride, K: tl.constexpr, KP: tl.constexpr, BLOCK: tl.constexpr):
    """The K largest values of each row (raw values, not probabilities) and their indices."""
    row = tl.program_id(0).to(tl.int64)
    xr = x_ptr + row * stride
    tv = tl.full([KP], float("-inf"), tl.float32)
    ti = tl.full([KP], -1, tl.int64)
    for start in range(0, V, BLOCK):
        x, _ = _block(xr, start, V, BLOCK)
        if tl.max(x, axis=0) > _kth(tv, K, KP):
            tv, ti = _merge_topk(tv, ti, x, start, K, KP, BLOCK)
    _store_topk(val_ptr, idx_ptr, row, tv, ti, K, KP)


@triton.jit
def safe_topk_fused_kernel(x_ptr, val_ptr, idx_ptr, V, stride, K: tl.constexpr, KP: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    xr = x_ptr + row * stride
    m = _row_max(xr, V, BLOCK)
    acc = tl.zeros([BLOCK], tl.float32)
    tv = tl.full([KP], float("-inf"), tl.float32)
    ti = tl.full([KP], -1, tl.int64)
    for start in range(0, V, BLOCK):
        x, _ = _block(xr, start, V, BLOCK)
        acc += tl.exp(x - m)
        if tl.max(x, axis=0) > _kth(tv, K, KP):
            tv, ti = _merge_topk(tv, ti, x, start, K, KP, BLOCK)
    _store_topk(val_ptr, idx_ptr, row, tl.exp(tv - m) / tl.sum(acc, axis=0), ti, K, KP)


@triton.jit
def online_topk_fused_kernel(x_ptr, val_ptr, idx_ptr, V, stride, K: tl.constexpr, KP: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    xr = x_ptr + row * stride
    mv = tl.full([BLOCK], LOW, tl.float32)
    dv = tl.zeros([BLOCK], tl.float32)
    tv = tl.full([KP], float("-inf"), tl.float32)
    ti = tl.full([KP], -1, tl.int64)
    for start in range(0, V, BLOCK):
        x, _ = _block(xr, start, V, BLOCK)
        mv, dv = _online_merge(mv, dv, x)
        if tl.max(x, axis=0) > _kth(tv, K, KP):
            tv, ti = _merge_topk(tv, ti, x, start, K, KP, BLOCK)
    m = tl.max(mv, axis=0)
    _store_topk(val_ptr, idx_ptr, row, tl.exp(tv - m) / tl.sum(dv * tl.exp(mv - m), axis=0), ti, K, KP)


SOFTMAX = {"naive": naive_kernel, "safe": safe_kernel, "online": online_kernel}
FUSED = {"safe_topk_fused": safe_topk_fused_kernel, "online_topk_fused": online_topk_fused_kernel}


def launch_config(V: int) -> tuple[int, int]:
    """(BLOCK, num_warps) for rows of V elements: the row in blocks of up to 4,096 values."""
    block = max(128, min(triton.next_power_of_2(V), 4096))
    return block, 4 if block <= 1024 else 8


def _check(x: torch.Tensor) -> None:
    if x.ndim != 2 or x.dtype != torch.float32 or x.stride(1) != 1:
        raise ValueError(f"expected a 2-D float32 tensor with unit stride along rows, got {tuple(x.shape)} {x.dtype}")


def softmax(x: torch.Tensor, variant: str = "online", out: torch.Tensor | None = None) -> torch.Tensor:
    """Row-wise softmax of a (batch, V) float32 tensor by one of ``naive``, ``safe``, ``online``."""
    _check(x)
    y = torch.empty_like(x) if out is None else out
    block, warps = launch_config(x.shape[1])
    SOFTMAX[variant][(x.shape[0],)](x, y, x.shape[1], x.stride(0), BLOCK=block, num_warps=warps)
    return y


def _topk_buffers(x: torch.Tensor, k: int):
    return (torch.empty((x.shape[0], k), dtype=torch.float32, device=x.device),
            torch.empty((x.shape[0], k), dtype=torch.int64, device=x.device))


def topk(x: torch.Tensor, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest values of each row and their indices (descending)."""
    _check(x)
    vals, idx = _topk_buffers(x, k)
    block, warps = launch_config(x.shape[1])
    topk_kernel[(x.shape[0],)](x, vals, idx, x.shape[1], x.stride(0), K=k, KP=triton.next_power_of_2(k),
                               BLOCK=block, num_warps=warps)
    return vals, idx


def softmax_topk(x: torch.Tensor, k: int = 5, variant: str = "online_topk_fused",
                 y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest softmax probabilities of each row and their indices: ``safe_topk_unfused`` (safe
    softmax into ``y``, then top-K of it), ``safe_topk_fused`` or ``online_topk_fused``."""
    _check(x)
    if variant == "safe_topk_unfused":
        return topk(softmax(x, "safe", out=y), k)
    vals, idx = _topk_buffers(x, k)
    block, warps = launch_config(x.shape[1])
    FUSED[variant][(x.shape[0],)](x, vals, idx, x.shape[1], x.stride(0), K=k, KP=triton.next_power_of_2(k),
                                  BLOCK=block, num_warps=warps)
    return vals, idx
