import copy

import numpy as np
import pytest
import torch

from softrepro.methods.softmax.orthograd import OrthoGrad, orthogonalize_grads_
from softrepro.registry import OPTIMIZERS


def np_ortho(w, g, rescale):
    w, g = w.ravel().astype(np.float64), g.ravel().astype(np.float64)
    out = g - (w @ g) / (w @ w + 1e-30) * w
    if rescale:
        out = out * np.linalg.norm(g) / (np.linalg.norm(out) + 1e-30)
    return out


def _params(seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    ps = [torch.randn(4, 3, generator=gen, dtype=dtype, requires_grad=True),
          torch.randn(5, generator=gen, dtype=dtype, requires_grad=True)]
    for p in ps:
        p.grad = torch.randn(p.shape, generator=gen, dtype=dtype)
    return ps


@pytest.mark.parametrize("rescale", [True, False])
def test_orthogonalized_grads_are_orthogonal_and_match_numpy(rescale):
    ps = _params()
    want = [np_ortho(p.detach().numpy(), p.grad.numpy(), rescale) for p in ps]
    norms = [p.grad.norm().item() for p in ps]
    orthogonalize_grads_(ps, rescale=rescale)
    for p, w, n in zip(ps, want, norms):
        np.testing.assert_allclose(p.grad.numpy().ravel(), w, rtol=1e-10, atol=1e-12)
        assert abs(float((p.detach() * p.grad).sum())) < 1e-10
        if rescale:  # the official code keeps |g|
            assert p.grad.norm().item() == pytest.approx(n, rel=1e-12)
        else:
            assert p.grad.norm().item() < n


def test_grad_parallel_to_weight_is_removed():
    p = torch.tensor([[1.0, 2.0], [-2.0, 0.5]], requires_grad=True)  # exactly representable: g - 3w == 0
    p.grad = 3 * p.detach().clone()
    q = p.detach().clone().requires_grad_(True)
    q.grad = p.grad.clone()
    orthogonalize_grads_([p], rescale=False)
    orthogonalize_grads_([q], rescale=True)
    assert p.grad.abs().max() == 0 and q.grad.abs().max() == 0
    # without the rescale any g = c w leaves only rounding noise
    r = torch.randn(50, generator=torch.Generator().manual_seed(1), requires_grad=True)
    r.grad = -0.7 * r.detach().clone()
    orthogonalize_grads_([r], rescale=False)
    assert r.grad.norm() < 1e-6 * r.norm()
    # a zero weight tensor (w.w = 0) leaves g as it is
    z = torch.zeros(3, requires_grad=True)
    z.grad = torch.tensor([1.0, -2.0, 0.5])
    orthogonalize_grads_([z])
    assert torch.allclose(z.grad, torch.tensor([1.0, -2.0, 0.5]))


def test_one_orthograd_sgd_step_equals_manual_update():
    ps = _params(seed=3)
    w0 = [p.detach().numpy().copy() for p in ps]
    g0 = [p.grad.numpy().copy() for p in ps]
    opt = OPTIMIZERS.get("orthograd")(ps, base="sgd", lr=0.1)
    opt.step()
    for p, w, g in zip(ps, w0, g0):
        np.testing.assert_allclose(p.detach().numpy().ravel(), w.ravel() - 0.1 * np_ortho(w, g, True), rtol=1e-12)


def test_orthograd_adamw_uses_its_kwargs_and_equals_adamw_on_projected_grads():
    ps = _params(seed=4)
    ref = [p.detach().clone().requires_grad_(True) for p in ps]
    kw = dict(lr=0.01, weight_decay=0.1, betas=[0.9, 0.99], eps=1e-25)
    opt = OPTIMIZERS.get("orthograd")(ps, base="adamw", **kw)
    assert opt.param_groups[0]["betas"] == (0.9, 0.99) and opt.param_groups[0]["eps"] == 1e-25
    ref_opt = torch.optim.AdamW(ref, lr=0.01, weight_decay=0.1, betas=(0.9, 0.99), eps=1e-25)
    gen = torch.Generator().manual_seed(5)
    for _ in range(3):
        for p, r in zip(ps, ref):
            g = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            p.grad = g.clone()
            r.grad = torch.from_numpy(np_ortho(r.detach().numpy(), g.numpy(), True).reshape(p.shape))
        opt.step()
        ref_opt.step()
    for p, r in zip(ps, ref):
        np.testing.assert_allclose(p.detach().numpy(), r.detach().numpy(), rtol=1e-10)


def test_state_dict_round_trip_keeps_base_state_and_shares_groups():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))

    def train(m, opt, n):
        for _ in range(n):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            opt.step()

    opt = OPTIMIZERS.get("orthograd")(model.parameters(), base="adam", lr=1e-2, betas=(0.8, 0.95))
    train(model, opt, 3)
    sd = copy.deepcopy(opt.state_dict())
    assert len(sd["state"]) == 4 and "exp_avg" in sd["state"][0]  # the base's moments are checkpointed
    clone = copy.deepcopy(model)
    opt2 = OPTIMIZERS.get("orthograd")(clone.parameters(), base="adam", lr=0.5)
    opt2.load_state_dict(sd)
    assert opt2.param_groups is opt2.base.param_groups and opt2.param_groups[0]["lr"] == 1e-2
    assert opt2.base.param_groups[0]["betas"] == (0.8, 0.95)
    train(model, opt, 2)
    train(clone, opt2, 2)
    for a, b in zip(model.parameters(), clone.parameters()):
        assert torch.equal(a, b)
    # LR schedulers act on the base through the shared groups
    sched = torch.optim.lr_scheduler.StepLR(opt2, step_size=1, gamma=0.5)
    opt2.step()
    sched.step()
    assert opt2.base.param_groups[0]["lr"] == pytest.approx(5e-3)


def test_plain_optimizers_are_registered():
    p = [torch.nn.Parameter(torch.zeros(2))]
    assert isinstance(OPTIMIZERS.get("adam")(p, lr=1e-3, betas=[0.9, 0.98]), torch.optim.Adam)
    assert isinstance(OPTIMIZERS.get("adamw")(p, lr=1e-3), torch.optim.AdamW)
    assert OPTIMIZERS.get("sgd")(p, lr=0.1, momentum=0.2).param_groups[0]["momentum"] == 0.2
    assert isinstance(OPTIMIZERS.get("orthograd")(p, base="sgd", lr=0.1), torch.optim.Optimizer)
    with pytest.raises(ValueError, match="base"):
        OPTIMIZERS.get("orthograd")(p, base="lion")
