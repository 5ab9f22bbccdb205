import numpy as np
import pytest
import torch

from softrepro.registry import LOSSES

Z = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [-2.0, 3.0, 0.0]], dtype=torch.float64)
Y = torch.tensor([0, 2, 0])
P = (np.exp(Z.numpy()) / np.exp(Z.numpy()).sum(1, keepdims=True))
PY = P[np.arange(3), Y.numpy()]


def loss(name, **kw):
    return float(LOSSES.get(name)(**kw)(Z, Y, None))


def test_focal_gce_mae_rce_match_their_formulas():
    assert loss("focal", gamma=2.0) == pytest.approx(np.mean(-(1 - PY) ** 2 * np.log(PY)))
    assert loss("focal", gamma=0.0) == pytest.approx(np.mean(-np.log(PY)))  # gamma 0 is CE
    assert loss("gce", q=0.7) == pytest.approx(np.mean((1 - PY ** 0.7) / 0.7))
    assert loss("mae", scale=2.0) == pytest.approx(2.0 * np.mean(1 - PY))
    assert loss("rce") == pytest.approx(np.mean(-np.log(1e-4) * (1 - PY)))
    # RCE from its definition: -sum_k p_k log q_k with the one-hot q clamped at 1e-4
    q = np.clip(np.eye(3)[Y.numpy()], 1e-4, 1)
    assert loss("rce") == pytest.approx(np.mean(-(P * np.log(q)).sum(1)))


def test_normalized_losses_match_their_formulas_and_lie_in_0_1():
    logp = np.log(P)
    nce = logp[np.arange(3), Y.numpy()] / logp.sum(1)
    assert loss("nce", scale=10.0) == pytest.approx(10.0 * nce.mean())
    fl = -(1 - P) ** 0.5 * logp
    assert loss("nfl", gamma=0.5) == pytest.approx(np.mean(fl[np.arange(3), Y.numpy()] / fl.sum(1)))
    assert 0 < nce.min() and nce.max() < 1


def test_active_passive_is_the_weighted_sum():
    want = 1.0 * loss("nce") + 10.0 * loss("rce")
    assert loss("active_passive", active="nce", passive="rce", alpha=1.0, beta=10.0) == pytest.approx(want)
    sce = 0.01 * loss("softmax_ce") + 1.0 * loss("rce")
    assert loss("active_passive", active="ce", passive="rce", alpha=0.01, beta=1.0) == pytest.approx(sce)
    with pytest.raises(ValueError, match="passive"):
        LOSSES.get("active_passive")(active="nce", passive="hinge")


def test_losses_train_a_gradient():
    z = Z.clone().requires_grad_(True)
    for name, kw in [("focal", {}), ("gce", {}), ("nce", {}), ("nfl", {}), ("mae", {}), ("rce", {}),
                     ("active_passive", {"active": "nfl", "passive": "mae"})]:
        z.grad = None
        LOSSES.get(name)(**kw)(z, Y, None).backward()
        assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0, name
