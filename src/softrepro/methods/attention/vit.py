"""A small Vision Transformer for 28x28 images whose attention normalisation comes from
``normalisations`` (softmax, or Wortsman et al. 2023's n^-alpha h(q.k / sqrt(d_h)), "relu" there).

The image is cut into non-overlapping ``patch`` x ``patch`` patches (patch 7 -> 16 tokens, patch 4 ->
49 tokens on a 28x28 image), each flattened and mapped by one linear layer to width ``d``; a learned
position embedding is added; ``layers`` pre-LN blocks attend without a mask (every token attends to all
L tokens, so the length n of ``PointwiseOverLength`` is L) and without RoPE; a final LayerNorm, the mean
over the tokens (global average pooling, as in the plain-ViT baselines of Beyer et al. 2022, which the
paper cites; no class token, so L is exactly the number of patches) and a linear head.

The blocks are the shared decoder's ``Block`` with ``causal=False`` and ``rope_theta=None``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from softrepro.methods.attention.decoder import Block
from softrepro.methods.attention.sigma_reparam import apply as apply_sigma_reparam
from softrepro.registry import MODELS


class ViT(nn.Module):
    """``in_shape`` = (channels, height, width) of the images (the engine's [N, C, H, W] batches).
    ``attention``: a normalisation config for ``normalisations.make`` (e.g. ``{name: relu, h: relu,
    alpha: 1}``); ``qk_norm``: None or ``"layernorm"`` (LayerNorm on queries and keys).  Weights N(0,
    ``init_std``), the position embedding too.  ``layer_norm: false`` removes every LayerNorm (the blocks'
    and the final one); ``sigma_reparam: true`` reparametrises every linear layer as γ W / σ(W) after the
    initialisation (``sigma_reparam.apply``, as the decoder's option)."""

    def __init__(self, in_shape=(1, 28, 28), n_classes: int = 10, patch: int = 7, d: int = 64, layers: int = 2,
                 heads: int = 4, mlp_ratio: int = 4, attention: dict | str = "softmax", qk_norm: str | None = None,
                 init_std: float = 0.02, layer_norm: bool = True, sigma_reparam: bool = False):
        super().__init__()
        if len(in_shape) == 2:
            in_shape = (1, *in_shape)
        if len(in_shape) != 3:
            raise ValueError(f"the ViT takes images [C, H, W], not inputs of shape {tuple(in_shape)}")
        c, h, w = (int(s) for s in in_shape)
        if h % patch or w % patch:
            raise ValueError(f"patch {patch} does not divide the {h}x{w} image")
        self.patch, self.grid = int(patch), (h // patch, w // patch)
        self.tokens = self.grid[0] * self.grid[1]
        self.embed = nn.Linear(c * patch * patch, d)
        self.pos = nn.Parameter(torch.zeros(1, self.tokens, d))
        self.blocks = nn.ModuleList(Block(d, heads, self.tokens, mlp_ratio, attention, qk_norm, None, layer_norm, causal=False)
                                    for _ in range(layers))
        for block in self.blocks:
            block.attn.measure = False  # no per-batch attention measures: this model logs none
        self.ln_f = nn.LayerNorm(d) if layer_norm else nn.Identity()
        self.head = nn.Linear(d, n_classes)
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = init_std / math.sqrt(2 * layers) if name.endswith(("proj.weight", "mlp.2.weight")) else init_std
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias") and "ln" not in name:
                nn.init.zeros_(p)
        if sigma_reparam:
            apply_sigma_reparam(self)

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, L, C p p], patches in row-major order."""
        b, c = x.shape[:2]
        p, (gh, gw) = self.patch, self.grid
        x = x.reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, gh * gw, c * p * p)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The final per-token representations [B, L, d] (after the last LayerNorm)."""
        if x.dim() == 3:
            x = x[:, None]
        t = self.embed(self.patches(x)) + self.pos
        for block in self.blocks:
            t = block(t)
        return self.ln_f(t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(1))


MODELS.register("vit", forwards_to=ViT)(ViT)
