"""Kernelized attention with RPE by FFT (Luo et al. 2021): the Toeplitz product, the PRF map, the
normaliser and the benchmark's output, against the paper's formulas (Eqs. 5, 10, 12-13, footnote 3)."""
import math

import pytest
import torch

from softrepro.methods.attention import kernelized_rpe as K
from softrepro.registry import BENCHMARKS


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("n", [1, 2, 5, 8, 33])
def test_toeplitz_matrix_holds_c_of_j_minus_i(n):
    c = torch.randn(2 * n - 1, generator=gen(n), dtype=torch.float64)
    t = K.toeplitz(c)
    for i in range(n):
        for j in range(n):
            assert t[i, j] == c[n - 1 + j - i]


@pytest.mark.parametrize("n", [1, 2, 5, 7, 33, 64])
@pytest.mark.parametrize("causal", [False, True])
def test_fft_toeplitz_product_equals_the_dense_one(n, causal):
    g = gen(n)
    b = torch.randn(3, 2 * n - 1, generator=g, dtype=torch.float64)  # a batch of three (heads)
    if causal:
        b = K.causal_offsets(b)
        assert torch.all(K.toeplitz(torch.exp(b)).triu(1) == 0)  # lower-triangular: no key after its query
    c = torch.exp(b)
    x = torch.randn(3, n, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(K.toeplitz_matmul_fft(c, x), K.toeplitz(c) @ x, rtol=1e-12, atol=1e-12)


def test_fft_product_rejects_a_wrong_number_of_offsets():
    with pytest.raises(ValueError, match="needs 9"):
        K.toeplitz_matmul_fft(torch.ones(7), torch.ones(5, 2))


def test_positive_random_features_are_their_formula():
    g = gen(1)
    x = torch.randn(3, 5, generator=g, dtype=torch.float64)
    w = K.draw_features(7, 5, g)
    phi = K.prf(x, w)
    for i in range(3):
        for r in range(7):
            want = math.exp(float(w[r] @ x[i]) - 0.5 * float(x[i] @ x[i])) / math.sqrt(7)
            assert phi[i, r].item() == pytest.approx(want, rel=1e-12)
    assert torch.all(phi > 0)


def test_positive_random_features_estimate_the_softmax_kernel_without_bias():
    g = gen(2)
    x, y = 0.4 * torch.randn(5, generator=g, dtype=torch.float64), 0.4 * torch.randn(5, generator=g, dtype=torch.float64)
    w = K.draw_features(200_000, 5, g)
    est = float(K.prf(x, w) @ K.prf(y, w))  # E[phi(x) phi(y)^T] = exp(x y^T)
    m = w.shape[0]
    sd = math.sqrt((math.exp(float((x + y) @ (x + y))) - 1) * math.exp(float(x @ y)) ** 2 / m)  # Lemma 2
    assert abs(est - math.exp(float(x @ y))) < 5 * sd


def _eq10_loop(phq, phk, v, b, causal):
    """Eq. (10) written out: z_i = sum_j e^{b_{j-i}} (phi(q_i) . phi(k_j)) v_j / sum_j e^{b_{j-i}} phi(q_i) . phi(k_j)."""
    n = v.shape[0]
    z = torch.zeros_like(v)
    for i in range(n):
        num, den = torch.zeros(v.shape[1], dtype=v.dtype), 0.0
        for j in range(n if not causal else i + 1):
            s = math.exp(float(b[n - 1 + j - i])) * float(phq[i] @ phk[j])
            num += s * v[j]
            den += s
        z[i] = num / den
    return z


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n", [1, 6, 9])
def test_dense_and_fft_attention_are_eq10_with_its_normaliser(n, causal):
    g = gen(10 + n)
    q, k, v = (torch.randn(n, 4, generator=g, dtype=torch.float64) for _ in range(3))
    b = torch.randn(2 * n - 1, generator=g, dtype=torch.float64)
    w = K.draw_features(6, 4, g)
    phq, phk = K.prf(K.l2_normalise(q), w), K.prf(K.l2_normalise(k), w)
    want = _eq10_loop(phq, phk, v, b, causal)
    torch.testing.assert_close(K.kernelized_rpe_dense(phq, phk, v, b, causal), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(K.kernelized_rpe_fft(phq, phk, v, b, causal), want, rtol=1e-10, atol=1e-10)
    weights = K.rpe_attention_weights_prf(phq, phk, b, causal)  # D^-1 (C o phi(Q) phi(K)^T): rows sum to one
    torch.testing.assert_close(weights.sum(-1), torch.ones(n, dtype=torch.float64))
    torch.testing.assert_close(weights @ v, want)


def test_causal_output_ignores_later_keys_and_values():
    g = gen(3)
    n = 7
    q, k, v = (torch.randn(n, 4, generator=g, dtype=torch.float64) for _ in range(3))
    b, w = torch.randn(2 * n - 1, generator=g, dtype=torch.float64), K.draw_features(5, 4, g)
    z = K.nprf_rpe(q, k, v, b, w, causal=True, method="fft")
    k2, v2 = k.clone(), v.clone()
    k2[4:], v2[4:] = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, generator=g, dtype=torch.float64)
    z2 = K.nprf_rpe(q, k2, v2, b, w, causal=True, method="fft")
    torch.testing.assert_close(z2[:4], z[:4], rtol=1e-10, atol=1e-10)
    assert not torch.allclose(z2[4:], z[4:])


def test_softmax_with_rpe_is_softmax_of_logits_plus_b_j_minus_i():
    g = gen(4)
    n = 5
    q, k = torch.randn(n, 3, generator=g, dtype=torch.float64), torch.randn(n, 3, generator=g, dtype=torch.float64)
    b = torch.randn(2 * n - 1, generator=g, dtype=torch.float64)
    a = K.rpe_attention_weights_softmax(q, k, b)
    logits = torch.tensor([[float(q[i] @ k[j]) + float(b[n - 1 + j - i]) for j in range(n)] for i in range(n)], dtype=torch.float64)
    torch.testing.assert_close(a, torch.softmax(logits, -1))
    causal = K.rpe_attention_weights_softmax(q, k, b, causal=True)
    assert torch.all(causal.triu(1) == 0)
    torch.testing.assert_close(causal.sum(-1), torch.ones(n, dtype=torch.float64))


def test_prf_attention_approaches_softmax_with_rpe_as_features_grow():
    g = gen(5)
    errs = [K.rpe_approx_error(m, 16, 8, 1.0, False, g) for m in (4, 4096)]
    assert errs[1] < errs[0] / 4


def test_crossover_interpolates_where_fft_becomes_and_stays_faster():
    assert K._crossover([1, 2, 4], [0.5, 0.8, 0.9]) is None
    assert K._crossover([1, 2, 4], [2.0, 3.0, 4.0]) == 1.0
    x = K._crossover([100, 200, 400, 800], [0.5, 2.0, 0.9, 1.5])  # faster from between 400 and 800 on
    assert 400 < x < 800


def test_benchmark_reports_every_part_on_a_tiny_case():
    run = BENCHMARKS.get("kernelized_rpe")
    params = {"parts": ["exact", "timing", "approx"], "d": 8, "m": 4, "exact_sizes": [1, 5, 16], "sizes": [8, 16],
              "repeats": 2, "min_time_s": 0.0, "features": [2, 32], "radii": [1, 8], "keys": 16, "trials": 2, "rpe_n": 8,
              "threads": 1}
    metrics, rows = run(params, seed=0)
    for key in ["max_rel_err_fft", "max_rel_err_fft_bidirectional", "max_rel_err_fft_causal", "max_rel_err_fft_float32",
                "t_fft_nmax", "t_dense_nmax", "t_softmax_nmax", "speedup_dense_nmax", "speedup_softmax_nmax", "n_max",
                "t_fft_n8", "speedup_dense_n16", "growth_fft", "err_R1_m2", "err_R8_m32", "err_R1_mmin", "err_R1_mmax",
                "err_R1_drop", "err_R8_drop", "err_rpe_mmin", "err_rpe_mmax", "err_rpe_drop"]:
        assert key in metrics and math.isfinite(metrics[key]), key
    assert metrics["max_rel_err_fft"] < 1e-9
    assert metrics["n_max"] == 16
    assert {r["part"] for r in rows} == {"exact", "timing", "approx"}
    assert len([r for r in rows if r["part"] == "timing"]) == 2 * 2
    assert len([r for r in rows if r["part"] == "exact"]) == 3 * 2
    assert torch.get_num_threads() >= 1


def test_benchmark_rejects_unknown_parts():
    with pytest.raises(ValueError, match="unknown parts"):
        BENCHMARKS.get("kernelized_rpe")({"parts": ["exactly"]}, seed=0)
