"""σReparam (Zhai et al. 2023, "Stabilizing Transformer Training by Preventing Attention Entropy
Collapse") and a numerical look at how low attention entropy can go for a given spectral norm.

**σReparam** rewrites every linear layer's weight as Ŵ = γ W / σ(W), with σ(W) the spectral norm of W
estimated by one power-iteration step per forward pass and γ a learnable scalar.  The details follow
the authors' PyTorch code (apple/ml-sigma-reparam at fea4e35, ``vision/layers.py``):
``SpectralNormedWeight`` keeps the right singular vector ``u`` as a buffer, initialised from an SVD of
W (L28-32); each forward runs one power step ``v = normalize(W u)``, ``u = normalize(W^T v)`` under
``no_grad`` and stores ``u`` only in training mode (L34-41); σ = vᵀ W u is computed *outside*
``no_grad``, so the gradient reaches W through σ with u and v held constant (L43); the weight is
divided by σ (L51).  ``SNLinear`` initialises γ (its parameter ``sigma``) to the first σ, the top
singular value of the initial weight (L115-125), and multiplies the normalised weight by γ (L145);
the bias is left as it is.  ``convert_to_sn`` applies it to every ``nn.Linear`` (and ``nn.Conv2d``)
of a network (L254-286).  Here it is a ``torch.nn.utils.parametrize`` parametrisation of each
``nn.Linear`` weight, registered after the model has initialised its weights (the official code
re-initialises the converted layers with trunc-normal(0.02 x gain) instead: see ``apply``).

**The entropy floor.**  The paper's abstract: "we prove a tight lower bound of the attention entropy,
which decreases exponentially fast with the spectral norm of the attention logits".  The benchmark
``attention_entropy_floor`` looks for the lowest row entropy of softmax(X W Xᵀ) that inputs X
(T tokens, ‖XXᵀ‖₂ = 1) and a query-key matrix W = W_K W_Qᵀ with prescribed spectral norm σ can reach,
by gradient descent on the log-entropy from random starts; the logit matrix then has spectral norm at
most σ.  It uses no formula for the bound: the exact statement of the paper's Theorem 3.1 was not
found in a primary source (docs/sources/attention-zhai.md).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from softrepro.registry import BENCHMARKS


class SigmaReparam(nn.Module):
    """The parametrisation W -> γ W / σ(W) of one weight [out, in] (apple/ml-sigma-reparam
    ``SpectralNormedWeight`` and ``SNLinear``): ``u`` from the SVD of the initial W, one power step per
    call (``u`` kept in training mode only), σ = vᵀ W u differentiable in W alone, γ = σ(W_init)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        with torch.no_grad():
            _, s, vh = torch.linalg.svd(weight.detach(), full_matrices=False)
        self.register_buffer("u", vh[0].clone())
        self.gamma = nn.Parameter(s[0].clone())

    def sigma(self, weight: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            v = F.normalize(weight @ self.u, dim=0)
            u = F.normalize(weight.T @ v, dim=0)
            if self.training:
                self.u.copy_(u)
        return torch.einsum("c,cd,d->", v, weight, u)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return self.gamma * weight / self.sigma(weight)


def apply(model: nn.Module) -> nn.Module:
    """Reparametrise the weight of every ``nn.Linear`` of ``model`` in place (biases and other layers,
    e.g. embeddings and norms, are left alone).  Call it after the weights are initialised: γ starts
    at each weight's spectral norm, so the model computes the same function as before."""
    for module in [m for m in model.modules() if isinstance(m, nn.Linear)]:
        parametrize.register_parametrization(module, "weight", SigmaReparam(module.weight))
    return model


def row_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of softmax over the last axis, computed from log-softmax (exact near 0)."""
    logp = logits.log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


def _scaled(g: torch.Tensor, h: torch.Tensor, sigma: float) -> torch.Tensor:
    """Logits X W Xᵀ with X = g / ‖g‖₂ (so ‖XXᵀ‖₂ = 1) and W = σ h / ‖h‖₂ (spectral norm σ)."""
    x = g / torch.linalg.matrix_norm(g, ord=2)
    w = sigma * h / torch.linalg.matrix_norm(h, ord=2)
    return x @ w @ x.T


def lowest_entropy(sigma: float, t: int, d: int, restarts: int, steps: int, lr: float, gen: torch.Generator):
    """The lowest row entropy found by Adam on log Ent(row 0) over (X, W) from ``restarts`` random
    starts (float64), and the spectral norm of the logit matrix where it was found."""
    best, best_norm = math.inf, math.nan
    for _ in range(restarts):
        g = torch.randn(t, d, generator=gen, dtype=torch.float64).requires_grad_()
        h = torch.randn(d, d, generator=gen, dtype=torch.float64).requires_grad_()
        opt = torch.optim.Adam([g, h], lr=lr)
        for _ in range(steps):
            logits = _scaled(g, h, sigma)
            ent = row_entropy(logits)
            with torch.no_grad():
                low = float(ent.min())
                if low < best:
                    best, best_norm = low, float(torch.linalg.matrix_norm(logits, ord=2))
            opt.zero_grad()
            ent[0].clamp_min(1e-300).log().backward()
            opt.step()
    return best, best_norm


def random_entropy(sigma: float, t: int, d: int, trials: int, gen: torch.Generator) -> float:
    """Mean over ``trials`` Gaussian draws (then scaled as above) of the lowest row entropy."""
    total = 0.0
    for _ in range(trials):
        g = torch.randn(t, d, generator=gen, dtype=torch.float64)
        h = torch.randn(d, d, generator=gen, dtype=torch.float64)
        total += float(row_entropy(_scaled(g, h, sigma)).min()) / trials
    return total


@BENCHMARKS.register("attention_entropy_floor", params=("T", "d", "sigmas", "trials", "restarts", "steps", "lr"))
def run_benchmark(params: dict, seed: int, progress=None) -> tuple[dict, list[dict]]:
    """Per spectral norm σ of ``sigmas``: ``ent_adv_s<σ>`` (the lowest row entropy the search found),
    ``ent_rand_s<σ>`` (random inputs and weights), ``logit_norm_adv_s<σ>`` (the logits' spectral norm
    at the lowest entropy found, at most σ); ``ent_adv_rate_<a>_<b>`` = ln(ent(a) / ent(b)) / (b - a)
    for consecutive σ (the decay per unit σ: rising towards a constant for exponential decay, falling
    as 1/σ for a power law).  T keys, all attended; width d."""
    t, d = int(params.get("T", 16)), int(params.get("d", 16))
    sigmas = [float(s) for s in params["sigmas"]]
    trials, restarts = int(params.get("trials", 200)), int(params.get("restarts", 3))
    steps, lr = int(params.get("steps", 250)), float(params.get("lr", 0.05))
    gen = torch.Generator().manual_seed(seed)
    rows, metrics = [], {}
    for i, s in enumerate(sigmas):
        adv, norm = lowest_entropy(s, t, d, restarts, steps, lr, gen)
        row = {"sigma": s, "ent_adv": adv, "ent_rand": random_entropy(s, t, d, trials, gen), "logit_norm_adv": norm}
        rows.append(row)
        metrics.update({f"{k}_s{s:g}": v for k, v in row.items() if k != "sigma"})
        if progress:
            progress(i + 1, len(sigmas))
    for a, b in zip(rows, rows[1:]):
        metrics[f"ent_adv_rate_{a['sigma']:g}_{b['sigma']:g}"] = math.log(a["ent_adv"] / b["ent_adv"]) / (b["sigma"] - a["sigma"])
    metrics["max_entropy"] = math.log(t)
    return metrics, rows


# The report draws the lowest entropy found and the random-draw entropy against σ (log axes).
run_benchmark.figure = {"kind": "sweep", "x": "sigma", "y_prefix": "ent_", "log": True,
                        "ylabel": "lowest row entropy (nats)"}
