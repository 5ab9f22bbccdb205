"""ND (Wang et al. 2023), SinKD (Cui et al. 2024) and PLD (Bassam et al. 2025) on the shared fmnist-kd protocol:
each loss against its formula on a hand-computed case and against the official code (or, for PLD, the paper's
own listing) re-typed; the ND model and probe; the engine's teacher features; and the shared runs."""
import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from softrepro.methods.distillation.kd import kd_loss
from softrepro.methods.distillation.nd import EmbedMLP, NDLoss, class_mean_directions, feature_norm, nd_term
from softrepro.methods.distillation.pld import PLD, pld_loss, teacher_optimal_permutation
from softrepro.methods.distillation.sinkd import SinKD, sinkhorn_distance, sinkhorn_plan
from softrepro.registry import LOSSES, MODELS, PROBES

from conftest import REPO, write_dataset



def _softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


# ---------------------------------------------------------------- ND

def test_nd_term_matches_a_hand_computed_case():
    s = torch.tensor([[3.0, 4.0], [1.0, 0.0]], dtype=torch.float64)  # student embeddings, norms 5 and 1
    t = torch.tensor([[0.0, 2.0], [0.0, 3.0]], dtype=torch.float64)  # teacher embeddings, norms 2 and 3
    dirs = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)  # unit class means
    y = torch.tensor([1, 0])
    # sample 0: <s, e_1> = 1.8 + 3.2 = 5, max(5, 2) = 5 -> 0; sample 1: <s, e_0> = 1, max(1, 3) = 3 -> 1 - 1/3
    assert nd_term(s, t, dirs, y).item() == pytest.approx((0.0 + 2 / 3) / 2, rel=1e-12)
    # once ||s|| >= ||t|| the term is 1 - cos(s, e_y): here s = (0, 10), e_1 = (0.6, 0.8), cos = 0.8
    s2 = torch.tensor([[0.0, 10.0]], dtype=torch.float64)
    assert nd_term(s2, t[:1], dirs, torch.tensor([1])).item() == pytest.approx(1 - 0.8, rel=1e-12)


def test_class_mean_directions_are_the_unit_class_means():
    f = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0], [1.0, 1.0]])
    y = torch.tensor([0, 0, 1, 1, 2])
    d = class_mean_directions(f, y, 4)
    r = 1 / math.sqrt(2)
    assert d.flatten().tolist() == pytest.approx([1.0, 0.0, 0.0, 1.0, r, r, 0.0, 0.0], abs=1e-7)  # class 3: no image


class _OfficialDirectNormLoss:
    """WangYZ1608/Knowledge-Distillation-via-ND at fc6f3f9, CIFAR/utils.py lines 44-66, re-typed (without .cuda())."""

    def __init__(self, num_class=100, nd_loss_factor=1.0):
        self.num_class, self.nd_loss_factor = num_class, nd_loss_factor

    def project_center(self, s_emb, t_emb, T_EMB, labels):
        loss = 0.0
        for s, t, i in zip(s_emb, t_emb, labels):
            i = i.item()
            center = torch.tensor(T_EMB[str(i)], dtype=s.dtype)
            e_c = center / center.norm(p=2)
            max_norm = max(s.norm(p=2), t.norm(p=2))
            loss += 1 - torch.dot(s, e_c) / max_norm
        return loss

    def __call__(self, s_emb, t_emb, T_EMB, labels):
        return self.project_center(s_emb, t_emb, T_EMB, labels) * self.nd_loss_factor / len(labels)


def _official_class_means(emb, labels):
    """CIFAR/emb_fea_distribution.py lines 15-45, re-typed without its rounding to 4 decimals: the mean of each
    embedding coordinate over the images of each label."""
    out = {}
    for e, i in zip(emb, labels):
        out.setdefault(str(int(i)), []).append(e.tolist())
    return {k: [sum(col) / len(col) for col in zip(*v)] for k, v in out.items()}


def test_nd_agrees_with_the_official_loss_and_its_gradient():
    g = torch.Generator().manual_seed(4)
    train_t = torch.relu(torch.randn(60, 8, generator=g, dtype=torch.float64))  # teacher features (post-ReLU)
    train_y = torch.arange(60) % 5
    s = torch.randn(12, 8, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.relu(torch.randn(12, 8, generator=g, dtype=torch.float64)) * 3
    y = torch.randint(0, 5, (12,), generator=g)
    ours = 2.0 * nd_term(s, t, class_mean_directions(train_t, train_y, 5), y)
    official = _OfficialDirectNormLoss(num_class=5, nd_loss_factor=2.0)(s, t, _official_class_means(train_t, train_y), y)
    assert ours.item() == pytest.approx(official.item(), rel=1e-12)
    g1, = torch.autograd.grad(ours, s)
    g2, = torch.autograd.grad(official, s)
    assert torch.allclose(g1, g2, rtol=1e-10, atol=1e-14)


def test_nd_loss_is_kd_plus_weighted_nd_and_needs_a_teacher_in_training():
    torch.manual_seed(0)
    model = MODELS.get("mlp_embed")(in_shape=(6,), n_classes=3, hidden=[5], embed_dim=4).double()
    x = torch.randn(7, 6, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    v = torch.randn(7, 3, dtype=torch.float64)
    tf = torch.rand(7, 4, dtype=torch.float64)
    loss_fn = LOSSES.get("nd")(nd_weight=2.0, temperature=4.0, alpha=0.9)
    loss_fn.set_teacher_features(tf, y)
    z = model(x)
    loss = loss_fn(z, y, model, teacher=v, teacher_features=tf)
    expected = kd_loss(z, y, v, 4.0, 0.9) + 2.0 * nd_term(model.embedding, tf, class_mean_directions(tf, y, 3), y)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    with pytest.raises(ValueError, match="teacher"):
        loss_fn(z, y, model)  # training mode without a teacher
    model.eval()
    assert loss_fn(model(x), y, model).item() == pytest.approx(F.cross_entropy(model(x), y).item(), rel=1e-12)
    # a student embedding of the wrong width is refused rather than broadcast
    wide = MODELS.get("mlp_embed")(in_shape=(6,), n_classes=3, hidden=[5]).double()
    with pytest.raises(ValueError, match="dimensions"):
        loss_fn(wide(x), y, wide, teacher=v, teacher_features=tf)


def test_mlp_embed_starts_as_the_plain_mlp_and_projects_like_embtrans():
    torch.manual_seed(3)
    m = MODELS.get("mlp_embed")(in_shape=(1, 4, 4), n_classes=3, hidden=[8], embed_dim=5)
    torch.manual_seed(3)
    plain = MODELS.get("mlp")(in_shape=(1, 4, 4), n_classes=3, hidden=[8])
    x = torch.randn(6, 1, 4, 4)
    assert torch.equal(m(x), plain(x))  # the same MLP weights for the same seed: the nd arm starts where kd starts
    bn, drop, lin = m.projector
    assert isinstance(bn, torch.nn.BatchNorm1d) and drop.p == 0.5 and lin.out_features == 5
    assert not lin.bias.abs().sum()  # EmbTrans zeroes the projector's bias (embtrans_cifar.py lines 48-53)
    m.eval()
    m(x)
    assert torch.allclose(m.embedding, lin(bn(m.penultimate)))
    assert MODELS.get("mlp_embed")(in_shape=(1, 4, 4), n_classes=3, hidden=[8]).projector is None


def test_feature_norm_probe():
    torch.manual_seed(0)
    m = EmbedMLP(in_shape=(4,), n_classes=3, hidden=[6], embed_dim=2).eval()
    x = torch.randn(10, 4)
    with torch.no_grad():
        out = PROBES.get("feature_norm")(m, x, torch.zeros(10, dtype=torch.long))
        m(x)
    assert out["train_feature_norm"] == pytest.approx(m.penultimate.norm(dim=1).mean().item(), rel=1e-6)
    assert out["train_embedding_norm"] == pytest.approx(m.embedding.norm(dim=1).mean().item(), rel=1e-6)
    plain = MODELS.get("mlp")(in_shape=(4,), n_classes=3, hidden=[6]).eval()
    with torch.no_grad():
        assert set(feature_norm(plain, x, None)) == {"train_feature_norm"}


# ---------------------------------------------------------------- the engine: teacher features

@pytest.fixture
def tiny_root(tmp_path):
    """A project root with a tiny synthetic fashion-mnist (what load_data reads) and the registry file."""
    (tmp_path / "configs").mkdir()
    shutil.copy(REPO / "configs" / "datasets.yaml", tmp_path / "configs" / "datasets.yaml")
    shutil.copytree(REPO / "configs" / "schemas", tmp_path / "configs" / "schemas")
    write_dataset(tmp_path / "data" / "fashion-mnist", n_train=300, n_test=100)
    return tmp_path


def test_engine_gives_a_loss_the_teachers_penultimate_features(tiny_root, monkeypatch):
    from softrepro.spec import load_paper, resolve_experiment
    from softrepro.train import load_data, teacher_outputs, train

    paper = load_paper(REPO / "configs" / "papers" / "wang2023-nd.yaml", REPO)
    short = {"steps": 4, "log_every": 2, "eval_every": 4, "checkpoint_every": 100, "train_subset": 300, "test_subset": 100}
    t_exp = {**resolve_experiment(paper.experiments["teacher"], "smoke"), **short}
    for run in ("t", "s"):
        (tiny_root / run).mkdir()
    train(t_exp, 0, tiny_root / "t", tiny_root, progress=False, log=lambda m: None)
    weights = tiny_root / "t" / "model.pt"
    s_exp = {**resolve_experiment(paper.experiments["nd"], "smoke"), **short}

    (xtr, ytr, *_), _ = load_data(s_exp, tiny_root, torch.device("cpu"))
    logits, feats = teacher_outputs(s_exp["teacher"], weights, xtr, 10, torch.float32, features=True)
    assert torch.equal(logits, teacher_outputs(s_exp["teacher"], weights, xtr, 10, torch.float32))  # same logits as before
    assert feats.shape == (len(xtr), 128) and (feats >= 0).all()  # the CNN's 128 post-ReLU hidden units

    seen = {"set": [], "calls": []}
    original_set, original_call = NDLoss.set_teacher_features, NDLoss.__call__

    def spy_set(self, features, labels):
        seen["set"].append((features.clone(), labels.clone()))
        return original_set(self, features, labels)

    def spy_call(self, logits, targets, model, teacher=None, teacher_features=None):
        if teacher is not None:
            seen["calls"].append((teacher.clone(), teacher_features.clone()))
        return original_call(self, logits, targets, model, teacher, teacher_features)

    monkeypatch.setattr(NDLoss, "set_teacher_features", spy_set)
    monkeypatch.setattr(NDLoss, "__call__", spy_call)
    metrics, _, _ = train(s_exp, 0, tiny_root / "s", tiny_root, progress=False, log=lambda m: None, teacher_model=weights)
    assert len(seen["set"]) == 1
    f_all, y_all = seen["set"][0]
    assert torch.equal(f_all, feats) and torch.equal(y_all, ytr)
    assert len(seen["calls"]) == 4
    for v, f in seen["calls"]:  # each batch's features belong to the same images as its logits
        rows = [int((logits == row).all(1).nonzero()[0]) for row in v]
        assert torch.equal(f, feats[rows])
    assert math.isfinite(metrics["train_feature_norm"]) and math.isfinite(metrics["train_embedding_norm"])


# ---------------------------------------------------------------- SinKD

def test_sinkhorn_plan_and_distance_match_a_hand_computed_case():
    p_s = torch.tensor([[0.5, 0.5], [1.0, 0.0]], dtype=torch.float64)
    p_t = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=torch.float64)
    # L1 distances: W = [[1, 0], [0, 1]]; K = exp(-W / 0.5) = [[e^-2, 1], [1, e^-2]]: symmetric with equal rows and
    # columns, so each normalisation divides by 1 + e^-2 (first the rows, then the columns, whose sums are then 1)
    eps, a = 0.5, math.exp(-2)
    plan = sinkhorn_plan(torch.tensor([[a, 1.0], [1.0, a]], dtype=torch.float64), 3)
    assert plan.flatten().tolist() == pytest.approx([a / (1 + a), 1 / (1 + a), 1 / (1 + a), a / (1 + a)], rel=1e-12)
    assert sinkhorn_distance(p_s, p_t, eps, 3).item() == pytest.approx(2 * a / (1 + a), rel=1e-12)


def test_sinkhorn_iterations_end_with_unit_column_sums_and_approach_unit_row_sums():
    g = torch.Generator().manual_seed(0)
    k = torch.rand(6, 6, generator=g, dtype=torch.float64) + 0.1
    p = sinkhorn_plan(k, 50)
    assert torch.allclose(p.sum(0), torch.ones(6, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(p.sum(1), torch.ones(6, dtype=torch.float64), atol=1e-8)
    assert torch.allclose(sinkhorn_plan(k, 1), (k / k.sum(1, keepdim=True)) / (k / k.sum(1, keepdim=True)).sum(0))


class _OfficialSinkhorn:
    """2018cx/SinKD at 1ffac90, loss.py lines 119-139, re-typed (class Sinkhorn: T hard-coded to 2)."""

    def __init__(self, T):
        self.T = 2

    def sinkhorn_normalized(self, x, n_iters=10):
        for _ in range(n_iters):
            x = x / torch.sum(x, dim=1, keepdim=True)
            x = x / torch.sum(x, dim=0, keepdim=True)
        return x

    def sinkhorn_loss(self, x, y, epsilon=0.1, n_iters=20):
        Wxy = torch.cdist(x, y, p=1)
        K = torch.exp(-Wxy / epsilon)
        P = self.sinkhorn_normalized(K, n_iters)
        return torch.sum(P * Wxy)

    def __call__(self, y_s, y_t):
        p_s = torch.softmax(y_s / self.T, dim=1)
        p_t = torch.softmax(y_t / self.T, dim=1)
        return 0.001 * self.sinkhorn_loss(x=p_s, y=p_t)


def test_sinkd_agrees_with_the_official_sinkhorn_class_and_adds_it_to_kd():
    g = torch.Generator().manual_seed(2)
    z = (torch.randn(16, 10, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    v = torch.randn(16, 10, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 10, (16,), generator=g)
    official = _OfficialSinkhorn(T=1)  # glue_train.py lines 351/353 pass T=1, which the class ignores
    loss_fn = SinKD()
    ours = loss_fn.weight / 0.8 * loss_fn.sinkhorn_term(z, v)
    assert ours.item() == pytest.approx(official(z, v).item(), rel=1e-10)
    g1, = torch.autograd.grad(ours, z)
    g2, = torch.autograd.grad(official(z, v), z)
    assert torch.allclose(g1, g2, rtol=1e-8, atol=1e-14)
    total = loss_fn(z, y, None, teacher=v)  # glue_train.py: alpha KD + (1 - alpha) CE (line 403) + beta x term (line 429)
    assert total.item() == pytest.approx((kd_loss(z, y, v, 4.0, 0.9) + 0.8 * official(z, v)).item(), rel=1e-10)
    assert loss_fn(z, y, None).item() == pytest.approx(F.cross_entropy(z, y).item(), rel=1e-12)  # the test loss


def test_sinkhorn_distance_is_small_when_the_student_matches_the_teacher():
    g = torch.Generator().manual_seed(1)
    v = torch.randn(32, 10, generator=g, dtype=torch.float64) * 3
    far = SinKD().sinkhorn_term(torch.randn(32, 10, generator=g, dtype=torch.float64) * 3, v)
    near = SinKD().sinkhorn_term(v + 0.01, v)
    assert near.item() < 0.2 * far.item()


# ---------------------------------------------------------------- PLD

def test_teacher_optimal_permutation_puts_the_label_first_then_descending_teacher():
    v = torch.tensor([[0.1, 2.0, -1.0, 0.5], [3.0, 1.0, 2.0, 0.0]])
    y = torch.tensor([2, 0])
    assert teacher_optimal_permutation(v, y).tolist() == [[2, 1, 3, 0], [0, 2, 1, 3]]


def test_pld_matches_a_hand_computed_case():
    s = [1.0, 0.0, 2.0]  # student
    v = [0.5, 1.5, -1.0]  # teacher: pi* for label 0 = (0, 1, 2)
    tau = 2.0
    alpha = _softmax([x / tau for x in v])
    steps = [math.log(sum(math.exp(s[j]) for j in (0, 1, 2))) - s[0],
             math.log(math.exp(s[1]) + math.exp(s[2])) - s[1],
             0.0]  # the last selection is certain
    expected = sum(a * st for a, st in zip(alpha, steps))
    st, vt = torch.tensor([s], dtype=torch.float64), torch.tensor([v], dtype=torch.float64)
    assert pld_loss(st, vt, torch.tensor([0]), tau).item() == pytest.approx(expected, rel=1e-12)
    assert PLD(tau)(st, torch.tensor([0]), None, teacher=vt).item() == pytest.approx(expected, rel=1e-12)
    assert PLD(tau)(st, torch.tensor([0]), None).item() == pytest.approx(F.cross_entropy(st, torch.tensor([0])).item())


def _listing_plackett_luce_loss(student_logits, teacher_logits, labels, temperature=1.0):
    """The paper's Appendix C listing (create_adjusted_ranking, plackett_luce_loss), re-typed; its
    prepare_for_classification (not listed) taken as the identity on (N, C) logits."""
    _, sorted_idx = torch.sort(teacher_logits, dim=-1, descending=False)
    mask = sorted_idx != labels.unsqueeze(-1)
    V = teacher_logits.size(-1)
    ranking = torch.cat([sorted_idx[mask].view(-1, V - 1), labels.unsqueeze(-1)], dim=-1)
    s_perm = torch.gather(student_logits, dim=-1, index=ranking)
    t_perm = torch.gather(teacher_logits, dim=-1, index=ranking)
    log_cumsum = torch.logcumsumexp(s_perm, dim=-1)
    per_pos_loss = log_cumsum - s_perm
    teacher_prob = F.softmax(t_perm / temperature, dim=-1)
    return (per_pos_loss * teacher_prob).sum(dim=-1).mean()


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_pld_agrees_with_the_papers_listing(tau):
    g = torch.Generator().manual_seed(7)
    s = torch.randn(20, 10, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(20, 10, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, 10, (20,), generator=g)
    ours = pld_loss(s, v, y, tau)
    listing = _listing_plackett_luce_loss(s, v, y, tau)
    assert ours.item() == pytest.approx(listing.item(), rel=1e-12)
    g1, = torch.autograd.grad(ours, s)
    g2, = torch.autograd.grad(listing, s)
    assert torch.allclose(g1, g2, rtol=1e-10, atol=1e-14)


def test_pld_is_translation_invariant_and_one_hot_weights_give_cross_entropy():
    g = torch.Generator().manual_seed(8)
    s = torch.randn(5, 6, generator=g, dtype=torch.float64)
    v = torch.randn(5, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 6, (5,), generator=g)
    assert pld_loss(s + 3.0, v, y).item() == pytest.approx(pld_loss(s, v, y).item(), rel=1e-12)
    # a teacher certain of the label puts all the weight on the first selection: the cross-entropy
    sure = torch.full((5, 6), -1e4, dtype=torch.float64).scatter(1, y[:, None], 0.0)
    assert pld_loss(s, sure, y).item() == pytest.approx(F.cross_entropy(s, y).item(), rel=1e-12)


def test_the_losses_and_model_are_registered_with_checked_keys():
    assert {"nd", "sinkd", "pld"} <= set(LOSSES.names())
    assert LOSSES.accepted("nd") == {"nd_weight", "temperature", "alpha"}
    assert LOSSES.accepted("sinkd") >= {"sinkhorn_weight", "scale", "sinkhorn_temperature", "epsilon", "n_iters"}
    assert LOSSES.accepted("pld") == {"temperature"}
    assert MODELS.accepted("mlp_embed") >= {"embed_dim", "embed_dropout", "hidden"}
    assert "feature_norm" in PROBES.names()


# ---------------------------------------------------------------- the specs on the shared protocol

def test_nds_kd_norm_is_the_shared_kd_run_plus_a_probe():
    """The shared teacher/ce/kd runs and the stand-in level of every claim are checked for these specs with the
    others on the protocol (tests/test_distillation_standins.py, STANDINS)."""
    from softrepro.spec import load_paper, resolve_experiment

    nd = load_paper(REPO / "configs" / "papers" / "wang2023-nd.yaml", REPO)
    a, b = (resolve_experiment(nd.experiments[n], "cpu") for n in ("kd", "kd-norm"))
    assert {k: v for k, v in b.items() if k not in ("probes", "description", "deviations")} == \
        {k: v for k, v in a.items() if k not in ("description", "deviations")}
