"""The distillation stand-ins on configs/protocols/fmnist-kd.yaml: NKD (Yang et al. 2023), DHKD (Yang et al.
2024) and PS-KD (Kim et al. 2021), each loss against its formula on a hand-computed case and against the
official code's behaviour where that differs; the two models they bring; and the shared runs."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from softrepro.methods.distillation.dhkd import DualHeadKD, MultiHeadMLP, binary_kl, binary_kl_norm
from softrepro.methods.distillation.nkd import NKD, nkd_term, non_target
from softrepro.methods.distillation.pskd import PSKD, SelfTeacherMLP, pskd_targets
from softrepro.registry import LOSSES, MODELS

from conftest import REPO, cli_run


def _softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def _sig(x):
    return 1 / (1 + math.exp(-x))


# ---------------------------------------------------------------- NKD

def test_nkd_matches_a_hand_computed_case():
    z = torch.tensor([[2.0, 1.0, 0.0], [0.5, -1.0, 1.5]], dtype=torch.float64)  # student
    v = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 3.0]], dtype=torch.float64)  # teacher
    y = torch.tensor([0, 2])
    T, gamma = 3.0, 3.5
    total = 0.0
    for zs, vs, k in ((z[0].tolist(), v[0].tolist(), 0), (z[1].tolist(), v[1].tolist(), 2)):
        q, p = _softmax(zs), _softmax(vs)
        target = -p[k] * math.log(q[k])
        zr = [a for j, a in enumerate(zs) if j != k]
        vr = [a for j, a in enumerate(vs) if j != k]
        qh, ph = _softmax([a / T for a in zr]), _softmax([a / T for a in vr])
        rest = -gamma * T * T * sum(pj * math.log(qj) for pj, qj in zip(ph, qh))
        total += target + rest
    expected_nkd = total / 2
    assert nkd_term(z, v, y, T, gamma).item() == pytest.approx(expected_nkd, rel=1e-12)
    ce = F.cross_entropy(z, y).item()
    assert NKD(T, gamma)(z, y, None, teacher=v).item() == pytest.approx(ce + expected_nkd, rel=1e-12)
    assert NKD(T, gamma, ce_weight=0.0)(z, y, None, teacher=v).item() == pytest.approx(expected_nkd, rel=1e-12)
    assert NKD(T, gamma)(z, y, None).item() == pytest.approx(ce, rel=1e-12)  # no teacher: the test loss


def _official_nkd(logit_s, logit_t, gt_label, temp, gamma, mask_value):
    """cls_KD mmcls/models/dis_losses/nkd.py forward (lines 23-51), re-typed; mask_value 0 is the file at
    9466b3f, mask_value 1 the earlier e21ad37 (the mask bug)."""
    label = gt_label.view(len(gt_label), 1)
    N, c = logit_s.shape
    s_i = F.log_softmax(logit_s, 1)
    t_i = F.softmax(logit_t, dim=1)
    s_t = torch.gather(s_i, 1, label)
    t_t = torch.gather(t_i, 1, label).detach()
    loss_t = -(t_t * s_t).mean()
    mask = torch.ones_like(logit_s).scatter_(1, label, mask_value).bool()
    logit_s = logit_s[mask].reshape(N, -1)
    logit_t = logit_t[mask].reshape(N, -1)
    S_i = F.log_softmax(logit_s / temp, 1)
    T_i = F.softmax(logit_t / temp, dim=1)
    loss_non = (T_i * S_i).sum(dim=1).mean()
    return loss_t - gamma * temp ** 2 * loss_non


def _official_nkd_march2023(logit_s, logit_t, gt_label, temp, gamma):
    """cls_KD master at 87a7197 (2023-03-24), mmcls/distillation/losses/nkd.py lines 22-57, re-typed: the
    target logit pushed down by 1000 and the non-target probabilities renormalised by 1 - p_target."""
    label = gt_label.view(len(gt_label), 1)
    s_i, t_i = F.softmax(logit_s, dim=1), F.softmax(logit_t, dim=1)
    s_t, t_t = torch.gather(s_i, 1, label), torch.gather(t_i, 1, label).detach()
    mask = torch.zeros_like(logit_s).scatter_(1, label, 1).bool()
    logit_s, logit_t = logit_s - 1000 * mask, logit_t - 1000 * mask
    T_i, S_i = F.softmax(logit_t / temp, dim=1), F.softmax(logit_s / temp, dim=1)
    T_t, S_t = torch.gather(T_i, 1, label), torch.gather(S_i, 1, label)
    nt_i, ns_i = T_i / (1 - T_t), S_i / (1 - S_t)
    nt_i[T_i == T_t] = 0
    ns_i[T_i == T_t] = 1
    loss_t = -(t_t * torch.log(s_t)).mean()
    return loss_t - gamma * temp ** 2 * (nt_i * torch.log(ns_i)).sum(dim=1).mean()


def test_nkd_is_the_fixed_official_form_not_the_old_mask():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(16, 10, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(16, 10, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 10, (16,), generator=g)
    ours = nkd_term(z, v, y, 3.0, 3.5)
    fixed = _official_nkd(z, v, y, 3.0, 3.5, 0)
    old = _official_nkd(z, v, y, 3.0, 3.5, 1)
    assert ours.item() == pytest.approx(fixed.item(), rel=1e-12)
    g1, = torch.autograd.grad(ours, z)
    g2, = torch.autograd.grad(fixed, z)
    assert torch.allclose(g1, g2, rtol=1e-12, atol=1e-14)
    assert abs(ours.item() - old.item()) > 1e-3
    # the form released with the paper (March 2023) computes the same loss another way
    assert ours.item() == pytest.approx(_official_nkd_march2023(z, v, y, 3.0, 3.5).item(), rel=1e-10)
    # the old mask kept every class: its second term is Hinton's soft cross-entropy over all ten
    full = -(F.softmax(v / 3.0, 1) * F.log_softmax(z / 3.0, 1)).sum(1).mean()
    target = -(F.softmax(v, 1).gather(1, y[:, None]) * F.log_softmax(z, 1).gather(1, y[:, None])).mean()
    assert old.item() == pytest.approx((target + 3.5 * 9.0 * full).item(), rel=1e-12)


def test_non_target_removes_only_the_label_column():
    z = torch.arange(12.0).reshape(3, 4)
    assert non_target(z, torch.tensor([0, 2, 3])).tolist() == [[1, 2, 3], [4, 5, 7], [8, 9, 10]]


def test_nkd_rest_term_ignores_the_sum_of_the_non_target_probabilities():
    # NKD's point: renormalising the non-target logits makes the term blind to how much mass the target takes
    z = torch.tensor([[1.0, 0.3, -0.2]], dtype=torch.float64)
    v = torch.tensor([[0.0, 0.5, -0.5]], dtype=torch.float64)
    y = torch.tensor([0])
    a = nkd_term(z, v, y, 2.0, 1.0) - nkd_term(z, v, y, 2.0, 0.0)
    v2 = v.clone()
    v2[0, 0] = 7.0  # the teacher's target logit alone changes
    b = nkd_term(z, v2, y, 2.0, 1.0) - nkd_term(z, v2, y, 2.0, 0.0)
    assert a.item() == pytest.approx(b.item(), rel=1e-12)


# ---------------------------------------------------------------- DHKD

def test_binary_kl_matches_a_hand_computed_case():
    z = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    v = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    T = 2.0
    expected = 0.0
    for zc, vc in ((0.5, 1.0), (-1.0, 0.0)):
        p, q = _sig(vc / T), _sig(zc / T)
        expected += p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
    assert binary_kl(z, v, T).item() == pytest.approx(T * T * expected, rel=1e-12)
    assert binary_kl(v, v, T).item() == pytest.approx(0.0, abs=1e-15)


def test_binary_kl_norm_matches_a_hand_computed_case_and_is_zero_at_the_teacher():
    z = torch.tensor([[3.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    v = torch.tensor([[1.0, 1.0], [0.0, -4.0]], dtype=torch.float64)
    T = 2.0
    expected = 0.0
    for d in (2.0, 0.0, 0.0, 4.0):  # z - v
        s = _sig(d / T)
        expected += 0.5 * math.log(0.5 / s) + 0.5 * math.log(0.5 / (1 - s))
    assert binary_kl_norm(z, v, T).item() == pytest.approx(T * T * expected / 2, rel=1e-12)
    assert binary_kl_norm(v + 0.0, v, T).item() == pytest.approx(0.0, abs=1e-15)
    # unlike BinaryKL it is not invariant to a shift of every student logit
    assert binary_kl_norm(v + 1.0, v, T).item() > 0


def _official_binary_kl(student, teacher, temperature, norm, eps=1e-8):
    """DHKD distiller_zoo/BinaryKL.py (lines 13-20) and BinaryKLNorm.py (lines 13-19), re-typed."""
    crit = torch.nn.KLDivLoss(reduction="none")
    N, _ = student.shape
    if norm:
        d = torch.clamp(torch.sigmoid((student - teacher) / temperature), min=eps, max=1 - eps)
        target = torch.full_like(d, 0.5)
        loss = crit(torch.log(d), target) + crit(torch.log(1 - d), 1 - target)
    else:
        s = torch.clamp(torch.sigmoid(student / temperature), min=eps, max=1 - eps)
        t = torch.clamp(torch.sigmoid(teacher / temperature), min=eps, max=1 - eps)
        loss = crit(torch.log(s), t) + crit(torch.log(1 - s), 1 - t)
    return temperature ** 2 * loss.sum() / N


@pytest.mark.parametrize("norm", [False, True])
def test_binary_kl_agrees_with_the_official_code_where_its_clamp_does_not_act(norm):
    g = torch.Generator().manual_seed(5)
    z = (torch.randn(32, 10, generator=g, dtype=torch.float64) * 4).requires_grad_(True)
    v = torch.randn(32, 10, generator=g, dtype=torch.float64) * 4
    ours = (binary_kl_norm if norm else binary_kl)(z, v, 2.0)
    official = _official_binary_kl(z, v, 2.0, norm)
    assert ours.item() == pytest.approx(official.item(), rel=1e-9)
    g1, = torch.autograd.grad(ours, z)
    g2, = torch.autograd.grad(official, z)
    assert torch.allclose(g1, g2, rtol=1e-8, atol=1e-12)


def test_binary_kl_stays_finite_where_the_official_float32_clamp_does_not():
    # float32: the clamp's upper bound 1 - 1e-8 rounds to 1, so log(1 - s) is -inf for a logit above ~17 T
    z = torch.tensor([[40.0, 0.0]])
    v = torch.tensor([[0.0, 0.0]])
    assert not torch.isfinite(_official_binary_kl(z, v, 2.0, norm=False))
    assert not torch.isfinite(_official_binary_kl(z, v, 2.0, norm=True))
    ours = binary_kl(z, v, 2.0).item()
    p, x = 0.5, 20.0  # KL(Ber(1/2) || Ber(s(20))) = 0.5 log(0.5 / s(20)) + 0.5 log(0.5 / s(-20))
    assert ours == pytest.approx(4 * (0.5 * math.log(p / _sig(x)) + 0.5 * math.log(p / _sig(-x))), rel=1e-5)
    assert math.isfinite(binary_kl_norm(z, v, 2.0).item())


def test_mlp_heads_share_the_features_and_return_head_one():
    torch.manual_seed(0)
    m = MODELS.get("mlp_heads")(in_shape=(1, 4, 4), n_classes=3, hidden=[8], heads=2)
    assert isinstance(m, MultiHeadMLP) and len(m.extra_heads) == 1
    x = torch.randn(5, 1, 4, 4)
    out = m(x)
    assert torch.equal(out, m.head_logits[0]) and len(m.head_logits) == 2
    assert torch.allclose(m.head_logits[1], m.extra_heads[0](m.body(x)))
    torch.manual_seed(0)  # the body and head 1 start as the plain MLP's of the same seed
    plain = MODELS.get("mlp")(in_shape=(1, 4, 4), n_classes=3, hidden=[8])
    assert torch.equal(plain(x), out)


def _zero(grad):
    return grad is None or not grad.abs().sum()


def test_dhkd_loss_composition_and_where_each_gradient_goes():
    torch.manual_seed(1)
    m = MODELS.get("mlp_heads")(in_shape=(6,), n_classes=4, hidden=[5], heads=2).double()
    x = torch.randn(7, 6, dtype=torch.float64)
    y = torch.randint(0, 4, (7,))
    v = torch.randn(7, 4, dtype=torch.float64) * 2
    out = m(x)
    loss = DualHeadKD(ce_weight=1.0, logit_weight=0.7, temperature=2.0)(out, y, m, teacher=v)
    expected = F.cross_entropy(out, y) + 0.7 * binary_kl_norm(m.head_logits[1], v, 2.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    # CE reaches head 1 only, the logit-level loss head 2 only; both reach the shared body
    ce_only = DualHeadKD(ce_weight=1.0, logit_weight=0.0)(m(x), y, m, teacher=v)
    g = torch.autograd.grad(ce_only, [m.readout.weight, m.extra_heads[0].weight, m.body[1].weight], allow_unused=True)
    assert _zero(g[1]) and g[0].abs().sum() > 0 and g[2].abs().sum() > 0
    kl_only = DualHeadKD(ce_weight=0.0, logit_weight=1.0)(m(x), y, m, teacher=v)
    g = torch.autograd.grad(kl_only, [m.readout.weight, m.extra_heads[0].weight, m.body[1].weight], allow_unused=True)
    assert _zero(g[0]) and g[1].abs().sum() > 0 and g[2].abs().sum() > 0
    # logit_head 1: both losses on the one shared head (the degenerate combination), BinaryKL as in the paper's Figure 1
    one = MODELS.get("mlp")(in_shape=(6,), n_classes=4, hidden=[5]).double()
    z = one(x)
    shared = DualHeadKD(ce_weight=1.0, logit_weight=1.0, logit_loss="binary_kl", logit_head=1)(z, y, one, teacher=v)
    assert shared.item() == pytest.approx((F.cross_entropy(z, y) + binary_kl(z, v, 2.0)).item(), rel=1e-12)
    with_kd = DualHeadKD(ce_weight=1.0, logit_weight=1.0, kd_weight=0.5, kd_temperature=4.0)(m(x), y, m, teacher=v)
    kd = 16 * F.kl_div(F.log_softmax(m.head_logits[0] / 4, 1), F.softmax(v / 4, 1), reduction="batchmean")
    plain = F.cross_entropy(m.head_logits[0], y) + binary_kl_norm(m.head_logits[1], v, 2.0)
    assert with_kd.item() == pytest.approx((plain + 0.5 * kd).item(), rel=1e-10)
    assert DualHeadKD()(out, y, m).item() == pytest.approx(F.cross_entropy(out, y).item())  # the test loss
    with pytest.raises(ValueError, match="heads"):
        DualHeadKD(logit_head=2)(z, y, one, teacher=v)


# ---------------------------------------------------------------- PS-KD

def test_pskd_targets_and_loss_match_a_hand_computed_case():
    prev = torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]], dtype=torch.float64)
    y = torch.tensor([1, 2])
    soft = pskd_targets(y, 3, prev, 0.4)
    assert soft.flatten().tolist() == pytest.approx([0.08, 0.8, 0.12, 0.24, 0.12, 0.64], abs=1e-15)
    z = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    hand = 0.0
    for row, t in zip(z.tolist(), soft.tolist()):
        q = _softmax(row)
        hand += -sum(ti * math.log(qi) for ti, qi in zip(t, q))

    class Stub(torch.nn.Module):
        previous_probs, epoch, epochs = prev, 1, 4  # alpha_1 = 0.8 * 2 / 4 = 0.4

    stub = Stub().train()
    assert PSKD(0.8)(z, y, stub).item() == pytest.approx(hand / 2, rel=1e-12)
    stub.previous_probs = None  # first epoch: the one-hot labels (the official store starts one-hot)
    assert PSKD(0.8)(z, y, stub).item() == pytest.approx(F.cross_entropy(z, y).item(), rel=1e-12)
    stub.eval()  # the engine's test loss
    assert PSKD(0.8)(z, y, stub).item() == pytest.approx(F.cross_entropy(z, y).item(), rel=1e-12)


def test_pskd_alpha_follows_the_official_schedule():
    # main.py line 323: alpha_t = alpha_T * ((epoch + 1) / end_epoch), epoch 0-based
    assert [PSKD(0.8).alpha(t, 5) for t in range(5)] == pytest.approx([0.16, 0.32, 0.48, 0.64, 0.8])


def test_self_teacher_keeps_last_epochs_weights_and_predicts_with_them():
    torch.manual_seed(0)
    m = MODELS.get("mlp_self_teacher")(in_shape=(6,), n_classes=3, hidden=[5], epoch_steps=3)
    torch.manual_seed(0)
    plain = MODELS.get("mlp")(in_shape=(6,), n_classes=3, hidden=[5])
    assert all(torch.equal(a, b) for a, b in zip(m.own_parameters(), plain.parameters()))  # same start as the CE arm
    opt = torch.optim.SGD(m.own_parameters(), lr=0.5)
    x, y = torch.randn(4, 6), torch.tensor([0, 1, 2, 0])
    weights_at = {}
    for step in range(7):
        m.set_progress(step, 7)
        if step % 3 == 0:
            weights_at[step] = [p.detach().clone() for p in m.own_parameters()]
        out = m(x)
        if step < 3:
            assert m.previous_probs is None and m.epoch == 0
        else:
            start = 3 * (step // 3)  # the weights at the start of this epoch = the end of the last
            ref = MODELS.get("mlp")(in_shape=(6,), n_classes=3, hidden=[5])
            for p, w in zip(ref.parameters(), weights_at[start]):
                p.data.copy_(w)
            assert torch.allclose(m.previous_probs, F.softmax(ref(x), 1))
        assert m.epochs == 3
        loss = PSKD(0.8)(out, y, m)
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in m.previous.parameters())
        opt.step()
    m.eval()
    m(x)
    assert m.previous_probs is None


def test_self_teacher_state_resumes_without_retaking_the_copy():
    torch.manual_seed(0)
    m = SelfTeacherMLP(in_shape=(6,), n_classes=3, hidden=[5], epoch_steps=2)
    m.set_progress(2, 6)  # epoch 1: the copy is taken now
    with torch.no_grad():
        for p in m.own_parameters():
            p.add_(1.0)  # training moves on
    state = {k: v.clone() for k, v in m.state_dict().items()}
    resumed = SelfTeacherMLP(in_shape=(6,), n_classes=3, hidden=[5], epoch_steps=2)
    resumed.load_state_dict(state)
    resumed.set_progress(3, 6)  # the same epoch, after a restart
    assert all(torch.equal(a, b) for a, b in zip(resumed.previous.parameters(), m.previous.parameters()))
    resumed.set_progress(4, 6)  # the next epoch: a new copy of the current weights
    assert all(torch.equal(a, b) for a, b in zip(resumed.previous.parameters(), resumed.own_parameters()))


def test_the_losses_and_models_are_registered_with_checked_keys():
    assert {"nkd", "dhkd", "pskd"} <= set(LOSSES.names())
    assert MODELS.accepted("mlp_heads") >= {"heads", "hidden"}
    assert MODELS.accepted("mlp_self_teacher") >= {"epoch_steps", "hidden"}
    assert LOSSES.accepted("dhkd") >= {"ce_weight", "logit_weight", "temperature", "logit_loss", "logit_head"}


# ---------------------------------------------------------------- the specs on the shared protocol

# every spec on configs/protocols/fmnist-kd.yaml whose arms are train experiments
STANDINS = ("yang2023-nkd", "yang2024-dhkd", "kim2021-pskd", "wang2023-nd", "cui2024-sinkd", "bassam2025-pld")


def test_specs_on_the_protocol_share_the_teacher_and_baseline_runs():
    from softrepro.spec import load_paper, resolve_experiment, run_key

    papers = [load_paper(REPO / "configs" / "papers" / f"{p}.yaml", REPO) for p in STANDINS]
    for scale in ("smoke", "cpu", "paper"):
        for name in ("teacher", "ce", "kd"):
            keys = {run_key(resolve_experiment(p.experiments[name], scale)) for p in papers if name in p.experiments}
            assert len(keys) == 1, (scale, name, keys)
        students = [resolve_experiment(e, scale) for p in papers for e in p.experiments.values()
                    if e["kind"] == "train"]
        assert len({s["steps"] for s in students}) == 1  # the same steps for every arm (and the teacher)
        assert len({json.dumps(s["optimizer"], sort_keys=True) for s in students}) == 1


def test_every_stand_in_claim_is_at_the_stand_in_level_and_can_fail():
    from softrepro.spec import evidence_level, load_paper, resolve_experiment

    for pid in STANDINS:
        paper = load_paper(REPO / "configs" / "papers" / f"{pid}.yaml", REPO)
        for claim in paper.claims:
            exps = [claim["experiment"]] if "experiment" in claim else list(claim["experiments"].values())
            resolved = [resolve_experiment(paper.experiments[e], "cpu") for e in exps]
            if any(r.get("skip") for r in resolved):
                assert "unavailable" in resolved[0]["skip"] and claim["published"] is not None
                continue
            assert evidence_level(resolved) == "stand-in" and claim["faithful_scales"] == []
            assert claim["kind"] == "qualitative" and claim["direction"] in ("greater", "less")


def test_a_pskd_run_killed_mid_training_resumes_and_matches(standin):
    from softrepro.runner import run_job

    path = standin / "configs" / "papers" / "kim2021-pskd.yaml"
    spec = yaml.safe_load(path.read_text())
    spec["experiments"]["pskd"]["scales"]["smoke"].update(steps=24, checkpoint_every=4, log_every=4, eval_every=12)
    path.write_text(yaml.safe_dump(spec))
    reference = run_job(path, "pskd", 0, "smoke", standin / "ref", standin, progress=False, log=lambda m: None)
    assert reference["status"] == "ok" and reference["metrics"]["test_accuracy"] > 0.3
    out = standin / "killed"
    killed = cli_run(standin, "kim2021-pskd", "pskd", out, {"SOFTREPRO_FAULT_AFTER_STEP": "18"})
    assert killed.returncode == -9, killed.stderr
    rerun = cli_run(standin, "kim2021-pskd", "pskd", out)
    assert rerun.returncode == 0, rerun.stderr
    assert "resumed from checkpoint at step 16/24" in rerun.stderr
    done = json.loads((out / "metrics.json").read_text())
    for key in ("test_accuracy", "test_loss", "test_nll"):
        assert done["metrics"][key] == reference["metrics"][key], key
