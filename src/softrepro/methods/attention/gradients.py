"""How much gradient an attention normalisation passes back as its logits sharpen.

For rows of ``n`` logits z = sharpness x u (u a random unit-variance row), the Frobenius norm of the
Jacobian dP/dz of the weights P, averaged over ``trials`` rows, for softmax and for Self-Adjust
Softmax (Zheng et al. 2025) in both forms: z x softmax(z) and the normalised
(z - min(z_min, 0)) / (max(z_max, 0) - min(z_min, 0)) x softmax(z).  Softmax's Jacobian
diag(p) - p p^T vanishes as one weight approaches 1: the "gradient vanishing issue" of their
abstract.
"""
from __future__ import annotations

import torch

from softrepro.methods.attention.normalisations import SelfAdjustSoftmax, Softmax
from softrepro.registry import BENCHMARKS

VARIANTS = {"softmax": Softmax(), "sa": SelfAdjustSoftmax(denominator=False), "sa_norm": SelfAdjustSoftmax()}


def jacobian_norm(fn, z: torch.Tensor) -> float:
    """Frobenius norm of d fn(z) / d z for one row z (all keys attended)."""
    n = z.shape[-1]
    mask, counts = torch.ones(1, n, dtype=torch.bool), torch.full((1, 1), float(n), dtype=z.dtype)
    jac = torch.autograd.functional.jacobian(lambda r: fn(r[None, None, None, :], mask, counts)[0, 0, 0], z)
    return float(jac.norm())


@BENCHMARKS.register("attention_gradients", params=("n", "sharpness", "trials"))
def run_benchmark(params: dict, seed: int, progress=None) -> tuple[dict, list[dict]]:
    """Metrics ``jac_<variant>_s<sharpness>`` (mean Jacobian norm over the trials, float64) and
    ``jac_<variant>_drop`` (at the largest sharpness over the smallest); one row per sharpness."""
    n, trials = int(params.get("n", 64)), int(params.get("trials", 100))
    sharp = [float(s) for s in params["sharpness"]]
    gen = torch.Generator().manual_seed(seed)
    rows = [{"sharpness": s, **{f"jac_{v}": 0.0 for v in VARIANTS}} for s in sharp]
    for t in range(trials):
        u = torch.randn(n, generator=gen, dtype=torch.float64)
        u = (u - u.mean()) / u.std()
        for row, s in zip(rows, sharp):
            for v, fn in VARIANTS.items():
                row[f"jac_{v}"] += jacobian_norm(fn, s * u) / trials
        if progress:
            progress(t + 1, trials)
    metrics = {f"jac_{v}_s{s:g}": row[f"jac_{v}"] for row, s in zip(rows, sharp) for v in VARIANTS}
    metrics.update({f"jac_{v}_drop": rows[-1][f"jac_{v}"] / rows[0][f"jac_{v}"] for v in VARIANTS})
    return metrics, rows


# The report draws each variant's Jacobian norm against the sharpness (log axes).
run_benchmark.figure = {"kind": "sweep", "x": "sharpness", "y_prefix": "jac_", "log": True, "ylabel": "|dP/dz| (Frobenius)"}
