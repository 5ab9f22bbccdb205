"""Attention normalisations: what turns the logits z = q·k of one head into the weights that mix
the values.  Each takes the logits ``z`` [B, H, T, S], a boolean ``mask`` [T, S] (True where query i
may attend to key j) and ``n`` [T, 1], the number of keys each query attends (i + 1 in a causal
model, S without a mask), and returns weights that are 0 wherever the mask is False.

Sources of the formulas (a paper's own code where one exists):
- ``softmax``: softmax over the attended keys.
- ``ssmax``: Scalable-Softmax, softmax(s · log n · z) with a learnable s per head (Nakanishi 2025,
  eq. 2); n is the number of attended keys, so per position in a causal model.
- ``sigmoid``: sigmoid(z + b) without normalisation, b a fixed scalar or -log n (Ramapuram et al.
  2025; apple/ml-sigmoid-attention ``unnormalized_sigmoid_attention`` and the ``attn_bias`` of its
  configs).
- ``relu``: n^-alpha · h(z) with h one of relu, relu², gelu, softplus, sigmoid (Wortsman et al. 2023,
  "Replacing softmax with ReLU in Vision Transformers": "relu/seqlen" at alpha = 1).
- ``sa_softmax``: Self-Adjust Softmax (Zheng et al. 2025; a co-author's implementation in HKUDS/SepLLM).
- ``rela``: ReLU weights and a gated RMS norm of the concatenated head outputs (Zhang, Titov & Sennrich 2021).
- ``prf``: kernelized attention with positive random features, optionally with relative-position weights
  exp(b_{j-i}) and unit-norm queries and keys (Choromanski et al. 2021, "Rethinking Attention with
  Performers"; Luo et al. 2021, arXiv 2106.12566, Eqs. 5 and 10, Algorithm 1); its logits are the log of the
  kernel (``log_kernel``), computed by the decoder from q and k.
- ``lssa``, ``lssar``: Length Scaled Softplus Attention and its re-weighting (Gao & Spratling 2025, arXiv
  2501.13428); they take the cosine of q and k as their logits (``cosine_logits``; docs/sources/attention-gao.md).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from softrepro.methods.attention.kernelized_rpe import draw_features


class Softmax(nn.Module):
    def forward(self, z, mask, n):
        return z.masked_fill(~mask, float("-inf")).softmax(-1)


class ScalableSoftmax(nn.Module):
    """softmax(s · log n · z); ``s`` learnable per head from ``s_init``."""

    def __init__(self, heads: int, s_init: float = 0.43, learnable: bool = True):
        super().__init__()
        s = torch.full((heads, 1, 1), float(s_init))
        self.s = nn.Parameter(s) if learnable else nn.Buffer(s)

    def forward(self, z, mask, n):
        return (self.s * torch.log(n) * z).masked_fill(~mask, float("-inf")).softmax(-1)


class Sigmoid(nn.Module):
    """sigmoid(z + b) on the attended keys; ``bias``: a number, or ``"-log n"``."""

    def __init__(self, bias: float | str = "-log n"):
        super().__init__()
        if isinstance(bias, str) and bias != "-log n":
            raise ValueError(f"sigmoid attention bias must be a number or '-log n', not {bias!r}")
        self.bias = bias

    def forward(self, z, mask, n):
        b = -torch.log(n) if self.bias == "-log n" else float(self.bias)
        return torch.sigmoid(z + b) * mask


POINTWISE = {"relu": F.relu, "relu2": lambda z: F.relu(z) ** 2, "gelu": F.gelu, "softplus": F.softplus,
             "sigmoid": torch.sigmoid}


class PointwiseOverLength(nn.Module):
    """n^-alpha · h(z) on the attended keys."""

    def __init__(self, h: str = "relu", alpha: float = 1.0):
        super().__init__()
        if h not in POINTWISE:
            raise ValueError(f"unknown pointwise attention h {h!r} (known: {', '.join(POINTWISE)})")
        self.h, self.alpha = POINTWISE[h], float(alpha)

    def forward(self, z, mask, n):
        return n ** (-self.alpha) * self.h(z) * mask


class SelfAdjustSoftmax(nn.Module):
    """SA-Softmax: softmax(z) x (z - min(z_min, 0) + b) / (max(z_max, 0) + eps - min(z_min, 0)), the
    minimum and maximum over the row's attended logits and 0 (HKUDS/SepLLM's implementation takes
    them over the lower triangle, where masked entries are 0); not renormalised.  Defaults b = 0 and
    eps = 1e-10 as in that code's signature (its released model ran with other small values; see
    docs/sources/attention-2.md).  ``denominator: false`` gives the variant softmax(z) x z."""

    def __init__(self, b: float = 0.0, eps: float = 1e-10, denominator: bool = True):
        super().__init__()
        self.b, self.eps, self.denominator = float(b), float(eps), bool(denominator)

    def forward(self, z, mask, n):
        p = z.masked_fill(~mask, float("-inf")).softmax(-1)
        if not self.denominator:
            return p * z * mask
        zero = torch.zeros((), dtype=z.dtype, device=z.device)
        lo = torch.minimum(z.masked_fill(~mask, float("inf")).amin(-1, keepdim=True), zero)
        hi = torch.maximum(z.masked_fill(~mask, float("-inf")).amax(-1, keepdim=True), zero)
        return p * (z - lo + self.b) / (hi + self.eps - lo) * mask


class ReLA(nn.Module):
    """ReLU attention weights relu(z), unnormalised (Zhang, Titov & Sennrich 2021, bzhangGo/zero
    ``modules/rela.py``); the heads' concatenated outputs (the model width) then go through
    ``GatedRMSNorm`` (``output_norm``) before the output projection."""

    def __init__(self, heads: int, width: int | None = None, eps: float = 1e-8):
        super().__init__()
        self.output_norm = GatedRMSNorm(width, eps) if width else None

    def forward(self, z, mask, n):
        return torch.relu(z) * mask


class GatedRMSNorm(nn.Module):
    """o / sqrt(mean(o^2) + eps) x scale x sigmoid(gate x o) over the last dimension, with learnable
    vectors ``scale`` (from 1) and ``gate`` (uniform in +-sqrt(3 / dim), unit-scaling as in the
    official code's default initialiser)."""

    def __init__(self, dim: int, eps: float = 1e-8):
        super().__init__()
        bound = (3.0 / dim) ** 0.5
        self.scale = nn.Parameter(torch.ones(dim))
        self.gate = nn.Parameter(torch.empty(dim).uniform_(-bound, bound))
        self.eps = eps

    def forward(self, o):
        return o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + self.eps) * self.scale * torch.sigmoid(self.gate * o)


NORMALISATIONS = {"softmax": Softmax, "ssmax": ScalableSoftmax, "sigmoid": Sigmoid, "relu": PointwiseOverLength,
                  "sa_softmax": SelfAdjustSoftmax, "rela": ReLA}


def make(cfg: dict | str, heads: int, width: int | None = None, context: int | None = None) -> nn.Module:
    """The normalisation named by ``cfg`` (``name`` plus its parameters), with a clear error for an
    unknown name or parameter.  A normalisation with an ``output_norm`` (ReLA) also normalises the
    head outputs; one that sets ``takes_context`` also gets the training context."""
    cfg = {"name": cfg} if isinstance(cfg, str) else dict(cfg)
    name = cfg.pop("name", "softmax")
    if name not in NORMALISATIONS:
        raise ValueError(f"unknown attention normalisation {name!r} (known: {', '.join(NORMALISATIONS)})")
    cls = NORMALISATIONS[name]
    try:
        if getattr(cls, "takes_context", False):
            return cls(heads=heads, width=width, context=context, **cfg)
        if cls is ReLA or getattr(cls, "takes_width", False):
            return cls(heads=heads, width=width, **cfg)
        return cls(heads=heads, **cfg) if cls is ScalableSoftmax else cls(**cfg)
    except TypeError as exc:
        raise ValueError(f"attention normalisation {name!r}: {exc}") from None


def attended(t: int, s: int | None = None, causal: bool = True, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask [t, s], n [t, 1]): which keys each query attends, and how many (float)."""
    s = t if s is None else s
    mask = torch.ones(t, s, dtype=torch.bool, device=device)
    if causal:
        mask = torch.tril(mask, diagonal=s - t)
    return mask, mask.sum(-1, keepdim=True).to(torch.float32)


def row_entropy(w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of each row of weights, renormalised to sum to 1 where a normalisation does not
    (sigmoid, relu); rows with no weight at all count as 0.  Returns [..., T]."""
    w = w * mask
    p = w / w.sum(-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
    return -(p * torch.log(p.clamp_min(torch.finfo(w.dtype).tiny))).sum(-1)


def softmax_max_weight(n: int, low: float = -2.0, high: float = 3.0, s: float | None = None) -> float:
    """The largest weight for the logits (low, ..., low, high) of length n: softmax when ``s`` is None,
    else Scalable-Softmax with scale s (closed form, as in Nakanishi 2025 Fig. 1)."""
    gap = (high - low) * (1.0 if s is None else s * math.log(n))
    return 1.0 / (1.0 + (n - 1) * math.exp(-gap))


class LengthScaledSoftplus(nn.Module):
    """LSSA (Gao & Spratling 2025, arXiv 2501.13428): A = Softplus((log d · log N) ⊙ Q̂K̂ᵀ) ⊙ M', then each row
    divided by its l1 norm.  The logits ``z`` are the cosine q̂·k̂ of the L2-normalised query and key rows (the
    decoder computes them so for a normalisation that sets ``cosine_logits``), d is the head dimension
    (``width / heads``) and N_ij the number of keys query i attends (``n``: i in the paper's 1-based causal
    notation, so per position).  Natural logarithms.

    The formula is read from third-party accounts of the paper that agree with each other; the paper's own
    method section and code were not reached (docs/sources/attention-gao.md)."""

    cosine_logits = True
    takes_width = True

    def __init__(self, heads: int, width: int | None = None):
        super().__init__()
        if not width or width % heads:
            raise ValueError(f"LSSA needs the model width, a multiple of heads={heads} (got width={width!r})")
        self.log_d = math.log(width // heads)

    def softplus(self, z, mask, n):
        """Softplus(log d log n z) on the attended keys (0 elsewhere) and its row sums."""
        a = F.softplus(self.log_d * torch.log(n) * z).masked_fill(~mask, 0.0)
        return a, a.sum(-1, keepdim=True)

    def forward(self, z, mask, n):
        a, total = self.softplus(z, mask, n)
        return a / total


class LengthScaledSoftplusReweighted(LengthScaledSoftplus):
    """LSSAR: LSSA, then the re-weighting A <- ReLU(A ⊙ N - O)^p and each row divided by its l1 norm again, with O
    all ones except its first 3 rows (queries attending n <= 3 keys), which are 0.  ``p``: the power (the
    paper reports 3 and 15).  Computed as softmax(p · log ReLU(...)) over the attended keys, the same ratio
    r^p / sum r^p without x^p leaving float range (and faster than rescaling by the row maximum); a row
    with nothing above the offset (A exactly uniform, n > 3), 0 / 0 in the formula, keeps LSSA's uniform
    weights."""

    def __init__(self, heads: int, width: int | None = None, p: float = 15.0, offset_rows: int = 3):
        super().__init__(heads, width)
        if not float(p) > 0:
            raise ValueError(f"LSSAR power p must be positive, not {p!r}")
        self.p, self.offset_rows = float(p), int(offset_rows)

    def forward(self, z, mask, n):
        a, total = self.softplus(z, mask, n)  # A ⊙ N = a · (n / total)
        # ReLU(A N - O), its zeros raised to a finite floor (the same weights, no 0 x inf in the gradient)
        r = (a * (n / total) - (n > self.offset_rows).to(a.dtype)).clamp_min(torch.finfo(a.dtype).tiny)
        return (self.p * torch.log(r)).masked_fill(~mask, float("-inf")).softmax(-1)


NORMALISATIONS.update({"lssa": LengthScaledSoftplus, "lssar": LengthScaledSoftplusReweighted})


class PositiveRandomFeatures(nn.Module):
    """Kernelized attention: w_ij = phi(q_i)·phi(k_j) e^{b_{j-i}} / sum_{j' attended} phi(q_i)·phi(k_j') e^{b_{j'-i}},
    phi the positive random features exp(w_r·x - |x|^2 / 2) / sqrt(m), r = 1..m (``kernelized_rpe.prf``),
    whose kernel estimates exp(x·y) (Choromanski et al. 2021; Luo et al. 2021, Eq. 5 and Eq. 10).

    The decoder gives ``log_kernel`` q and k each scaled by (its logit scale)^(1/2), so the kernel estimates
    exp(q·k / sqrt(d_h)), the softmax's (the Performer's d^(-1/4) on both); ``normalise: true`` sets
    ``cosine_logits``: unit-norm q and k, no scale (NPRF, Luo et al.'s Algorithm 1).  ``rpe: true`` adds a
    learnable b per head and offset j - i (from 0, so that b = 0 is the plain kernel), over the offsets
    -(context - 1) ... context - 1; longer offsets (an evaluation beyond the training context) share the
    outermost b.  The projection W (m x d_h, rows N(0, I), Eq. 5) is drawn once, from the global RNG when the
    model is built, and kept as a buffer (never redrawn).

    Computed the simple way, with the n x n matrix: ``log_kernel`` returns log phi(Q) phi(K)^T exactly, each
    row and column shifted by its largest feature exponent, which is added back in log space (a kernel
    value below the float's smallest normal number counts as that number, so no row is 0 / 0); ``forward``
    adds b and takes the softmax over the attended keys, i.e. the rows of phi(Q) phi(K)^T o exp(B) o mask
    divided by their sums."""

    takes_context = True

    def __init__(self, heads: int, width: int | None = None, context: int | None = None, features: int = 32,
                 rpe: bool = False, normalise: bool = False):
        super().__init__()
        if not width or width % heads:
            raise ValueError(f"prf attention needs the model width, a multiple of heads={heads} (got width={width!r})")
        if isinstance(features, bool) or not isinstance(features, int) or features < 1:
            raise ValueError(f"prf attention features must be a positive integer, not {features!r}")
        if not isinstance(rpe, bool) or not isinstance(normalise, bool):
            raise ValueError(f"prf attention rpe and normalise must be true or false, not {rpe!r}, {normalise!r}")
        if rpe and (not isinstance(context, int) or context < 1):
            raise ValueError(f"prf attention with rpe needs the training context, a positive integer (got {context!r})")
        self.cosine_logits = normalise
        self.register_buffer("w", draw_features(features, width // heads, None, torch.get_default_dtype()))
        self.b = nn.Parameter(torch.zeros(heads, 2 * context - 1)) if rpe else None  # b[:, context - 1 + (j - i)]

    def log_kernel(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """log phi(q_i)·phi(k_j) for q [..., T, d], k [..., S, d] -> [..., T, S]."""
        lq = q @ self.w.T - 0.5 * (q * q).sum(-1, keepdim=True)  # log sqrt(m) phi(q), [..., T, m]
        lk = k @ self.w.T - 0.5 * (k * k).sum(-1, keepdim=True)
        a, c = lq.amax(-1, keepdim=True), lk.amax(-1, keepdim=True)
        kern = torch.exp(lq - a) @ torch.exp(lk - c).transpose(-1, -2)  # entries in (0, m]
        tiny = torch.finfo(kern.dtype).tiny
        return torch.log(kern.clamp_min(tiny)) + a + c.transpose(-1, -2) - math.log(self.w.shape[0])

    def offsets(self, t: int, s: int, device=None) -> torch.Tensor:
        """b_{j-i} [H, T, S] for query i (the last t of s positions) and key j, offsets clipped to the table."""
        half = (self.b.shape[-1] - 1) // 2
        i = torch.arange(t, device=device)[:, None] + (s - t)
        j = torch.arange(s, device=device)[None, :]
        return self.b[:, (j - i).clamp(-half, half) + half]

    def forward(self, z, mask, n):
        if self.b is not None:
            z = z + self.offsets(*mask.shape, device=z.device)
        return z.masked_fill(~mask, float("-inf")).softmax(-1)


NORMALISATIONS.update({"prf": PositiveRandomFeatures})
