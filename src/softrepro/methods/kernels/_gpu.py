"""What the Triton GPU benchmarks share: the device check, the kernels' import and the timer.

``device: cuda`` (the default) needs CUDA and triton, else the benchmark is *not run* with the reason.
``device: cpu`` exists for tests only: under ``TRITON_INTERPRET=1`` Triton runs the kernels on the CPU
through its interpreter (``make test-triton``), so a whole benchmark can be checked end to end
without a GPU; its times are the interpreter's and mean nothing.
"""
from __future__ import annotations

import importlib
import os
import time

import torch

from softrepro.registry import NotRun


def kernels(module: str, device: str):
    """Import ``softrepro.methods.kernels.<module>`` (which needs triton) for a run on ``device``."""
    if device not in ("cuda", "cpu"):
        raise ValueError(f"device must be cuda or cpu, not {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise NotRun("needs a GPU (CUDA): none on this machine")
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("device: cpu runs the Triton kernels through Triton's interpreter only (TRITON_INTERPRET=1, "
                         "as `make test-triton` sets it); on a GPU use device: cuda")
    try:
        return importlib.import_module(f"softrepro.methods.kernels.{module}")
    except ImportError as err:
        raise NotRun(f"needs triton (the GPU extra: pip install -e '.[gpu]'): {err}") from None


def timer(device: str, warmup_ms: float, rep_ms: float):
    """Seconds per call of a no-argument function: on a GPU the median of triton.testing.do_bench (CUDA
    events, warm-up, the L2 cache flushed before every call); under the interpreter one wall-clock call."""
    if device == "cuda":
        from triton.testing import do_bench

        return lambda fn: do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median") / 1e3

    def once(fn):
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    return once


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else "cpu (Triton interpreter: times mean nothing)"
