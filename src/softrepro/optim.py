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
