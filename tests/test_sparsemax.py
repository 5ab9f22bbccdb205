import numpy as np
import pytest
import torch
import torch.nn.functional as F

from softrepro.methods.softmax.sparsemax import sparsemax, sparsemax_loss, sparsemax_threshold
from softrepro.registry import LOSSES


def np_sparsemax(z):
    """Simplex projection by scanning every support size k: keep the k largest, shift them to sum 1,
    and accept the k whose shifted entries are all positive and whose excluded entries lie below tau."""
    z = np.asarray(z, dtype=np.float64)
    order = np.argsort(-z)
    for k in range(len(z), 0, -1):
        top = order[:k]
        tau = (z[top].sum() - 1) / k
        rest = order[k:]
        if (z[top] > tau).all() and (z[rest] <= tau).all():
            p = np.zeros_like(z)
            p[top] = z[top] - tau
            return p, tau
    raise AssertionError("no support found")


ZS = np.array([[0.5, 1.2, -0.3, 0.9, 0.0], [3.0, -1.0, -1.0, 0.1, -2.0], [0.1, 0.12, 0.08, 0.11, 0.09],
               [-5.0, 2.0, 2.0, -5.0, 1.99]])


def test_sparsemax_matches_numpy_reference_and_threshold():
    p = sparsemax(torch.tensor(ZS))
    tau = sparsemax_threshold(torch.tensor(ZS))
    for i, z in enumerate(ZS):
        want, want_tau = np_sparsemax(z)
        np.testing.assert_allclose(p[i].numpy(), want, atol=1e-12)
        assert float(tau[i]) == pytest.approx(want_tau, abs=1e-12)
    # along another dim
    np.testing.assert_allclose(sparsemax(torch.tensor(ZS).T, dim=0).T.numpy(), p.numpy(), atol=1e-15)


def test_sparsemax_is_the_euclidean_projection_onto_the_simplex():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(20, 6)) * 2
    p = sparsemax(torch.tensor(z)).numpy()
    assert (p >= 0).all()
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-12)
    cand = rng.dirichlet(np.ones(6), size=2000)  # random simplex points, plus the vertices
    cand = np.vstack([cand, np.eye(6)])
    for zi, pi in zip(z, p):
        assert ((pi - zi) ** 2).sum() <= (((cand - zi) ** 2).sum(1)).min() + 1e-12


def test_sparsemax_uniform_for_equal_inputs_and_exact_zeros():
    p = sparsemax(torch.full((2, 4), 0.7))
    assert torch.equal(p, torch.full((2, 4), 0.25))
    np.testing.assert_allclose(p.numpy(), F.softmax(torch.full((2, 4), 0.7), 1).numpy())
    p = sparsemax(torch.tensor([[3.0, 0.0, -1.0, 1.0]]))  # gap > 1: all mass on the first entry
    assert p.tolist() == [[1.0, 0.0, 0.0, 0.0]]
    p = sparsemax(torch.tensor([[1.0, 0.8, -2.0]]))  # tau = 0.4: two-point support, exact zero
    assert p[0, 2].item() == 0.0 and p[0, :2].tolist() == pytest.approx([0.6, 0.4])


def test_sparsemax_backward_is_the_paper_jacobian():
    z = torch.tensor(ZS[:3], dtype=torch.float64, requires_grad=True)  # no ties at the support boundary
    assert torch.autograd.gradcheck(sparsemax, (z,))
    # J = diag(s) - s s^T / |S| against numpy
    g = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sparsemax(z).backward(g)
    for i in range(3):
        s = (np_sparsemax(ZS[i])[0] > 0).astype(float)
        jac = np.diag(s) - np.outer(s, s) / s.sum()
        np.testing.assert_allclose(z.grad[i].numpy(), jac @ g[i].numpy(), atol=1e-12)


def np_sparsemax_loss(z, q):
    p, tau = np_sparsemax(z)
    sup = p > 0
    return -q @ z + 0.5 * ((z[sup] ** 2) - tau ** 2).sum() + 0.5 * q @ q


Y = torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0, 1.0],
                  [0.0, 1.0, 0.0, 0.0, 1.0]], dtype=torch.float64)


def test_sparsemax_loss_matches_numpy_is_nonnegative_and_zero_at_its_target():
    q = (Y / Y.sum(1, keepdim=True)).numpy()
    want = np.mean([np_sparsemax_loss(z, qi) for z, qi in zip(ZS, q)])
    got = LOSSES.get("sparsemax_loss")()(torch.tensor(ZS), Y, None)
    assert float(got) == pytest.approx(want, rel=1e-12)
    rng = np.random.default_rng(1)
    z = torch.tensor(rng.normal(size=(50, 5)) * 3)
    y = torch.tensor((rng.random((50, 5)) < 0.4).astype(float))
    y[:, 0] = 1.0
    qq = y / y.sum(1, keepdim=True)
    assert (sparsemax_loss(z, qq) >= -1e-12).all()
    assert sparsemax_loss(z, sparsemax(z)).abs().max() < 1e-12
    # the loss is zero exactly when sparsemax(z) = q, e.g. z = q + c
    assert float(LOSSES.get("sparsemax_loss")()(qq + 2.0, y, None)) == pytest.approx(0.0, abs=1e-12)


def test_sparsemax_loss_gradient_is_sparsemax_minus_q():
    z = torch.tensor(ZS, requires_grad=True)
    q = Y / Y.sum(1, keepdim=True)
    sparsemax_loss(z, q).sum().backward()
    np.testing.assert_allclose(z.grad.numpy(), (sparsemax(torch.tensor(ZS)) - q).numpy(), atol=1e-12)
    # integer class indices are one-hot targets
    a = LOSSES.get("sparsemax_loss")()(torch.tensor(ZS), torch.tensor([0, 1, 2, 3]), None)
    b = LOSSES.get("sparsemax_loss")()(torch.tensor(ZS), torch.eye(5, dtype=torch.float64)[:4], None)
    assert float(a) == pytest.approx(float(b))


def test_softmax_and_logistic_multilabel_losses_match_numpy():
    z, y = ZS, Y.numpy()
    q = y / y.sum(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    assert float(LOSSES.get("softmax_multilabel_ce")()(torch.tensor(z), Y, None)) == pytest.approx(
        np.mean(-(q * logp).sum(1)), rel=1e-12)
    # single-label targets reduce it to ordinary cross-entropy
    idx = torch.tensor([1, 0, 4, 2])
    assert float(LOSSES.get("softmax_multilabel_ce")()(torch.tensor(z), idx, None)) == pytest.approx(
        float(F.cross_entropy(torch.tensor(z), idx)), rel=1e-12)
    per_class = -(y * np.log(1 / (1 + np.exp(-z))) + (1 - y) * np.log(1 - 1 / (1 + np.exp(-z))))
    assert float(LOSSES.get("logistic_multilabel")()(torch.tensor(z), Y, None)) == pytest.approx(
        per_class.sum(1).mean(), rel=1e-10)
    assert float(LOSSES.get("logistic_multilabel")(class_reduction="mean")(torch.tensor(z), Y / 2, None)) == \
        pytest.approx(per_class.mean(), rel=1e-10)
