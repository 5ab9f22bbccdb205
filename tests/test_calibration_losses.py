import numpy as np
import pytest
import torch

from softrepro.registry import LOSSES

# rows: target is the argmax; target is not the argmax; target has the smallest probability
# (dual focal p_j = 0); target ties with another class (p_j must skip the tie)
Z = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 0.3, -0.4], [-2.0, 3.0, 0.0, 1.0], [1.0, 1.0, 0.0, -1.0]],
                 dtype=torch.float64)
Y = torch.tensor([0, 1, 0, 0])
ZN, YN, R = Z.numpy(), Y.numpy(), np.arange(4)
P = np.exp(ZN) / np.exp(ZN).sum(1, keepdims=True)
PY = P[R, YN]
CE = np.mean(-np.log(PY))


def loss(name, **kw):
    return float(LOSSES.get(name)(**kw)(Z, Y, None))


def test_label_smoothing_is_ce_against_smoothed_targets():
    q = np.eye(4)[YN] * 0.9 + 0.1 / 4
    assert loss("label_smoothing", alpha=0.1) == pytest.approx(np.mean(-(q * np.log(P)).sum(1)))
    want = float(torch.nn.functional.cross_entropy(Z, Y, label_smoothing=0.3))
    assert loss("label_smoothing", alpha=0.3) == pytest.approx(want)
    assert loss("label_smoothing", alpha=0.0) == pytest.approx(CE)


def test_label_smoothing_logit_identity():
    # CE_LS = CE + α(mean_k(-log p_k) - (-log p_y)) = CE + α(z_y - mean_k z_k)  (MaxSup Thm 3.3)
    a = 0.2
    nll = -np.log(P)
    assert loss("label_smoothing", alpha=a) == pytest.approx(CE + a * np.mean(nll.mean(1) - nll[R, YN]))
    assert loss("label_smoothing", alpha=a) == pytest.approx(CE + a * np.mean(ZN[R, YN] - ZN.mean(1)))


def test_maxsup_penalises_the_top_logit():
    a = 0.2
    assert loss("maxsup", alpha=a) == pytest.approx(CE + a * np.mean(ZN.max(1) - ZN.mean(1)))
    # it differs from LS exactly on rows whose target is not the top logit
    diff = loss("maxsup", alpha=a) - loss("label_smoothing", alpha=a)
    assert diff == pytest.approx(a * np.mean(ZN.max(1) - ZN[R, YN])) and diff > 0


@pytest.mark.parametrize("name", ["label_smoothing", "maxsup"])
def test_alpha_schedule_is_linear_in_progress(name):
    fn = LOSSES.get(name)(alpha=0.1, alpha_end=0.2)
    at = {a: loss(name, alpha=a) for a in (0.1, 0.15, 0.2)}
    assert float(fn(Z, Y, None)) == pytest.approx(at[0.1])  # progress starts at 0
    for step, a in ((0, 0.1), (50, 0.15), (100, 0.2)):  # the engine's hook: set_progress(step, steps)
        fn.set_progress(step, 100)
        assert float(fn(Z, Y, None)) == pytest.approx(at[a]), step
    fixed = LOSSES.get(name)(alpha=0.1)
    fixed.set_progress(100, 100)
    assert float(fixed(Z, Y, None)) == pytest.approx(at[0.1])


def test_poly1_matches_its_formula():
    assert loss("poly1", epsilon=2.0) == pytest.approx(np.mean(-np.log(PY) + 2.0 * (1 - PY)))
    assert loss("poly1", epsilon=-1.0) == pytest.approx(np.mean(-np.log(PY) - (1 - PY)))
    assert loss("poly1", epsilon=0.0) == pytest.approx(CE)
    with pytest.raises(ValueError, match="epsilon"):
        LOSSES.get("poly1")(epsilon=-1.5)


def dual_focal_np(gamma):
    out = []
    for p, y in zip(P, YN):
        below = [v for v in p if v < p[y]]
        pj = max(below) if below else 0.0
        out.append(-(1 - p[y] + pj) ** gamma * np.log(p[y]))
    return np.array(out)


def test_dual_focal_matches_a_loop():
    want = dual_focal_np(2.0)
    assert loss("dual_focal", gamma=2.0) == pytest.approx(want.mean())
    assert loss("dual_focal", gamma=2.0, reduction="sum") == pytest.approx(want.sum())
    # the p_j = 0 row (target smallest) and the tie row (p_j skips the equal class) by hand
    assert want[2] == pytest.approx(-(1 - P[2, 0]) ** 2 * np.log(P[2, 0]))
    assert want[3] == pytest.approx(-(1 - P[3, 0] + P[3, 2]) ** 2 * np.log(P[3, 0]))
    assert loss("dual_focal", gamma=0.0) == pytest.approx(CE)
    with pytest.raises(ValueError, match="reduction"):
        LOSSES.get("dual_focal")(gamma=2.0, reduction="none")


def zloss_np(o, a, b):
    mu = o.mean(1, keepdims=True)
    sigma = np.sqrt(((o - mu) ** 2).mean(1, keepdims=True))
    z = (o - mu) / (sigma + 1e-12)
    return np.mean(np.log1p(np.exp(a * (b - z[R, YN]))) / a)


def test_zloss_matches_its_formula():
    assert loss("zloss") == pytest.approx(zloss_np(ZN, 1.0, 0.0))
    assert loss("zloss", a=3.0, b=1.5) == pytest.approx(zloss_np(ZN, 3.0, 1.5))


def test_zloss_is_shift_and_scale_invariant():
    fn = LOSSES.get("zloss")(a=2.0, b=1.0)
    base = float(fn(Z, Y, None))
    assert float(fn(Z + 7.3, Y, None)) == pytest.approx(base, rel=1e-9)
    assert float(fn(4.5 * Z, Y, None)) == pytest.approx(base, rel=1e-9)
    assert float(fn(-Z, Y, None)) != pytest.approx(base)  # a negative scale is not a symmetry


@pytest.mark.parametrize("name,kw", [("label_smoothing", {"alpha": 0.1, "alpha_end": 0.2}),
                                     ("maxsup", {"alpha": 0.1, "alpha_end": 0.2}), ("poly1", {"epsilon": 1.0}),
                                     ("dual_focal", {"gamma": 5.0}), ("zloss", {"a": 2.0, "b": 1.0})])
def test_losses_train_a_gradient(name, kw):
    z = torch.randn(16, 10, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    y = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(1))
    out = LOSSES.get(name)(**kw)(z, y, None)
    assert out.dtype == torch.float32 and out.dim() == 0
    out.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
