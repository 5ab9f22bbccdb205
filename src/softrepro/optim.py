"""The standard optimizers and learning-rate schedules, registered by name for the specs.

``OPTIMIZERS``: ``make(params, **kw) -> torch.optim.Optimizer`` (``adam``, ``adamw``, ``sgd``; a
paper's own optimizer registers beside them in its method module).  ``SCHEDULES``:
``make(optimizer, steps, **kw) -> LRScheduler``, stepped once per training step.
"""
from __future__ import annotations

import math

import torch

from softrepro.registry import OPTIMIZERS, SCHEDULES

BASES = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


def torch_kwargs(kw: dict) -> dict:
    """Spec files give betas as a list; torch wants a tuple."""
    return {k: tuple(v) if k == "betas" else v for k, v in kw.items()}


def _register_base(name: str, cls) -> None:
    def make(params, **kw):
        return cls(params, **torch_kwargs(kw))

    make.__doc__ = f"torch.optim.{cls.__name__} with the spec's keyword arguments."
    make.forwards_to = cls  # its keywords are the class's (checked by `make validate`)
    OPTIMIZERS.register(name)(make)


for _name, _cls in BASES.items():
    _register_base(_name, _cls)


@SCHEDULES.register("cosine")
def cosine(opt, steps: int, eta_min: float = 0.0):
    """Cosine annealing from the optimizer's lr to ``eta_min`` over the run's steps."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=eta_min)


@SCHEDULES.register("step")
def step(opt, steps: int, step_size: int | None = None, milestones: list[int] | None = None, gamma: float = 0.1):
    """lr x gamma every ``step_size`` steps, or at each of ``milestones``."""
    if step_size is not None:
        return torch.optim.lr_scheduler.StepLR(opt, step_size=step_size, gamma=gamma)
    if milestones is None:
        raise ValueError("schedule 'step' needs step_size or milestones")
    return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=gamma)


@SCHEDULES.register("warmup")
def warmup(opt, steps: int, warmup: int, then: str = "cosine", start: float = 0.0, final: float = 0.0):
    """Linear warm-up from the learning rate ``start`` to the optimizer's lr over ``warmup`` steps,
    then ``cosine`` decay to ``final`` at the last step, or ``constant``."""
    if then not in ("cosine", "constant"):
        raise ValueError(f"schedule 'warmup': then must be 'cosine' or 'constant', not {then!r}")
    base = opt.param_groups[0]["lr"]

    def factor(step: int) -> float:
        if step < warmup:
            return (start + (base - start) * step / warmup) / base
        if then == "constant":
            return 1.0
        t = min(1.0, (step - warmup) / max(1, steps - warmup))
        return (final + (base - final) * 0.5 * (1 + math.cos(math.pi * t))) / base

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


class MomentumRamp(torch.optim.lr_scheduler.LRScheduler):
    """Per epoch e (``epoch_steps`` training steps each): momentum m(e) rises linearly from
    ``momentum[0]`` to ``momentum[1]`` over the first ``ramp_epochs`` epochs and then stays; the
    learning rate is lr x ``decay``^e, times (1 - m(e)) when ``scale_by_momentum`` (so that a step
    of the momentum average moves the weights by about lr x gradient whatever m is).  Sets each
    parameter group's ``momentum``, so it needs an optimizer with one (``sgd``)."""

    def __init__(self, opt, epoch_steps: int, momentum=(0.5, 0.99), ramp_epochs: float = 500, decay: float = 1.0,
                 scale_by_momentum: bool = True):
        if epoch_steps < 1 or ramp_epochs <= 0 or not 0 < decay <= 1 or len(momentum) != 2:
            raise ValueError(f"schedule 'momentum_ramp': epoch_steps >= 1, ramp_epochs > 0, decay in (0, 1] and "
                             f"momentum [start, end] needed (got {epoch_steps}, {ramp_epochs}, {decay}, {momentum})")
        if any("momentum" not in g for g in opt.param_groups):
            raise ValueError("schedule 'momentum_ramp' sets the momentum: use an optimizer with one (sgd)")
        self.epoch_steps, self.ramp_epochs, self.decay = int(epoch_steps), float(ramp_epochs), float(decay)
        self.m0, self.m1 = (float(m) for m in momentum)
        self.scale_by_momentum = bool(scale_by_momentum)
        super().__init__(opt)

    def momentum_at(self, epoch: int) -> float:
        return self.m0 + (self.m1 - self.m0) * min(1.0, epoch / self.ramp_epochs)

    def get_lr(self):
        epoch = self.last_epoch // self.epoch_steps
        m = self.momentum_at(epoch)
        for group in self.optimizer.param_groups:
            group["momentum"] = m
        scale = self.decay ** epoch * ((1 - m) if self.scale_by_momentum else 1.0)
        return [base * scale for base in self.base_lrs]


@SCHEDULES.register("momentum_ramp")
def momentum_ramp(opt, steps: int, epoch_steps: int, momentum=(0.5, 0.99), ramp_epochs: float = 500,
                  decay: float = 1.0, scale_by_momentum: bool = True):
    """SGD momentum ramped per epoch, the learning rate decayed per epoch and scaled by (1 - momentum):
    ``MomentumRamp``."""
    return MomentumRamp(opt, epoch_steps, momentum, ramp_epochs, decay, scale_by_momentum)
