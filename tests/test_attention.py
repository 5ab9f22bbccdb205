"""Attention normalisations against their formulas, the decoder's causality and measures, and a
language-model run through the real training loop."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from softrepro.datasets import lm_windows
from softrepro.methods.attention import normalisations as N
from softrepro.methods.attention.decoder import Attention, Decoder, lm_losses, rope
from softrepro.runner import run_job

from conftest import write_tiny_text

T = 7


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    return 3 * torch.randn(2, 3, T, T, generator=g, dtype=torch.float64)


def _rows(z, mask, fn):
    """Row by row: fn(row of the attended logits, its n) -> weights; zero elsewhere."""
    out = torch.zeros_like(z)
    for i in range(z.shape[-2]):
        keys = mask[i].nonzero().flatten()
        out[..., i, keys] = fn(z[..., i, keys], len(keys))
    return out


def test_attended_counts_keys_per_query():
    mask, n = N.attended(4)
    assert mask.tolist() == [[True, False, False, False], [True, True, False, False], [True, True, True, False], [True] * 4]
    assert n.flatten().tolist() == [1, 2, 3, 4]
    mask, n = N.attended(3, 5, causal=False)
    assert mask.all() and n.flatten().tolist() == [5, 5, 5]


@pytest.mark.parametrize("cfg, row", [
    ("softmax", lambda r, n: r.softmax(-1)),
    ({"name": "ssmax", "s_init": 0.7}, lambda r, n: (0.7 * math.log(n) * r).softmax(-1)),
    ({"name": "sigmoid", "bias": "-log n"}, lambda r, n: torch.sigmoid(r - math.log(n))),
    ({"name": "sigmoid", "bias": -10}, lambda r, n: torch.sigmoid(r - 10)),
    ({"name": "relu", "alpha": 1.0}, lambda r, n: torch.relu(r) / n),
    ({"name": "relu", "h": "relu2", "alpha": 0.5}, lambda r, n: torch.relu(r) ** 2 / n**0.5),
    ({"name": "relu", "h": "softplus", "alpha": 1.5}, lambda r, n: torch.nn.functional.softplus(r) / n**1.5),
    ({"name": "sa_softmax"}, lambda r, n: r.softmax(-1) * (r - r.amin(-1, keepdim=True).clamp(max=0))
                                          / (r.amax(-1, keepdim=True).clamp(min=0) + 1e-10 - r.amin(-1, keepdim=True).clamp(max=0))),
    ({"name": "sa_softmax", "denominator": False}, lambda r, n: r.softmax(-1) * r),
    ({"name": "rela"}, lambda r, n: torch.relu(r)),
])
def test_each_normalisation_is_its_formula_per_position_and_zero_where_masked(logits, cfg, row):
    mask, n = N.attended(T)
    w = N.make(cfg, heads=3).double()(logits, mask, n.double()).detach()
    assert torch.allclose(w, _rows(logits, mask, row), atol=1e-6)  # (a learnable s is held in float32)
    assert (w[..., ~mask] == 0).all()


def test_normalisations_reject_unknown_names_and_parameters():
    with pytest.raises(ValueError, match="unknown attention normalisation 'sofmax'"):
        N.make("sofmax", heads=1)
    with pytest.raises(ValueError, match="'relu'.*unexpected keyword"):
        N.make({"name": "relu", "beta": 1}, heads=1)
    with pytest.raises(ValueError, match="-log n"):
        N.make({"name": "sigmoid", "bias": "log n"}, heads=1)


def test_closed_form_max_weight_matches_the_normalisations():
    for n in (2, 10, 1000):
        z = torch.full((1, 1, 1, n), -2.0, dtype=torch.float64)
        z[..., -1] = 3.0
        mask, counts = torch.ones(1, n, dtype=torch.bool), torch.full((1, 1), float(n), dtype=torch.float64)
        assert N.softmax_max_weight(n) == pytest.approx(float(N.Softmax()(z, mask, counts).max()), rel=1e-12)
        ss = N.ScalableSoftmax(heads=1, s_init=0.43).double()
        assert N.softmax_max_weight(n, s=0.43) == pytest.approx(float(ss(z, mask, counts).detach().max()), rel=1e-6)
    assert N.softmax_max_weight(10_000) < 0.02 < 0.9 < N.softmax_max_weight(10_000, s=0.43)


def test_row_entropy_renormalises_and_treats_empty_rows_as_zero():
    mask, _ = N.attended(3)
    w = torch.tensor([[1.0, 0, 0], [0.5, 0.5, 0], [0.0, 0.0, 0.0]])
    assert N.row_entropy(w, mask).tolist() == pytest.approx([0.0, math.log(2), 0.0])
    assert N.row_entropy(2 * w, mask).tolist() == pytest.approx([0.0, math.log(2), 0.0])


def test_rope_makes_logits_depend_on_relative_position_only():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, 8, generator=g, dtype=torch.float64), torch.randn(1, 8, generator=g, dtype=torch.float64)
    qs, ks = rope(q.expand(12, 8).clone(), k.expand(12, 8).clone(), theta=100.0)
    assert float(qs[5] @ ks[3]) == pytest.approx(float(qs[9] @ ks[7]), rel=1e-5)  # angles in float32
    assert float(qs[5] @ ks[3]) != pytest.approx(float(qs[5] @ ks[4]), rel=1e-3)


@pytest.mark.parametrize("attention, qk_norm", [("softmax", None), ("softmax", "layernorm"), ("softmax", "l2"),
                                                ({"name": "ssmax"}, None), ({"name": "sigmoid"}, "layernorm"),
                                                ({"name": "relu"}, None), ({"name": "sa_softmax"}, None),
                                                ({"name": "rela"}, None)])
def test_decoder_is_causal_for_every_normalisation(attention, qk_norm):
    torch.manual_seed(0)
    model = Decoder((16,), 11, d=16, layers=2, heads=2, attention=attention, qk_norm=qk_norm).double().eval()
    ids = torch.randint(0, 11, (2, 16))
    changed = ids.clone()
    changed[:, 9:] = (changed[:, 9:] + 1) % 11
    a, b = model(ids), model(changed)
    assert torch.allclose(a[:, :9], b[:, :9], atol=1e-12) and not torch.allclose(a[:, 9:], b[:, 9:])


def test_qknorm_gain_starts_at_log2_of_l_squared_minus_l():
    att = Attention(16, 2, 64, "softmax", "l2", 10000.0)
    assert float(att.g.detach()) == pytest.approx(math.log2(64**2 - 64))
    q = torch.randn(1, 2, 5, 8)
    assert float(att.logits(q, q).abs().max()) <= float(att.g) + 1e-5  # |g cos| <= g


def test_decoder_logs_its_attention_measures_in_training_only():
    torch.manual_seed(0)
    model = Decoder((8,), 5, d=16, layers=3, heads=2)
    model.eval()(torch.randint(0, 5, (2, 8)))
    assert model.log_stats() == {}
    model.train()(torch.randint(0, 5, (2, 8)))
    stats = model.log_stats()
    assert set(stats) == {"attn_logit_max_l0", "attn_logit_max_l1", "attn_logit_max_l2", "attn_entropy_mean_l0",
                          "attn_entropy_mean_l1", "attn_entropy_mean_l2", "attn_entropy_min", "output_log_z",
                          "output_abs_log_z", "attn_zero_frac", "attn_null_row_frac"}
    assert stats["attn_zero_frac"] == 0.0 and stats["attn_null_row_frac"] == 0.0  # softmax: no exact zeros
    # at initialisation attention is near uniform: the mean entropy is close to the mean of log(i + 1)
    assert stats["attn_entropy_mean_l0"] == pytest.approx(float(np.log(np.arange(1, 9)).mean()), abs=0.05)
    assert stats["output_log_z"] == pytest.approx(math.log(5), abs=0.05)


def test_rms_qk_norm_sets_the_logit_scale_to_kappa():
    """qk_norm 'rms': q and k scaled to root-mean-square sqrt(kappa) over the head dimension before RoPE and
    the usual 1/sqrt(d_h), so the logits are kappa sqrt(d_h) cos(q, k) (RoPE rotates, it keeps the norm)."""
    torch.manual_seed(0)
    q, k = torch.randn(1, 2, 6, 8) * 5, torch.randn(1, 2, 6, 8) * 0.1
    for kappa in (1.0, 1e3):
        att = Attention(16, 2, 6, "softmax", "rms", None, qk_kappa=kappa)
        qs, ks, scale = att.queries_keys(q, k)
        assert torch.allclose(qs.pow(2).mean(-1), torch.full((1, 2, 6), kappa), rtol=1e-3)
        assert torch.allclose(ks.pow(2).mean(-1), torch.full((1, 2, 6), kappa), rtol=1e-3)
        cos = torch.nn.functional.cosine_similarity(q.unsqueeze(-2), k.unsqueeze(-3), dim=-1)
        assert torch.allclose(att.logits(q, k), kappa * math.sqrt(8) * cos, rtol=1e-3, atol=1e-3 * kappa)
    with pytest.raises(ValueError, match="qk_kappa"):
        Attention(16, 2, 6, "softmax", "layernorm", None, qk_kappa=10.0)
    with pytest.raises(ValueError, match="positive"):
        Attention(16, 2, 6, "softmax", "rms", None, qk_kappa=0.0)
    model = Decoder((8,), 5, d=16, layers=1, heads=2, qk_norm="rms", qk_kappa=1e4)
    model.train()(torch.randint(0, 5, (2, 8)))
    assert model.log_stats()["attn_logit_max_l0"] > 1e4  # logits of order kappa from the first step


def test_a_decoder_without_layers_is_a_bigram_model():
    torch.manual_seed(0)
    model = Decoder((8,), 5, d=16, layers=0).train()
    ids = torch.randint(0, 5, (3, 8))
    out = model(ids)
    assert torch.allclose(out[:, 1:], model(ids[:, 1:])[:, :], atol=1e-6)  # each position reads its own token only
    assert set(model.log_stats()) == {"output_log_z", "output_abs_log_z"} and model.head_stats() == {}


@pytest.mark.parametrize("qk_norm", [None, "layernorm", "l2"])
def test_fused_softmax_without_measures_is_the_explicit_softmax(qk_norm):
    """Between logged batches a softmax layer runs PyTorch's fused attention: same outputs and gradients."""
    torch.manual_seed(0)
    model = Decoder((16,), 11, d=16, layers=2, heads=2, qk_norm=qk_norm).double().train()
    ids = torch.randint(0, 11, (3, 16))
    outs, grads = [], []
    for on in (True, False):
        model.set_measuring(on)
        model.zero_grad()
        out = model(ids)
        out.square().mean().backward()
        outs.append(out.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
    assert torch.allclose(outs[0], outs[1], atol=1e-12)
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(*grads))
    model.blocks[0].attn.stats = None
    model(ids)  # not measuring: the batch leaves no measures behind
    assert model.blocks[0].attn.stats is None
    model.set_measuring(True)
    model(ids)
    assert model.blocks[0].attn.stats is not None


def test_lm_windows_and_losses_use_the_same_tokens_at_every_length():
    ids = np.arange(1000) % 13
    d = lm_windows(ids[:600], ids[600:], context=8, eval_tokens=300)
    (x, y), (xt, yt) = d["train"], d["test"]
    assert x.shape == (74, 8) and (y == (x + 1) % 13).all()
    assert xt.shape == (1, 300) and (yt == (xt + 1) % 13).all()
    torch.manual_seed(0)
    model = Decoder((8,), 13, d=16, layers=1, heads=2).eval()
    out = lm_losses(model, torch.from_numpy(xt), torch.from_numpy(yt), multiples=(1, 2, 4))
    assert set(out) == {"test_loss_x1", "test_loss_x2", "test_loss_x2_beyond", "test_loss_x4", "test_loss_x4_beyond"}
    assert all(abs(v - math.log(13)) < 0.1 for v in out.values())  # untrained: about log V


SPEC = {
    "id": "tinylm", "title": "Tiny LM", "arxiv": "0000.00000", "year": 2020, "family": "attention",
    "seed_files": [],
    "experiments": {
        "lm": {
            "kind": "train", "dataset": "tinyshakespeare", "task": "lm", "data": {"context": 16, "eval_tokens": 1024},
            "model": {"name": "decoder", "d": 32, "layers": 1, "heads": 2, "attention": {"name": "ssmax"}},
            "loss": {"name": "softmax_ce"}, "optimizer": {"name": "adamw", "lr": 0.01, "betas": [0.9, 0.95]},
            "batch_size": 16, "steps": 60, "log_every": 20, "eval_every": 30, "grad_clip": 1.0,
            "deviations": ["cut: test fixture"],
        },
    },
    "claims": [{"id": "x16", "text": "t", "source": "none", "kind": "value", "metric": "test_loss_x16",
                "unit": "nats", "experiment": "lm", "published": 1.0, "tolerance": {"abs": 1}, "faithful_scales": []}],
}


def test_a_language_model_trains_through_the_engine(project):
    rec = run_job(write_tiny_text(project, SPEC, "tinylm"), "lm", 0, "smoke", project / "out", project, progress=False,
                  log=lambda m: None)
    assert rec["status"] == "ok", rec
    m = rec["metrics"]
    assert m["test_loss_x1"] < math.log(m["n_classes"] if "n_classes" in m else 20) and m["diverged"] == 0.0
    assert {"test_loss_x16", "test_loss_x16_beyond", "final_attn_logit_max_l0", "final_output_log_z"} <= set(m)
    steps = pd.read_csv(project / "out" / "steps.csv")
    assert list(steps["step"]) == [20, 30, 40, 60] and steps["attn_entropy_min"].notna().all()
    assert steps["train_loss"].iloc[-1] < steps["train_loss"].iloc[0]


def test_the_swap_replaces_the_normalisation_from_its_step_on():
    torch.manual_seed(0)
    model = Decoder((8,), 5, d=16, layers=2, heads=2, swap={"at": 0.5, "attention": {"name": "ssmax", "s_init": 2.0}})
    ids = torch.randint(0, 5, (2, 8))
    model.set_progress(4, 10)
    before = model.eval()(ids)
    model.set_progress(5, 10)
    after = model(ids)
    assert all(b.attn.swapped for b in model.blocks) and not torch.allclose(before, after)
    reference = Decoder((8,), 5, d=16, layers=2, heads=2)
    reference.load_state_dict({k: v for k, v in model.state_dict().items() if "norm_after" not in k})
    assert torch.allclose(before, reference.eval()(ids))
    with pytest.raises(ValueError, match="swap must be"):
        Decoder((8,), 5, swap={"at": 1.5, "attention": "softmax"})


def test_warmup_schedule_rises_linearly_then_decays_or_stays():
    from softrepro.optim import warmup

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = warmup(opt, 110, warmup=10, start=0.1, final=0.0)
    lrs = []
    for _ in range(110):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[5] == pytest.approx(0.55) and lrs[10] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.5) and lrs[-1] < 0.001
    opt = torch.optim.SGD([p], lr=1.0)
    sched = warmup(opt, 50, warmup=10, then="constant")
    for _ in range(30):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0)


def test_ce_zloss_adds_the_squared_log_partition_function():
    from softrepro.methods.attention.zloss import ce_zloss

    z = torch.randn(6, 5, dtype=torch.float64) * 3
    y = torch.randint(0, 5, (6,))
    ce = torch.nn.functional.cross_entropy(z, y)
    assert float(ce_zloss(0.5)(z, y, None)) == pytest.approx(float(ce + 0.5 * (z.logsumexp(-1) ** 2).mean()), rel=1e-6)
    assert float(ce_zloss(0.0)(z, y, None)) == pytest.approx(float(ce), rel=1e-12)


def test_lr_sensitivity_per_seed_clips_at_the_ceiling_and_counts_divergence_as_it():
    from softrepro.aggregate import sweep_arm

    claim = {"id": "s", "metric": "test_loss_x1", "sweep": {"over": "lr", "statistic": "lr_sensitivity", "ceiling": 4.0}}
    rows = []
    losses = {0: [2.0, 1.5, 3.0, float("nan")], 1: [2.2, 1.4, 5.0, 2.0]}  # seed 1: one loss above the ceiling
    for seed, ls in losses.items():
        for i, v in enumerate(ls):
            rows.append({"experiment": f"lr-{i}", "seed": seed, "metric.test_loss_x1": v, "status": "ok"})
    rows.append({"experiment": "lr-0", "seed": 2, "metric.test_loss_x1": 1.0, "status": "ok"})  # seed 2 ran one member only
    sens = sweep_arm(claim, ["lr-0", "lr-1", "lr-2", "lr-3"], pd.DataFrame(rows), None)
    assert list(sens.index) == [0, 1]
    assert sens[0] == pytest.approx(((2.0 - 1.5) + 0 + (3.0 - 1.5) + (4.0 - 1.5)) / 4)
    assert sens[1] == pytest.approx(((2.2 - 1.4) + 0 + (4.0 - 1.4) + (2.0 - 1.4)) / 4)


def test_a_sweep_claim_reads_every_member_of_its_matrices():
    from softrepro.spec import claim_experiments, load_paper, repo_root

    paper = load_paper(repo_root() / "configs/papers/wortsman2023-small-scale-proxies.yaml")
    claim = next(c for c in paper.claims if "sweep" in c)
    exps = claim_experiments(claim)
    assert len(exps) == 14 and {e.rsplit("-", 2)[0] for e in exps} == {"lr-softmax", "lr-qkln"}
    assert set(claim["sweep"]["members"]) == {"a", "b"} and all(len(v) == 7 for v in claim["sweep"]["members"].values())


def test_gated_rms_norm_is_its_formula():
    from softrepro.methods.attention.normalisations import GatedRMSNorm

    norm = GatedRMSNorm(4).double()
    with torch.no_grad():
        norm.scale.copy_(torch.tensor([1.0, 2.0, 0.5, 1.0]))
        norm.gate.copy_(torch.tensor([0.0, 1.0, -1.0, 3.0]))
    o = torch.tensor([[1.0, -2.0, 0.5, 3.0]], dtype=torch.float64)
    rms = math.sqrt((1 + 4 + 0.25 + 9) / 4)
    want = [o[0, i] / rms * norm.scale[i] / (1 + math.exp(-norm.gate[i] * o[0, i])) for i in range(4)]
    assert norm(o)[0].tolist() == pytest.approx([float(v) for v in want], rel=1e-7)  # (eps 1e-8 under the root)


def test_relu_attention_reports_its_sparsity():
    torch.manual_seed(0)
    model = Decoder((8,), 5, d=16, layers=1, heads=2, attention={"name": "rela"})
    model.train()(torch.randint(0, 5, (4, 8)))
    stats = model.log_stats()
    assert 0.2 < stats["attn_zero_frac"] < 0.8  # about half the logits are negative at initialisation
    assert 0.0 <= stats["attn_null_row_frac"] < stats["attn_zero_frac"]


def test_softmax_jacobian_norm_is_the_closed_form_and_vanishes_with_sharpness():
    from softrepro.methods.attention.gradients import VARIANTS, jacobian_norm, run_benchmark

    z = torch.tensor([0.3, -1.0, 2.0, 0.5], dtype=torch.float64)
    p = z.softmax(-1)
    assert jacobian_norm(VARIANTS["softmax"], z) == pytest.approx(float((torch.diag(p) - torch.outer(p, p)).norm()), rel=1e-10)
    m, rows = run_benchmark({"n": 16, "sharpness": [1, 100], "trials": 3}, seed=0)
    assert [r["sharpness"] for r in rows] == [1.0, 100.0]
    assert m["jac_softmax_s100"] < 0.1 * m["jac_softmax_s1"] and m["jac_sa_s100"] > m["jac_softmax_s100"]


def test_layer_scale_multiplies_each_residual_branch_by_its_gain():
    """layer_scale g0: x + g1 * attn(ln1(x)), then + g2 * mlp(ln2(x)), g1 and g2 learnable per channel from g0."""
    torch.manual_seed(0)
    plain = Decoder((8,), 5, d=16, layers=1, heads=2).double().eval()
    scaled = Decoder((8,), 5, d=16, layers=1, heads=2, layer_scale=1e-4).double().eval()
    scaled.load_state_dict(plain.state_dict(), strict=False)  # the same weights; the gains stay at 1e-4
    block, x = scaled.blocks[0], torch.randn(2, 8, 16, dtype=torch.float64)
    assert torch.allclose(block.ls1, torch.full((16,), 1e-4, dtype=torch.float64)) and block.ls2.requires_grad
    h = x + block.ls1 * block.attn(block.ln1(x))
    assert torch.allclose(block(x), h + block.ls2 * block.mlp(block.ln2(h)), atol=1e-14)
    assert plain.blocks[0].ls1 is None and not torch.allclose(plain.blocks[0](x), block(x))
    with pytest.raises(ValueError, match="layer_scale"):
        Decoder((8,), 5, d=16, layers=1, heads=2, layer_scale=0.0)
