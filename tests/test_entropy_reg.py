"""The head-wise attention-entropy penalty (``ce_entropy_reg``) against a hand-computed case and the released
regulariser re-typed, and the decoder's ``entropy_thresholds`` option (row entropies with their gradient,
the causal mask, learnable thresholds)."""
import math

import pytest
import torch
import torch.nn.functional as F

from softrepro.methods.attention import normalisations as N
from softrepro.methods.attention.decoder import Decoder
from softrepro.methods.attention.entropy_reg import ce_entropy_reg, entropy_penalty
from softrepro.runner import run_job

from conftest import write_tiny_text

E = math.log(4)  # E_max for T = 4 keys


def hand_case():
    """Two layers, two heads, one sequence of T = 4 rows; entropies given as fractions of E_max = log 4."""
    a0 = torch.tensor([[[0.0, 0.6, 0.9, 0.75], [0.0, 0.3, 0.5, 0.25]]], dtype=torch.float64)
    a1 = torch.tensor([[[0.5, 0.5, 0.5, 0.5], [1.0, 1.0, 0.0, 0.0]]], dtype=torch.float64)
    return [a0 * E, a1 * E], torch.tensor([[0.5, 0.25]], dtype=torch.float64, requires_grad=True)


def test_penalty_is_the_hand_computed_sum_outside_the_tolerance_band():
    entropies, theta = hand_case()
    # deviations / E_max with tolerance 0.2: layer 0 head 0: -0.5, 0.1 (inside), 0.4, 0.25 -> 0.25 + 0.16 + 0.0625;
    # head 1: -0.25, 0.05 (inside), 0.25, 0 (inside) -> 0.125; layer 1 head 0: all 0; head 1: 0.75, 0.75, -0.25, -0.25
    # -> 1.25.  Per layer the sum over rows / heads, then the mean over layers.
    expected = ((0.4725 + 0.125) / 2 + (0.0 + 1.25) / 2) / 2 * E**2
    p = entropy_penalty(entropies, theta, tolerance=0.2)
    assert float(p.detach()) == pytest.approx(expected, rel=1e-12)
    # gradient on the shared thresholds: dP/dθ_h = (1/L)(1/H) Σ_outside -2 E_max (H - θ_h E_max)
    p.backward()
    assert theta.grad[0].tolist() == pytest.approx([-0.25 * 2 * E**2 * 0.15, -0.25 * 2 * E**2 * 1.0], rel=1e-12)
    # a wider band (0.6 E_max) leaves only layer 1 head 1's 0.75 deviations
    assert float(entropy_penalty(entropies, theta.detach(), tolerance=0.6)) == pytest.approx((2 * 0.5625 / 2) / 2 * E**2)
    # context given: E_max = log 16 scales the thresholds and the band, not the entropies
    e16 = math.log(16)
    dev = [(a.squeeze(0) - theta.detach().T * e16) for a in entropies]
    manual = sum((torch.where(d.abs() > 0.2 * e16, d, 0.0) ** 2).sum() / 2 for d in dev) / 2
    assert float(entropy_penalty(entropies, theta.detach(), 0.2, context=16)) == pytest.approx(float(manual))


def test_inside_the_dead_zone_nothing_is_penalised_and_no_gradient_flows():
    h = torch.full((2, 3, 5), 0.55 * math.log(5), dtype=torch.float64, requires_grad=True)
    theta = torch.full((1, 3), 0.5, dtype=torch.float64, requires_grad=True)
    p = entropy_penalty([h], theta, tolerance=0.2)
    p.backward()
    assert float(p.detach()) == 0.0 and float(h.grad.abs().sum()) == 0.0 and float(theta.grad.abs().sum()) == 0.0


def test_per_layer_thresholds_apply_layer_by_layer():
    entropies, _ = hand_case()
    per_layer = torch.tensor([[0.5, 0.25], [0.5, 1.0]], dtype=torch.float64)
    # layer 1 head 1 against θ = 1.0: deviations 0, 0, -1, -1 -> 2 (in E_max² units)
    assert float(entropy_penalty(entropies, per_layer)) == pytest.approx(((0.4725 + 0.125) / 2 + 2.0 / 2) / 2 * E**2)
    with pytest.raises(ValueError, match="1 or layers"):
        entropy_penalty(entropies, torch.zeros(3, 2))


def official_compute_loss(attentions, reg_threshold_weights, num_heads, num_layers, loss_coeff=1e-5,
                          tolerance_margin_factor=0.20, context_size=None):
    """Nandan91/entropy-guided-attention-llm entropy_regularization.py ``compute_loss`` (L25-82), re-typed."""
    context_size = context_size or attentions[0].shape[-1]
    max_entropy = torch.log(torch.tensor(float(context_size), dtype=attentions[0].dtype))
    tolerance_margin = tolerance_margin_factor * max_entropy
    total = 0
    for attn_mat in attentions:
        ent_val = -torch.nansum(attn_mat * torch.log(attn_mat + 1e-9), dim=-1)
        layer = 0
        for h in range(num_heads):
            deviation = ent_val[:, h, :] - reg_threshold_weights[h] * max_entropy
            layer += torch.square(torch.where(torch.abs(deviation) > tolerance_margin, deviation,
                                              torch.zeros_like(deviation))).sum()
        total += layer / num_heads
    return loss_coeff * total / num_layers


def test_the_penalty_matches_the_released_regulariser_on_causal_softmax_weights():
    g = torch.Generator().manual_seed(0)
    mask, _ = N.attended(12)
    weights = [N.Softmax()(s * torch.randn(3, 4, 12, 12, generator=g, dtype=torch.float64), mask, None) for s in (0.5, 4.0)]
    theta = torch.tensor([[0.1, 0.4, 0.6, 0.9]], dtype=torch.float64)
    ours = 1e-5 * entropy_penalty([N.row_entropy(w, mask) for w in weights], theta, tolerance=0.2)
    official = official_compute_loss(weights, theta[0], num_heads=4, num_layers=2)
    assert float(official) > 0 and float(ours) == pytest.approx(float(official), rel=1e-6)


def test_the_decoder_keeps_row_entropies_that_honour_the_causal_mask():
    torch.manual_seed(0)
    plain = Decoder((10,), 7, d=16, layers=2, heads=2, layer_norm=False).double().train()
    torch.manual_seed(0)
    model = Decoder((10,), 7, d=16, layers=2, heads=2, layer_norm=False,
                    entropy_thresholds={"init": 0.3, "shared": False}).double().train()
    assert all(torch.equal(p, model.state_dict()[k]) for k, p in plain.state_dict().items())  # same weights
    assert model.entropy_threshold.shape == (2, 2) and float(model.entropy_threshold.detach().min()) == pytest.approx(0.3)
    seen = []
    for block in model.blocks:  # the weights each layer forms, and its mask
        block.attn.norm.register_forward_hook(lambda mod, args, out: seen.append((out, args[1])))
    ids = torch.randint(0, 7, (3, 10))
    plain.set_measuring(False)
    model.set_measuring(False)
    assert torch.allclose(model(ids), plain(ids), atol=1e-12)  # the explicit weights give the fused outputs
    entropies, thresholds = model.attention_entropies()
    assert thresholds is model.entropy_threshold and len(entropies) == len(seen) == 2
    for h, (w, mask) in zip(entropies, seen):
        assert h.shape == (3, 2, 10) and h.requires_grad
        assert torch.allclose(h, N.row_entropy(w, mask), atol=1e-12)
        assert float(h.detach()[..., 0].abs().max()) < 1e-12  # the first query attends to itself only
        assert (h <= torch.log(torch.arange(1, 11, dtype=torch.float64)) + 1e-9).all()  # row i: at most log(i + 1)
    model.eval()
    model(torch.randint(0, 7, (1, 30)))  # evaluation at another length keeps the training batch's entropies
    assert model.attention_entropies()[0][0].shape == (3, 2, 10)


def test_the_loss_adds_lambda_times_the_penalty_and_its_gradient_reaches_the_thresholds():
    torch.manual_seed(0)
    model = Decoder((8,), 5, d=16, layers=2, heads=2, layer_norm=False, entropy_thresholds={"init": 0.9}).train()
    assert model.entropy_threshold.shape == (1, 2)
    ids, targets = torch.randint(0, 5, (4, 8)), torch.randint(0, 5, (32,))
    out = model(ids).flatten(0, 1)
    loss = ce_entropy_reg(coef=1e-3, tolerance=0.2)(out, targets, model)
    entropies, theta = model.attention_entropies()
    with torch.no_grad():
        assert float(loss) == pytest.approx(float(F.cross_entropy(out, targets) + 1e-3 * entropy_penalty(entropies, theta)))
    loss.backward()
    assert float(model.entropy_threshold.grad.abs().min()) > 0
    assert float(model.blocks[0].attn.qkv.weight.grad.abs().sum()) > 0
    model.eval()  # evaluation: the cross-entropy alone
    out = model(ids).flatten(0, 1)
    assert float(ce_entropy_reg()(out, targets, model).detach()) == pytest.approx(float(F.cross_entropy(out, targets).detach()))


def test_a_clear_error_without_the_model_option():
    torch.manual_seed(0)
    model = Decoder((8,), 5, d=16, layers=1, heads=2).train()
    out = model(torch.randint(0, 5, (2, 8))).flatten(0, 1)
    with pytest.raises(ValueError, match="entropy_thresholds"):
        ce_entropy_reg()(out, torch.randint(0, 5, (16,)), model)
    with pytest.raises(ValueError, match="keeps its attention entropies"):
        ce_entropy_reg()(out, torch.randint(0, 5, (16,)), torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="entropy_thresholds must be"):
        Decoder((8,), 5, d=16, layers=1, heads=2, entropy_thresholds={"init": 0.5, "share": True})


SPEC = {
    "id": "tinyereg", "title": "Tiny LM", "arxiv": "0000.00000", "year": 2020, "family": "attention",
    "seed_files": [],
    "experiments": {
        "lm": {
            "kind": "train", "dataset": "tinyshakespeare", "task": "lm", "data": {"context": 16, "eval_tokens": 1024},
            "model": {"name": "decoder", "d": 32, "layers": 2, "heads": 2, "layer_norm": False,
                      "entropy_thresholds": {"init": 0.5, "shared": True}},
            "loss": {"name": "ce_entropy_reg", "coef": 1.0e-5, "tolerance": 0.2},
            "optimizer": {"name": "adamw", "lr": 0.01, "betas": [0.9, 0.95], "weight_decay": 0.0},
            "batch_size": 16, "steps": 40, "log_every": 20, "eval_every": 40, "grad_clip": 1.0,
            "deviations": ["cut: test fixture"],
        },
    },
    "claims": [{"id": "x1", "text": "t", "source": "none", "kind": "value", "metric": "test_loss_x1",
                "unit": "nats", "experiment": "lm", "published": 1.0, "tolerance": {"abs": 1}, "faithful_scales": []}],
}


def test_the_regularised_decoder_trains_through_the_engine(project):
    rec = run_job(write_tiny_text(project, SPEC, "tinyereg"), "lm", 0, "smoke", project / "out", project, progress=False,
                  log=lambda m: None)
    assert rec["status"] == "ok", rec
    m = rec["metrics"]
    assert m["diverged"] == 0.0 and m["test_loss_x1"] < math.log(20)
    assert {"final_attn_entropy_mean_l0", "final_attn_entropy_mean_l1"} <= set(m)


def test_an_identity_mlp_activation_makes_the_mlp_linear():
    torch.manual_seed(0)
    model = Decoder((8,), 5, d=16, layers=1, heads=2, layer_norm=False, mlp_activation="identity")
    mlp = model.blocks[0].mlp
    assert isinstance(mlp[1], torch.nn.Identity)
    x, y = torch.randn(3, 16), torch.randn(3, 16)
    assert torch.allclose(mlp(2 * x - y), 2 * mlp(x) - mlp(y), atol=1e-6)
    assert not torch.allclose(mlp(x), torch.zeros(3, 16))
