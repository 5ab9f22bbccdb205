"""Neural-collapse metrics, UFM generator/model/loss and probes (Dang et al. 2023; methods/neural_collapse.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from softrepro.methods.softmax.neural_collapse import (
    UFMDeepLinear,
    gof_s,
    gof_x,
    nc_gof_metrics,
    nc_metrics,
    neural_collapse_gof_probe,
    neural_collapse_probe,
)
from softrepro.registry import GENERATORS, LOSSES, MODELS, PROBES


def _reference(H, y, W):
    """Loop-based numpy transcription of validate_NC.py / synthetic_experiment_balanced.py."""
    K, N, d = W.shape[0], H.shape[0], H.shape[1]
    mu_c = [H[y == k].sum(0) / (y == k).sum() for k in range(K)]
    mu_G = H.sum(0) / N
    sw = np.zeros((d, d))
    for k in range(K):
        for h in H[y == k]:
            sw += np.outer(h - mu_c[k], h - mu_c[k])
    sw /= N
    sb = sum(np.outer(m - mu_G, m - mu_G) for m in mu_c) / K
    nc1 = np.trace(sw @ np.linalg.pinv(sb)) / K
    etf = (np.eye(K) - np.ones((K, K)) / K) / np.sqrt(K - 1)
    ident = np.eye(K) / np.sqrt(K)
    Hc = np.stack([m - mu_G for m in mu_c], 1)  # d x K, columns as in the code
    Hu = np.stack(mu_c, 1)

    def nrm(a):
        return a / np.sqrt((a**2).sum())

    def dist(a, b):
        return np.sqrt(((a - b) ** 2).sum())

    return {
        "nc1": nc1,
        "nc2_etf_w": dist(nrm(W @ W.T), etf),
        "nc2_identity_w": dist(nrm(W @ W.T), ident),
        "nc2_etf_h": dist(nrm(Hc.T @ Hc), etf),
        "nc2_identity_h": dist(nrm(Hu.T @ Hu), ident),
        "nc3_etf_wh": dist(nrm(W @ Hc), etf),
        "nc3_identity_wh": dist(nrm(W @ Hu), ident),
        "nc3_w_sub_h": dist(nrm(W), nrm(Hu.T)),
        "nc3_w_sub_h_centered": dist(nrm(W), nrm(Hc.T)),
    }


@pytest.mark.parametrize("counts", [[7, 7, 7], [12, 5, 3, 9]])
def test_nc_metrics_match_reference(counts):
    rng = np.random.default_rng(0)
    K, d = len(counts), 6
    y = rng.permutation(np.repeat(np.arange(K), counts))
    H = rng.normal(size=(len(y), d)) + 2 * rng.normal(size=(K, d))[y]
    W = rng.normal(size=(K, d))
    ref = _reference(H, y, W)
    for bias in (True, False):
        got = nc_metrics(torch.tensor(H, dtype=torch.float64), torch.tensor(y), torch.tensor(W), bias=bias)
        for k, v in ref.items():
            assert got[k] == pytest.approx(v, rel=1e-9, abs=1e-12), k
        kind = "etf" if bias else "identity"
        assert got["nc2_w"] == got[f"nc2_{kind}_w"] and got["nc2_h"] == got[f"nc2_{kind}_h"]
        assert got["nc3"] == got[f"nc3_{kind}_wh"]


def test_collapsed_configurations_give_zero():
    K, d, n = 4, 7, 5
    y = np.repeat(np.arange(K), n)
    # bias: class means are a simplex ETF (centred, equal norms), W is aligned with them
    Q = np.linalg.qr(np.random.default_rng(1).normal(size=(d, K)))[0]  # d x K orthonormal
    means = 3.0 * (np.eye(K) - np.ones((K, K)) / K) @ Q.T  # K x d, rows = ETF vertices
    H = means[y]
    m = nc_metrics(H, y, 0.5 * means, bias=True)
    assert m["nc1"] == pytest.approx(0.0, abs=1e-12)
    for k in ("nc2_w", "nc2_h", "nc3", "nc3_w_sub_h", "nc3_w_sub_h_centered"):
        assert m[k] == pytest.approx(0.0, abs=1e-9), k
    # bias-free: class means orthogonal with equal norms, W aligned
    means = 2.0 * Q.T
    m = nc_metrics(means[y], y, 0.7 * means, bias=False)
    assert m["nc1"] == pytest.approx(0.0, abs=1e-12)
    for k in ("nc2_w", "nc2_h", "nc3", "nc3_w_sub_h"):
        assert m[k] == pytest.approx(0.0, abs=1e-9), k
    assert m["nc2_etf_w"] > 0.1  # and these are not an ETF


def test_gof_roots_and_zero_at_gof():
    counts, wd, fd = [200, 100, 50, 50], 5e-4, 5e-4
    N = sum(counts)
    # depth 1: b/n = 1/(x+1)^2 with b = N * N wd fd
    assert gof_x(counts, 1, wd, fd) == pytest.approx([math.sqrt(n / (N * N * wd * fd)) - 1 for n in counts])
    # sympy values of compute_x (official code path), computed once for depths 2 and 6
    assert gof_x(counts, 2, wd, fd) == pytest.approx([13.02547324511917, 10.31437427530591, 8.156210987828075,
                                                      8.156210987828075], rel=1e-10)
    assert gof_x(counts, 6, wd, fd) == pytest.approx([2.785790022989925, 2.521900143003425, 2.2820733684496433,
                                                      2.2820733684496433], rel=1e-10)
    # a configuration exactly on the GOF gives zero for every GOF metric
    depth = 3
    S = gof_s(counts, depth, wd, fd) ** (2 * depth)
    y = np.repeat(np.arange(4), counts)
    a = np.sqrt(S) / (S + N * fd)
    means = np.zeros((4, 6))
    means[np.arange(4), np.arange(4)] = a
    W = np.zeros((4, 6))
    W[np.arange(4), np.arange(4)] = np.sqrt(S)
    g = nc_gof_metrics(means[y], y, W, depth, wd, fd)
    for k in ("nc1", "nc2_w_gof", "nc2_h_gof", "nc3_wh_gof", "nc3_w_sub_h_gof"):
        assert g[k] == pytest.approx(0.0, abs=1e-9), k
    assert nc_gof_metrics(means[y], y, np.eye(4, 6), depth, wd, fd)["nc2_w_gof"] > 0.05  # imbalanced S != const


def test_generator_counts_and_labels():
    make = GENERATORS.get("ufm_labels")
    d = make(3, class_counts=[200, 100, 50, 50])
    (x, y), (xt, yt) = d["train"], d["test"]
    assert x.dtype == np.int64 and y.dtype == np.int64 and d["n_outputs"] == 4
    assert np.array_equal(x, np.arange(400)) and np.array_equal(np.bincount(y), [200, 100, 50, 50])
    assert np.array_equal(xt, x) and np.array_equal(yt, y)
    assert np.array_equal(make(3, class_counts=[200, 100, 50, 50])["train"][1], y)  # seeded
    assert not np.array_equal(make(4, class_counts=[200, 100, 50, 50])["train"][1], y)
    assert np.array_equal(make(0, class_counts=[2, 3], shuffle=False)["train"][1], [0, 0, 1, 1, 1])


def test_model_structure_and_init():
    torch.manual_seed(0)
    m = MODELS.get("ufm_deep_linear")((), 4, n_samples=3000, hidden=40, depth_linear=3, bias=True)
    assert isinstance(m, UFMDeepLinear) and len(m.linear_layers()) == 3
    assert all(layer.bias is None for layer in m.hidden_layers) and m.readout.bias is not None
    assert m.embedding.weight.std().item() == pytest.approx(0.1, rel=0.02)  # std 0.1, not variance
    assert m.readout.weight.std().item() == pytest.approx(0.1, rel=0.15)
    x = torch.tensor([5, 0, 2999])
    out = m(x)
    W = m.linear_product()
    assert torch.equal(m.features_out, m.embedding.weight[x])
    assert torch.allclose(out, m.features_out @ W.T + m.readout.bias, atol=1e-6)
    assert torch.allclose(m.readout(m.penultimate), out)
    with pytest.raises(ValueError):
        MODELS.get("ufm_deep_linear")((), 4)


def test_loss_matches_numpy_formula():
    torch.manual_seed(1)
    m = UFMDeepLinear(30, 3, hidden=5, depth_linear=3, bias=True).double()
    y = torch.arange(30) % 3
    x = torch.arange(30)
    fn = LOSSES.get("mse_onehot_decay")(weight_decay=0.01, feature_decay=0.02)
    got = fn(m(x), y, m).item()
    out = m(x).detach().numpy()
    Y = np.eye(3)[y.numpy()]
    ws = [layer.weight.detach().numpy() for layer in m.linear_layers()]
    Hm = m.embedding.weight.detach().numpy()
    want = ((out - Y) ** 2).sum() / 60 + 0.01 / 2 * sum((w**2).sum() for w in ws) + 0.02 / 2 * (Hm**2).sum()
    assert got == pytest.approx(want, rel=1e-12)
    assert m.nc_decay == (0.01, 0.02)


def test_sgd_drives_nc1_down_and_probes_run():
    torch.manual_seed(0)
    x, y = map(torch.from_numpy, GENERATORS.get("ufm_labels")(0, class_counts=[20] * 4)["train"])
    m = MODELS.get("ufm_deep_linear")((), 4, n_samples=80, hidden=16, depth_linear=2, bias=True)
    loss = LOSSES.get("mse_onehot_decay")(weight_decay=5e-4, feature_decay=5e-4)
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    probe = PROBES.get("neural_collapse")
    assert probe is neural_collapse_probe
    with torch.no_grad():
        before = probe(m, x, y)
    for _ in range(300):
        l = loss(m(x), y, m)
        opt.zero_grad()
        l.backward()
        opt.step()
    with torch.no_grad():
        after = probe(m, x, y)
        gof = PROBES.get("neural_collapse_gof")(m, x, y)
    # measured over seeds 0-4: NC1 falls by 3.3e3-7.0e3 (4.1-6.9 -> ~1e-3); NC2_W 0.46-0.87 -> < 0.07
    assert before["nc1"] / after["nc1"] > 300
    assert after["nc2_w"] < 0.2 < before["nc2_w"]
    assert after["nc3"] < 0.05 < before["nc3"]
    assert set(gof) == {"nc2_w_gof", "nc2_h_gof", "nc3_wh_gof", "nc3_w_sub_h_gof"}
    assert neural_collapse_gof_probe is PROBES.get("neural_collapse_gof")
