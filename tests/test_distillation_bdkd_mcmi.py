"""BD-KD (Amara et al. 2022, online distillation) and MCMI teachers (Ye et al. 2024): the losses against their
formulas on hand-computed cases, MCMI against the official code's terms (re-typed), the online pair model,
the CMI probe, and the two specs (shared runs, paired seeds, claims that can fail, an end-to-end chain)."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from softrepro.methods.distillation.bdkd import BDKD, DML, OnlinePair, balance_weights
from softrepro.methods.distillation.mcmi import MCMI, class_centroids, cmi_estimate, cmi_probe
from softrepro.registry import LOSSES, MODELS, PROBES

from conftest import REPO

TEACHER = {"name": "convnet", "channels": [8, 16], "kernel": 5, "hidden": 128, "dropout": 0.0, "channels_last": True}


def _softmax(xs, t=1.0):
    m = max(x / t for x in xs)
    e = [math.exp(x / t - m) for x in xs]
    return [v / sum(e) for v in e]


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def _h(p):
    return -sum(a * math.log(a) for a in p)


def _ce(z, k):
    return -math.log(_softmax(z)[k])


class _Pair(torch.nn.Module):
    """A stand-in for online_pair whose logits are given: forward returns the student's, leaves the teacher's."""

    def __init__(self, zs, zt):
        super().__init__()
        self.zs, self.zt = zs, zt

    def forward(self, x):
        self.teacher_logits = self.zt
        return self.zs


ZS = [[2.0, 0.5, -1.0], [0.2, 0.1, 0.0]]  # student: confident, then nearly uniform
ZT = [[1.0, 1.0, 0.0], [3.0, -1.0, 0.5]]  # teacher: less confident, then confident
Y = [0, 2]


@pytest.mark.parametrize("t", [1.0, 2.0])
def test_bdkd_matches_a_hand_computed_case(t):
    total = 0.0
    for zs, zt, k in zip(ZS, ZT, Y):
        ps, pt = _softmax(zs, t), _softmax(zt, t)
        d = (_h(ps) - _h(pt)) / math.log(3)
        w_r, w_f = (1 + d) / 2, (1 - d) / 2
        student = _ce(zs, k) + t * t * (w_f * _kl(pt, ps) + w_r * _kl(ps, pt))
        teacher = _ce(zt, k) + t * t * _kl(pt, ps)
        total += student + teacher
    zs, zt = torch.tensor(ZS, dtype=torch.float64), torch.tensor(ZT, dtype=torch.float64)
    model = _Pair(zs, zt)
    model(None)
    assert BDKD(temperature=t)(zs, torch.tensor(Y), model).item() == pytest.approx(total / 2, rel=1e-12)


def test_dml_matches_a_hand_computed_case():
    total = 0.0
    for zs, zt, k in zip(ZS, ZT, Y):
        ps, pt = _softmax(zs), _softmax(zt)
        total += _ce(zs, k) + _kl(pt, ps) + _ce(zt, k) + _kl(ps, pt)
    zs, zt = torch.tensor(ZS, dtype=torch.float64), torch.tensor(ZT, dtype=torch.float64)
    model = _Pair(zs, zt)
    model(None)
    assert DML()(zs, torch.tensor(Y), model).item() == pytest.approx(total / 2, rel=1e-12)


def test_balance_weights_follow_the_entropy_gap():
    one_hot_ish = torch.tensor([[20.0, 0.0, 0.0]]).log_softmax(1)
    uniform = torch.zeros(1, 3).log_softmax(1)
    w_f, w_r = balance_weights(uniform, one_hot_ish)  # student far less certain: reverse KL only
    assert w_r.item() == pytest.approx(1.0, abs=1e-6) and w_f.item() == pytest.approx(0.0, abs=1e-6)
    w_f, w_r = balance_weights(one_hot_ish, uniform)  # student far more certain: forward KL only
    assert w_f.item() == pytest.approx(1.0, abs=1e-6) and w_r.item() == pytest.approx(0.0, abs=1e-6)
    w_f, w_r = balance_weights(uniform, uniform)
    assert w_f.item() == w_r.item() == 0.5
    assert not balance_weights(uniform.requires_grad_(), one_hot_ish)[0].requires_grad


@pytest.mark.parametrize("loss_cls", [BDKD, DML])
def test_each_online_term_reaches_one_network_only(loss_cls):
    """The student's gradient is that of its own terms with the teacher held fixed, and vice versa."""
    y = torch.tensor(Y)
    zs = torch.tensor(ZS, dtype=torch.float64, requires_grad=True)
    zt = torch.tensor(ZT, dtype=torch.float64, requires_grad=True)
    model = _Pair(zs, zt)
    model(None)
    g_s, g_t = torch.autograd.grad(loss_cls()(zs, y, model), (zs, zt))
    ls, lt = F.log_softmax(zs, 1), F.log_softmax(zt, 1)
    own_s = F.cross_entropy(zs, y) + loss_cls.student_divergence(ls, lt.detach()).mean()
    own_t = F.cross_entropy(zt, y) + loss_cls.teacher_divergence(ls.detach(), lt).mean()
    assert torch.allclose(g_s, torch.autograd.grad(own_s, zs)[0], atol=1e-14)
    assert torch.allclose(g_t, torch.autograd.grad(own_t, zt)[0], atol=1e-14)
    assert g_s.abs().sum() > 0 and g_t.abs().sum() > 0


def test_online_pair_starts_from_the_plain_runs_weights_and_returns_the_student():
    shape = (1, 28, 28)
    torch.manual_seed(3)
    pair = MODELS.get("online_pair")(shape, 10, hidden=[32, 16], teacher=TEACHER)
    after_pair = torch.rand(1)
    torch.manual_seed(3)
    mlp = MODELS.get("mlp")(shape, 10, hidden=[32, 16])
    after_mlp = torch.rand(1)
    torch.manual_seed(3)
    cnn = MODELS.get("convnet")(shape, 10, **{k: v for k, v in TEACHER.items() if k != "name"})
    for a, b in zip(pair.student.state_dict().values(), mlp.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(pair.teacher.state_dict().values(), cnn.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(after_pair, after_mlp)  # the run's generator goes on as in the plain student run
    x = torch.rand(4, *shape)
    out = pair(x)
    assert torch.equal(out, mlp(x)) and torch.equal(pair.teacher_logits, cnn(x))


def test_online_losses_in_evaluation_are_the_students_ce_and_count_the_teachers_hits():
    zs, zt = torch.tensor(ZS), torch.tensor([[0.0, 5.0, 0.0], [0.0, 0.0, 5.0]])  # the teacher gets 1 of 2 right
    model = _Pair(zs, zt).eval()
    model(None)
    loss = BDKD()
    assert loss(zs, torch.tensor(Y), model).item() == pytest.approx(F.cross_entropy(zs, torch.tensor(Y)).item())
    assert loss.test_counts(zs, torch.tensor(Y)) == {"online_teacher_accuracy": 1.0}
    assert loss.test_counts(zs, torch.tensor(Y)) == {}  # read once per evaluation batch
    with pytest.raises(ValueError, match="online_pair"):
        loss(zs, torch.tensor(Y), torch.nn.Linear(3, 3))


# ---------------------------------------------------------------- MCMI

def test_mcmi_matches_a_hand_computed_case():
    z = [[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [0.0, 1.0, 2.0], [1.0, -1.0, 0.0]]
    y = [0, 0, 2, 2]
    p = [_softmax(r) for r in z]
    q0 = [(a + b) / 2 for a, b in zip(p[0], p[1])]
    q2 = [(a + b) / 2 for a, b in zip(p[2], p[3])]
    cmi = (_kl(p[0], q0) + _kl(p[1], q0) + _kl(p[2], q2) + _kl(p[3], q2)) / 4
    ce = sum(_ce(r, k) for r, k in zip(z, y)) / 4
    zt, yt = torch.tensor(z, dtype=torch.float64), torch.tensor(y)
    assert cmi_estimate(zt, yt).item() == pytest.approx(cmi, rel=1e-12)
    model = torch.nn.Linear(1, 1)  # in training mode
    assert MCMI(cmi_weight=0.15)(zt, yt, model).item() == pytest.approx(ce - 0.15 * cmi, rel=1e-12)
    assert MCMI(cmi_weight=0.15)(zt, yt, model.eval()).item() == pytest.approx(ce, rel=1e-12)  # the test loss


def _official_ce_kl(output, target, centroids, param):
    """ICLRMCMI at d12f354: CE_KL_PWCE_loss.forward (CIFAR100-FewShot/losses.py L421-427) with the class centroids
    of the targets (centroid.py get_centroids), combined as in helper/loops.py L93-94, re-typed."""
    loss = torch.nn.CrossEntropyLoss()(output, target)
    surrogate = F.kl_div(centroids.log(), F.log_softmax(output, 1), reduction="batchmean", log_target=True)
    return param[0] * loss + param[1] * surrogate


def test_mcmi_is_the_official_loss_with_the_batch_centroids():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 10, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, 10, (64,), generator=g)
    q = class_centroids(F.softmax(z, 1), y, 10)
    official = _official_ce_kl(z, y, torch.index_select(q, 0, y), [1, -0.15])
    ours = MCMI(cmi_weight=0.15)(z, y, torch.nn.Linear(1, 1))
    assert ours.item() == pytest.approx(official.item(), rel=1e-12)


def test_mcmi_gradient_is_that_of_fixed_centroids_which_is_the_full_gradient():
    """The centroids are detached (as the official fixed ones are constants); since the class mean is the q that
    minimises sum_i KL(p_i || q), the gradient through it vanishes and the full batch-CMI gradient is the same."""
    g = torch.Generator().manual_seed(1)
    z = (torch.randn(32, 5, generator=g, dtype=torch.float64) * 2).requires_grad_()
    y = torch.randint(0, 5, (32,), generator=g)
    grad = torch.autograd.grad(cmi_estimate(z, y), z)[0]
    q = class_centroids(F.softmax(z, 1).detach(), y, 5)[y]
    fixed = F.kl_div(q.log(), F.log_softmax(z, 1), reduction="batchmean", log_target=True)
    assert torch.allclose(grad, torch.autograd.grad(fixed, z)[0], atol=1e-14)
    full = torch.autograd.grad(cmi_estimate(z, y, detach_centroids=False), z)[0]
    assert torch.allclose(grad, full, atol=1e-14)
    other_q = class_centroids(F.softmax(z, 1).detach().flip(0), y, 5)[y]  # centroids that are not these rows' means
    moved = F.kl_div(other_q.log(), F.log_softmax(z, 1), reduction="batchmean", log_target=True)
    assert not torch.allclose(grad, torch.autograd.grad(moved, z)[0])


def test_class_centroids_and_the_cmi_of_a_collapsed_and_a_spread_model():
    p = torch.tensor([[0.5, 0.5], [0.1, 0.9], [0.3, 0.7]], dtype=torch.float64)
    q = class_centroids(p, torch.tensor([1, 1, 0]), 3)
    assert torch.allclose(q, torch.tensor([[0.3, 0.7], [0.3, 0.7], [0.0, 0.0]], dtype=torch.float64))
    same = torch.tensor([[3.0, 0.0], [3.0, 0.0]])
    assert cmi_estimate(same, torch.tensor([0, 0])).item() == pytest.approx(0.0, abs=1e-7)  # every x maps to its centroid
    spread = torch.tensor([[9.0, 0.0], [0.0, 9.0]])
    assert cmi_estimate(spread, torch.tensor([0, 0])).item() > 0.6  # about log 2


def test_cmi_probe_is_mtcmi_on_the_training_set():
    """MTCMI.py L33-49 re-typed: class means of the softmax over the whole set, then the batch-mean KL."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4)).double().eval()
    x, y = torch.randn(50, 1, 3, 4, dtype=torch.float64), torch.randint(0, 4, (50,))
    with torch.no_grad():
        logits = model(x)
        prob = F.softmax(logits, 1)
        centroids = torch.stack([prob[y == c].mean(0) for c in range(4)])
        expected = F.kl_div(centroids[y].log(), F.log_softmax(logits, 1), reduction="batchmean", log_target=True)
        assert cmi_probe(model, x, y)["train_cmi"] == pytest.approx(expected.item(), rel=1e-10)


def test_the_losses_models_and_probe_are_registered_with_checked_keys():
    assert {"bdkd", "dml", "mcmi"} <= set(LOSSES.names()) and "cmi" in PROBES.names()
    assert MODELS.accepted("online_pair") >= {"teacher", "hidden", "dropout"}
    assert LOSSES.accepted("bdkd") >= {"temperature", "teacher_weight", "kd_weight"}
    assert LOSSES.accepted("mcmi") >= {"cmi_weight", "ce_weight"}


# ---------------------------------------------------------------- the specs

def _paper(pid):
    from softrepro.spec import load_paper

    return load_paper(REPO / "configs" / "papers" / f"{pid}.yaml", REPO)


def test_mcmi_shares_the_protocols_teacher_and_kd_runs_and_fine_tunes_that_teacher():
    from softrepro.spec import resolve_experiment, run_key

    mcmi, nkd = _paper("ye2024-mcmi"), _paper("yang2023-nkd")
    for scale in ("smoke", "cpu", "paper"):
        for name in ("teacher", "kd"):
            assert run_key(resolve_experiment(mcmi.experiments[name], scale)) == \
                run_key(resolve_experiment(nkd.experiments[name], scale)), (scale, name)
        r = {n: resolve_experiment(e, scale) for n, e in mcmi.experiments.items()}
        teacher_key = run_key(r["teacher"])
        for name in ("teacher-cmi", "ce-finetune", "mcmi"):
            assert r[name]["teacher_init"] and r[name]["teacher"]["run_key"] == teacher_key
            assert r[name]["model"] == r["teacher"]["model"]  # teacher_init needs the same model
            assert r[name].get("train_subset") == r["teacher"].get("train_subset")
        assert r["ce-finetune"]["steps"] == r["mcmi"]["steps"] and r["ce-finetune"]["optimizer"] == r["mcmi"]["optimizer"]
        assert r["kd-mcmi"]["teacher"]["run_key"] == run_key(r["mcmi"])
        assert r["kd-ce-finetune"]["teacher"]["run_key"] == run_key(r["ce-finetune"])
        for a, b in (("kd-mcmi", "kd"), ("kd-ce-finetune", "kd"), ("zeroshot-mcmi", "zeroshot-kd")):
            assert {k: v for k, v in r[a].items() if k not in ("teacher", "description", "deviations")} == \
                {k: v for k, v in r[b].items() if k not in ("teacher", "description", "deviations")}, (a, b)
        assert r["zeroshot-kd"]["train_classes"] == {"exclude": [9]} and "train_classes" not in r["teacher"]
    assert resolve_experiment(mcmi.experiments["mcmi"], "cpu")["steps"] * 12 >= 2344  # 1/12 of the teacher's


def test_bdkd_arms_share_everything_but_the_loss_and_ce_is_the_protocols_at_paper_scale():
    from softrepro.spec import resolve_experiment, run_key

    bd, nkd = _paper("amara2022-bdkd"), _paper("yang2023-nkd")
    for scale in ("smoke", "cpu", "paper"):
        r = {n: resolve_experiment(e, scale) for n, e in bd.experiments.items()}
        assert {k: v for k, v in r["bdkd"].items() if k not in ("loss", "description")} == \
            {k: v for k, v in r["dml"].items() if k not in ("loss", "description")}
        for key in ("steps", "optimizer", "schedule", "batch_size", "dataset"):
            assert r["ce"][key] == r["bdkd"][key]
        assert r["bdkd"]["model"]["hidden"] == r["ce"]["model"]["hidden"]
    assert run_key(resolve_experiment(bd.experiments["ce"], "paper")) == run_key(resolve_experiment(nkd.experiments["ce"], "paper"))
    teacher = resolve_experiment(nkd.experiments["teacher"], "paper")["model"]
    assert resolve_experiment(bd.experiments["bdkd"], "paper")["model"]["teacher"] == teacher


@pytest.mark.parametrize("pid", ["amara2022-bdkd", "ye2024-mcmi"])
def test_every_stand_in_claim_is_at_the_stand_in_level_and_can_fail(pid):
    from softrepro.spec import evidence_level, resolve_experiment
    from softrepro.verdict import refutation

    paper = _paper(pid)
    for claim in paper.claims:
        resolved = [resolve_experiment(paper.experiments[e], "cpu") for e in claim["experiments"].values()]
        if any(r.get("skip") for r in resolved):
            assert "unavailable" in resolved[0]["skip"] and claim["published"] is not None
            continue
        assert evidence_level(resolved) == "stand-in" and claim["faithful_scales"] == []
        assert claim["kind"] == "qualitative" and claim["direction"] in ("greater", "less")
        assert refutation(claim, "stand-in", 3)[0], claim["id"]


# ---------------------------------------------------------------- end to end on tiny synthetic data

def test_the_mcmi_chain_and_an_online_pair_run_end_to_end(standin):
    from softrepro.runner import run_pool
    from softrepro.spec import load_paper, resolve_experiment, run_key

    path = standin / "configs" / "papers" / "ye2024-mcmi.yaml"
    paper = load_paper(path, standin)
    for exp in ("teacher", "teacher-cmi", "mcmi", "zeroshot-mcmi"):
        run_pool([(path, exp)], [0], "smoke", f"t-{exp}", standin, progress=False, log=lambda m: None)
    got = {}
    for exp in ("teacher", "teacher-cmi", "mcmi", "zeroshot-mcmi"):
        key = run_key(resolve_experiment(paper.experiments[exp], "smoke"))
        got[exp] = json.loads((standin / "results" / "smoke" / "cache" / key / "seed0" / "metrics.json").read_text())
        assert got[exp]["status"] == "ok", (exp, got[exp].get("reason"))
    assert got["teacher-cmi"]["metrics"]["test_accuracy"] == got["teacher"]["metrics"]["test_accuracy"]
    assert got["mcmi"]["metrics"]["train_cmi"] > 0 and "test_errors_class_9" in got["zeroshot-mcmi"]["metrics"]
    bd = standin / "configs" / "papers" / "amara2022-bdkd.yaml"
    run_pool([(bd, "bdkd")], [0], "smoke", "t-bdkd", standin, progress=False, log=lambda m: None)
    key = run_key(resolve_experiment(load_paper(bd, standin).experiments["bdkd"], "smoke"))
    rec = json.loads((standin / "results" / "smoke" / "cache" / key / "seed0" / "metrics.json").read_text())
    assert rec["status"] == "ok" and 0 <= rec["metrics"]["online_teacher_accuracy"] <= 1
