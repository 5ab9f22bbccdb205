import numpy as np
import pytest
from scipy.special import softmax as ref_softmax

from softrepro.methods.kernels import online_softmax as osm
from softrepro.registry import BENCHMARKS

RNG = np.random.default_rng(0)


def _rows(scale=1.0, shape=(5, 777)):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


@pytest.mark.parametrize("kernel", [osm.naive_softmax, osm.safe_softmax, osm.online_softmax])
def test_softmax_kernels_match_reference(kernel):
    x = _rows(3.0)
    y = np.empty_like(x)
    kernel(x, y)
    np.testing.assert_allclose(y, ref_softmax(x.astype(np.float64), axis=1), rtol=2e-4, atol=1e-7)


def test_large_logits_break_naive_but_not_safe_or_online():
    x = _rows(1.0) + np.float32(1000.0)
    ref = ref_softmax(x.astype(np.float64), axis=1)
    y = np.empty_like(x)
    for kernel in (osm.safe_softmax, osm.online_softmax):
        kernel(x, y)
        assert np.isfinite(y).all()
        np.testing.assert_allclose(y, ref, rtol=2e-3, atol=1e-7)
    osm.naive_softmax(x, y)
    assert not np.isfinite(y).all()  # exp(1000) overflows float32: the naive form is unsafe


def test_md_merge_is_order_independent():
    row = _rows(4.0, (1, 1000))[0]
    m, d = osm._online_md(row)
    acc_m, acc_d = np.float32(-np.inf), np.float32(0.0)
    for chunk in np.array_split(row, 7)[::-1]:  # merge partial results in reverse order
        cm, cd = osm._online_md(chunk)
        acc_m, acc_d = osm.md_merge(acc_m, acc_d, cm, cd)
    assert acc_m == m == row.max()
    assert acc_d == pytest.approx(float(d), rel=1e-5)
    assert float(d) == pytest.approx(np.exp(row.astype(np.float64) - row.max()).sum(), rel=1e-4)


def _ref_topk(a, k):
    order = np.lexsort((np.arange(a.shape[1])[None, :].repeat(a.shape[0], 0), -a), axis=1)[:, :k]
    return order, np.take_along_axis(a, order, 1)


@pytest.mark.parametrize("variant", ["topk", "safe_topk_unfused", "safe_topk_fused", "online_topk_fused"])
def test_topk_variants(variant):
    x = _rows(2.0, (6, 500))
    x[0, 10] = x[0, 20] = x[0].max() + 1  # a tie: the lower index comes first
    k = 5
    oi = np.empty((x.shape[0], k), dtype=np.int64)
    ov = np.empty((x.shape[0], k), dtype=np.float32)
    if variant == "topk":
        osm.topk(x, oi, ov)
        want_i, want_v = _ref_topk(x, k)
    else:
        args = (x, np.empty_like(x), oi, ov) if variant == "safe_topk_unfused" else (x, oi, ov)
        getattr(osm, variant)(*args)
        p = ref_softmax(x.astype(np.float64), axis=1)
        want_i, want_v = _ref_topk(p, k)
    np.testing.assert_array_equal(oi, want_i)
    assert oi[0, 0] == 10 and oi[0, 1] == 20
    np.testing.assert_allclose(ov, want_v, rtol=2e-4)


def test_benchmark_returns_documented_metrics_and_rows():
    metrics, rows = BENCHMARKS.get("online_softmax")(
        {"batch_size": 8, "v_start": 63, "v_max": 256, "min_time_s": 0.001, "repeats": 2, "threads": 1}, 0)
    assert [(r["V"], r["repeat"]) for r in rows] == [(v, r) for v in (63, 126, 252) for r in (0, 1)]
    for r in rows:
        assert all(r[f"t_{v}"] > 0 for v in osm.VARIANTS)
        assert r["softmax_speedup"] == pytest.approx(r["t_safe"] / r["t_online"])
        assert r["topk_speedup"] == pytest.approx(r["t_safe_topk_unfused"] / r["t_online_topk_fused"])
        # the roofline: the kernel's bytes per second over the copy's (3 accesses for online, 2 for the copy)
        assert r["roofline_online"] == pytest.approx((3 / r["t_online"]) / (2 / r["t_copy"]))
    for key in ("softmax_speedup", "topk_speedup"):  # the largest per-size median over the repeats
        med = {v: np.median([r[key] for r in rows if r["V"] == v]) for v in (63, 126, 252)}
        assert metrics[f"{key}_max"] == pytest.approx(max(med.values()))
        assert metrics[f"v_at_{key}_max"] == max(med, key=med.get)
        assert metrics[f"{key}_max"] >= metrics[f"{key}_median"]
    assert metrics["max_abs_err_online_vs_safe"] < 1e-5


def test_copy_kernel_copies():
    x = np.random.default_rng(0).random((3, 70), dtype=np.float32)
    y = np.zeros_like(x)
    osm.copy(x, y)
    np.testing.assert_array_equal(x, y)
