"""In-context linear regression with one-layer multi-head attention (He, Pan, Chen, Yang 2025)."""
import math
import re

import numpy as np
import pytest
import torch

from softrepro.methods.attention.icl_linear import (ICLAttention, bayes_predictions, best_step, gd_direction,
                                                    gd_mse_theory, run_benchmark, sample_batch, sample_tasks, tokens,
                                                    weight_structure)

TINY = {"d": 5, "L": 40, "noise_var": 0.1, "heads": 2, "steps": 300, "batch": 64, "lr": 1e-2,
        "eval_lengths": [40, 80], "eval_tasks": 1000, "eval_every": 100}


def test_tasks_have_the_official_shapes_and_distribution():
    t = sample_tasks(20_000, 12, 5, 0.1, torch.Generator().manual_seed(0))
    assert t["x"].shape == (20_000, 12, 5) and t["y"].shape == (20_000, 12) and t["xq"].shape == (20_000, 5)
    assert t["yq"].shape == t["yq_clean"].shape == (20_000,)
    assert t["x"].var().item() == pytest.approx(1.0, abs=0.02)
    assert t["beta"].var().item() == pytest.approx(1 / 5, abs=0.01)  # beta ~ N(0, I/d)
    resid = t["y"] - torch.einsum("nld,nd->nl", t["x"], t["beta"])
    assert resid.var().item() == pytest.approx(0.1, abs=0.005)  # noise variance 0.1 in the context ...
    assert (t["yq"] - t["yq_clean"]).var().item() == pytest.approx(0.1, abs=0.01)  # ... and in the query target
    assert t["yq"].pow(2).mean().item() == pytest.approx(1.1, abs=0.05)  # E y^2 = E|beta|^2 + 0.1: predicting 0
    zq, z = tokens(t["x"][:3], t["y"][:3], t["xq"][:3])
    assert zq.shape == (3, 1, 6) and z.shape == (3, 12, 6)
    assert torch.equal(z[..., -1], t["y"][:3]) and torch.all(zq[..., -1] == 0)


def test_training_batches_have_the_same_distribution_as_the_tasks():
    """``sample_batch`` (one randn call) draws what ``sample_tasks`` + ``tokens`` draw: per task one beta behind
    the context targets and the query target, each with noise variance 0.1; z_q ends in 0."""
    zq, z, yq = sample_batch(4000, 200, 5, 0.1, torch.Generator().manual_seed(0))
    assert zq.shape == (4000, 1, 6) and z.shape == (4000, 200, 6) and yq.shape == (4000,)
    assert torch.all(zq[..., -1] == 0)
    x, y = z[..., :5].double(), z[..., 5].double()
    assert x.var().item() == pytest.approx(1.0, abs=0.01) and zq[..., :5].var().item() == pytest.approx(1.0, abs=0.03)
    beta = torch.linalg.lstsq(x, y.unsqueeze(-1)).solution.squeeze(-1)  # per-task least squares on the context
    assert beta.pow(2).sum(-1).mean().item() == pytest.approx(1.0, abs=0.06)  # E|beta|^2 = 1 (beta ~ N(0, I/d))
    assert (y - (x @ beta.unsqueeze(-1)).squeeze(-1)).var().item() == pytest.approx(0.1 * 195 / 200, abs=0.005)
    # the query target follows the same beta: its residual is the noise (0.1) plus the estimate's error (~0.1 d / L)
    resid = yq.double() - (zq[:, 0, :5].double() * beta).sum(-1)
    assert resid.pow(2).mean().item() == pytest.approx(0.1 * (1 + 5 / 200), abs=0.01)


def _by_hand(model: ICLAttention, zq: np.ndarray, z: np.ndarray, softmax: bool) -> float:
    """sum_h O_h V_h sum_i a_i z_i with a = softmax(z_i^T K_h^T Q_h z_q / sqrt(d+1)) over the context only."""
    e, h_n = model.e, model.heads
    wq, wk, wv = (lin.weight.detach().double().numpy() for lin in (model.q, model.k, model.v))
    wo = model.o.weight.detach().double().numpy()[0]
    out = 0.0
    for h in range(h_n):
        rows = slice(h * e, (h + 1) * e)
        s = np.array([(wq[rows] @ zq) @ (wk[rows] @ zi) for zi in z]) / math.sqrt(e)
        a = np.exp(s - s.max()) / np.exp(s - s.max()).sum() if softmax else s / len(z)
        out += wo[rows] @ (wv[rows] @ (a[:, None] * z).sum(0))
    return out


@pytest.mark.parametrize("attention", ["softmax", "linear"])
def test_forward_matches_the_formula_and_the_query_attends_only_to_the_context(attention):
    g = torch.Generator().manual_seed(3)
    model = ICLAttention(2, 3, attention, g).double()
    t = sample_tasks(4, 3, 2, 0.1, g, dtype=torch.float64)
    zq, z = tokens(t["x"], t["y"], t["xq"])
    out = model(zq, z)
    for b in range(4):
        assert out[b].item() == pytest.approx(_by_hand(model, zq[b, 0].numpy(), z[b].numpy(), attention == "softmax"),
                                              rel=1e-10)
    w = model.weights(zq, z)
    assert w.shape == (4, 3, 3)  # (batch, heads, the 3 context tokens): no weight on the query itself
    if attention == "softmax":
        assert torch.allclose(w.sum(-1), torch.ones(4, 3, dtype=torch.float64))
    # appending the query token to the context changes the output, so it was not among the keys
    assert not torch.allclose(model(zq, torch.cat([z, zq], 1)), out)


def test_structure_measures_read_an_ideal_pattern_as_ideal():
    d, e = 3, 4
    model = ICLAttention(d, 2, "softmax", torch.Generator().manual_seed(0))
    with torch.no_grad():
        for lin in (model.q, model.k, model.v, model.o):
            lin.weight.zero_()
        for h, sign in enumerate((1.0, -1.0)):
            model.q.weight[h * e:(h + 1) * e] = sign * 0.5 * torch.eye(e)  # KQ_h = sign * 0.25 * I
            model.k.weight[h * e:(h + 1) * e] = 0.5 * torch.eye(e)
            model.v.weight[h * e + d, d] = 1.0  # V_h reads y into its last row
            model.o.weight[0, h * e + d] = 2.0 * sign  # O_h on it: u_h = (0, 0, 0, +-2)
    s = weight_structure(model)
    assert s["kq_diag_cv"] == pytest.approx(0) and s["kq_offdiag_ratio"] == pytest.approx(0)
    assert s["ov_last_frac"] == pytest.approx(1) and s["ov_zero_sum"] == pytest.approx(0)
    assert s["kq_diag_mean_h0"] == pytest.approx(0.25) and s["kq_diag_mean_h1"] == pytest.approx(-0.25)
    assert s["ov_last_h0"] == pytest.approx(2) and s["ov_last_h1"] == pytest.approx(-2)
    random = weight_structure(ICLAttention(5, 4, "softmax", torch.Generator().manual_seed(1)))
    assert random["kq_offdiag_ratio"] > 0.3 and random["ov_last_frac"] < 0.5  # far from the pattern at init


def test_references_bayes_is_numpy_ridge_and_beats_one_step_gd():
    t = sample_tasks(3000, 40, 5, 0.1, torch.Generator().manual_seed(7))
    pred = bayes_predictions(t["x"], t["y"], t["xq"], 0.1)
    for i in (0, 17, 2999):
        x, y, xq = (t[k][i].double().numpy() for k in ("x", "y", "xq"))
        ridge = np.linalg.solve(x.T @ x + 0.1 * 5 * np.eye(5), x.T @ y)
        assert pred[i].item() == pytest.approx(xq @ ridge, rel=1e-10)
    bayes = ((pred - t["yq"].double()) ** 2).mean().item()
    eta, gd = best_step(gd_direction(t["x"], t["y"], t["xq"]), t["yq"])
    _, dgd = best_step(gd_direction(t["x"], t["y"], t["xq"], debiased=True), t["yq"])
    eta_star, gd_theory = gd_mse_theory(40, 5, 0.1)
    assert bayes == pytest.approx(0.115, abs=0.015) and bayes < dgd and bayes < gd < 1.0
    assert gd == pytest.approx(gd_theory, abs=0.02) and eta == pytest.approx(eta_star, abs=0.05)
    assert gd_theory == pytest.approx(1.1 - 40 / 46.5)


def test_short_training_learns_in_context_and_is_deterministic_per_seed():
    metrics, rows = run_benchmark(TINY, seed=0)
    again, rows_again = run_benchmark(TINY, seed=0)
    other, _ = run_benchmark(TINY, seed=1)
    assert metrics == again and repr(rows) == repr(rows_again)  # repr: the step-0 train_mse is nan
    assert other["val_mse_L40"] != metrics["val_mse_L40"]
    assert [r["step"] for r in rows] == [0, 100, 200, 300]
    assert rows[0]["val_mse_L40"] > 1.0  # about the predict-zero MSE 1.1 at init
    assert metrics["val_mse_L40"] < 0.6 * 1.1  # well below predicting zero
    assert metrics["val_mse_L40"] > metrics["bayes_mse_L40"]
    # the validation tasks do not depend on the training seed
    assert other["bayes_mse_L40"] == metrics["bayes_mse_L40"] and other["gd_mse_L80"] == metrics["gd_mse_L80"]
    assert {"val_mse_L80", "val_mse_L80_noiseless", "val_ratio_L80", "dgd_mse_L40", "kq_diag_cv", "ov_zero_sum",
            "ov_last_h1"} <= set(metrics)
    assert {"step", "train_mse", "val_mse_L40", "ov_last_frac"} <= set(rows[-1])


def test_linear_attention_reports_both_normalisations():
    metrics, _ = run_benchmark({**TINY, "attention": "linear", "steps": 50, "eval_every": 50}, seed=0)
    assert metrics["val_mse_L40_fixed_norm"] == metrics["val_mse_L40"]
    assert metrics["val_mse_L80_fixed_norm"] != metrics["val_mse_L80"]
    assert "val_ratio_L80_fixed_norm" in metrics


@pytest.mark.parametrize("params, words", [({"lr_typo": 1}, "unknown parameter(s) 'lr_typo'"),
                                            ({"attention": "relu"}, "attention must be"),
                                            ({"steps": 0}, "steps must be a positive integer")])
def test_bad_params_raise_a_clear_error(params, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        run_benchmark(params, seed=0)
