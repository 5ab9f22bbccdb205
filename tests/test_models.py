"""The plain-torch classifiers shared by the specs: shapes, the optional ReLU output head
(Agarap 2018's ReLU classifier) and input checks."""
import pytest
import torch

from softrepro.registry import MODELS


@pytest.mark.parametrize("name,in_shape,kw", [
    ("mlp", (30,), {"hidden": [16]}),
    ("vggnet", (1, 16, 16), {"blocks": [[8, 8], [8, 8]], "hidden": 32}),
])
def test_relu_output_head_is_the_linear_logits_clipped_at_zero(name, in_shape, kw):
    torch.manual_seed(0)
    linear = MODELS.get(name)(in_shape=in_shape, n_classes=10, **kw).eval()
    relu = MODELS.get(name)(in_shape=in_shape, n_classes=10, output="relu", **kw).eval()
    relu.load_state_dict(linear.state_dict())  # the head has no parameters: same weights, same keys
    x = torch.randn(64, *in_shape)
    z = linear(x)
    assert z.shape == (64, 10) and (z < 0).any()
    assert torch.equal(relu(x), z.clamp_min(0))
    assert relu.penultimate.shape == (64, kw["hidden"][-1] if name == "mlp" else kw["hidden"])


@pytest.mark.parametrize("name,in_shape", [("mlp", (30,)), ("vggnet", (1, 16, 16))])
def test_unknown_output_head_is_refused(name, in_shape):
    with pytest.raises(ValueError, match="unknown output 'softplus' \\(linear, relu\\)"):
        MODELS.get(name)(in_shape=in_shape, n_classes=10, output="softplus")


def test_vggnet_refuses_an_input_too_small_for_its_blocks():
    with pytest.raises(ValueError, match="too small"):
        MODELS.get("vggnet")(in_shape=(1, 8, 8), n_classes=10)


def test_mlp_without_bias_has_no_bias_anywhere():
    m = MODELS.get("mlp")(in_shape=(30,), n_classes=10, hidden=[16, 16], bias=False)
    assert not [n for n, _ in m.named_parameters() if n.endswith("bias")]


def test_unit_norm_init_scales_each_unit_and_zeroes_biases():
    import pytest
    import torch

    from softrepro.models import MLP

    torch.manual_seed(0)
    m = MLP(in_shape=(20,), n_classes=3, hidden=(8, 8), init="unit_norm", init_divisors=[1.425, 0.85, 1.425])
    lins = [x for x in m.modules() if isinstance(x, torch.nn.Linear)]
    for lin, d in zip(lins, [1.425, 0.85, 1.425]):
        assert torch.allclose(lin.weight.norm(dim=1), torch.full((lin.out_features,), 1 / d ** 0.5))
        assert (lin.bias == 0).all()
    with pytest.raises(ValueError, match="3 linear layers"):
        MLP(in_shape=(20,), n_classes=3, hidden=(8, 8), init="unit_norm", init_divisors=[1.0])


def test_mlp_max_norm_input_dropout_and_normal_init():
    """The MLP options of the dropout nets (input dropout, N(0, std²) weights, a max-norm constraint on each
    hidden unit's incoming weights after every update) and that the training loop applies the constraint."""
    torch.manual_seed(0)
    net = MODELS.get("mlp")((1, 28, 28), 10, hidden=[50, 40], input_dropout=0.2, dropout=0.5, init="normal",
                            init_std=0.01, max_sq_norm=15.0)
    assert isinstance(net.body[1], torch.nn.Dropout) and net.body[1].p == 0.2
    w = net.hidden_layers()[0].weight
    assert abs(float(w.std()) - 0.01) < 0.001 and float(net.hidden_layers()[0].bias.abs().max()) == 0.0
    with torch.no_grad():
        for layer in net.hidden_layers() + [net.readout]:
            layer.weight.mul_(1000.0)
    before = [l.weight.clone() for l in net.hidden_layers()]
    readout = net.readout.weight.clone()
    net.constrain()
    for layer, old in zip(net.hidden_layers(), before):
        sq = layer.weight.square().sum(1)
        assert torch.allclose(sq, torch.full_like(sq, 15.0), rtol=1e-5)  # every row was above: scaled to the bound
        cos = torch.nn.functional.cosine_similarity(layer.weight, old, dim=1)
        assert torch.allclose(cos, torch.ones_like(cos), atol=1e-6)  # the direction is kept
    assert torch.equal(net.readout.weight, readout)  # the readout is not constrained
    with torch.no_grad():
        net.hidden_layers()[1].weight[0] = 0.1  # a row inside the bound is left alone
    kept = net.hidden_layers()[1].weight[0].clone()
    net.constrain()
    assert torch.equal(net.hidden_layers()[1].weight[0], kept)
    with pytest.raises(ValueError, match="max_sq_norm"):
        MODELS.get("mlp")((784,), 10, max_sq_norm=0)

