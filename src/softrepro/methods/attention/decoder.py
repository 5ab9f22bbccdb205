"""A small pre-LN character-level decoder (RoPE, no biases) whose attention normalisation comes from
``normalisations``, and the ``lm`` task that evaluates it at 1x to 16x its training context.

The model keeps measures of its last training batch (max attention logit and head entropy per
layer, the output log-partition function), which the training loop logs (``log_stats``); the
per-head null-attention measures (``head_stats``) are reported once, at the end of training.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from softrepro.methods.attention import normalisations
from softrepro.methods.attention.sigma_reparam import apply as apply_sigma_reparam
from softrepro.registry import MODELS, TASKS


def rope(*xs: torch.Tensor, theta: float) -> tuple[torch.Tensor, ...]:
    """Rotary position embedding of each [..., T, d] tensor of ``xs`` (pairs (i, i + d/2) rotated by
    position x theta^(-2i/d)); the rotation table is computed once for all of them (q and k)."""
    t, d = xs[0].shape[-2], xs[0].shape[-1]
    half = d // 2
    freqs = theta ** (-torch.arange(half, device=xs[0].device, dtype=torch.float32) / half)
    ang = torch.arange(t, device=xs[0].device, dtype=torch.float32)[:, None] * freqs[None]
    cos, sin = ang.cos().to(xs[0].dtype), ang.sin().to(xs[0].dtype)
    return tuple(torch.cat([x[..., :half] * cos - x[..., half:] * sin, x[..., :half] * sin + x[..., half:] * cos], -1)
                 for x in xs)


class Attention(nn.Module):
    """Multi-head self-attention with a pluggable normalisation.

    ``qk_norm``: None; ``"layernorm"`` (LayerNorm of q and k over the head dimension, parameters shared
    across heads, no bias, eps 1e-6, then the usual 1/sqrt(d_h): Wortsman et al. 2023, sec. 3.1.2);
    ``"l2"`` (QKNorm: q and k L2-normalised, logits g·q̂·k̂ with one learnable g per layer from
    g0 = log2(L² - L), L the training context: Henry et al. 2020, CyndxAI/QKNorm ``layers.py``);
    ``"rms"`` (q and k each scaled to root-mean-square sqrt(kappa) over the head dimension,
    g(z) = sqrt(kappa) z / sqrt(mean(z²)), no parameters, then the usual 1/sqrt(d_h): with ``qk_kappa``
    large the attention logits are large from the first step, a transplant of the attention-logit growth
    of high learning rates into a model trained at a low one)."""

    def __init__(self, d: int, heads: int, context: int, attention, qk_norm: str | None, rope_theta: float | None,
                 causal: bool = True, swap_to=None, qk_kappa: float = 1.0):
        super().__init__()
        if d % heads:
            raise ValueError(f"model width {d} is not a multiple of heads {heads}")
        self.heads, self.dh, self.causal, self.rope_theta = heads, d // heads, causal, rope_theta
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.norm = normalisations.make(attention, heads, d, context)
        self.norm_after = normalisations.make(swap_to, heads, d, context) if swap_to is not None else None  # see Decoder's swap
        self.swapped = False
        if qk_norm not in (None, "layernorm", "l2", "rms"):
            raise ValueError(f"qk_norm must be null, 'layernorm', 'l2' or 'rms', not {qk_norm!r}")
        if qk_kappa != 1.0 and qk_norm != "rms":
            raise ValueError(f"qk_kappa ({qk_kappa}) only applies with qk_norm 'rms', not {qk_norm!r}")
        if not qk_kappa > 0:
            raise ValueError(f"qk_kappa must be positive, not {qk_kappa!r}")
        self.qk_norm, self.qk_gain = qk_norm, math.sqrt(qk_kappa)
        if qk_norm == "l2" and any(getattr(m, "cosine_logits", False) for m in (self.norm, self.norm_after)):
            raise ValueError("qk_norm 'l2' (QKNorm's g q̂·k̂) cannot feed a normalisation that takes the cosine of q and k")
        if qk_norm == "layernorm":
            self.q_ln = nn.LayerNorm(self.dh, eps=1e-6, bias=False)
            self.k_ln = nn.LayerNorm(self.dh, eps=1e-6, bias=False)
        if qk_norm == "l2":
            self.g = nn.Parameter(torch.tensor(math.log2(context**2 - context)))
        self.stats: dict | None = None
        self.measure = True  # keep this training batch's measures (the decoder's ``set_measuring``)
        self.keep_entropy = False  # keep every training batch's row entropies, with their gradient (a loss reads them)
        self.row_entropies: torch.Tensor | None = None  # [B, H, T]: the entropy of each query row's weights

    def queries_keys(self, q: torch.Tensor, k: torch.Tensor, cosine: bool = False) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(q', k', scale) with logits = scale · q'·k': q·k / sqrt(d_h); g q̂·k̂ with QKNorm; the cosine
        q̂·k̂ alone for a normalisation that sets ``cosine_logits`` (LSSA, Gao & Spratling 2025, which
        L2-normalises the rows of Q and K first)."""
        if self.qk_norm == "layernorm":
            q, k = self.q_ln(q), self.k_ln(k)
        elif self.qk_norm == "rms":
            q, k = (self.qk_gain * z * torch.rsqrt(z.pow(2).mean(-1, keepdim=True) + 1e-6) for z in (q, k))
        if self.rope_theta:
            q, k = rope(q, k, theta=self.rope_theta)
        if self.qk_norm == "l2":
            return self.g * F.normalize(q, dim=-1), F.normalize(k, dim=-1), 1.0
        if cosine:
            return F.normalize(q, dim=-1), F.normalize(k, dim=-1), 1.0
        return q, k, 1.0 / math.sqrt(self.dh)

    def logits(self, q: torch.Tensor, k: torch.Tensor, cosine: bool = False, kernel=None) -> torch.Tensor:
        q, k, scale = self.queries_keys(q, k, cosine)
        if kernel is not None:  # a kernelized attention: log phi(q)·phi(k), phi's kernel estimating exp(scale q·k)
            root = math.sqrt(scale)
            return kernel(q, k) if scale == 1.0 else kernel(q * root, k * root)
        z = q @ k.transpose(-1, -2)
        return z if scale == 1.0 else z * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, self.dh).permute(2, 0, 3, 1, 4)
        norm = self.norm_after if self.swapped else self.norm
        measure = self.training and self.measure
        keep = self.training and self.keep_entropy  # row entropies with their gradient, for a loss (``keep_entropy``)
        if type(norm) is normalisations.Softmax and not measure and not keep:
            # plain softmax and no measures wanted: PyTorch's fused kernel, the same weights without storing them
            qs, ks, scale = self.queries_keys(q, k)
            o = F.scaled_dot_product_attention(qs, ks, v, is_causal=self.causal, scale=scale)
            return self.proj(o.transpose(1, 2).reshape(b, t, d))
        z = self.logits(q, k, cosine=getattr(norm, "cosine_logits", False), kernel=getattr(norm, "log_kernel", None))
        mask, n = normalisations.attended(t, causal=self.causal, device=x.device)
        w = norm(z, mask, n.to(z.dtype))
        if keep:
            self.row_entropies = normalisations.row_entropy(w, mask)
        if measure:  # measures of this batch, for the step log (no gradient, no sync)
            with torch.no_grad():
                wd = w.detach()
                null = ((wd * mask).sum(-1) == 0).float().mean((0, 2))  # per head: queries attending to nothing
                self.stats = {"logit_max": z.detach().masked_fill(~mask, float("-inf")).amax(),
                              "entropy": (self.row_entropies.detach() if keep else normalisations.row_entropy(wd, mask)
                                          ).mean((0, 2)),  # per head
                              "zero_frac": ((wd == 0) & mask).sum() / (mask.sum() * b * self.heads),  # sparsity
                              "null_rows": null.mean(), "null_heads": null}
        o = (w @ v).transpose(1, 2).reshape(b, t, d)
        if getattr(norm, "output_norm", None) is not None:  # ReLA: the heads' outputs are normalised together
            o = norm.output_norm(o)
        return self.proj(o)


MLP_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "softmax": lambda: nn.Softmax(dim=-1), "identity": nn.Identity}


def feed_forward(d: int, mlp_ratio: int, activation: str = "gelu", norm: str | None = None) -> nn.Sequential:
    """The block's MLP, read as a key-value memory with ``mlp_ratio`` x d slots: h = f(x W1ᵀ) W2, W1 the
    keys [slots, d] and W2ᵀ the values, no biases.  ``activation`` f: ``gelu`` (the default), ``relu``
    (the Transformer FFN), or ``softmax`` over the slots (a key-value memory read-out, Softmax(x Kᵀ) V;
    Shen et al. 2023, "A Study on ReLU and Softmax in Transformer"), or ``identity`` (a linear MLP, no
    nonlinearity).  ``norm: layernorm`` adds a
    LayerNorm (no bias, as the decoder's others) over the d outputs of the read-out, LN(f(x W1ᵀ) W2).
    The modules are numbered 0 (W1), 1 (f), 2 (W2), 3 (the LayerNorm) whatever the options, so the
    default MLP is the same module, with the same parameter names and initial weights, as before."""
    if activation not in MLP_ACTIVATIONS:
        raise ValueError(f"unknown mlp_activation {activation!r} (known: {', '.join(MLP_ACTIVATIONS)})")
    if norm not in (None, "layernorm"):
        raise ValueError(f"mlp_norm must be null or 'layernorm', not {norm!r}")
    layers = [nn.Linear(d, mlp_ratio * d, bias=False), MLP_ACTIVATIONS[activation](), nn.Linear(mlp_ratio * d, d, bias=False)]
    if norm == "layernorm":
        layers.append(nn.LayerNorm(d, bias=False))
    return nn.Sequential(*layers)


class Block(nn.Module):
    def __init__(self, d: int, heads: int, context: int, mlp_ratio: int, attention, qk_norm, rope_theta, layer_norm: bool,
                 causal: bool = True, swap_to=None, qk_kappa: float = 1.0, mlp_activation: str = "gelu",
                 mlp_norm: str | None = None, layer_scale: float | None = None):
        super().__init__()
        self.ln1 = nn.LayerNorm(d, bias=False) if layer_norm else nn.Identity()
        self.ln2 = nn.LayerNorm(d, bias=False) if layer_norm else nn.Identity()
        self.attn = Attention(d, heads, context, attention, qk_norm, rope_theta, causal, swap_to, qk_kappa)
        self.mlp = feed_forward(d, mlp_ratio, mlp_activation, mlp_norm)
        if layer_scale is not None and not layer_scale > 0:
            raise ValueError(f"layer_scale must be a positive initial value, not {layer_scale!r}")
        # LayerScale (Touvron et al. 2021): each residual branch multiplied by a learnable per-channel gain
        # from ``layer_scale`` (apple/ml-sigmoid-attention, layers/normalization.py ``LayerScale``, 1e-4)
        self.ls1 = nn.Parameter(torch.full((d,), float(layer_scale))) if layer_scale else None
        self.ls2 = nn.Parameter(torch.full((d,), float(layer_scale))) if layer_scale else None

    def forward(self, x):
        a = self.attn(self.ln1(x))
        x = x + (a if self.ls1 is None else self.ls1 * a)
        m = self.mlp(self.ln2(x))
        return x + (m if self.ls2 is None else self.ls2 * m)


class Decoder(nn.Module):
    """Character-level decoder: token embedding, ``layers`` pre-LN blocks (RoPE, no biases), a final
    LayerNorm and an untied output layer; weights N(0, ``init_std``) (GPT-2's 0.02), residual
    output projections scaled by 1/sqrt(2 x layers).  ``in_shape`` = (training context,).

    ``swap: {at: f, attention: {...}}`` replaces every layer's normalisation by another one from the
    fraction f of the training steps on, and keeps it for evaluation (Nakanishi 2025's switch from
    Softmax to SSMax during pretraining).

    ``layers: 0`` leaves embedding, final LayerNorm and output layer: each prediction reads the current
    character only (a bigram model).  ``qk_norm: rms`` with ``qk_kappa`` sets the scale of the
    attention logits (``Attention``).

    ``mlp_activation`` (``gelu``, ``relu``, ``softmax`` over the hidden slots, or ``identity``) and ``mlp_norm``
    (``layernorm`` after the MLP's read-out) choose each block's MLP (``feed_forward``); the defaults
    are the GELU MLP without a norm.  ``layer_scale: g0`` multiplies each block's attention and MLP
    outputs by a learnable per-channel gain from g0 before they join the residual stream (LayerScale).

    ``sigma_reparam: true`` reparametrises every linear layer's weight (attention, MLP, output layer;
    not the embedding) as γ W / σ(W) once the weights are initialised, with γ = σ(W_init) (σReparam,
    Zhai et al. 2023; ``sigma_reparam.apply``).

    ``entropy_thresholds: {init: θ0, shared: true|false}`` makes every attention layer keep, on each
    training batch, the entropy of each query row of its weights with their gradient (a softmax layer
    then forms its weights instead of running the fused kernel), and adds learnable per-head thresholds
    θ from θ0 (a fraction of the largest entropy, for a loss to scale), one vector of ``heads`` shared by
    every layer or one per layer; a loss reads both through ``attention_entropies``."""

    def __init__(self, in_shape, n_classes: int, d: int = 64, layers: int = 2, heads: int = 4, mlp_ratio: int = 4,
                 attention: dict | str = "softmax", qk_norm: str | None = None, rope_theta: float = 10000.0,
                 layer_norm: bool = True, init_std: float = 0.02, swap: dict | None = None, sigma_reparam: bool = False,
                 qk_kappa: float = 1.0, mlp_activation: str = "gelu", mlp_norm: str | None = None,
                 entropy_thresholds: dict | None = None, layer_scale: float | None = None):
        super().__init__()
        self.context = int(in_shape[0])
        if swap is not None and (set(swap) != {"at", "attention"} or not 0 < float(swap["at"]) < 1):
            raise ValueError(f"decoder swap must be {{at: a fraction in (0, 1), attention: {{...}}}}, not {swap!r}")
        self.swap_at = None if swap is None else float(swap["at"])
        self.embed = nn.Embedding(n_classes, d)
        self.blocks = nn.ModuleList(Block(d, heads, self.context, mlp_ratio, attention, qk_norm, rope_theta, layer_norm,
                                          swap_to=None if swap is None else swap["attention"], qk_kappa=qk_kappa,
                                          mlp_activation=mlp_activation, mlp_norm=mlp_norm, layer_scale=layer_scale)
                                    for _ in range(layers))
        self.ln_f = nn.LayerNorm(d, bias=False) if layer_norm else nn.Identity()
        self.head = nn.Linear(d, n_classes, bias=False)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = init_std / math.sqrt(2 * layers) if name.endswith(("proj.weight", "mlp.2.weight")) else init_std
                nn.init.normal_(p, 0.0, std)
        if sigma_reparam:
            apply_sigma_reparam(self)
        self._log_z = None
        thresholds = None  # made after the weights' initialisation, which it leaves as it was
        if entropy_thresholds is not None:
            if not isinstance(entropy_thresholds, dict) or not set(entropy_thresholds) <= {"init", "shared"}:
                raise ValueError(f"decoder entropy_thresholds must be {{init: a fraction, shared: true|false}}, "
                                 f"not {entropy_thresholds!r}")
            rows = 1 if entropy_thresholds.get("shared", True) else layers
            thresholds = nn.Parameter(torch.full((rows, heads), float(entropy_thresholds.get("init", 0.5))))
            for block in self.blocks:
                block.attn.keep_entropy = True
        self.register_parameter("entropy_threshold", thresholds)

    def set_progress(self, step: int, steps: int) -> None:
        """Called by the training loop before each step: the swap happens at ``swap.at`` x steps."""
        if self.swap_at is not None:
            for block in self.blocks:
                block.attn.swapped = step >= self.swap_at * steps

    def set_measuring(self, on: bool) -> None:
        """Whether the next training batches keep their measures (``log_stats``).  The training loop
        turns it on only for the batches it logs; without measures a softmax layer runs PyTorch's
        fused attention, which never forms the weights."""
        for block in self.blocks:
            block.attn.measure = bool(on)

    def attention_entropies(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The last training batch's row entropies of every layer ([B, H, T] each, nats, with their
        gradient; the causal mask honoured as in ``normalisations.row_entropy``) and the learnable
        thresholds [1 or layers, H] (``entropy_thresholds``)."""
        if self.entropy_threshold is None:
            raise ValueError("this decoder keeps no attention entropies: give it the option "
                             "entropy_thresholds: {init: ..., shared: ...}")
        entropies = [block.attn.row_entropies for block in self.blocks]
        if any(e is None for e in entropies):
            raise ValueError("no attention entropies yet: they are kept by a forward pass in training mode")
        return entropies, self.entropy_threshold

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        out = self.head(self.ln_f(x))
        if self.training:
            log_z = out.detach().float().logsumexp(-1)
            self._log_z = torch.stack([log_z.mean(), log_z.abs().mean()])
        return out

    def log_stats(self) -> dict:
        """The last training batch's max attention logit and mean head entropy per layer, the lowest
        head entropy of all layers, the fraction of attended weights that are exactly 0 and of queries
        whose weights are all 0 (means over layers), and the mean log Z (and |log Z|) of the outputs."""
        out = {}
        if self._log_z is None:
            return out
        lowest, zeros, nulls = math.inf, 0.0, 0.0
        for i, block in enumerate(self.blocks):
            s = block.attn.stats
            ent = s["entropy"].float().cpu()
            out[f"attn_logit_max_l{i}"] = float(s["logit_max"])
            out[f"attn_entropy_mean_l{i}"] = float(ent.mean())
            lowest = min(lowest, float(ent.min()))
            zeros, nulls = zeros + float(s["zero_frac"]) / len(self.blocks), nulls + float(s["null_rows"]) / len(self.blocks)
        if len(self.blocks):  # no attention measures for a model without attention layers
            out["attn_entropy_min"] = lowest
            out["attn_zero_frac"], out["attn_null_row_frac"] = zeros, nulls
        out["output_log_z"], out["output_abs_log_z"] = (float(v) for v in self._log_z)
        return out

    def head_stats(self) -> dict:
        """Null attention per head in the last training batch (after Zhang, Titov & Sennrich 2021's "null
        attention": a query whose weights are all 0).  For each head of every layer, the fraction of its
        query rows (batch x positions) that are null; ``attn_null_head_max``: the largest such fraction
        among the heads that attend for at least one query (a head that attends to nothing for some
        queries only), 0 if there is none; ``attn_dead_head_frac``: the fraction of heads that attend to
        nothing for every query.  Empty before a training batch."""
        if self._log_z is None:
            return {}
        if not len(self.blocks):  # a model without attention layers (layers: 0, a bigram model)
            return {}
        rates = torch.cat([block.attn.stats["null_heads"].float().cpu() for block in self.blocks])
        active = rates[rates < 1]
        return {"attn_null_head_max": float(active.max()) if len(active) else 0.0,
                "attn_dead_head_frac": float((rates >= 1).float().mean())}


MODELS.register("decoder", forwards_to=Decoder)(Decoder)

MULTIPLES = (1, 2, 4, 8, 16)


@torch.no_grad()
def lm_losses(model: Decoder, x: torch.Tensor, y: torch.Tensor, multiples=MULTIPLES, tokens_per_batch: int = 16384) -> dict:
    """Next-token cross-entropy (nats per character) on the validation stream ``x`` -> ``y`` ([1, N])
    cut into windows of m x the training context, for each m of ``multiples``; the same tokens for
    every m (the first N rounded down to the longest window).  ``test_loss_x{m}``: over all positions;
    ``test_loss_x{m}_beyond``: over the positions past the training context (m > 1)."""
    ctx = model.context
    span = (x.shape[1] // (ctx * max(multiples))) * ctx * max(multiples)
    if span == 0:
        raise ValueError(f"the validation text ({x.shape[1]} tokens) is shorter than {max(multiples)} x the context {ctx}")
    out = {}
    for m in multiples:
        length = m * ctx
        xs, ys = x[0, :span].view(-1, length), y[0, :span].view(-1, length)
        per_pos = torch.zeros(length, dtype=torch.float64, device=x.device)
        step = max(1, tokens_per_batch // length)
        for i in range(0, len(xs), step):
            logits = model(xs[i : i + step])
            per_pos += F.cross_entropy(logits.flatten(0, 1).float(), ys[i : i + step].flatten(), reduction="none"
                                       ).view(-1, length).double().sum(0)
        per_pos /= len(xs)
        out[f"test_loss_x{m}"] = float(per_pos.mean())
        if m > 1:
            out[f"test_loss_x{m}_beyond"] = float(per_pos[ctx:].mean())
    return out


@TASKS.register("lm")
def evaluate_lm(model, loss_fn, x, y, final: bool = False) -> dict:
    """Validation loss at the training context during training; at the end, at 1x to 16x it, whether
    the run diverged (a non-finite loss), and the model's last training-batch measures (``final_``)."""
    out = lm_losses(model, x, y, MULTIPLES if final else (1,))
    out["test_loss"] = out["test_loss_x1"]
    if final:
        out.update(end_of_training(model, out["test_loss"]))
    return out


def answer_counts(logits: torch.Tensor, targets: torch.Tensor, answer: torch.Tensor) -> tuple[int, int, float]:
    """For a batch of sequences scored only where ``answer`` is true (the generated tasks' answer
    positions): (rows whose every answer position has the right argmax, right answer positions, summed
    cross-entropy of the answer positions in nats)."""
    hit = (logits.argmax(-1) == targets) & answer
    exact = int((hit.sum(1) == answer.sum(1)).sum())
    return exact, int(hit.sum()), float(F.cross_entropy(logits[answer].float(), targets[answer], reduction="sum"))


def end_of_training(model, test_loss: float) -> dict:
    """What a task reports once, after training: whether the run diverged (a non-finite test loss) and the
    model's last training-batch measures (``log_stats``, ``head_stats``) as ``final_*``."""
    stats = {**(model.log_stats() if hasattr(model, "log_stats") else {}), **getattr(model, "head_stats", dict)()}
    return {"diverged": float(not math.isfinite(test_loss)), **{f"final_{k}": v for k, v in stats.items()}}


# The report draws, beside the training curves, the loss against the evaluation context and the
# attention measures logged during training.
evaluate_lm.figures = [
    {"kind": "columns", "source": "metrics", "pattern": r"test_loss_x(\d+)", "log_x": True,
     "xlabel": "evaluation context / training context", "ylabel": "validation loss (nats/char)",
     "title": "loss against context length (mean over seeds, t 95 % CI)"},
    {"kind": "curves", "columns": ["attn_logit_max_l0", "attn_entropy_min", "output_log_z", "grad_norm"]},
]
