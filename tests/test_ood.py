"""Post-hoc OOD scores against their formulas, and each metric convention on hand-computed cases."""
import numpy as np
import pytest
import torch
from torch import nn

from softrepro.calibration import fit_temperature
from softrepro.ood import Context, detection_metrics, evaluate, generate_noise, make_scores, misclassification_metrics
from softrepro.registry import SCORES


# ---------------------------------------------------------------- metric conventions (by hand)

def test_detection_metrics_by_hand():
    s_in = np.array([0.9, 0.8, 0.7, 0.6])
    s_out = np.array([0.65, 0.5, 0.4, 0.3])
    m = detection_metrics(s_in, s_out)
    assert m["auroc"] == pytest.approx(15 / 16)  # 15 of the 16 (in, out) pairs are ordered
    # in positive by score: ranks in,in,in,out,in -> precisions 1,1,1,4/5 at the positives
    assert m["aupr_in"] == pytest.approx((3 + 0.8) / 4)
    # out positive by -score: out,out,out,in,out -> 1,1,1,4/5
    assert m["aupr_out"] == pytest.approx((3 + 0.8) / 4)
    # keeping all four in-distribution inputs (TPR >= 95 %) needs threshold 0.6: one OOD input (0.65) passes
    assert m["fpr95"] == pytest.approx(0.25)
    assert m["detection_error"] == pytest.approx(0.125)  # threshold 0.7: 0.5 * 0.25 + 0.5 * 0
    assert m["mean_out"] == pytest.approx(0.4625)


def test_fpr95_is_the_first_threshold_keeping_95_percent_of_in_distribution():
    s_in = np.arange(100, dtype=float)       # 0..99: 95 % kept means threshold 5
    s_out = np.array([4.5, 5.0, 50.0, -1.0])  # 5.0 and 50 pass (ties count as accepted)
    assert detection_metrics(s_in, s_out)["fpr95"] == pytest.approx(0.5)


def test_perfect_and_inverted_separation():
    good = detection_metrics(np.array([3.0, 4.0]), np.array([1.0, 2.0]))
    assert good["auroc"] == 1 and good["fpr95"] == 0 and good["detection_error"] == 0
    bad = detection_metrics(np.array([1.0, 2.0]), np.array([3.0, 4.0]))
    assert bad["auroc"] == 0 and bad["fpr95"] == 1


def test_misclassification_metrics_by_hand():
    score = np.array([0.99, 0.95, 0.9, 0.6, 0.7])
    correct = np.array([True, True, True, False, False])
    m = misclassification_metrics(score, correct)
    assert m["auroc"] == pytest.approx(1.0)
    assert m["aupr_succ"] == pytest.approx(1.0)
    assert m["aupr_err"] == pytest.approx(1.0)  # the errors have the two lowest scores
    assert m["mean_wrong"] == pytest.approx(0.65)
    m = misclassification_metrics(np.array([0.9, 0.8, 0.95]), np.array([True, False, False]))
    assert m["auroc"] == pytest.approx(0.5)  # the correct one beats one error of two
    assert m["aupr_err"] == pytest.approx((1 + 2 / 3) / 2)  # by -score: err(0.8), ok(0.9), err(0.95)... ranks 1 and 3


# ---------------------------------------------------------------- scores against their formulas

class Tiny(nn.Module):
    """A two-layer net that keeps ``penultimate`` and ``readout`` like the engine's models."""

    def __init__(self, d=6, h=5, k=3, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Linear(d, h), nn.Tanh())
        self.readout = nn.Linear(h, k)

    def forward(self, x):
        self.penultimate = self.body(x)
        return self.readout(self.penultimate)


@pytest.fixture
def ctx():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 6, generator=g)
    y = torch.randint(0, 3, (300,), generator=g)
    return Context(Tiny().double(), x.double(), y, 3)


def test_msp_max_logit_energy(ctx):
    x = torch.randn(20, 6, dtype=torch.float64)
    z = ctx.model(x).detach()
    assert torch.allclose(SCORES.get("msp")().score(ctx, x), z.softmax(1).amax(1))
    assert torch.allclose(SCORES.get("msp")(temperature=2.0).score(ctx, x), (z / 2).softmax(1).amax(1))
    assert torch.allclose(SCORES.get("max_logit")().score(ctx, x), z.amax(1))
    e = SCORES.get("energy")(temperature=3.0)
    assert torch.allclose(e.score(ctx, x), 3.0 * torch.log(torch.exp(z / 3.0).sum(1)))


def test_odin_perturbs_along_the_gradient_sign(ctx):
    x = torch.randn(8, 6, dtype=torch.float64)
    t, eps = 10.0, 0.01
    odin = SCORES.get("odin")(temperature=t, epsilon=eps)
    xr = x.clone().requires_grad_(True)
    torch.log((ctx.model(xr) / t).softmax(1).amax(1)).sum().backward()
    want = (ctx.model(x + eps * xr.grad.sign()) / t).softmax(1).amax(1)
    got = odin.score(ctx, x)
    assert torch.allclose(got, want.detach())
    assert (got >= SCORES.get("odin")(temperature=t, epsilon=0.0).score(ctx, x) - 1e-12).all()  # a step uphill


def test_odin_grid_is_tuned_on_the_tuning_sets_only(ctx):
    x_in = torch.randn(200, 6, dtype=torch.float64)
    ctx.x_tune_in, ctx.tune = x_in, {"noise": 5 * torch.randn(200, 6, dtype=torch.float64)}
    odin = SCORES.get("odin")(temperature=[1.0, 1000.0], epsilon=[0.0, 0.005])
    odin.fit(ctx)
    best = min(odin.grid, key=lambda r: (r["fpr95"], -r["auroc"]))
    assert len(odin.grid) == 4 and (odin.t, odin.eps) == (best["temperature"], best["epsilon"])
    with pytest.raises(ValueError, match="holdout"):
        SCORES.get("odin")(temperature=[1.0, 2.0]).fit(Context(ctx.model, ctx.x_train, ctx.y_train, 3))


def test_mahalanobis_matches_the_formula(ctx):
    m = SCORES.get("mahalanobis")()
    m.fit(ctx)
    f = ctx.model.body(ctx.x_train).detach().numpy()
    y = ctx.y_train.numpy()
    mu = np.stack([f[y == c].mean(0) for c in range(3)])
    c = f - mu[y]
    prec = np.linalg.pinv(c.T @ c / len(f))
    x = torch.randn(10, 6, dtype=torch.float64)
    fx = ctx.model.body(x).detach().numpy()
    want = np.max([-np.einsum("nd,de,ne->n", fx - mu[k], prec, fx - mu[k]) for k in range(3)], axis=0)
    assert np.allclose(m.score(ctx, x).numpy(), want)


def test_mahalanobis_preprocessing_raises_the_score(ctx):
    x = torch.randn(10, 6, dtype=torch.float64)
    plain, pre = SCORES.get("mahalanobis")(), SCORES.get("mahalanobis")(epsilon=0.01)
    plain.fit(ctx), pre.fit(ctx)
    assert (pre.score(ctx, x) >= plain.score(ctx, x) - 1e-9).all()


def test_vim_and_residual_match_the_formula(ctx):
    v, r = SCORES.get("vim")(dim=2), SCORES.get("residual")(dim=2)
    v.fit(ctx), r.fit(ctx)
    w, b = ctx.model.readout.weight.detach().numpy(), ctx.model.readout.bias.detach().numpy()
    ftr = ctx.model.body(ctx.x_train).detach().numpy()
    u = -np.linalg.pinv(w) @ b
    vals, vecs = np.linalg.eigh((ftr - u).T @ (ftr - u) / len(ftr))
    ns = vecs[:, np.argsort(-vals)[2:]]  # all but the top 2
    ltr = ftr @ w.T + b
    alpha = ltr.max(1).mean() / np.linalg.norm((ftr - u) @ ns, axis=1).mean()
    x = torch.randn(10, 6, dtype=torch.float64)
    fx = ctx.model.body(x).detach().numpy()
    lx = fx @ w.T + b
    res = np.linalg.norm((fx - u) @ ns, axis=1)
    want = np.log(np.exp(lx).sum(1)) - alpha * res
    assert np.allclose(v.score(ctx, x).numpy(), want)
    assert np.allclose(r.score(ctx, x).numpy(), -res)
    with pytest.raises(ValueError, match="below the feature width"):
        SCORES.get("vim")(dim=5).fit(ctx)


# ---------------------------------------------------------------- sets, temperature, evaluation

def test_noise_sets_are_seeded_shaped_and_clipped():
    a = generate_noise("gaussian", 50, (1, 4, 4), 0, "g", {"mean": 0.5, "std": 1.0, "clip": [0, 1]})
    assert a.shape == (50, 1, 4, 4) and a.min() >= 0 and a.max() <= 1
    assert np.array_equal(a, generate_noise("gaussian", 50, (1, 4, 4), 0, "g", {"mean": 0.5, "std": 1.0, "clip": [0, 1]}))
    assert not np.array_equal(a, generate_noise("gaussian", 50, (1, 4, 4), 1, "g", {"mean": 0.5, "std": 1.0, "clip": [0, 1]}))
    u = generate_noise("uniform", 20000, (3,), 0, "u", {})
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    g = generate_noise("gaussian", 20000, (3,), 0, "n", {})
    assert abs(g.mean()) < 0.02 and abs(g.std() - 1) < 0.02 and g.min() < 0  # N(0, 1), unclipped


def test_fit_temperature_recovers_the_generating_temperature():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20000, 5, generator=g, dtype=torch.float64) * 3
    y = torch.multinomial((z / 2.5).softmax(1), 1, generator=g).squeeze(1)
    assert fit_temperature(z, y) == pytest.approx(2.5, rel=0.05)


def test_evaluate_names_metrics_by_set_score_and_convention(ctx, tmp_path):
    cfg = {"scores": ["msp", {"name": "energy", "as": "energy-t2", "temperature": 2.0}], "misclassification": True,
           "sets": {"wide": {"noise": "gaussian", "std": 5.0, "n": 300}}}
    m, extras = evaluate(ctx.model, cfg, ctx.x_train, ctx.y_train, ctx.x_train[:100], ctx.y_train[:100], 3, 0, tmp_path)
    for label in ("msp", "energy-t2"):
        for k in ("auroc", "aupr_in", "aupr_out", "fpr95", "detection_error", "mean_out"):
            assert 0 <= m[f"ood_wide_{label}_{k}"] or k == "mean_out"
        assert {f"err_{label}_auroc", f"err_{label}_aupr_succ", f"err_{label}_aupr_err"} <= m.keys()
    assert 0 <= m["test_error"] <= 1
    curve = extras["curves"]["wide/msp"]
    assert curve["fpr"][0] == 0 and curve["tpr"][-1] == 1 and sum(curve["hist_out"]) == 300
    assert set(make_scores(cfg)) == {"msp", "energy-t2"}


def test_far_field_saturates_along_rays_for_a_relu_net():
    from softrepro.methods.ood.far_field import LAMBDAS

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 20), nn.ReLU(), nn.Linear(20, 2)).double()
    x = torch.randn(200, 2, dtype=torch.float64)
    from softrepro.registry import PROBES

    m = PROBES.get("far_field")(model, x, None)
    assert set(m) == {"train_msp_mean"} | {f"far_{k}_l{lam}" for k in ("msp_mean", "msp099", "grad", "auroc") for lam in LAMBDAS}
    assert m["far_msp_mean_l1"] == pytest.approx(m["train_msp_mean"])
    assert m["far_auroc_l1"] == pytest.approx(0.5)  # the same points on both sides
    # piecewise affine: far out the logit gap grows linearly, so MSP -> 1 and its gradient -> 0
    assert m["far_msp_mean_l1000"] > m["far_msp_mean_l1"] and m["far_grad_l1000"] < m["far_grad_l1"]
    # the gradient of MSP at lambda * x by hand for one point
    x0 = x[:1] * 10
    xr = x0.clone().requires_grad_(True)
    model(xr).softmax(1).amax(1).sum().backward()
    from softrepro.methods.ood.far_field import _msp_and_grad
    assert _msp_and_grad(model, x0)[1][0] == pytest.approx(float(xr.grad.norm()))


def test_crc_lambda_hat_matches_a_brute_force_search():
    from softrepro.methods.ood.conformal_risk import lambda_hat_step_losses

    rng = np.random.default_rng(0)
    u, v = rng.random((50, 20)), rng.random((50, 20))
    got = lambda_hat_step_losses(u, v, alpha=0.3)
    grid = np.r_[0.0, np.sort(np.unique(u))]  # the adjusted risk only changes at the U_i
    for i in range(50):
        risk = np.array([(v[i] * (u[i] > lam)).mean() for lam in grid])
        ok = 20 / 21 * risk + 1 / 21 <= 0.3
        assert got[i] == (grid[ok.argmax()] if ok.any() else 1.0)


def test_crc_bounds_hold_and_the_nonmonotone_loss_breaks_them():
    from softrepro.registry import BENCHMARKS

    m, rows = BENCHMARKS.get("conformal_risk_synthetic")({"n_values": [50], "alpha": 0.1, "trials": 4000,
                                                          "nonmonotone": {"n": 10, "alpha": 0.2, "p": 0.5, "grid": 500, "trials": 2000}}, 0)
    assert m["crc_lower_n50"] - 0.005 <= m["crc_risk_n50"] <= 0.1 + 0.005  # Theorems 2 and 1, with Monte-Carlo slack
    assert m["crc_nonmonotone_risk"] > 0.4  # Proposition 1: far above alpha = 0.2


def test_moons_generator_splits_and_seeds():
    from softrepro.registry import GENERATORS

    a = GENERATORS.get("moons")(0, n_samples=100, noise=0.1, n_train=70)
    assert a["train"][0].shape == (70, 2) and a["test"][0].shape == (30, 2) and set(a["train"][1]) == {0, 1}
    b = GENERATORS.get("moons")(1, n_samples=100, noise=0.1, n_train=70)
    c = GENERATORS.get("moons")(1, n_samples=100, noise=0.1, n_train=70, data_seed=0)
    assert not np.array_equal(a["train"][0], b["train"][0]) and np.array_equal(a["train"][0], c["train"][0])


def test_abnormality_module_pieces():
    from softrepro.methods.ood.abnormality import _distort
    from softrepro.registry import LOSSES, MODELS

    model = MODELS.get("mlp_decoder")(in_shape=(1, 28, 28), n_classes=10)
    x = torch.rand(5, 1, 28, 28)
    y = torch.randint(0, 10, (5,))
    logits = model(x)
    assert logits.shape == (5, 10) and model.reconstruction.shape == (5, 784) and model.branch_out.shape == (5, 256)
    want = 0.9 * torch.nn.functional.cross_entropy(logits, y) + 0.1 * ((model.reconstruction - x.flatten(1)) ** 2).mean()
    assert torch.allclose(LOSSES.get("ce_reconstruction")(weight=0.1)(logits, y, model), want)
    imgs = np.random.default_rng(0).random((6, 28, 28))
    out = _distort(imgs, np.array([3, 3, 3, 3, 0, 7]), np.random.default_rng(1), (2, 2, 2))
    assert out.shape == (6, 28, 28)
    assert out[2].std() < imgs[2].std() / 3  # a sigma ~ 5 blur flattens the image
    assert not np.allclose(out[4], imgs[4]) and np.allclose(np.sort(out[5].ravel()), np.sort(imgs[5].ravel()))  # zero: noise; 7: rotated


def test_centroid_distance_and_its_deferral_rule(ctx):
    c = SCORES.get("centroid")()
    c.fit(ctx)
    p = ctx.model(ctx.x_train).detach().softmax(1)
    pred, y = p.argmax(1), ctx.y_train
    ok = pred == y
    for k in range(3):
        assert torch.allclose(c.centroids[k], p[ok & (y == k)].mean(0))
        wrong = ~ok & (pred == k)
        if wrong.any():
            assert c.tau[k] == pytest.approx(float((p[wrong] - c.centroids[k]).norm(dim=1).min()))
    d = (p - c.centroids[pred]).norm(dim=1)
    assert torch.allclose(c.score(ctx, ctx.x_train), -d)
    acc = c.accept(ctx, ctx.x_train)
    assert torch.equal(acc, d < c.tau[pred])
    assert not acc[~ok].any()  # no wrong training prediction is accepted: tau is the closest one's distance


def test_perturbations_and_shift_metrics(ctx):
    from softrepro.ood import perturb, shift_metrics

    x = np.random.default_rng(0).random((4, 1, 8, 8)).astype(np.float32)
    assert np.allclose(perturb(x, "brightness", 2.0, 0, "b"), 1.0)
    assert np.allclose(perturb(x, "contrast", 0.0, 0, "c"), 0.5)
    assert np.allclose(perturb(x, "rotation", 360.0, 0, "r"), x, atol=1e-5)
    assert perturb(x, "blur", 2.0, 0, "bl").std() < x.std()
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturb(x, "fog", 1.0, 0, "f")
    c = SCORES.get("centroid")()
    c.fit(ctx)
    m = shift_metrics({"centroid": c, "msp": SCORES.get("msp")()}, ctx, ctx.x_train[:50], ctx.y_train[:50], {}, 0)
    assert {"shift_clean_accuracy", "shift_clean_centroid_accept_rate", "shift_clean_centroid_accepted_accuracy"} <= m.keys()
    assert not any("msp" in k for k in m)  # MSP has no acceptance rule


# ---------------------------------------------------------------- Mahalanobis: layers, preprocessing, ensemble

def test_feature_modules_are_the_nonlinearity_after_each_weight_layer():
    from softrepro.models import MLP
    from softrepro.ood import feature_modules, pool_features

    mlp = MLP((1, 4, 4), 3, hidden=(5, 4), dropout=0.5).double().eval()
    mods = feature_modules(mlp)
    assert [type(m).__name__ for m in mods] == ["ReLU", "ReLU"]
    x = torch.rand(7, 1, 4, 4, dtype=torch.float64)
    lin1, lin2 = mlp.body[1], mlp.body[4]  # Flatten, Linear, ReLU, Dropout, Linear, ReLU, Dropout
    h1 = torch.relu(lin1(x.flatten(1)))
    h2 = torch.relu(lin2(h1))
    layers = Context(mlp, x, torch.zeros(7, dtype=torch.long), 3).layers(x)
    assert torch.allclose(layers[0], h1.detach()) and torch.allclose(layers[1], h2.detach())
    assert torch.allclose(layers[1], Context(mlp, x, None, 3).outputs(x)[1])  # the last one is the penultimate layer
    conv = nn.Module()
    conv.body = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                              nn.Linear(2, 3), nn.Tanh())
    assert [type(m).__name__ for m in feature_modules(conv)] == ["ReLU", "Tanh"]
    maps = torch.arange(24.0).reshape(1, 2, 3, 4)
    assert torch.equal(pool_features(maps), torch.tensor([[5.5, 17.5]]))  # mean over the 3 x 4 positions
    with pytest.raises(ValueError, match="body"):
        feature_modules(nn.Linear(2, 2))


def test_gaussians_distance_by_hand():
    from softrepro.methods.ood.mahalanobis import Gaussians

    # class 0 at (+-1, 0), class 1 at (5, +-1): means (0, 0) and (5, 0); the centred features
    # (+-1, 0), (0, +-1) give the tied covariance diag(1/2, 1/2), precision diag(2, 2)
    f = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [5.0, 1.0], [5.0, -1.0]], dtype=torch.float64)
    g = Gaussians(f, torch.tensor([0, 0, 1, 1]), 2)
    assert torch.allclose(g.precision, 2 * torch.eye(2, dtype=torch.float64))
    q = torch.tensor([[1.0, 1.0], [4.0, 0.0]], dtype=torch.float64)
    # (1, 1): 2 * (1 + 1) = 4 to class 0, 2 * (16 + 1) = 34 to class 1; (4, 0): 32 and 2
    assert torch.allclose(g.min_distance(q), torch.tensor([4.0, 2.0], dtype=torch.float64))


def test_mahalanobis_preprocessing_steps_down_the_closest_distance(ctx):
    from softrepro.methods.ood.mahalanobis import Gaussians

    eps = 0.05
    m = SCORES.get("mahalanobis")(epsilon=eps)
    m.fit(ctx)
    g = Gaussians(ctx.model.body(ctx.x_train).detach(), ctx.y_train, 3)
    x = torch.randn(10, 6, dtype=torch.float64)
    xr = x.clone().requires_grad_(True)
    g.min_distance(ctx.model.body(xr)).sum().backward()
    want = -g.min_distance(ctx.model.body(x - eps * xr.grad.sign())).detach()  # x~ = x - eps sign(grad d)
    assert torch.allclose(m.score(ctx, x), want)


@pytest.fixture
def tuned(ctx):
    """Held-out in-distribution inputs and a tuning set of wide noise."""
    g = torch.Generator().manual_seed(2)
    ctx.x_tune_in = torch.randn(200, 6, generator=g, dtype=torch.float64)
    ctx.tune = {"noise": 4 * torch.randn(200, 6, generator=g, dtype=torch.float64)}
    return ctx


def test_mahalanobis_epsilon_is_chosen_on_the_tuning_data(tuned):
    m = SCORES.get("mahalanobis")(epsilon=[0.0, 0.01, 0.1])
    m.fit(tuned)
    assert [r["epsilon"] for r in m.grid] == [0.0, 0.01, 0.1]
    best = min(m.grid, key=lambda r: (r["fpr95"], -r["auroc"]))
    assert m.epsilon == best["epsilon"]
    for r in m.grid:  # each grid point is the detection of the tuning data at that eps
        one = SCORES.get("mahalanobis")(epsilon=r["epsilon"])
        one.fit(tuned)
        d = detection_metrics(one.score(tuned, tuned.x_tune_in).numpy(), one.score(tuned, tuned.tune["noise"]).numpy())
        assert d["fpr95"] == r["fpr95"] and d["auroc"] == pytest.approx(r["auroc"])
    with pytest.raises(ValueError, match="holdout"):
        SCORES.get("mahalanobis")(epsilon=[0.0, 0.01]).fit(Context(tuned.model, tuned.x_train, tuned.y_train, 3))
    with pytest.raises(ValueError, match="epsilon must be"):
        SCORES.get("mahalanobis")(epsilon=-0.1)


def test_mahalanobis_ensemble_is_a_regression_of_the_per_layer_scores(tuned):
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.preprocessing import StandardScaler

    from softrepro.methods.ood.mahalanobis import Gaussians

    deep = nn.Module()  # two hidden layers: tanh(6 -> 5), tanh(5 -> 4), then the readout
    torch.manual_seed(3)
    deep.body = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4), nn.Tanh())
    deep.readout = nn.Linear(4, 3)
    deep.forward = lambda x: deep.readout(deep.body(x))
    deep = deep.double()
    ctx = Context(deep, tuned.x_train, tuned.y_train, 3, x_tune_in=tuned.x_tune_in, tune=tuned.tune)
    ens = SCORES.get("mahalanobis_ens")(epsilon=0.0)
    ens.fit(ctx)

    def per_layer(x):  # M at each hidden layer, from the formula
        h1 = deep.body[1](deep.body[0](x))
        h2 = deep.body[3](deep.body[2](h1))
        t1 = deep.body[1](deep.body[0](ctx.x_train))
        t2 = deep.body[3](deep.body[2](t1))
        return np.stack([-Gaussians(t.detach(), ctx.y_train, 3).min_distance(h.detach()).numpy()
                         for t, h in ((t1, h1), (t2, h2))], 1)

    s_in, s_out = per_layer(ctx.x_tune_in), per_layer(ctx.tune["noise"])
    assert np.allclose(ens.layer_scores(ctx, ctx.x_tune_in, [0.0])[0], s_in)
    # fitted on the first halves only (100 in + 100 out), standardised, as the score's own pipeline
    X, t = np.r_[s_in[:100], s_out[:100]], np.r_[np.ones(100), np.zeros(100)]
    scaler = StandardScaler().fit(X)
    lr = LogisticRegressionCV(Cs=10, l1_ratios=(0.0,), cv=5, scoring="accuracy", use_legacy_attributes=False)
    lr.fit(scaler.transform(X), t)
    x = torch.randn(9, 6, dtype=torch.float64)
    want = scaler.transform(per_layer(x)) @ lr.coef_[0] + lr.intercept_[0]
    assert np.allclose(ens.score(ctx, x).numpy(), want)
    assert ens.chosen()["layers"] == [5, 4] and len(ens.grid) == 1
    # the second halves choose eps: with a grid, each eps is judged on them
    ens2 = SCORES.get("mahalanobis_ens")(epsilon=[0.0, 0.05])
    ens2.fit(ctx)
    assert ens2.grid[0]["fpr95"] == ens.grid[0]["fpr95"] and len(ens2.grid) == 2
    assert ens2.epsilon == min(ens2.grid, key=lambda r: (r["fpr95"], -r["auroc"]))["epsilon"]
    with pytest.raises(ValueError, match="holdout"):
        SCORES.get("mahalanobis_ens")().fit(Context(deep, ctx.x_train, ctx.y_train, 3))


def test_a_malformed_mahalanobis_epsilon_names_the_file_and_field(tmp_path):
    import shutil

    import yaml

    from softrepro.spec import SpecError, load_paper
    from conftest import REPO

    root = tmp_path / "proj"
    shutil.copytree(REPO / "configs", root / "configs")
    path = root / "configs" / "papers" / "lee2018-mahalanobis.yaml"
    spec = yaml.safe_load(path.read_text())
    spec["experiments"]["fmnist-scores"]["ood"] = {"scores": ["msp", {"name": "mahalanobis_ens", "epsilon": "0.01"}]}
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SpecError, match=r"lee2018-mahalanobis.yaml.*ood\.scores\[1\]\.epsilon") as err:
        load_paper(path, root)
    assert "'0.01'" in str(err.value)
