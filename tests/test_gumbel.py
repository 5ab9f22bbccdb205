import numpy as np
import pytest
import torch
import torch.nn.functional as F

from softrepro.methods.softmax.gumbel import gumbel_softmax_sample, sample_gumbel

LOGITS = torch.tensor([1.0, 0.2, -0.5, 0.0])


def test_gumbel_noise_has_the_standard_gumbel_moments():
    g = sample_gumbel((200_000,), torch.Generator().manual_seed(0), torch.float64).numpy()
    assert g.mean() == pytest.approx(np.euler_gamma, abs=0.01)
    assert g.var() == pytest.approx(np.pi ** 2 / 6, abs=0.03)


def test_samples_sum_to_one_and_follow_the_given_noise():
    x = LOGITS.expand(64, 4)
    y = gumbel_softmax_sample(x, tau=0.7, generator=torch.Generator().manual_seed(0))
    assert (y > 0).all() and torch.allclose(y.sum(1), torch.ones(64))
    g = torch.tensor([[0.3, -1.0, 2.0, 0.1]])
    want = np.exp((LOGITS.numpy() + g.numpy()) / 0.5)
    np.testing.assert_allclose(gumbel_softmax_sample(LOGITS[None], 0.5, gumbels=g).numpy(), want / want.sum(),
                               rtol=1e-6)
    a = gumbel_softmax_sample(x, 1.0, generator=torch.Generator().manual_seed(3))
    b = gumbel_softmax_sample(x, 1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_small_temperature_gives_near_one_hot_samples():
    gen = torch.Generator().manual_seed(1)
    noise = sample_gumbel((2000, 4), gen)
    y = gumbel_softmax_sample(LOGITS.expand(2000, 4), tau=0.001, gumbels=noise)
    assert (y.max(1).values > 0.99).float().mean() > 0.99  # fails only if the top-2 gap is < 0.005
    assert torch.equal(y.argmax(1), (LOGITS + noise).argmax(1))
    assert y.max(1).values.mean() > gumbel_softmax_sample(LOGITS.expand(2000, 4), 1.0, gumbels=noise).max(1).values.mean()


def test_argmax_frequencies_match_softmax_of_the_logits():
    y = gumbel_softmax_sample(LOGITS.expand(20_000, 4), tau=1.0, generator=torch.Generator().manual_seed(2))
    freq = np.bincount(y.argmax(1).numpy(), minlength=4) / 20_000
    p = np.exp(LOGITS.numpy()) / np.exp(LOGITS.numpy()).sum()
    assert np.abs(freq - p).max() < 0.02


def test_hard_forward_is_one_hot_with_the_soft_gradient():
    gen = torch.Generator().manual_seed(4)
    noise = sample_gumbel((8, 4), gen)
    w = torch.randn(8, 4, generator=gen)
    x1 = LOGITS.expand(8, 4).clone().requires_grad_(True)
    x2 = LOGITS.expand(8, 4).clone().requires_grad_(True)
    hard = gumbel_softmax_sample(x1, 0.5, hard=True, gumbels=noise)
    soft = gumbel_softmax_sample(x2, 0.5, gumbels=noise)
    assert torch.equal(hard, F.one_hot(soft.argmax(1), 4).float())
    (hard * w).sum().backward()
    (soft * w).sum().backward()
    assert torch.allclose(x1.grad, x2.grad) and x1.grad.abs().sum() > 0


@pytest.mark.parametrize("hard", [False, True])
def test_matches_torch_gumbel_softmax_with_the_same_noise(hard):
    # torch draws g = -log(E), E ~ Exp(1), from the global RNG; redraw the same E and inject it
    x = torch.randn(16, 5, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(7)
    ref = F.gumbel_softmax(x, tau=0.3, hard=hard)
    torch.manual_seed(7)
    g = -torch.empty_like(x).exponential_().log()
    ours = gumbel_softmax_sample(x, 0.3, hard=hard, gumbels=g)
    assert torch.allclose(ours, ref, atol=1e-6)
