"""Energy score (Liu, Wang, Owens & Li 2020, "Energy-based Out-of-distribution Detection"):
E(x; T) = -T logsumexp_i f_i(x) / T; the score is -E (higher = in-distribution), T = 1 by default
(official ``energy_ood``)."""
from __future__ import annotations

import torch

from softrepro.ood import Score
from softrepro.registry import SCORES


@SCORES.register("energy")
class Energy(Score):
    def __init__(self, temperature: float = 1.0):
        self.temperature = temperature

    def score(self, ctx, x):
        return self.temperature * torch.logsumexp(ctx.outputs(x)[0] / self.temperature, dim=1)
