"""Zhao & Zhu 2023, knowledge transfer over finite domains: the four students, the teachers of
Appendix F and the risk TV(pi_hat, pi* | rho), against small cases worked out by hand."""
import math

import numpy as np
import pytest
from scipy import stats

from softrepro.methods.distillation.knowledge_transfer import (ce_ptl_limit, expected_risks, loglog_slope, run_benchmark,
                                                               students, teacher, tv_given_rho)

# Two inputs, four labels; input 0 was seen 4 times (labels 0, 0, 0, 2), input 1 never.
PI = np.array([[0.4, 0.3, 0.2, 0.1],
               [0.7, 0.1, 0.1, 0.1]])
RHO = np.array([0.6, 0.4])
COUNTS = np.array([[3, 0, 1, 0],
                   [0, 0, 0, 0]])


def test_students_on_a_hand_worked_case():
    est = students(COUNTS, PI)
    # (3.3) maximum likelihood: the empirical frequencies
    assert est["ce_sgl"][0] == pytest.approx([0.75, 0, 0.25, 0])
    # (4.3) naive CE on partial soft labels: proportional to n_(s,a) pi*(a|s) = (1.2, 0, 0.2, 0)
    assert est["ce_ptl"][0] == pytest.approx([6 / 7, 0, 1 / 7, 0])
    # (4.7) + §6: pi* on the seen labels 0 and 2, the missing mass 0.4 split over labels 1 and 3
    assert est["sel_ptl"][0] == pytest.approx([0.4, 0.2, 0.2, 0.2])
    # (5.2): the teacher itself on a seen input
    assert est["ce_ful"][0] == pytest.approx(PI[0])
    for name in est:  # an input never seen: Uniform(A) for every student (§6)
        assert est[name][1] == pytest.approx([0.25] * 4)
        assert est[name].sum(-1) == pytest.approx([1.0, 1.0])


def test_risk_is_rho_weighted_total_variation():
    est = students(COUNTS, PI)
    unseen = 0.5 * (0.45 + 3 * 0.15)  # TV(Uniform, (0.7, 0.1, 0.1, 0.1)) = 0.45
    expected = {"ce_sgl": 0.5 * (0.35 + 0.3 + 0.05 + 0.1),  # 0.4
                "ce_ptl": 0.5 * ((6 / 7 - 0.4) + 0.3 + (0.2 - 1 / 7) + 0.1),
                "sel_ptl": 0.5 * (0.1 + 0.1),
                "ce_ful": 0.0}
    for name, tv0 in expected.items():
        assert tv_given_rho(est[name], PI, RHO) == pytest.approx(0.6 * tv0 + 0.4 * unseen, abs=1e-12)
    assert tv_given_rho(est["ce_sgl"], PI, RHO) == pytest.approx(0.42)


def _random_policy(rng, S, A):
    return rng.dirichlet(np.ones(A), size=S)


def test_each_student_minimises_its_loss():
    """No random policy does better on (3.2), (4.2) or (4.6) than the closed form."""
    rng = np.random.default_rng(0)
    pi = np.array([[0.5, 0.3, 0.2]])
    counts = np.array([[4, 2, 1]])
    est = students(counts, pi)

    def ce_sgl(p):
        return -(counts * np.log(p)).sum()

    def ce_ptl(p):
        return -(counts * pi * np.log(p)).sum()

    def sel_ptl(p):
        return 0.5 * (counts * (np.log(p) - np.log(pi)) ** 2).sum()

    for _ in range(2000):
        p = _random_policy(rng, 1, 3)
        assert ce_sgl(p) >= ce_sgl(est["ce_sgl"]) - 1e-12
        assert ce_ptl(p) >= ce_ptl(est["ce_ptl"]) - 1e-12
        assert sel_ptl(p) >= sel_ptl(est["sel_ptl"]) - 1e-12
    assert sel_ptl(est["sel_ptl"]) == 0.0


def test_naive_ce_limit_is_lemma_4_2():
    # pi* = (1/2, 1/4, 1/4): pi*^2 / sum pi*^2 = (2/3, 1/6, 1/6), TV = 1/6
    pi = np.array([[0.5, 0.25, 0.25]])
    assert ce_ptl_limit(pi, np.array([1.0])) == pytest.approx(1 / 6)
    # and the student itself on counts proportional to pi* lands there
    est = students(np.array([[200, 100, 100]]), pi)
    assert est["ce_ptl"][0] == pytest.approx([2 / 3, 1 / 6, 1 / 6])
    # Instance 0 with (|S|, |A|) = (100, 25): 0.52 on one label, 0.02 on 24 others, on every input
    rho, pi0 = teacher("instance0", 100, 25, 1)
    big = 0.52**2 / (0.52**2 + 24 * 0.02**2)
    assert ce_ptl_limit(pi0, rho) == pytest.approx(big - 0.52)  # 0.445714...


def test_teachers_of_appendix_f():
    rho, pi = teacher("instance0", 3, 2, 10)  # Uniform/2 + Dirac(s mod A)/2
    assert pi == pytest.approx(np.array([[0.75, 0.25], [0.25, 0.75], [0.75, 0.25]]))
    assert rho == pytest.approx([1 / 3] * 3)
    rho, pi = teacher("instance1", 2, 4, 8)  # delta = 0.25 sqrt(S A / n) = 0.25
    assert pi == pytest.approx(np.tile([0.3125, 0.1875, 0.3125, 0.1875], (2, 1)))
    _, pi = teacher("instance1", 2, 5, 8)  # odd A: the last label gets nothing, A - 1 = 4 replaces A
    assert pi[0] == pytest.approx([0.3125, 0.1875, 0.3125, 0.1875, 0.0])
    rho, pi = teacher("instance2", 2, 5, 9)  # S / (n + 1) = 0.2 on labels 1, 3; 1 - (S/2)(A-1)/(n+1) = 0.6 on the last
    assert pi == pytest.approx(np.tile([0.2, 0.0, 0.2, 0.0, 0.6], (2, 1)))
    assert rho == pytest.approx([0.5, 0.5])
    _, pi = teacher("instance2", 2, 6, 9)  # even A: the last label gets nothing
    assert pi[0] == pytest.approx([0.2, 0.0, 0.2, 0.0, 0.6, 0.0])
    rho, pi = teacher("instance3", 3, 5, 9)  # rho = 1/(n+1) on every input but the last
    assert rho == pytest.approx([0.1, 0.1, 0.8])
    assert pi[0] == pytest.approx([0.3, 0.0, 0.3, 0.0, 0.4])
    with pytest.raises(ValueError):
        teacher("instance1", 10, 10, 10)  # n < S A / 4
    with pytest.raises(ValueError):
        teacher("instance2", 10, 11, 10)  # the last label's mass would be negative


def test_monte_carlo_risk_matches_the_exact_expectation():
    """|S| = 1, pi* = (3/4, 1/4), n = 4: E TV of the MLE is E|K/4 - 3/4|, K ~ Binomial(4, 3/4)."""
    k = np.arange(5)
    exact = float((stats.binom.pmf(k, 4, 0.75) * np.abs(k / 4 - 0.75)).sum())
    risks = expected_risks("instance0", 1, 2, 4, 100_000, np.random.default_rng(3))
    mean, se = risks["ce_sgl"]
    assert abs(mean - exact) < 5 * se
    assert risks["ce_ful"] == (0.0, 0.0)  # the one input is always seen


def test_loglog_slope_of_a_power_law():
    x = np.array([10.0, 100.0, 1000.0])
    assert loglog_slope(x, 3 * x**-0.5) == pytest.approx(-0.5)
    assert math.isnan(loglog_slope(x, [0.1, 0.0, 0.0]))


def test_benchmark_sweeps_one_axis_and_names_its_metrics():
    m, rows = run_benchmark({"instance": "instance2", "S": 4, "A": 5, "n": [100, 1000], "repeats": 200}, seed=0)
    assert {"tv_sel_ptl_n100", "tv_ce_ful_n1000", "slope_n_sel_ptl", "theory_slope_n_ce_sgl"} <= set(m)
    assert [r["n"] for r in rows] == [100, 1000] and "se_ce_sgl" in rows[0]
    m, rows = run_benchmark({"instance": "instance3", "S": 4, "A": [5, 9], "n": 1000, "repeats": 200}, seed=0)
    assert {"tv_ce_ful_a5", "slope_a_ce_ful", "theory_slope_a_ce_ful"} <= set(m) and [r["A"] for r in rows] == [5, 9]
    m, _ = run_benchmark({"instance": "instance0", "S": 100, "A": 25, "n": [1000], "repeats": 10}, seed=0)
    assert m["ce_ptl_limit"] == pytest.approx(0.4457, abs=1e-4)
    with pytest.raises(ValueError):
        run_benchmark({"instance": "instance0", "S": 2, "A": [2, 3], "n": [10, 20], "repeats": 5}, seed=0)
