"""σReparam (Zhai et al. 2023) as the shared decoder's option, against the authors' code
(apple/ml-sigma-reparam vision/layers.py), and the attention-entropy floor benchmark."""
import math

import pandas as pd
import pytest
import torch
from torch import nn

from softrepro.methods.attention.decoder import Decoder
from softrepro.methods.attention.sigma_reparam import SigmaReparam, row_entropy, run_benchmark
from softrepro.runner import run_job

from conftest import write_tiny_text


def top_singular_value(w: torch.Tensor) -> float:
    return float(torch.linalg.svdvals(w.detach().double())[0])


def reparametrised(model):
    return [m for m in model.modules() if isinstance(m, nn.Linear) and hasattr(m, "parametrizations")]


def test_every_linear_layer_is_reparametrised_and_gamma_starts_at_its_initial_spectral_norm():
    torch.manual_seed(0)
    model = Decoder((16,), 11, d=32, layers=2, heads=4, sigma_reparam=True)
    layers = reparametrised(model)
    assert len(layers) == 2 * 4 + 1  # qkv, proj, mlp.0, mlp.2 per block, and the output layer
    assert not hasattr(model.embed, "parametrizations")
    for m in layers:
        p = m.parametrizations.weight
        assert float(p[0].gamma.detach()) == pytest.approx(top_singular_value(p.original), rel=1e-5)
        assert top_singular_value(m.weight) == pytest.approx(float(p[0].gamma.detach()), rel=1e-4)  # Ŵ = W at init


def test_the_reparametrised_decoder_computes_the_same_causal_function_at_initialisation():
    torch.manual_seed(0)
    plain = Decoder((16,), 11, d=16, layers=2, heads=2).double().eval()
    torch.manual_seed(0)
    model = Decoder((16,), 11, d=16, layers=2, heads=2, sigma_reparam=True).double().eval()
    ids = torch.randint(0, 11, (2, 16))
    assert torch.allclose(plain(ids), model(ids), atol=1e-5)  # γ and u came from a float32 SVD
    changed = ids.clone()
    changed[:, 9:] = (changed[:, 9:] + 1) % 11
    a, b = model(ids), model(changed)
    assert torch.allclose(a[:, :9], b[:, :9], atol=1e-12) and not torch.allclose(a[:, 9:], b[:, 9:])


def test_effective_spectral_norm_converges_to_gamma_under_repeated_power_steps():
    g = torch.Generator().manual_seed(3)
    rep = SigmaReparam(torch.randn(24, 16, generator=g, dtype=torch.float64))
    w = torch.randn(24, 16, generator=g, dtype=torch.float64) * 5  # the weight has moved since u was set
    with torch.no_grad():
        rep.gamma.fill_(2.5)
    rep.train()
    for _ in range(200):  # one power step per call, as one per training step
        out = rep(w)
    assert top_singular_value(out) == pytest.approx(2.5, rel=1e-8)
    assert float(rep.sigma(w)) == pytest.approx(top_singular_value(w), rel=1e-10)


def test_u_is_kept_in_training_only_and_sigma_differentiates_through_w_alone():
    g = torch.Generator().manual_seed(4)
    rep = SigmaReparam(torch.randn(6, 5, generator=g, dtype=torch.float64))
    w = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    u0 = rep.u.clone()
    rep.eval()(w)
    assert torch.equal(rep.u, u0)
    v = torch.nn.functional.normalize(w.detach() @ u0, dim=0)
    u = torch.nn.functional.normalize(w.detach().T @ v, dim=0)
    rep.train()
    sigma = rep.sigma(w)
    assert torch.allclose(rep.u, u)
    sigma.backward()
    assert torch.allclose(w.grad, torch.outer(v, u))  # d(vᵀWu)/dW with u, v held constant
    assert float(sigma.detach()) == pytest.approx(float(v @ w.detach() @ u))


def test_gamma_scales_the_layer_and_receives_a_gradient():
    torch.manual_seed(0)
    model = Decoder((8,), 5, d=16, layers=1, heads=2, sigma_reparam=True)
    model(torch.randint(0, 5, (3, 8))).logsumexp(-1).sum().backward()
    assert all(m.parametrizations.weight[0].gamma.grad is not None for m in reparametrised(model))
    head = model.head
    before = top_singular_value(head.weight)
    with torch.no_grad():
        head.parametrizations.weight[0].gamma.mul_(3)
    assert top_singular_value(head.weight) == pytest.approx(3 * before, rel=1e-5)


def test_entropy_floor_benchmark_falls_with_sigma_and_stays_below_random_draws():
    metrics, rows = run_benchmark({"T": 8, "d": 8, "sigmas": [1, 4, 8], "trials": 20, "restarts": 1, "steps": 80}, seed=0)
    assert [r["sigma"] for r in rows] == [1.0, 4.0, 8.0]
    for r in rows:
        assert 0 <= r["ent_adv"] <= r["ent_rand"] <= math.log(8)
        assert r["logit_norm_adv"] <= r["sigma"] * (1 + 1e-9)  # ‖X W Xᵀ‖₂ <= ‖W‖₂ ‖XXᵀ‖₂ = σ
    assert metrics["ent_adv_s1"] > metrics["ent_adv_s4"] > metrics["ent_adv_s8"]
    assert metrics["ent_adv_s8"] < 0.1 * math.log(8)  # the search does find collapsed rows at σ = 8
    assert metrics["ent_adv_rate_4_8"] == pytest.approx(math.log(metrics["ent_adv_s4"] / metrics["ent_adv_s8"]) / 4)
    assert metrics["max_entropy"] == pytest.approx(math.log(8))


def test_row_entropy_is_exact_for_near_one_hot_rows():
    z = torch.tensor([[0.0, -40.0, -40.0]], dtype=torch.float64)
    p = z.softmax(-1)
    assert float(row_entropy(z)) == pytest.approx(float(-(p * p.log()).sum()), rel=1e-12)
    assert 0 < float(row_entropy(z)) < 1e-15


SPEC = {
    "id": "tinysr", "title": "Tiny σReparam LM", "arxiv": "0000.00000", "year": 2023, "family": "attention",
    "seed_files": [],
    "experiments": {
        "lm": {
            "kind": "train", "dataset": "tinyshakespeare", "task": "lm", "data": {"context": 16, "eval_tokens": 1024},
            "model": {"name": "decoder", "d": 32, "layers": 1, "heads": 2, "layer_norm": False, "sigma_reparam": True},
            "loss": {"name": "softmax_ce"}, "optimizer": {"name": "adamw", "lr": 0.01, "betas": [0.9, 0.95], "weight_decay": 0.0},
            "schedule": {"name": "warmup", "warmup": 0, "then": "cosine"},
            "batch_size": 16, "steps": 40, "log_every": 20, "eval_every": 40, "grad_clip": 1.0,
            "deviations": ["cut: test fixture"],
        },
    },
    "claims": [{"id": "x1", "text": "t", "source": "none", "kind": "value", "metric": "test_loss_x1",
                "unit": "nats", "experiment": "lm", "published": 1.0, "tolerance": {"abs": 1}, "faithful_scales": []}],
}


def test_a_sigma_reparam_decoder_trains_through_the_engine(project):
    rec = run_job(write_tiny_text(project, SPEC, "tinysr"), "lm", 0, "smoke", project / "out", project, progress=False,
                  log=lambda m: None)
    assert rec["status"] == "ok", rec
    assert rec["metrics"]["diverged"] == 0.0 and "final_attn_entropy_min" in rec["metrics"]
    steps = pd.read_csv(project / "out" / "steps.csv")
    assert steps["train_loss"].iloc[-1] < steps["train_loss"].iloc[0]
