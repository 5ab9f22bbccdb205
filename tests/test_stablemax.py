import numpy as np
import pytest
import torch
import torch.nn.functional as F

from softrepro.methods.softmax.stablemax import (log_stablemax, s, softmax_collapse_fraction, stablemax, stablemax_ce,
                                         zero_loss_fraction)
from softrepro.registry import LOSSES

Z = torch.tensor([[2.0, 0.5, -1.0, 0.0], [-3.0, -0.2, 7.0, 1.5], [0.1, 0.2, 0.3, -0.4]], dtype=torch.float64)
Y = torch.tensor([0, 3, 1])


def np_s(x):
    x = np.asarray(x, dtype=np.float64)
    return np.where(x >= 0, x + 1, 1 / (1 - np.minimum(x, 0)))


def np_stablemax(x):
    sx = np_s(x)
    return sx / sx.sum(-1, keepdims=True)


def test_s_is_continuous_positive_and_increasing():
    x = torch.linspace(-50, 50, 20001, dtype=torch.float64)
    sx = s(x)
    assert (sx > 0).all() and (sx.diff() > 0).all()
    eps = torch.tensor([-1e-9, 0.0, 1e-9], dtype=torch.float64)
    assert s(eps).tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-8)
    assert s(torch.tensor([-1.0, 0.0, 3.0])).tolist() == [0.5, 1.0, 4.0]  # 1/(1-(-1)), 0+1, 3+1


def test_stablemax_matches_numpy_and_is_a_monotone_distribution():
    p = stablemax(Z)
    np.testing.assert_allclose(p.numpy(), np_stablemax(Z.numpy()), rtol=1e-12)
    np.testing.assert_allclose(p.sum(1).numpy(), 1.0, rtol=1e-12)
    assert (p.argsort(1) == Z.argsort(1)).all()  # order preserving
    bumped = Z.clone()
    bumped[:, 1] += 0.5
    assert (stablemax(bumped)[:, 1] > p[:, 1]).all()
    # Prop. 1: StableMax(x) = Softmax(g(x)), g(x) = log(x+1) for x >= 0, -log(1-x) for x < 0
    g = torch.where(Z >= 0, torch.log1p(Z.clamp(min=0)), -torch.log1p(-Z.clamp(max=0)))
    np.testing.assert_allclose(p.numpy(), F.softmax(g, 1).numpy(), rtol=1e-12)
    np.testing.assert_allclose(log_stablemax(Z).numpy(), np.log(np_stablemax(Z.numpy())), rtol=1e-12)


def test_stablemax_ce_is_minus_log_of_the_reference_in_float64():
    want = -np.log(np_stablemax(Z.numpy())[np.arange(3), Y.numpy()])
    np.testing.assert_allclose(stablemax_ce(Z, Y).numpy(), want, rtol=1e-12)
    out = LOSSES.get("stablemax_ce")()(Z.float(), Y, None)
    assert out.dtype == torch.float64  # cast to float64 as the official loss does
    assert float(out) == pytest.approx(want.mean(), rel=1e-6)
    assert LOSSES.get("stablemax_ce")(precision=32)(Z.float(), Y, None).dtype == torch.float32
    z = Z.float().requires_grad_(True)
    LOSSES.get("stablemax_ce")()(z, Y, None).backward()
    assert z.grad.dtype == torch.float32 and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_stablemax_ce_does_not_collapse_where_softmax_does():
    z = torch.tensor([[200.0, 0.0, 0.0]])
    assert float(F.cross_entropy(z, torch.tensor([0]))) == 0.0
    assert float(stablemax_ce(z, torch.tensor([0]))) == pytest.approx(np.log(203 / 201))


def _np_sum_exp_is_one(z, dtype):
    z = np.asarray(z, dtype=dtype)
    e = np.exp(z - z.max(1, keepdims=True))
    return np.mean(e.sum(1, dtype=dtype) == 1)


def test_softmax_collapse_fraction_extremes():
    z = torch.tensor([[200.0, 0.0, 0.0]])
    assert softmax_collapse_fraction(z, torch.tensor([0])) == 1.0
    z.requires_grad_(True)
    F.cross_entropy(z, torch.tensor([0])).backward()
    assert (z.grad == 0).all()  # the whole CE gradient vanishes in float32
    small = torch.tensor([[1.0, 0.0, 0.0], [0.3, 2.0, -1.0]])
    assert softmax_collapse_fraction(small, torch.tensor([0, 1])) == 0.0
    # the official metric ignores the target; correct_only applies paper Def. 3
    assert softmax_collapse_fraction(z.detach(), torch.tensor([1])) == 1.0
    assert softmax_collapse_fraction(z.detach(), torch.tensor([1]), correct_only=True) == 0.0
    mixed = torch.tensor([[200.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 150.0, 0.0], [0.0, 0.0, 0.5]])
    assert softmax_collapse_fraction(mixed, torch.tensor([0, 0, 1, 2])) == 0.5


@pytest.mark.parametrize("gap", [10.0, 20.0, 30.0, 40.0])
def test_softmax_collapse_depends_on_precision_like_numpy(gap):
    z = torch.tensor([[gap, 0.0, 0.0], [0.0, gap, 0.0]])
    y = torch.tensor([0, 1])
    for prec, npdt in ((16, np.float16), (32, np.float32), (64, np.float64)):
        assert softmax_collapse_fraction(z, y, precision=prec) == _np_sum_exp_is_one(z.numpy(), npdt), (gap, prec)


def test_softmax_collapse_borderline_float32_vs_float64():
    # gap 20: exp(-20) = 2e-9 is below half an ulp of 1 in float32 (2^-24), not in float64 (2^-53)
    z = torch.tensor([[20.0, 0.0, 0.0]])
    y = torch.tensor([0])
    assert softmax_collapse_fraction(z, y) == 1.0
    assert softmax_collapse_fraction(z, y, precision=64) == 0.0
    assert softmax_collapse_fraction(z.double(), y) == 0.0
    # gap 40 collapses in both: exp(-40) = 4e-18 < 2^-53, so it is not a float32/64 borderline case
    assert softmax_collapse_fraction(40 * torch.eye(3)[:1], y, precision=64) == 1.0
    # collapsed in float32: the true-class gradient and the loss are exactly 0, the others are not
    zz = z.clone().requires_grad_(True)
    F.cross_entropy(zz, y).backward()
    assert zz.grad[0, 0] == 0 and (zz.grad[0, 1:] > 0).all()
    assert zero_loss_fraction(z, y) == 1.0 and zero_loss_fraction(z, y, precision=64) == 0.0


def test_softmax_collapse_probe_uses_the_loss_precision():
    from softrepro.registry import PROBES

    probe = PROBES.get("softmax_collapse")
    x = torch.tensor([[20.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 20.0, 0.0], [0.0, 0.0, 0.5]])
    y = torch.tensor([0, 0, 1, 2])
    ident = torch.nn.Identity()
    assert probe(ident, x, y) == {"train_sc_fraction": 0.5}  # float32: the two gap-20 rows collapse
    assert probe(ident, x, y, loss_fn=LOSSES.get("softmax_ce")(precision=64)) == {"train_sc_fraction": 0.0}
