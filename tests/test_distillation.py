"""Kernel-ridge self-distillation (Borup & Andersen 2021) against its closed forms."""
import numpy as np
import pytest

from softrepro.methods.distillation.kernel_self_distillation import rbf, run_benchmark, self_distill

X = np.linspace(0, 1, 11)
Y = np.sin(2 * np.pi * X) + np.random.default_rng(0).normal(0, 0.3, 11)
GRID = np.linspace(0, 1, 101)


def test_first_step_is_kernel_ridge_and_alpha_one_never_moves():
    losses, _ = self_distill(X, Y, 80.0, 0.2, 1.0, 4, GRID)
    K = rbf(X, X, 80.0)
    f1 = rbf(GRID, X, 80.0) @ np.linalg.solve(K + 0.2 * np.eye(11), Y)
    assert losses[0] == pytest.approx(np.mean((f1 - np.sin(2 * np.pi * GRID)) ** 2), rel=1e-12)
    assert losses == pytest.approx([losses[0]] * 4, rel=1e-12)  # alpha = 1: every step refits the labels


def test_without_ground_truth_the_limit_is_the_zero_function():
    _, limit = self_distill(X, Y, 80.0, 0.2, 0.0, 1, GRID)
    assert limit == pytest.approx(np.mean(np.sin(2 * np.pi * GRID) ** 2), rel=1e-12)


def test_steps_converge_to_the_limit_when_alpha_is_positive():
    losses, limit = self_distill(X, Y, 80.0, 0.2, 0.35, 200, GRID)
    assert losses[-1] == pytest.approx(limit, rel=1e-9)


def test_benchmark_names_its_metrics_by_alpha():
    metrics, rows = run_benchmark({"x": list(X), "y": list(Y), "gamma": 80.0, "lambd": 0.2, "alphas": [0.0, 0.35],
                                   "steps": 3}, seed=0)
    assert {"loss_a0_step1", "loss_a035_step3", "loss_a0_inf", "loss_a035_inf"} <= set(metrics)
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[0]["loss_a0"] == rows[0]["loss_a035"]


def test_xi_self_distillation_is_cross_entropy_against_the_mixed_target():
    import torch
    import torch.nn.functional as F

    from softrepro.methods.distillation.kd import XiSelfDistillation

    g = torch.Generator().manual_seed(1)
    z, v = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(5, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0])
    for xi in (0.0, 0.5, 1.0, 2.0):
        target = xi * F.softmax(v, 1) + (1 - xi) * F.one_hot(y, 4).double()  # negative entries when xi > 1
        expected = -(target * F.log_softmax(z, 1)).sum(1).mean()
        assert XiSelfDistillation(xi)(z, y, None, teacher=v).item() == pytest.approx(expected.item(), rel=1e-12)
