import numpy as np
import pytest
import torch

from softrepro.calibration import calibration_metrics, reliability_bins


def _ece_by_hand(p, y, n_bins=15):
    conf, pred = p.max(1), p.argmax(1)
    ece = 0.0
    for lo, hi in zip(np.linspace(0, 1, n_bins + 1)[:-1], np.linspace(0, 1, n_bins + 1)[1:]):
        m = (conf >= lo) & (conf < hi) if hi < 1 else (conf >= lo)
        if m.any():
            ece += m.mean() * abs((pred[m] == y[m]).mean() - conf[m].mean())
    return ece


def test_ece_nll_brier_match_hand_computation():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 4)) * 2
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = rng.integers(0, 4, 500)
    m = calibration_metrics(torch.tensor(p), torch.tensor(y))
    assert m["test_ece"] == pytest.approx(_ece_by_hand(p, y), abs=1e-6)
    assert m["test_nll"] == pytest.approx(-np.log(p[np.arange(500), y]).mean(), rel=1e-9)
    assert m["test_brier"] == pytest.approx(((p - np.eye(4)[y]) ** 2).sum(1).mean(), rel=1e-9)


def test_perfectly_calibrated_one_hot_is_zero_and_overconfident_is_not():
    y = torch.tensor([0, 1, 2, 1])
    assert calibration_metrics(torch.eye(3)[y], y)["test_ece"] == pytest.approx(0.0)
    wrong = torch.eye(3)[torch.tensor([1, 1, 2, 1])]  # confident, 75 % right
    assert calibration_metrics(wrong, y)["test_ece"] == pytest.approx(0.25)


def test_reliability_bins_add_up_to_ece():
    rng = np.random.default_rng(1)
    logits = torch.tensor(rng.normal(size=(300, 5)) * 3)
    p, y = logits.softmax(1), torch.tensor(rng.integers(0, 5, 300))
    bins = reliability_bins(p, y)
    assert sum(b["count"] for b in bins) == 300
    ece = sum(b["count"] / 300 * abs(b["accuracy"] - b["confidence"]) for b in bins)
    assert ece == pytest.approx(calibration_metrics(p, y)["test_ece"], rel=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_ece_agrees_with_torchmetrics(seed):
    from torchmetrics.functional.classification import multiclass_calibration_error

    g = torch.Generator().manual_seed(seed)
    p = (torch.randn(2000, 10, generator=g, dtype=torch.float64) * (1 + seed)).softmax(1)
    y = torch.randint(0, 10, (2000,), generator=g)
    ref = float(multiclass_calibration_error(p, y, num_classes=10, n_bins=15, norm="l1"))
    assert calibration_metrics(p, y)["test_ece"] == pytest.approx(ref, abs=1e-6)  # torchmetrics bins in float32


def test_temperature_scaling_fits_on_the_holdout_and_measures_the_rest():
    import torch

    from softrepro.train import temperature_scaled

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 5, (4000,), generator=g)
    z = torch.randn(4000, 5, generator=g) + 2.0 * torch.nn.functional.one_hot(y, 5)

    # with unit-variance noise around 2 * onehot(y), the calibrated logits are 2 x: 3 x is 1.5 times too large
    m = temperature_scaled(3.0 * z, y, holdout=2000)
    assert 1.35 < m["ts_temperature"] < 1.65 and m["ts_n_eval"] == 2000
    assert m["ts_ece_after"] < 0.5 * m["ts_ece_before"] and m["ts_nll_after"] < m["ts_nll_before"]
