"""The Two-Pass and Three-Pass softmax kernels (C, AVX512F and AVX2) against a float64 reference."""
import re

import numpy as np
import pytest

from softrepro.methods.kernels import two_pass as tp

SOFTMAX_KERNELS = [k for k in tp.KERNELS if k != "copy"]


def _runnable(kernel: str) -> bool:
    return tp.supported(kernel.rsplit("_", 1)[1])


def test_exp_polynomial_is_accurate_in_float32():
    consts = dict(re.findall(r"#define (C[0-5]) ([0-9.e-]+)f", tp.SOURCE.read_text()))
    c = [np.float32(consts[f"C{i}"]) for i in range(6)]
    t = np.linspace(-np.log(2) / 2, np.log(2) / 2, 100_001).astype(np.float32)
    p = c[5]
    for ci in c[4::-1]:
        p = p * t + ci
    rel = np.abs(p.astype(np.float64) / np.exp(t.astype(np.float64)) - 1)
    assert rel.max() < 3e-7


@pytest.mark.parametrize("kernel", SOFTMAX_KERNELS)
@pytest.mark.parametrize("n", [1, 7, 16, 63, 64, 1001, 100_003])
@pytest.mark.parametrize("scale", [1000.0, 3.0])
def test_kernel_matches_float64_softmax(kernel, n, scale):
    if not _runnable(kernel):
        pytest.skip(f"this CPU cannot run {kernel}")
    x = np.random.default_rng(n).uniform(-scale, scale, n).astype(np.float32)
    ref = tp.reference(x)
    y = tp.softmax(x, kernel)
    assert np.abs(y - ref).max() < 1e-6
    assert abs(float(y.sum(dtype=np.float64)) - 1) < 1e-5
    big = ref > 1e-30
    assert (np.abs(y[big] - ref[big]) / ref[big]).max() < 2e-6  # relative accuracy of every term that matters


def test_extremes_do_not_overflow_and_ties_split_evenly():
    x = np.array([88.0, 88.0, -1e4, 3e4, 3e4] + [0.0] * 40, dtype=np.float32)
    for kernel in filter(_runnable, SOFTMAX_KERNELS):
        y = tp.softmax(x, kernel)
        assert np.isfinite(y).all()
        assert y[3] == pytest.approx(0.5, abs=1e-6) and y[4] == pytest.approx(0.5, abs=1e-6)


def test_benchmark_rows_and_metrics():
    metrics, rows = tp.run_benchmark({"n_min": 1000, "n_max": 3000, "repeats": 2, "min_calls": 2, "min_seconds": 0.0,
                                      "cache_factor": 0.001, "torch": True}, seed=0)
    assert [(r["n"], r["repeat"]) for r in rows] == [(1000, 0), (1000, 1), (3000, 0), (3000, 1)]
    isas = metrics["isas"].split(",")
    assert "avx2" in isas
    for r in rows:
        assert r["buffers"] >= 2 and r["t_copy"] > 0 and r["t_torch"] > 0
        for isa in isas:
            assert r[f"speedup_{isa}"] == pytest.approx(min(r[f"t_three_pass_recompute_{isa}"], r[f"t_three_pass_reload_{isa}"])
                                                       / r[f"t_two_pass_{isa}"])
            assert r[f"gbps_two_pass_{isa}"] == pytest.approx(8 * r["n"] / r[f"t_two_pass_{isa}"] / 1e9)
    assert all(v < 1e-6 for k, v in metrics.items() if k.startswith("max_abs_err_"))
    assert metrics["speedup_avx2_max"] == max(np.median([r["speedup_avx2"] for r in rows if r["n"] == n]) for n in (1000, 3000))


def test_sizes_follow_the_papers_grid():
    assert tp.sizes_between(1000, 30_000_000) == [1000, 3000, 10_000, 30_000, 100_000, 300_000, 1_000_000, 3_000_000,
                                                   10_000_000, 30_000_000]


def test_a_failed_compile_names_the_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", "/bin/false")
    with pytest.raises(RuntimeError, match="with /bin/false failed"):
        tp.build(tmp_path)
    assert not list(tmp_path.iterdir())  # nothing half-written
