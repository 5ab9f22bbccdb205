"""A FlashAttention-2-style forward kernel in Triton, in a softmax and a sigmoid variant.

A proxy for FlashSigmoid (Ramapuram et al. 2025), written for softrepro: the official FlashSigmoid
is a CUDA fork of FlashAttention 2.5.6, which needs a long CUDA build.  Both variants share
everything except the normalisation, so their time ratio isolates what the paper's kernel claim
is about (sigmoid attention needs no running row maximum, no rescaling of the accumulator and no
row sum):

* softmax: per query block a running row max m and row sum l; for each key block
  p = exp(s - m_new), acc = acc * exp(m - m_new) + p V, and acc / l at the end (FlashAttention-2's
  online softmax, in base 2 as FA2 does);
* sigmoid: acc += sigmoid(s + b) V, nothing else.

s = scale * q k^T, ``scale`` = 1/sqrt(head dim) by default; ``causal`` masks keys after the query and
skips key blocks wholly above the diagonal.  Inputs are (batch * heads, n, head dim), contiguous;
the head dim is a power of two of at least 16; accumulation is float32.

This module needs ``triton``: softrepro imports it only when a GPU benchmark runs, or under
``TRITON_INTERPRET=1`` in ``make test-triton`` (the kernels on the CPU).
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def attention_fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, N, scale, bias,
                         D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         SIGMOID: tl.constexpr, CAUSAL: tl.constexpr):
    pid_m = tl.program_id(0)
    base = tl.program_id(1).to(tl.int64) * N * D
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    q = tl.load(q_ptr + base + offs_m[:, None] * D + offs_d[None, :], mask=offs_m[:, None] < N, other=0.0)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    m_i = tl.full([BLOCK_M], -float("inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    hi = tl.minimum((pid_m + 1) * BLOCK_M, N) if CAUSAL else N
    for start_n in range(0, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kt = tl.load(k_ptr + base + offs_n[None, :] * D + offs_d[:, None], mask=offs_n[None, :] < N, other=0.0)
        v = tl.load(v_ptr + base + offs_n[:, None] * D + offs_d[None, :], mask=offs_n[:, None] < N, other=0.0)
        s = tl.dot(q, kt) * scale
        valid = offs_n[None, :] < N
        if CAUSAL:
            valid = valid & (offs_m[:, None] >= offs_n[None, :])
        if SIGMOID:
            p = tl.where(valid, tl.sigmoid(s + bias), 0.0)
            acc += tl.dot(p.to(v.dtype), v)
        else:
            s = tl.where(valid, s * LOG2E, -float("inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)  # a row with no valid key yet
            alpha = tl.exp2(m_i - m_safe)
            p = tl.exp2(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
    if not SIGMOID:
        acc = acc / l_i[:, None]
    tl.store(o_ptr + base + offs_m[:, None] * D + offs_d[None, :], acc.to(o_ptr.dtype.element_ty), mask=offs_m[:, None] < N)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, normalisation: str = "softmax",
              causal: bool = False, bias: float = 0.0, scale: float | None = None,
              block_m: int = 128, block_n: int = 64, num_warps: int = 4, num_stages: int = 2) -> torch.Tensor:
    """Attention output for (batch * heads, n, head dim) inputs with ``normalisation`` softmax or sigmoid
    (sigmoid(scale q k^T + bias), no normalisation over keys)."""
    if normalisation not in ("softmax", "sigmoid"):
        raise ValueError(f"normalisation must be softmax or sigmoid, not {normalisation!r}")
    if q.ndim != 3 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k and v must share one (batch * heads, n, head dim) shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    bh, n, d = q.shape
    if d < 16 or d & (d - 1):
        raise ValueError(f"the head dim must be a power of two of at least 16, not {d}")
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    o = torch.empty_like(q)
    grid = (triton.cdiv(n, block_m), bh)
    attention_fwd_kernel[grid](q, k, v, o, n, scale if scale is not None else 1.0 / math.sqrt(d), float(bias),
                               D=d, BLOCK_M=block_m, BLOCK_N=block_n, SIGMOID=normalisation == "sigmoid",
                               CAUSAL=causal, num_warps=num_warps, num_stages=num_stages)
    return o


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, normalisation: str = "softmax",
              causal: bool = False, bias: float = 0.0, scale: float | None = None) -> torch.Tensor:
    """The same attention in float64 with the full score matrix (for tests)."""
    q, k, v = q.double(), k.double(), v.double()
    s = q @ k.transpose(1, 2) * (scale if scale is not None else 1.0 / math.sqrt(q.shape[-1]))
    mask = torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device)
    if causal:
        mask = torch.tril(mask)
    if normalisation == "softmax":
        p = torch.softmax(s.masked_fill(~mask, -math.inf), dim=-1)
    else:
        p = torch.sigmoid(s + bias) * mask
    return p @ v
