"""Padé Activation Units and the official LeNet5 / VGG-8 (methods/pau.py)."""
import numpy as np
import pytest
import torch
from torch import nn

from softrepro.methods.softmax.pau import ACTIVATIONS, LEAKY_RELU_DENOMINATOR, LEAKY_RELU_NUMERATOR, PAU, LeNet5, VGG8
from softrepro.registry import MODELS


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny batches: a single intra-op thread is faster and keeps the test light on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pade_numpy(x, a, b):
    p = sum(a[j] * x**j for j in range(len(a)))
    q = 1 + sum(abs(b[k - 1]) * np.abs(x) ** k for k in range(1, len(b) + 1))
    return p / q


def test_pau_matches_numpy_rational_function():
    x = np.linspace(-6, 6, 1001)
    got = PAU()(torch.tensor(x, dtype=torch.float64)).detach().numpy()
    want = pade_numpy(x, LEAKY_RELU_NUMERATOR, LEAKY_RELU_DENOMINATOR)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    # negative coefficients enter the denominator through their absolute value
    a, b = (0.1, -0.5, 0.3, 0.2, -0.1, 0.05), (-1.0, 0.5, -0.25, 0.1)
    got = PAU(a, b)(torch.tensor(x, dtype=torch.float64)).detach().numpy()
    np.testing.assert_allclose(got, pade_numpy(x, a, b), rtol=1e-6, atol=1e-7)


def test_initial_pau_approximates_leaky_relu():
    # measured: max |PAU - LeakyReLU(0.01)| on [-3, 3] is 0.03356 (= a_0, at x = 0)
    x = torch.linspace(-3, 3, 60001, dtype=torch.float64)
    err = (PAU()(x) - nn.functional.leaky_relu(x, 0.01)).abs()
    assert err.max().item() < 0.035
    assert err.mean().item() < 0.01


def test_gradients_reach_the_coefficients():
    pau = PAU()
    x = torch.linspace(-3, 3, 101, requires_grad=True)
    (pau(x) ** 2).sum().backward()
    for p in (pau.weight_numerator, pau.weight_denominator):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    assert torch.isfinite(x.grad).all()


def test_denominator_is_at_least_one():
    torch.manual_seed(0)
    a = torch.zeros(6)
    a[0] = 1.0  # P == 1, so f = 1 / Q and Q >= 1 means 0 < f <= 1
    for _ in range(5):
        pau = PAU(a.tolist(), (torch.randn(4) * 3).tolist())
        x = torch.cat([torch.linspace(-50, 50, 2001), torch.randn(1000) * 10])
        f = pau(x)
        assert (f <= 1 + 1e-6).all() and (f > 0).all()


# Hand count from experiments/main.py (weights + biases):
#   LeNet5: 1*6*25+6 + 6*16*25+16 + 16*120*25+120 + 120*84+84 + 84*10+10 = 61,706
#   VGG:    (1*64 + 64*128 + 128*256 + 256*256 + 256*512 + 512*512 + 512*512 + 512*512) * 9
#           + (64+128+256+256+512+512+512+512) + 512*10+10 = 9,224,458
# With PAU, each activation site adds 10 coefficients (6 + 4): LeNet5 has 4 sites, VGG 5.
@pytest.mark.parametrize(
    "name,base,sites", [("lenet5", 61_706, 4), ("vgg8", 9_224_458, 5)]
)
def test_shapes_and_parameter_counts(name, base, sites):
    for act, extra in (("relu", 0), ("pau", 10 * sites)):
        model = MODELS.get(name)((1, 28, 28), 10, activation=act)
        assert sum(p.numel() for p in model.parameters()) == base + extra
        assert sum(isinstance(m, PAU) for m in model.modules()) == (sites if act == "pau" else 0)
        out = model(torch.randn(2, 1, 28, 28))
        assert out.shape == (2, 10)
        assert isinstance(model.readout, nn.Linear)
        assert model.penultimate.shape == (2, model.readout.in_features)


def test_pau_sites_are_independent():
    model = LeNet5(activation="pau")
    paus = [m for m in model.modules() if isinstance(m, PAU)]
    assert len({id(p.weight_numerator) for p in paus}) == len(paus)


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_every_activation_builds_and_backpropagates(act):
    torch.manual_seed(0)
    for cls in (LeNet5, VGG8):
        model = cls(activation=act)
        x = torch.randn(2, 1, 28, 28)
        loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1]))
        loss.backward()
        assert torch.isfinite(loss)
        assert model.readout.weight.grad is not None
        first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0


def test_unknown_activation_is_rejected():
    with pytest.raises(ValueError):
        LeNet5(activation="maxout")
