"""Simulated multi-label data (toy_multilabel), the multilabel task's metrics and the linear model
(Martins & Astudillo 2016; procedures from github.com/Unbabel/sparsemax at 27d2a1a)."""
from math import factorial

import numpy as np
import pytest
import torch
from torch import nn

from softrepro.methods.softmax.multilabel import evaluate_multilabel
from softrepro.methods.softmax.sparsemax import predict_logistic, predict_softmax, predict_sparsemax
from softrepro.registry import GENERATORS, LOSSES, MODELS, TASKS


def make(seed=0, **kw):
    return GENERATORS.get("toy_multilabel")(seed, **kw)


def truncated_poisson_mean(lam, k_max):
    ks = np.arange(1, k_max + 1)
    w = np.array([lam ** k / factorial(k) for k in ks])
    return float((ks * w).sum() / w.sum())


# ---------------------------------------------------------------- generator

def test_generator_shapes_dtypes_and_target_rows():
    d = make(0, n_classes=6, doc_length=100, n_train=120, n_test=80)
    (xtr, ytr), (xte, yte) = d["train"], d["test"]
    assert xtr.shape == (120, 6) and ytr.shape == (120, 6)  # num_words = num_classes
    assert xte.shape == (80, 6) and yte.shape == (80, 6)
    assert d["n_outputs"] == 6
    for a in (xtr, ytr, xte, yte):
        assert a.dtype == np.float32
    for x, y in ((xtr, ytr), (xte, yte)):
        np.testing.assert_allclose(y.sum(1), 1.0, atol=1e-6)
        assert (y >= 0).all() and ((y > 0).sum(1) >= 1).all()  # allow_unlabeled=False
        assert (x >= 0).all() and np.array_equal(x, np.round(x)) and (x.sum(1) > 0).all()  # counts, length > 0
    assert make(0, n_classes=4, doc_length=50, n_train=5, n_test=5, n_words=9)["train"][0].shape == (5, 9)


def test_label_count_is_truncated_poisson_and_lengths_are_poisson():
    k = 10
    for lam in (1.0, 3.0):
        x, y = make(1, n_classes=k, doc_length=300, n_train=3000, n_test=1, avg_labels=lam)["train"]
        sizes = (y > 0).sum(1)
        want = truncated_poisson_mean(lam, k)  # Poisson(lam) redrawn until 1 <= n <= K
        assert sizes.min() >= 1 and sizes.max() <= k
        assert sizes.mean() == pytest.approx(want, abs=4 * sizes.std() / np.sqrt(len(sizes)))
        lengths = x.sum(1)
        assert lengths.mean() == pytest.approx(300, abs=4 * np.sqrt(300 / len(lengths)))
        assert lengths.var() == pytest.approx(300, rel=0.15)  # Poisson: variance = mean
    # avg_labels = 1: about 1.58 labels (the truncation), not 1
    assert truncated_poisson_mean(1.0, k) == pytest.approx(1 / (1 - np.exp(-1)), abs=1e-6)


def test_uniform_label_proportions_setting():
    _, y = make(2, n_classes=8, doc_length=50, n_train=400, n_test=1, avg_labels=2.0, class_proportions=False)["train"]
    for row in y:
        nz = row[row > 0]
        np.testing.assert_allclose(nz, 1.0 / len(nz), rtol=1e-6)
    _, y = make(2, n_classes=8, doc_length=50, n_train=400, n_test=1, avg_labels=2.0)["train"]
    multi = y[(y > 0).sum(1) > 1]
    assert len(multi) > 50 and not all(np.allclose(r[r > 0], r[r > 0][0]) for r in multi)  # random proportions


def test_words_follow_the_label_mixture():
    """With long documents the empirical word frequencies approach sum_c r_c p(w|c): documents sharing a
    single label have (nearly) the same word distribution, different labels different ones."""
    x, y = make(3, n_classes=4, doc_length=5000, n_train=400, n_test=1, avg_labels=0.2)["train"]
    single = (y > 0).sum(1) == 1
    freq = x / x.sum(1, keepdims=True)
    means = {}
    for c in range(4):
        rows = freq[single & (y[:, c] == 1)]
        if len(rows) >= 5:
            assert np.abs(rows - rows.mean(0)).max() < 0.05
            means[c] = rows.mean(0)
    assert len(means) >= 2
    cs = list(means)
    assert max(np.abs(means[a] - means[b]).max() for a in cs for b in cs) > 0.05


def test_generator_is_reproducible_per_seed_and_differs_across_seeds():
    a, b, c = (make(s, n_classes=5, doc_length=80, n_train=50, n_test=30) for s in (7, 7, 8))
    for split in ("train", "test"):
        for i in range(2):
            np.testing.assert_array_equal(a[split][i], b[split][i])
        assert not np.array_equal(a[split][0], c[split][0])
        assert not np.array_equal(a[split][1], c[split][1])


# ---------------------------------------------------------------- task metrics

class Fixed(nn.Module):
    """Returns stored logits in order (x holds row indices)."""

    def __init__(self, out):
        super().__init__()
        self.out = torch.as_tensor(out, dtype=torch.float64)
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.out[x.long()]


def np_metrics(p, mask, q):
    """Independent numpy version of the repo's classify_dataset metrics."""
    n, k = q.shape
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log(p / m), 0.0).sum()
        kl_q = np.where(q > 0, q * np.log(q / m), 0.0).sum()
    g = q > 0
    mt = (mask & g).sum(0).astype(float)
    pr, gd = mask.sum(0).astype(float), g.sum(0).astype(float)
    P, R = mt.sum() / pr.sum(), mt.sum() / gd.sum()
    Pl = np.divide(mt, pr, out=np.zeros(k), where=pr > 0)
    Rl = np.divide(mt, gd, out=np.zeros(k), where=gd > 0)
    MP, MR = Pl.mean(), Rl.mean()
    sm = ((p > 0) & g).sum()
    SP, SR = sm / (p > 0).sum(), sm / g.sum()
    return {"test_support_f1": 2 * SP * SR / (SP + SR),"test_jsd": (0.5 * kl_p + 0.5 * kl_q) / (n * k), "test_mse": ((p - q) ** 2).sum() / (n * k),
            "test_micro_f1": 2 * P * R / (P + R), "test_macro_f1": 2 * MP * MR / (MP + MR),
            "test_sparsity": (p == 0).mean(), "test_avg_support": mask.sum(1).mean()}


LOGITS = np.array([[2.0, 1.5, -1.0, 0.0], [0.1, 0.2, 0.15, 0.05], [-3.0, 0.0, 3.0, 0.0],
                   [1.0, 1.0, 1.0, 1.0], [0.5, -0.5, 2.5, 2.4], [-1.0, -2.0, -0.5, 0.3]])
TARGETS = np.array([[0.7, 0.3, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0.25, 0.25, 0.25, 0.25],
                    [0, 0, 0.5, 0.5], [0, 0, 0, 1.0]])


def np_sparsemax(z):
    zs = np.sort(z)[::-1]
    cums = np.cumsum(zs)
    k = np.arange(1, len(z) + 1)
    kz = k[1 + k * zs > cums].max()
    return np.maximum(z - (cums[kz - 1] - 1) / kz, 0)


@pytest.mark.parametrize("loss", ["sparsemax_loss", "softmax_multilabel_ce", "logistic_multilabel"])
def test_task_metrics_match_numpy(loss):
    loss_fn = LOSSES.get(loss)()
    z = LOGITS
    if loss == "sparsemax_loss":
        p = np.stack([np_sparsemax(r) for r in z])
        mask = p > 0
    elif loss == "softmax_multilabel_ce":
        e = np.exp(z - z.max(1, keepdims=True))
        p = e / e.sum(1, keepdims=True)
        mask = p > 1 / z.shape[1]
    else:
        s = 1 / (1 + np.exp(-z))
        p, mask = s / s.sum(1, keepdims=True), s > 0.5
    want = np_metrics(p, mask, TARGETS)
    x, y = torch.arange(len(z), dtype=torch.float64), torch.tensor(TARGETS)
    model = Fixed(z).train()
    for batch in (1000, 4):  # chunking does not change the result
        got = evaluate_multilabel(model, loss_fn, x, y, batch=batch)
        for key, val in want.items():
            assert got[key] == pytest.approx(val, abs=1e-12), key
        assert got["test_loss"] == pytest.approx(float(loss_fn(torch.tensor(z), y, model)), abs=1e-12)
    assert model.training  # the mode is restored
    assert TASKS.get("multilabel") is evaluate_multilabel


def test_task_metrics_hand_computed_case():
    """Two documents, K = 3, predictions given directly: every number by hand."""
    p = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]], dtype=torch.float64)
    loss_fn = lambda out, y, model: torch.tensor(0.25)  # noqa: E731
    loss_fn.predict = lambda out: (out, out > 0)
    y = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    got = evaluate_multilabel(Fixed(p), loss_fn, torch.arange(2.0), y)
    # doc 1: p=(1,0,0), q=(.5,.5,0), m=(.75,.25,0): JS = .5*log(4/3) + .5*(.5 log(2/3) + .5 log 2)
    # doc 2: p=(0,.5,.5), q=(0,0,1), m=(0,.25,.75): JS = .5*(.5 log 2 + .5 log(2/3)) + .5*log(4/3)
    js = 2 * (0.5 * np.log(4 / 3) + 0.25 * np.log(2 / 3) + 0.25 * np.log(2))
    assert got["test_jsd"] == pytest.approx(js / 6, abs=1e-12)
    assert got["test_mse"] == pytest.approx((0.25 + 0.25 + 0 + 0 + 0.25 + 0.25) / 6, abs=1e-12)
    # predicted {0}, {1, 2}; gold {0, 1}, {2}: matched 2, predicted 3, gold 3
    assert got["test_micro_f1"] == pytest.approx(2 / 3, abs=1e-12)
    # per label P = (1, 0, 1), R = (1, 0, 1): macro P = R = 2/3
    assert got["test_macro_f1"] == pytest.approx(2 / 3, abs=1e-12)
    assert got["test_sparsity"] == pytest.approx(3 / 6) and got["test_avg_support"] == pytest.approx(1.5)
    assert got["test_support_f1"] == pytest.approx(2 / 3, abs=1e-12)  # support of p is the label set here
    assert got["test_loss"] == pytest.approx(0.25)


def test_support_f1_scores_zeros_by_where_they_fall():
    """A full-support output scores 2|g| / (|g| + K); zeros on the wrong labels score below it."""
    loss_fn = lambda out, y, model: torch.tensor(0.0)  # noqa: E731
    loss_fn.predict = lambda out: (out, out > 0)
    y = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.5, 0.5, 0.0]], dtype=torch.float64)
    full = torch.full((2, 4), 0.25, dtype=torch.float64)
    right = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.6, 0.4, 0.0]], dtype=torch.float64)
    wrong = torch.tensor([[0.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    f = {name: evaluate_multilabel(Fixed(p), loss_fn, torch.arange(2.0), y)["test_support_f1"]
         for name, p in (("full", full), ("right", right), ("wrong", wrong))}
    assert f["full"] == pytest.approx(2 * 3 / (3 + 8)) and f["right"] == pytest.approx(1.0) and f["wrong"] == 0.0


def test_macro_f1_is_f1_of_mean_p_and_r_not_mean_of_f1():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    loss_fn = lambda out, y, model: torch.tensor(0.0)  # noqa: E731
    loss_fn.predict = lambda out: (out, out > 0)
    y = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    got = evaluate_multilabel(Fixed(z), loss_fn, torch.arange(3.0), y)
    # label 0: P 1, R 1/2 (F1 2/3); label 1: P 1/2, R 1 (F1 2/3).  Repo: F1(mean P, mean R) = F1(.75, .75)
    assert got["test_macro_f1"] == pytest.approx(0.75, abs=1e-12)
    assert got["test_micro_f1"] == pytest.approx(2 / 3, abs=1e-12)  # matched 2 of 3 predicted, 3 gold


def test_predict_rules():
    z = torch.tensor([[3.0, 0.0, -1.0, 1.0], [0.2, 0.1, 0.0, -0.1]])
    p, m = predict_sparsemax(z)
    assert torch.equal(m, p > 0) and m[0].tolist() == [True, False, False, False]
    p, m = predict_softmax(z)
    assert torch.equal(m, p > 0.25)
    p, m = predict_logistic(z)
    torch.testing.assert_close(p.sum(1), torch.ones(2))
    assert m.tolist() == (z > 0).tolist()
    for name in ("sparsemax_loss", "softmax_multilabel_ce", "logistic_multilabel"):
        assert callable(LOSSES.get(name)().predict)
    assert callable(LOSSES.get("logistic_multilabel")(class_reduction="mean").predict)
    with pytest.raises(ValueError, match="predict"):
        evaluate_multilabel(Fixed(z), lambda o, y, m: o.sum(), torch.arange(2.0), torch.ones(2, 4))


# ---------------------------------------------------------------- model and end to end

def test_linear_model():
    model = MODELS.get("linear")(in_shape=(7,), n_classes=3)
    assert isinstance(model.readout, nn.Linear) and model.readout.bias is not None
    x = torch.randn(4, 7)
    out = model(x)
    assert out.shape == (4, 3) and torch.equal(model.penultimate, x)
    torch.testing.assert_close(out, x @ model.readout.weight.T + model.readout.bias)
    z = MODELS.get("linear")(in_shape=(7,), n_classes=3, init="zeros")
    assert float(z(x).detach().abs().max()) == 0.0


def test_sparsemax_linear_model_beats_the_uniform_predictor():
    d = make(0, n_classes=5, doc_length=200, n_train=300, n_test=300)
    (xtr, ytr), (xte, yte) = d["train"], d["test"]
    mu, sd = xtr.mean(0), xtr.std(0)
    sd[sd == 0] = 1
    xtr, xte = torch.tensor((xtr - mu) / sd), torch.tensor((xte - mu) / sd)
    ytr, yte = torch.tensor(ytr), torch.tensor(yte)
    torch.manual_seed(0)
    model = MODELS.get("linear")(in_shape=(5,), n_classes=5)
    loss_fn = LOSSES.get("sparsemax_loss")()
    before = TASKS.get("multilabel")(model, loss_fn, xte, yte)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead
    try:
        for _ in range(200):
            opt.zero_grad()
            loss_fn(model(xtr), ytr, model).backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    after = TASKS.get("multilabel")(model, loss_fn, xte, yte)
    uniform = np_metrics(np.full((len(yte), 5), 0.2), np.ones((len(yte), 5), bool), yte.numpy().astype(float))
    # measured: test JSD 0.0073 vs 0.0711 for the uniform predictor; micro-F1 0.81 vs 0.48 (all labels);
    # test loss 0.162 -> 0.031; sparsity 0.60, 2.0 labels per document
    assert after["test_jsd"] < 0.5 * uniform["test_jsd"]
    assert after["test_loss"] < before["test_loss"]
    assert after["test_micro_f1"] > uniform["test_micro_f1"] + 0.2
    assert 0 < after["test_sparsity"] < 1 and 1 <= after["test_avg_support"] < 5
