"""The soft decision tree of Frosst & Hinton 2017 (softrepro.methods.distillation.soft_tree) against
hand-computed depth-1 and depth-2 trees: branch and path probabilities, the max-path prediction, the
path-weighted log loss (labels and soft targets) and the balancing penalty with its running average."""
import math

import pytest
import torch
import torch.nn.functional as F

from softrepro.methods.distillation.soft_tree import SoftDecisionTree, SoftTreeLoss
from softrepro.registry import LOSSES, MODELS


def sig(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def tree(depth, w, b, phi, beta=1.0, **kw) -> SoftDecisionTree:
    m = SoftDecisionTree(in_shape=(len(w[0]),), n_classes=len(phi[0]), depth=depth, beta=beta, **kw).double()
    with torch.no_grad():
        m.inner.weight.copy_(torch.tensor(w, dtype=torch.float64))
        m.inner.bias.copy_(torch.tensor(b, dtype=torch.float64))
        m.phi.copy_(torch.tensor(phi, dtype=torch.float64))
    return m


def softmax(row):
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


X1 = [[1.0, -2.0], [0.5, 0.5], [-1.0, 3.0]]
W1, B1 = [[0.3, 0.2]], [-0.1]
PHI1 = [[2.0, 0.0, -1.0], [-0.5, 1.0, 0.5]]  # leaf 0 (left), leaf 1 (right); 3 classes


def test_registered():
    assert MODELS.get("soft_tree") is not None and LOSSES.get("soft_tree") is SoftTreeLoss


def test_depth1_branches_prediction_and_label_loss():
    beta = 2.0
    m = tree(1, W1, B1, PHI1, beta=beta).eval()
    x = torch.tensor(X1, dtype=torch.float64)
    out = m(x)
    q = [softmax(r) for r in PHI1]
    y = [0, 1, 2]
    expected_loss = 0.0
    for n, (xi, yi) in enumerate(zip(X1, y)):
        p = sig(beta * (0.3 * xi[0] + 0.2 * xi[1] - 0.1))  # probability of the right branch
        assert m.leaf_log_path[n].exp().tolist() == pytest.approx([1 - p, p], rel=1e-12)
        best = 1 if p > 0.5 else 0  # the leaf with the greater path probability
        assert out[n].exp().tolist() == pytest.approx(q[best], rel=1e-12)
        expected_loss += -((1 - p) * math.log(q[0][yi]) + p * math.log(q[1][yi]))
    loss = SoftTreeLoss(penalty=5.0)(out, torch.tensor(y), m)  # eval mode: no penalty
    assert loss.item() == pytest.approx(expected_loss / 3, rel=1e-12)


def test_depth1_soft_targets_and_label_mix():
    m = tree(1, W1, B1, PHI1).eval()
    x, y = torch.tensor(X1, dtype=torch.float64), torch.tensor([0, 1, 2])
    v = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0], [-1.0, 1.0, 1.0]], dtype=torch.float64)
    out = m(x)
    q = [softmax(r) for r in PHI1]
    for temp, alpha in ((1.0, 1.0), (4.0, 1.0), (2.0, 0.3)):
        expected = 0.0
        for n, xi in enumerate(X1):
            p = sig(0.3 * xi[0] + 0.2 * xi[1] - 0.1)
            t = softmax([c / temp for c in v[n].tolist()])
            target = [alpha * t[k] + (1 - alpha) * (k == int(y[n])) for k in range(3)]
            expected += -sum(path * sum(target[k] * math.log(q[leaf][k]) for k in range(3))
                             for leaf, path in ((0, 1 - p), (1, p)))
        got = SoftTreeLoss(penalty=0.0, temperature=temp, alpha=alpha)(out, y, m, teacher=v)
        assert got.item() == pytest.approx(expected / 3, rel=1e-12)


W2 = [[0.5, -0.3], [-0.4, 0.8], [0.2, 0.6]]  # root, its left child, its right child
B2 = [0.1, 0.0, -0.3]
PHI2 = [[1.0, 0.0], [0.0, 1.0], [0.5, -0.5], [-1.0, 2.0]]  # leaves LL, LR, RL, RR; 2 classes
X2 = [[1.0, 1.0], [-2.0, 0.5], [0.3, -1.5], [2.0, 2.0]]


def hand_depth2(xi):
    p0, p1, p2 = (sig(w[0] * xi[0] + w[1] * xi[1] + b) for w, b in zip(W2, B2))
    return (p0, p1, p2), [(1 - p0) * (1 - p1), (1 - p0) * p1, p0 * (1 - p2), p0 * p2]


def test_depth2_paths_max_path_and_mixture():
    m = tree(2, W2, B2, PHI2).eval()
    x = torch.tensor(X2, dtype=torch.float64)
    out = m(x)
    q = [softmax(r) for r in PHI2]
    mix = tree(2, W2, B2, PHI2, prediction="mixture").eval()(x)
    for n, xi in enumerate(X2):
        _, paths = hand_depth2(xi)
        assert sum(paths) == pytest.approx(1.0)
        assert m.leaf_log_path[n].exp().tolist() == pytest.approx(paths, rel=1e-12)
        best = max(range(4), key=paths.__getitem__)
        assert out[n].exp().tolist() == pytest.approx(q[best], rel=1e-12)
        assert mix[n].exp().tolist() == pytest.approx([sum(paths[l] * q[l][k] for l in range(4)) for k in range(2)], rel=1e-12)
    # the loss keeps the mixture for test_counts: the accuracy of the path-weighted average
    y = torch.tensor([0, 1, 1, 0])
    loss_fn = SoftTreeLoss()
    loss_fn(out, y, m)
    assert loss_fn.test_counts(out, y)["test_mixture_accuracy"] == float((mix.argmax(1) == y).sum())


def hand_penalty(alphas, depths, lam):
    return -lam * sum(2.0**-d * (0.5 * math.log(a) + 0.5 * math.log(1 - a)) for a, d in zip(alphas, depths))


def hand_alphas(rows):
    """alpha_i = sum_x P^i(x) p_i(x) / sum_x P^i(x): root P = 1, left child P = 1 - p0, right child P = p0."""
    ps = [hand_depth2(xi)[0] for xi in rows]
    a0 = sum(p[0] for p in ps) / len(ps)
    a1 = sum((1 - p[0]) * p[1] for p in ps) / sum(1 - p[0] for p in ps)
    a2 = sum(p[0] * p[2] for p in ps) / sum(p[0] for p in ps)
    return [a0, a1, a2]


def test_penalty_formula_on_one_batch():
    m = tree(2, W2, B2, PHI2, ema_window=0.0).train()  # the batch's alpha alone
    x, y = torch.tensor(X2, dtype=torch.float64), torch.tensor([0, 1, 1, 0])
    out = m(x)
    alphas = hand_alphas(X2)
    assert m.alpha.tolist() == pytest.approx(alphas, rel=1e-12)
    with_pen = SoftTreeLoss(penalty=0.7)(out, y, m)
    without = SoftTreeLoss(penalty=0.0)(out, y, m)
    assert (with_pen - without).item() == pytest.approx(hand_penalty(alphas, [0, 1, 1], 0.7), rel=1e-12)
    # its lowest value is at alpha = 1/2 for every node: lambda * sum_i 2^-d_i log 2 = lambda * depth * log 2
    assert hand_penalty([0.5] * 3, [0, 1, 1], 0.7) == pytest.approx(0.7 * 2 * math.log(2))


def test_running_average_window_grows_with_depth_and_eval_leaves_it():
    m = tree(2, W2, B2, PHI2, ema_window=2.0).train()
    first, second = X2[:2], X2[2:]
    m(torch.tensor(first, dtype=torch.float64))
    a_first = hand_alphas(first)
    assert m.alpha.tolist() == pytest.approx(a_first, rel=1e-12)  # the first batch starts the average
    m(torch.tensor(second, dtype=torch.float64))
    a_second = hand_alphas(second)
    g = [1 - 1 / (2.0 * 2**d) for d in (0, 1, 1)]  # window 2 * 2^d batches
    smoothed = [gi * f + (1 - gi) * s for gi, f, s in zip(g, a_first, a_second)]
    assert m.alpha.tolist() == pytest.approx(smoothed, rel=1e-12)
    assert m.alpha_avg.tolist() == pytest.approx(smoothed, rel=1e-12)
    # the penalty is evaluated at the smoothed alphas; its gradient flows through the current batch's
    # alphas with full weight: d C / d theta = sum_i c_i d alpha_i(batch) / d theta, c_i = dC/dalpha at alpha~_i
    xb = torch.tensor(second, dtype=torch.float64)
    prev = m.alpha_avg.tolist()
    out = m(xb)
    pen = SoftTreeLoss(penalty=1.0)(out, torch.tensor([1, 0]), m) - SoftTreeLoss(penalty=0.0)(out, torch.tensor([1, 0]), m)
    smoothed = [gi * f + (1 - gi) * s for gi, f, s in zip(g, prev, a_second)]
    assert pen.item() == pytest.approx(hand_penalty(smoothed, [0, 1, 1], 1.0), rel=1e-12)
    m.zero_grad()
    pen.backward()
    w = torch.tensor(W2, dtype=torch.float64, requires_grad=True)
    p = torch.sigmoid(xb @ w.T + torch.tensor(B2, dtype=torch.float64))  # (batch, 3): p0, p1, p2 by hand
    batch_alpha = torch.stack([p[:, 0].mean(), ((1 - p[:, 0]) * p[:, 1]).sum() / (1 - p[:, 0]).sum(),
                               (p[:, 0] * p[:, 2]).sum() / p[:, 0].sum()])
    coef = [-(2.0**-d) * 0.5 * (1 / a - 1 / (1 - a)) for a, d in zip(smoothed, (0, 1, 1))]
    (torch.tensor(coef, dtype=torch.float64) * batch_alpha).sum().backward()
    assert torch.allclose(m.inner.weight.grad, w.grad, rtol=1e-10, atol=1e-14)
    # evaluation changes neither the running average nor adds the penalty
    before = m.alpha_avg.clone()
    m.eval()
    out = m(torch.tensor(X2, dtype=torch.float64))
    assert torch.equal(m.alpha_avg, before)
    assert SoftTreeLoss(penalty=1.0)(out, torch.tensor([0, 1, 1, 0]), m).item() == pytest.approx(
        SoftTreeLoss(penalty=0.0)(out, torch.tensor([0, 1, 1, 0]), m).item())


def test_depth8_on_images_is_finite_and_learns():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small model: more threads only contend on a shared machine
    try:
        _depth8_learns()
    finally:
        torch.set_num_threads(threads)


def _depth8_learns():
    torch.manual_seed(0)
    m = MODELS.get("soft_tree")(in_shape=(1, 28, 28), n_classes=10, depth=8)
    assert m.inner.weight.shape == (255, 784) and m.phi.shape == (256, 10)
    x, y = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
    loss_fn = SoftTreeLoss(penalty=0.1)
    losses = []
    for _ in range(30):  # sign descent, like Adam's first steps (torch.optim's first use imports torch._dynamo: seconds)
        out = m(x)
        assert out.shape == (32, 10) and torch.allclose(out.exp().sum(1), torch.ones(32))
        loss = loss_fn(out, y, m)
        m.zero_grad()
        loss.backward()
        with torch.no_grad():
            for p in m.parameters():
                p -= 0.01 * p.grad.sign()
        losses.append(loss.item())
    data = SoftTreeLoss(penalty=0.0)
    assert all(math.isfinite(v) for v in losses)
    assert data(m(x), y, m).item() < math.log(10) - 0.05  # the leaves' log loss fell below chance (log 10 at the start)
    assert m.leaf_log_path.exp().sum(1).sub(1).abs().max() < 1e-5  # path probabilities sum to 1


def test_state_dict_carries_the_running_average():
    a = tree(2, W2, B2, PHI2).train()
    a(torch.tensor(X2, dtype=torch.float64))
    b = tree(2, W2, B2, PHI2)
    b.load_state_dict(a.state_dict())
    assert torch.equal(b.alpha_avg, a.alpha_avg) and bool(b.alpha_seen)


def test_bad_arguments():
    with pytest.raises(ValueError):
        SoftDecisionTree(depth=0)
    with pytest.raises(ValueError):
        SoftDecisionTree(prediction="vote")
    with pytest.raises(ValueError):
        SoftTreeLoss(temperature=0.0)
    assert F.softmax(torch.zeros(2), 0).tolist() == [0.5, 0.5]
