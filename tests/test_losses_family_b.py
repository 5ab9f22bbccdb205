import math

import numpy as np
import pytest
import torch
from torch import nn

from softrepro.methods.losses.ldr import aldr_lambda, aldr_rescale
from softrepro.methods.losses.noisy_softmax import noisy_target_logits
from softrepro.registry import LOSSES

Z = torch.tensor([[2.0, 0.5, -1.0, 0.3], [0.1, 0.2, 0.3, -0.4], [-2.0, 3.0, 0.0, 1.0], [0.7, -0.7, 1.5, 1.4]],
                 dtype=torch.float64)
Y = torch.tensor([0, 2, 0, 3])
ZN, YN = Z.numpy(), Y.numpy()
ROWS = np.arange(len(YN))
K = ZN.shape[1]


def loss(name, z=Z, y=Y, model=None, **kw):
    return float(LOSSES.get(name)(**kw)(z, y, model).detach())


def np_softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


PY = np_softmax(ZN)[ROWS, YN]


def np_u(z, y):
    """sum_{y' != y} exp(h_{y'} - h_y), straight from the definition."""
    d = np.exp(z - z[np.arange(len(y)), y][:, None])
    d[np.arange(len(y)), y] = 0.0
    return d.sum(1)


# ---------------------------------------------------------------- comp-sum

def test_comp_sum_special_cases():
    u = np_u(ZN, YN)
    assert loss("comp_sum", tau=1.0) == pytest.approx(np.mean(-np.log(PY)), rel=1e-12)
    assert loss("comp_sum", tau=1.0) == pytest.approx(np.mean(np.log1p(u)), rel=1e-12)
    assert loss("comp_sum", tau=2.0) == pytest.approx(np.mean(1 - PY), rel=1e-12)
    assert loss("comp_sum", tau=1.7) == pytest.approx(np.mean((1 - PY ** 0.7) / 0.7), rel=1e-12)
    assert loss("comp_sum", tau=1.7) == pytest.approx(loss("gce", q=0.7), rel=1e-12)
    assert loss("comp_sum", tau=0.0) == pytest.approx(np.mean(u), rel=1e-12)


@pytest.mark.parametrize("tau", [0.0, 0.5, 1.3, 2.0, 3.0])
def test_comp_sum_matches_phi_of_u(tau):
    u = np_u(ZN, YN)
    want = ((1 + u) ** (1 - tau) - 1) / (1 - tau)
    assert loss("comp_sum", tau=tau) == pytest.approx(np.mean(want), rel=1e-11)


def test_comp_sum_is_continuous_at_tau_1():
    ce = loss("comp_sum", tau=1.0)
    for eps in (1e-4, 1e-7, 1e-12):
        for tau in (1 - eps, 1 + eps):
            got = loss("comp_sum", tau=tau)
            assert math.isfinite(got) and got == pytest.approx(ce, rel=10 * eps + 1e-12)


def test_comp_sum_is_stable_for_large_margins():
    z = torch.tensor([[800.0, 0.0, -800.0]], dtype=torch.float32)
    assert loss("comp_sum", z=z, y=torch.tensor([1]), tau=1.5) == pytest.approx((1 - 0.0) / 0.5)  # p_y -> 0
    assert loss("comp_sum", z=z, y=torch.tensor([0]), tau=1.5) == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------- LDR-KL / ALDR-KL

def np_softplus(z):
    return np.log1p(np.exp(z))


def np_kl_dro(a, lam):
    """lam * log mean_k exp(a_k / lam) with lam a scalar or a column."""
    lam = np.broadcast_to(np.asarray(lam, dtype=float).reshape(-1, 1), (a.shape[0], 1))
    m = a.max(1, keepdims=True)
    return (m + lam * np.log(np.mean(np.exp((a - m) / lam), 1, keepdims=True)))[:, 0]


def np_shifted(zt, y, margin):
    return margin * (1 - np.eye(zt.shape[1])[y]) + zt - zt[np.arange(len(y)), y][:, None]


def np_ldr_rescaled(z):
    s = np_softplus(z)
    return s / s.mean(1, keepdims=True)


def np_aldr(z, y, lam0, alpha, margin, softplus=False):
    zt = np_softplus(z) if softplus else z
    zt = zt / (np.abs(zt).sum(1, keepdims=True) / zt.shape[1])
    k = zt.shape[1]
    p = np_softmax(zt / lam0) + 1e-5
    p = p / p.sum(1, keepdims=True)
    kl = (p * np.log(k * p)).sum(1)
    lam = lam0 - lam0 * kl / (alpha * np.log(k))
    extra = -0.5 * alpha * np.log(k) / lam0 * (lam - lam0) ** 2
    return np_kl_dro(np_shifted(zt, y, margin), lam) + extra, lam


@pytest.mark.parametrize("lam,margin", [(10.0, 0.1), (0.5, 1.0), (2.0, 0.0)])
def test_ldr_kl_matches_numpy(lam, margin):
    want = np_kl_dro(np_shifted(np_ldr_rescaled(ZN), YN, margin), lam)
    assert loss("ldr_kl", lam=lam, margin=margin) == pytest.approx(want.mean(), rel=1e-12)


def test_ldr_kl_limits_in_lambda():
    a = np_shifted(np_ldr_rescaled(ZN), YN, 0.1)
    hinge, avg = a.max(1).mean(), a.mean(1).mean()
    small = loss("ldr_kl", lam=1e-3, margin=0.1)
    assert hinge - 1e-3 * math.log(K) - 1e-12 <= small <= hinge + 1e-12  # max - lam log K <= LDR <= max
    assert small == pytest.approx(hinge, abs=2e-3)
    assert loss("ldr_kl", lam=1e6, margin=0.1) == pytest.approx(avg, abs=1e-5)
    assert avg < loss("ldr_kl", lam=1.0, margin=0.1) < hinge


def test_ldr_kl_margin0_lam1_is_ce_of_rescaled_logits_minus_log_k():
    zt = np_ldr_rescaled(ZN)
    ce = -np.log(np_softmax(zt)[ROWS, YN])
    assert loss("ldr_kl", lam=1.0, margin=0.0) == pytest.approx(ce.mean() - math.log(K), rel=1e-12)


@pytest.mark.parametrize("softplus", [False, True])
@pytest.mark.parametrize("lam0,alpha,margin", [(10.0, 2.0, 0.1), (1.0, 1.5, 0.5), (0.3, 4.0, 0.0)])
def test_aldr_kl_matches_numpy(lam0, alpha, margin, softplus):
    want, _ = np_aldr(ZN, YN, lam0, alpha, margin, softplus)
    got = loss("aldr_kl", lam0=lam0, alpha=alpha, margin=margin, softplus=softplus)
    assert got == pytest.approx(want.mean(), rel=1e-12)


def test_aldr_lambda_matches_numpy_and_stays_in_range():
    for lam0, alpha in [(10.0, 2.0), (0.01, 2.0), (0.05, 1.2)]:
        _, want = np_aldr(ZN, YN, lam0, alpha, 0.1)
        got = aldr_lambda(aldr_rescale(Z), lam0, alpha)[:, 0].numpy()
        np.testing.assert_allclose(got, want, rtol=1e-12)
        assert np.all(got <= lam0 + 1e-12) and np.all(got >= lam0 * (1 - 1 / alpha) - 1e-12)
    # a very peaked softmax (small lam0) drives lam_i to its floor lam0 (1 - 1/alpha)
    peaked = torch.tensor([[50.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    assert float(aldr_lambda(aldr_rescale(peaked), 0.01, 2.0)) == pytest.approx(0.005, rel=1e-3)


def test_aldr_kl_with_equal_logits_uses_lam0():
    z = torch.full((2, 5), 2.0, dtype=torch.float64)
    y = torch.tensor([1, 4])
    want = 10.0 * math.log((1 + 4 * math.exp(0.1 / 10.0)) / 5)  # lam0 log mean_k exp(m [k != y] / lam0)
    assert loss("aldr_kl", z=z, y=y, lam0=10.0, alpha=2.0, margin=0.1) == pytest.approx(want, rel=1e-12)


def test_aldr_kl_with_huge_alpha_and_softplus_is_ldr_kl():
    got = loss("aldr_kl", lam0=3.0, alpha=1e12, margin=0.2, softplus=True)
    assert got == pytest.approx(loss("ldr_kl", lam=3.0, margin=0.2), rel=1e-9)


def test_aldr_kl_gradient_treats_lambda_as_constant():
    lam0, alpha, margin = 0.7, 2.0, 0.1
    z = Z.clone().requires_grad_(True)
    LOSSES.get("aldr_kl")(lam0=lam0, alpha=alpha, margin=margin)(z, Y, None).backward()
    _, lam = np_aldr(ZN, YN, lam0, alpha, margin)

    def frozen(zz):  # lam_i held at its value at Z; the penalty is then constant
        zt = zz / (np.abs(zz).sum(1, keepdims=True) / K)
        return np_kl_dro(np_shifted(zt, YN, margin), lam).mean()

    def full(zz):
        return np_aldr(zz, YN, lam0, alpha, margin)[0].mean()

    h, fd_frozen, fd_full = 1e-6, np.zeros_like(ZN), np.zeros_like(ZN)
    for idx in np.ndindex(*ZN.shape):
        e = np.zeros_like(ZN)
        e[idx] = h
        fd_frozen[idx] = (frozen(ZN + e) - frozen(ZN - e)) / (2 * h)
        fd_full[idx] = (full(ZN + e) - full(ZN - e)) / (2 * h)
    np.testing.assert_allclose(z.grad.numpy(), fd_frozen, atol=1e-7)
    assert np.abs(fd_full - fd_frozen).max() > 1e-4  # the test can tell the two apart


# ---------------------------------------------------------------- Noisy Softmax

class Tiny(nn.Module):
    def __init__(self, d_in=3, hidden=5, n_classes=4, bias=True):
        super().__init__()
        self.body = nn.Linear(d_in, hidden)
        self.readout = nn.Linear(hidden, n_classes, bias=bias)
        self.penultimate = None

    def forward(self, x):
        self.penultimate = torch.tanh(self.body(x))
        return self.readout(self.penultimate)


def tiny_batch(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    model = Tiny().to(dtype)
    x = torch.randn(6, 3, dtype=dtype)
    y = torch.tensor([0, 1, 2, 3, 1, 0])
    return model, x, y


def np_ce(z, y):
    m = z.max(1, keepdims=True)
    lse = (m + np.log(np.exp(z - m).sum(1, keepdims=True)))[:, 0]
    return np.mean(lse - z[np.arange(len(y)), y])


def test_noisy_softmax_is_ce_in_eval_mode_and_with_alpha_0():
    model, x, y = tiny_batch()
    fn = LOSSES.get("noisy_softmax")(alpha=0.5)
    model.eval()
    out = model(x)
    ce = np_ce(out.detach().numpy(), y.numpy())
    assert float(fn(out, y, model).detach()) == pytest.approx(ce, rel=1e-12)
    model.train()
    out = model(x)
    assert float(LOSSES.get("noisy_softmax")(alpha=0.0)(out, y, model).detach()) == pytest.approx(ce, rel=1e-12)


def test_noisy_softmax_train_mode_matches_formula_with_the_same_xi():
    model, x, y = tiny_batch()
    model.train()
    out = model(x)
    alpha = 0.3
    torch.manual_seed(123)
    got = float(LOSSES.get("noisy_softmax")(alpha=alpha)(out, y, model).detach())
    torch.manual_seed(123)
    xi = torch.randn(len(y), dtype=torch.float64).numpy()

    f = out.detach().numpy()
    w = model.readout.weight.detach().numpy()
    h = model.penultimate.detach().numpy()
    rows = np.arange(len(y))
    wy = w[y.numpy()]
    cos = (wy * h).sum(1) / (np.linalg.norm(wy, axis=1) * np.linalg.norm(h, axis=1))
    noise = alpha * np.linalg.norm(wy, axis=1) * np.linalg.norm(h, axis=1) * (1 - cos) * np.abs(xi)
    fn = f.copy()
    fn[rows, y.numpy()] -= noise
    assert noise.min() > 0
    assert got == pytest.approx(np_ce(fn, y.numpy()), rel=1e-12)
    assert got > np_ce(f, y.numpy())


def test_noisy_softmax_only_lowers_the_target_logit():
    model, x, y = tiny_batch(seed=3)
    out = model(x).detach()
    xi = torch.randn(len(y), dtype=torch.float64)
    noisy = noisy_target_logits(out, y, model.readout.weight.detach(), model.penultimate.detach(), 0.5, xi)
    mask = torch.nn.functional.one_hot(y, out.shape[1]).bool()
    assert torch.equal(noisy[~mask], out[~mask])
    assert (noisy[mask] < out[mask]).all()
    # x parallel to W_y (cos = 1) gets no noise; x = 0 gets no noise and no NaN
    w = torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=torch.float64)
    xs = torch.tensor([[2.0, 4.0], [0.0, 0.0]], dtype=torch.float64)
    f = xs @ w.T
    same = noisy_target_logits(f, torch.tensor([0, 1]), w, xs, 1.0, torch.tensor([3.0, -2.0], dtype=torch.float64))
    assert torch.allclose(same, f, atol=1e-12, rtol=0)


# ---------------------------------------------------------------- Keras categorical CE (ReLU classifier)

def test_keras_ce_matches_numpy():
    o = torch.tensor([[2.0, 0.0, 1.0], [0.0, 0.5, 0.5], [3.0, 1e-9, 0.0], [0.0, 4.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 1])
    on = o.numpy()
    p = np.clip(on / on.sum(1, keepdims=True), 1e-7, 1 - 1e-7)
    want = -np.log(p[np.arange(4), y.numpy()])
    assert loss("keras_categorical_ce", z=o, y=y) == pytest.approx(want.mean(), rel=1e-12)
    assert want[1] == pytest.approx(-math.log(1e-7))  # p_y = 0 is clipped up
    assert want[3] == pytest.approx(-math.log(1 - 1e-7))  # p_y = 1 is clipped down
    e = 1e-3
    assert loss("keras_categorical_ce", z=o, y=y, eps=e) == pytest.approx(
        np.mean(-np.log(np.clip(on / on.sum(1, keepdims=True), e, 1 - e)[np.arange(4), y.numpy()])), rel=1e-12)


def test_keras_ce_on_softmax_probabilities_is_ce_of_the_logits():
    probs = torch.softmax(Z, 1)
    assert loss("keras_categorical_ce", z=probs) == pytest.approx(np.mean(-np.log(PY)), rel=1e-12)


def test_keras_ce_all_zero_row_gives_minus_log_eps_and_zero_gradient():
    o = torch.tensor([[0.0, 0.0, 0.0], [1.0, 3.0, 0.0]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([2, 1])
    val = LOSSES.get("keras_categorical_ce")()(o, y, None)
    val.backward()
    assert float(val.detach()) == pytest.approx((-math.log(1e-7) - math.log(0.75)) / 2, rel=1e-12)
    assert torch.isfinite(o.grad).all()
    assert torch.equal(o.grad[0], torch.zeros(3, dtype=torch.float64))
    assert o.grad[1].abs().sum() > 0


# ---------------------------------------------------------------- gradients

@pytest.mark.parametrize("name,kw", [
    ("comp_sum", {"tau": 0.0}), ("comp_sum", {"tau": 0.5}), ("comp_sum", {"tau": 1.0}), ("comp_sum", {"tau": 1.7}),
    ("comp_sum", {"tau": 2.0}), ("ldr_kl", {}), ("aldr_kl", {}), ("aldr_kl", {"softplus": True}),
    ("keras_categorical_ce", {}),
])
def test_losses_backpropagate_finite_gradients(name, kw):
    torch.manual_seed(0)
    z = (3 * torch.randn(32, 10)).requires_grad_(True)
    y = torch.randint(0, 10, (32,))
    inp = torch.relu(z) if name == "keras_categorical_ce" else z
    val = LOSSES.get(name)(**kw)(inp, y, None)
    val.backward()
    assert torch.isfinite(val) and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0, name


def test_noisy_softmax_backpropagates_finite_gradients():
    torch.manual_seed(0)
    model = Tiny(d_in=8, hidden=16, n_classes=10)
    x, y = torch.randn(32, 8), torch.randint(0, 10, (32,))
    model.train()
    LOSSES.get("noisy_softmax")()(model(x), y, model).backward()
    for p in model.parameters():
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
