"""The registered schedules that do more than scale the learning rate."""
import pytest
import torch

from softrepro.registry import SCHEDULES


def _sgd(lr=10.0):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(3))], lr=lr, momentum=0.0)


def test_momentum_ramp_sets_momentum_and_lr_per_epoch():
    opt = _sgd()
    sched = SCHEDULES.get("momentum_ramp")(opt, steps=10_000, epoch_steps=10, momentum=[0.5, 0.99], ramp_epochs=500,
                                           decay=0.998)
    seen = {}
    for step in range(10 * 1000 + 1):
        if step in (0, 9, 10, 2500, 5000, 10_000):
            seen[step] = (opt.param_groups[0]["momentum"], opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    def expect(epoch):
        m = 0.5 + 0.49 * min(1.0, epoch / 500)
        return m, 10.0 * 0.998 ** epoch * (1 - m)
    for step, epoch in ((0, 0), (9, 0), (10, 1), (2500, 250), (5000, 500), (10_000, 1000)):
        assert seen[step] == pytest.approx(expect(epoch), rel=1e-12), step
    assert seen[10_000][0] == pytest.approx(0.99)  # the ramp stops at its end value


def test_momentum_ramp_resumes_from_its_state_and_refuses_bad_settings():
    opt = _sgd()
    make = SCHEDULES.get("momentum_ramp")
    sched = make(opt, steps=100, epoch_steps=4, ramp_epochs=3, decay=0.9)
    for _ in range(7):
        opt.step(); sched.step()
    state_opt, state_sched = opt.state_dict(), sched.state_dict()
    opt2 = _sgd()
    sched2 = make(opt2, steps=100, epoch_steps=4, ramp_epochs=3, decay=0.9)
    opt2.load_state_dict(state_opt); sched2.load_state_dict(state_sched)
    for _ in range(5):
        opt.step(); sched.step(); opt2.step(); sched2.step()
        assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
        assert opt2.param_groups[0]["momentum"] == opt.param_groups[0]["momentum"]
    with pytest.raises(ValueError, match="momentum_ramp"):
        make(torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))]), steps=1, epoch_steps=1)
    with pytest.raises(ValueError, match="epoch_steps"):
        make(_sgd(), steps=1, epoch_steps=0)
