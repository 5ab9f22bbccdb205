"""The decoder block's MLP options (Shen et al. 2023, "A Study on ReLU and Softmax in Transformer"): the
MLP read as a key-value memory, h = f(x W1ᵀ) W2 with f = ReLU or Softmax over the slots, and the LayerNorm
after the softmax read-out, LN(Softmax(x W1ᵀ) W2), each against its formula on a hand-built case; the
default (GELU, no norm) unchanged; bad names refused; the spec's cpu grid."""
import math

import pytest
import torch
from torch import nn

from softrepro.methods.attention.decoder import Decoder, feed_forward
from softrepro.methods.attention.vit import ViT

# d = 3 model width, 2 x 3 = 6 slots: keys W1 [6, 3], values W2ᵀ (W2 [3, 6])
W1 = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, -1.0, 0.5], [-0.5, 0.5, 2.0], [0.2, 0.3, -1.0]]
W2 = [[1.0, -2.0, 0.5, 3.0, 0.0, 1.0], [0.0, 1.0, -1.0, 2.0, 0.5, -3.0], [2.0, 0.0, 1.0, -1.0, 1.0, 0.5]]
X = [[0.5, -1.0, 2.0], [-1.5, 0.25, 0.0]]  # two tokens


def _mlp(activation, norm=None):
    m = feed_forward(3, 2, activation, norm)
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor(W1, dtype=torch.float64))
        m[2].weight.copy_(torch.tensor(W2, dtype=torch.float64))
    return m.double()


def _read_out(f, x):
    """f(x W1ᵀ) W2 for one token, in plain Python: the slot scores, their activations, the weighted values."""
    scores = [sum(k[j] * x[j] for j in range(3)) for k in W1]
    a = f(scores)
    return [sum(W2[i][s] * a[s] for s in range(6)) for i in range(3)]


def _relu(z):
    return [max(v, 0.0) for v in z]


def _softmax(z):
    e = [math.exp(v - max(z)) for v in z]
    return [v / sum(e) for v in e]


def _layernorm(h, eps=1e-5):
    mean = sum(h) / len(h)
    var = sum((v - mean) ** 2 for v in h) / len(h)
    return [(v - mean) / math.sqrt(var + eps) for v in h]


@pytest.mark.parametrize("activation, norm, f, post", [
    ("relu", None, _relu, lambda h: h),
    ("softmax", None, _softmax, lambda h: h),
    ("softmax", "layernorm", _softmax, _layernorm),
    ("relu", "layernorm", _relu, _layernorm),
])
def test_each_mlp_option_is_its_formula(activation, norm, f, post):
    out = _mlp(activation, norm)(torch.tensor(X, dtype=torch.float64))
    expected = torch.tensor([post(_read_out(f, x)) for x in X], dtype=torch.float64)
    assert torch.allclose(out, expected, atol=1e-12)


def test_the_hand_built_case_tells_the_options_apart():
    x = torch.tensor(X, dtype=torch.float64)
    outs = [_mlp(a, n)(x) for a, n in (("relu", None), ("softmax", None), ("softmax", "layernorm"), ("gelu", None))]
    assert all(not torch.allclose(outs[i], outs[j], atol=1e-3) for i in range(4) for j in range(i + 1, 4))
    # the softmax read-out mixes the values with weights summing to 1 over the slots, so it lies within their range
    values = torch.tensor(W2, dtype=torch.float64)
    assert (outs[1] >= values.min(1).values).all() and (outs[1] <= values.max(1).values).all()
    # after the LayerNorm each token's read-out has mean 0 and variance 1 (up to eps)
    assert torch.allclose(outs[2].mean(-1), torch.zeros(2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(outs[2].var(-1, unbiased=False), torch.ones(2, dtype=torch.float64), atol=1e-3)


def test_the_default_mlp_is_the_former_gelu_mlp():
    d, ratio = 8, 4
    torch.manual_seed(0)
    former = nn.Sequential(nn.Linear(d, ratio * d, bias=False), nn.GELU(), nn.Linear(ratio * d, d, bias=False))
    torch.manual_seed(0)
    new = feed_forward(d, ratio)
    assert [type(m) for m in new] == [nn.Linear, nn.GELU, nn.Linear]
    assert new[1].approximate == "none"
    sd_former, sd_new = former.state_dict(), new.state_dict()
    assert list(sd_former) == list(sd_new) and all(torch.equal(sd_former[k], sd_new[k]) for k in sd_former)
    x = torch.randn(3, 5, d)
    assert torch.equal(former(x), new(x))


def test_decoder_defaults_are_unchanged_and_options_reach_every_block():
    torch.manual_seed(0)
    default = Decoder((16,), 11, d=16, layers=2, heads=2)
    for block in default.blocks:
        assert [type(m) for m in block.mlp] == [nn.Linear, nn.GELU, nn.Linear]
    assert not any(".mlp.3." in name for name in default.state_dict())
    torch.manual_seed(0)
    explicit = Decoder((16,), 11, d=16, layers=2, heads=2, mlp_activation="gelu", mlp_norm=None)
    ids = torch.randint(0, 11, (2, 16))
    assert torch.equal(default.eval()(ids), explicit.eval()(ids))
    torch.manual_seed(0)
    memory = Decoder((16,), 11, d=16, layers=2, heads=2, mlp_ratio=3, mlp_activation="softmax", mlp_norm="layernorm")
    for block in memory.blocks:
        assert [type(m) for m in block.mlp] == [nn.Linear, nn.Softmax, nn.Linear, nn.LayerNorm]
        assert block.mlp[1].dim == -1 and block.mlp[0].weight.shape == (48, 16)  # 3 x 16 slots
        assert block.mlp[3].bias is None and torch.equal(block.mlp[3].weight, torch.ones(16))
    # the residual-branch scaling of the initial weights still reaches the read-out's W2
    w2 = torch.cat([b.mlp[2].weight.flatten() for b in memory.blocks])
    assert abs(float(w2.detach().std()) - 0.02 / math.sqrt(4)) < 0.002
    assert torch.isfinite(memory(ids)).all()


def test_bad_option_names_are_refused():
    with pytest.raises(ValueError, match="unknown mlp_activation 'swish'.*gelu, relu, softmax"):
        Decoder((8,), 5, d=8, layers=1, heads=2, mlp_activation="swish")
    with pytest.raises(ValueError, match="mlp_norm must be null or 'layernorm', not 'rmsnorm'"):
        Decoder((8,), 5, d=8, layers=1, heads=2, mlp_activation="softmax", mlp_norm="rmsnorm")


def test_the_vit_keeps_its_gelu_mlp():
    torch.manual_seed(0)
    vit = ViT((1, 28, 28), 10, patch=7, d=16, layers=1, heads=2, mlp_ratio=2)
    assert [type(m) for m in vit.blocks[0].mlp] == [nn.Linear, nn.GELU, nn.Linear]
    assert vit(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_spec_plans_the_three_read_outs_at_cpu_and_the_sweep_at_paper():
    from softrepro.spec import load_paper, repo_root, resolve_experiment

    paper = load_paper(repo_root() / "configs/papers/shen2023-relu-softmax.yaml")

    def planned(scale):
        return {n: r for n, e in paper.experiments.items()
                if not (r := resolve_experiment(e, scale)).get("grid_cut") and not r.get("skip")}

    cpu, gpu = planned("cpu"), planned("paper")
    assert set(cpu) == {"ffn-relu-4d", "ffn-softmax-4d", "ffn-softmax-ln-4d"}
    assert cpu["ffn-softmax-ln-4d"]["model"] == {"name": "decoder", "d": 64, "layers": 2, "heads": 4, "attention": "softmax",
                                                 "mlp_activation": "softmax", "mlp_norm": "layernorm", "mlp_ratio": 4}
    assert len(gpu) == 11 and gpu["ffn-relu-16d"]["model"]["mlp_ratio"] * gpu["ffn-relu-16d"]["model"]["d"] == 4096
    assert gpu["long-relu"]["model"]["attention"] == {"name": "relu", "h": "relu", "alpha": 1.0}
    for claim in paper.claims:  # every claim's arms exist; the 4d ones run at cpu, the others at paper scale only
        arms = set(claim["experiments"].values())
        assert arms <= set(gpu)
        assert (arms <= set(cpu)) == claim["id"].endswith("-4d")
