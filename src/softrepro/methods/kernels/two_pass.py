"""The Two-Pass softmax (Dukhan & Ablavatski 2020) beside the two Three-Pass variants, on this CPU.

The kernels are C with AVX512F and with AVX2+FMA intrinsics (``two_pass.c``, written for this project
from the paper's description; not XNNPACK's microkernels), compiled by ``build()`` with the system C
compiler into ``build/kernels/`` (``make install`` does it once; a missing or stale library is rebuilt
on first use) and called through ctypes.  Each call is one softmax of a float32 vector of n elements,
on one thread, as in the paper's benchmark.

The benchmark times, for each n from in-cache to 30 M floats, every algorithm and instruction set,
``torch.softmax`` (one thread) and a memcpy of the same bytes (the bandwidth roofline), cycling over
enough input/output buffer pairs that each sweep touches at least ``cache_factor`` times the
last-level cache, so that every call reads its input from memory ("out-of-cache"; the LLC size is
read from sysfs and recorded).  Inputs are uniform in [-1000, 1000] as in the paper.  Throughput is
counted as the paper does, 8 n bytes per call (the input read once and the output written once),
whatever the algorithm really moves.  Per size and repeat the rows carry each kernel's seconds per
call (``t_<kernel>``), GB/s (``gbps_<kernel>``) and the speedups the paper claims, Three-Pass time
over Two-Pass time per instruction set (against the faster of the two Three-Pass variants, and
against each).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from softrepro.registry import BENCHMARKS

SOURCE = Path(__file__).with_name("two_pass.c")
# kernel ids of time_kernel() in two_pass.c
KERNELS = {"three_pass_recompute_avx512": 0, "three_pass_reload_avx512": 1, "two_pass_avx512": 2,
           "three_pass_recompute_avx2": 3, "three_pass_reload_avx2": 4, "two_pass_avx2": 5, "copy": 6}
ISAS = {"avx512": 0, "avx2": 1}
CFLAGS = ["-O2", "-shared", "-fPIC", "-std=c11", "-fno-math-errno", "-Wall", "-Werror"]


def build_dir() -> Path:
    from softrepro.spec import repo_root

    return Path(os.environ.get("SOFTREPRO_BUILD", repo_root() / "build")) / "kernels"


def build(out_dir: Path | None = None) -> Path:
    """Compile ``two_pass.c`` into ``<build>/kernels/two_pass-<source digest>.so`` (atomic; kept
    when it exists).  Needs a C compiler (``$CC``, else cc or gcc)."""
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(CFLAGS).encode()).hexdigest()[:12]
    out_dir = out_dir or build_dir()
    lib = out_dir / f"two_pass-{digest}.so"
    if lib.is_file():
        return lib
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise RuntimeError("the Two-Pass softmax kernels need a C compiler (set CC, or install gcc)")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = lib.with_suffix(f".{os.getpid()}.tmp")
    res = subprocess.run([cc, *CFLAGS, "-o", str(tmp), str(SOURCE), "-lm"], capture_output=True, text=True)
    if res.returncode:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"compiling {SOURCE} with {cc} failed:\n{res.stderr}")
    os.replace(tmp, lib)
    return lib


_LIB = None


def library() -> ctypes.CDLL:
    global _LIB
    if _LIB is None:
        lib = ctypes.CDLL(str(build()))
        f32p = ctypes.POINTER(ctypes.c_float)
        for name in KERNELS:
            fn = getattr(lib, "copy_memcpy" if name == "copy" else name)
            fn.argtypes, fn.restype = [f32p, f32p, ctypes.c_size_t], None
        lib.time_kernel.argtypes = [ctypes.c_int, f32p, f32p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_double]
        lib.time_kernel.restype = ctypes.c_double
        lib.has_isa.argtypes, lib.has_isa.restype = [ctypes.c_int], ctypes.c_int
        _LIB = lib
    return _LIB


def _ptr(a: np.ndarray):
    assert a.dtype == np.float32 and a.flags.c_contiguous
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))


def supported(isa: str) -> bool:
    return bool(library().has_isa(ISAS[isa]))


def softmax(x: np.ndarray, kernel: str) -> np.ndarray:
    """One softmax of the 1-D float32 vector ``x`` with ``kernel`` (a key of KERNELS but 'copy')."""
    if kernel.endswith("avx512") and not supported("avx512") or kernel.endswith("avx2") and not supported("avx2"):
        raise RuntimeError(f"this CPU cannot run {kernel}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.empty_like(x)
    getattr(library(), kernel)(_ptr(x), _ptr(y), x.size)
    return y


def reference(x: np.ndarray) -> np.ndarray:
    """Softmax in float64."""
    z = np.asarray(x, dtype=np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


def llc_bytes() -> int:
    """The largest cache level's size from sysfs (0 when unknown)."""
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip().upper()
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1], 1)
        sizes.append(int(text.rstrip("KMG")) * mult)
    return max(sizes, default=0)


def sizes_between(n_min: int, n_max: int) -> list[int]:
    """1, 3, 10, 30, ... times powers of ten (the paper's grid: 1K, 3K, 10K, ... 30M)."""
    out, base = [], 1
    while base <= n_max:
        out += [n for n in (base, 3 * base) if n_min <= n <= n_max]
        base *= 10
    return out


def _time_torch(xs: np.ndarray, ys: np.ndarray, n: int, nbuf: int, min_calls: int, min_seconds: float) -> float:
    import time

    import torch

    tx, ty = torch.from_numpy(xs), torch.from_numpy(ys)
    calls, t0 = 0, time.perf_counter()
    while True:
        j = calls % nbuf
        torch._softmax(tx[j * n : (j + 1) * n], 0, False, out=ty[j * n : (j + 1) * n])
        calls += 1
        if calls >= max(min_calls, nbuf) and time.perf_counter() - t0 >= min_seconds:
            return (time.perf_counter() - t0) / calls


@BENCHMARKS.register("two_pass_softmax", params=("n_min", "n_max", "repeats", "min_calls", "min_seconds", "cache_factor", "torch"))
def run_benchmark(params: dict, seed: int, progress=None) -> tuple[dict, list[dict]]:
    """One row per (n, repeat): every kernel's time per call, GB/s and the Two-Pass speedups.  Within
    a repeat the kernels run one after another on the same buffers, so a repeat's speedup compares
    timings taken moments apart; the order of the kernels rotates with the repeat."""
    import torch

    n_min, n_max = int(params.get("n_min", 1000)), int(params.get("n_max", 30_000_000))
    repeats, min_calls = int(params.get("repeats", 5)), int(params.get("min_calls", 5))
    min_seconds, cache_factor = float(params.get("min_seconds", 0.1)), float(params.get("cache_factor", 2.0))
    with_torch = bool(params.get("torch", True))
    lib = library()
    isas = [i for i in ISAS if supported(i)]
    kernels = [k for k in KERNELS if k == "copy" or k.rsplit("_", 1)[1] in isas]
    llc = llc_bytes() or 64 << 20
    torch.set_num_threads(1)
    rng = np.random.default_rng(seed)
    sizes = sizes_between(n_min, n_max)
    nbufs = {n: max(2, int(np.ceil(cache_factor * llc / (8 * n)))) for n in sizes}
    floats = max(nbufs[n] * n for n in sizes)
    x_all = rng.random(floats, dtype=np.float32) * np.float32(2000.0) - np.float32(1000.0)  # uniform [-1000, 1000)
    y_all = np.zeros_like(x_all)
    rows, done, total = [], 0, len(sizes) * repeats
    for n in sizes:
        nbuf = nbufs[n]
        xs, ys = x_all[: nbuf * n], y_all[: nbuf * n]
        names = kernels + (["torch"] if with_torch else [])
        for r in range(repeats):
            row = {"n": n, "repeat": r, "buffers": nbuf, "footprint_MB": 8 * n * nbuf / 1e6}
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                if name == "torch":
                    t = _time_torch(xs, ys, n, nbuf, min_calls, min_seconds)
                else:
                    t = lib.time_kernel(KERNELS[name], _ptr(xs), _ptr(ys), n, nbuf, min_calls, min_seconds)
                row[f"t_{name}"] = t
                row[f"gbps_{name}"] = 8 * n / t / 1e9
            for isa in isas:
                two = row[f"t_two_pass_{isa}"]
                rec, rel = row[f"t_three_pass_recompute_{isa}"], row[f"t_three_pass_reload_{isa}"]
                row[f"speedup_{isa}"] = min(rec, rel) / two
                row[f"speedup_{isa}_vs_recompute"] = rec / two
                row[f"speedup_{isa}_vs_reload"] = rel / two
                row[f"roofline_two_pass_{isa}"] = row[f"gbps_two_pass_{isa}"] / row["gbps_copy"]
            rows.append(row)
            done += 1
            if progress:
                progress(done, total)
    del x_all, y_all, xs, ys
    import pandas as pd

    df = pd.DataFrame(rows)
    check = rng.uniform(-1000.0, 1000.0, 1_000_003).astype(np.float32)  # not a multiple of any vector width
    ref = reference(check)
    metrics = {"llc_bytes": llc, "n_sizes": len(sizes), "isas": ",".join(isas)}
    for k in kernels:
        if k != "copy":
            metrics[f"max_abs_err_{k}"] = float(np.abs(softmax(check, k) - ref).max())
    for isa in isas:
        per_n = df.groupby("n")[f"speedup_{isa}"].median()
        metrics.update({f"speedup_{isa}_max": float(per_n.max()), f"n_at_speedup_{isa}_max": int(per_n.idxmax()),
                        f"speedup_{isa}_largest_n": float(per_n.iloc[-1])})
    metrics["gbps_copy_largest_n"] = float(df[df["n"] == sizes[-1]]["gbps_copy"].median())
    return metrics, rows


# The report draws each kernel's GB/s against n (log x), with memcpy as the roofline.
run_benchmark.figure = {"kind": "sweep", "x": "n", "y_prefix": "gbps_", "ylabel": "GB/s (8 n bytes per call)", "log": "x"}


if __name__ == "__main__":  # make install: build the library once
    print(build())
