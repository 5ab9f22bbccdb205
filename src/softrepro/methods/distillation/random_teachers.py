"""Distillation from a random teacher (Sarnthein, Bachmann, Anagnostidis & Hofmann 2023, arXiv:2302.12091).

A teacher f_T = h_T o g_T (encoder g, projection head h) is left at its random initialisation and never
updated; a student of the same architecture, initialised close to it, is trained without labels to match the
teacher's output distribution on the same (unaugmented) input:

    L(theta_S) = sum_i CE(softmax(f_T(x_i) / tau_T), softmax(f_S(x_i) / tau_S))          (paper eq. (1), App. A)

The head is a 2-hidden-layer GELU MLP followed by the L2 bottleneck of App. A / E.1:
y = V~^T (W^T z + b) / ||W^T z + b||_2 with unit-norm columns of V~ (``weight_norm``; the official code's
``Linear.forward`` ignores the normalised weight it is handed, so there the last layer is an unnormalised
linear map: ``weight_norm: false`` computes that).  Head weights are truncated normal (std 0.02), biases 0
(App. E.1).  The student starts at theta_S(alpha) = ((1 - alpha) theta_T + alpha theta~) / delta,
delta = sqrt(alpha^2 + (1 - alpha)^2), theta~ a fresh initialisation (paper §4, "Local Initialization").

The representation is judged by a linear probe on the frozen encoder's embeddings (never the head), as in the
official ``dinopl/probing.py``: features standardised with the probe-training statistics, one linear layer
trained with AdamW (torch defaults) for ``probe_epochs`` epochs of batch ``probe_batch``, accuracy on the test
split.  The same probe is fitted on the flattened inputs (the paper's "input" column).

Inputs: ``data`` (the training images) or ``gaussian``: i.i.d. N(0, sigma^2) noise in the standardised input
space, a fixed set as large as the training set (paper §4, "Data-Dependence": "we replace the inputs x_i ~ p_x
with pure Gaussian noise ... The linear probing, on the other hand, is again performed on the clean data").
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from softrepro.registry import BENCHMARKS, NotRun

DEFAULTS = {
    "encoder_kind": "conv",  # conv (the official models/convnet.py: 3x3 conv, ReLU, 2x2 average pool) or mlp (GELU)
    "encoder": [16, 16, 16],  # widths of the encoder's layers (the official convnet_16_3)
    "hidden": [512, 512],  # head MLP widths (the paper: 2048, 2048)
    "bottleneck": 256,  # l2bot_dim
    "out_dim": 1024,  # the paper: 2^16
    "weight_norm": False,  # unit-norm output weights (App. A) or, as the official code computes, not
    "t_temp": 1.0,
    "s_temp": 1.0,
    "alpha": 0.1,  # student locality
    "lr": 1e-3,
    "weight_decay": 0.0,
    "batch_size": 256,
    "steps": 300,
    "train_subset": None,  # images used for distillation (None: the whole training split)
    "inputs": ["data", "gaussian"],
    "sigma": 1.0,
    "probe_train": 10000,  # probe-training images (the first of a fixed permutation); None: all
    "probe_test": None,  # test images (None: all)
    "probe_epochs": 10,
    "probe_batch": 256,
    "log_every": 25,
}


class Encoder(nn.Sequential):
    """Flatten, then Linear + GELU per width; torch's default (uniform) initialisation, as the official
    ``models/mlp.py`` MLPEnc ``reset_parameters('default')``."""

    def __init__(self, in_dim: int, widths):
        layers, d = [nn.Flatten()], in_dim
        for w in widths:
            layers += [nn.Linear(d, w), nn.GELU()]
            d = w
        super().__init__(*layers)
        self.embed_dim = d


class ConvEncoder(nn.Sequential):
    """The official ``models/convnet.py`` ConvNet without a classifier: per width a 3x3 'same' convolution, ReLU
    and a 2x2 average pool, the last pool adaptive to 2 x 2 (embedding 4 x the last width); conv weights
    Kaiming-normal (fan_out, relu), biases torch's default."""

    def __init__(self, in_dim: int, widths):
        side = int(round(math.sqrt(in_dim)))
        if side * side != in_dim:
            raise ValueError(f"random_teacher: a conv encoder needs square single-channel images (got {in_dim} pixels)")
        layers, c = [nn.Unflatten(1, (1, side, side))], 1
        for i, w in enumerate(widths):
            pool = nn.AdaptiveAvgPool2d((2, 2)) if i == len(widths) - 1 else nn.AvgPool2d(2)
            layers += [nn.Conv2d(c, w, 3, padding="same"), nn.ReLU(), pool]
            c = w
        super().__init__(*layers, nn.Flatten())
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.to(memory_format=torch.channels_last)  # NHWC: about a third faster on a CPU (same model, other rounding)
        self.embed_dim = 4 * c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self[0](x).contiguous(memory_format=torch.channels_last)
        for layer in list(self)[1:]:
            x = layer(x)
        return x


class Head(nn.Module):
    """DINO-style projection head: GELU MLP, linear map to the bottleneck (with bias), L2 feature
    normalisation, and a bias-free output layer whose rows are unit-normalised when ``weight_norm``."""

    def __init__(self, in_dim: int, hidden, bottleneck: int, out_dim: int, weight_norm: bool):
        super().__init__()
        layers, d = [], in_dim
        for w in hidden:
            layers += [nn.Linear(d, w), nn.GELU()]
            d = w
        self.mlp = nn.Sequential(*layers)
        self.lin1 = nn.Linear(d, bottleneck)
        self.lin2 = nn.Linear(bottleneck, out_dim, bias=False)
        self.weight_norm = bool(weight_norm)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)  # torch truncates at +-2 (absolute), as dinopl's init
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        z = l2_bottleneck(self.mlp(e), self.lin1.weight, self.lin1.bias, self.lin2.weight, self.weight_norm)
        return z


def l2_bottleneck(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, v: torch.Tensor, weight_norm: bool) -> torch.Tensor:
    """V~^T (W^T x + b) / ||W^T x + b||_2 (App. A), V~ with unit-norm columns when ``weight_norm``.
    Here weights are stored as torch does (out x in): ``w1`` is W^T, ``v`` is V~^T."""
    z = F.linear(x, w1, b1)
    z = z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    if weight_norm:
        v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return F.linear(z, v)


class Model(nn.Module):
    def __init__(self, in_dim: int, p: dict):
        super().__init__()
        kinds = {"mlp": Encoder, "conv": ConvEncoder}
        if p["encoder_kind"] not in kinds:
            raise ValueError(f"random_teacher: unknown encoder_kind {p['encoder_kind']!r} (mlp, conv)")
        self.enc = kinds[p["encoder_kind"]](in_dim, p["encoder"])
        self.head = Head(self.enc.embed_dim, p["hidden"], p["bottleneck"], p["out_dim"], p["weight_norm"])

    def forward(self, x):
        return self.head(self.enc(x))


def interpolate_init(student: nn.Module, teacher: nn.Module, fresh: nn.Module, alpha: float) -> None:
    """theta_S = ((1 - alpha) theta_T + alpha theta~) / sqrt(alpha^2 + (1 - alpha)^2), parameter by parameter."""
    delta = math.sqrt(alpha**2 + (1 - alpha) ** 2)
    with torch.no_grad():
        for ps, pt, pf in zip(student.parameters(), teacher.parameters(), fresh.parameters()):
            ps.copy_(((1 - alpha) * pt + alpha * pf) / delta)


def distillation_loss(student_out: torch.Tensor, teacher_out: torch.Tensor, t_temp: float, s_temp: float) -> torch.Tensor:
    """Batch mean of CE(softmax(teacher / t_temp), softmax(student / s_temp)) = -sum_k p_k log q_k."""
    p = F.softmax(teacher_out / t_temp, dim=-1)
    return -(p * F.log_softmax(student_out / s_temp, dim=-1)).sum(-1).mean()


@torch.no_grad()
def embed(fn, x: torch.Tensor, batch: int = 2048) -> torch.Tensor:
    return torch.cat([fn(x[i : i + batch]) for i in range(0, len(x), batch)])


def linear_probe(ftr: torch.Tensor, ytr: torch.Tensor, fte: torch.Tensor, yte: torch.Tensor, n_classes: int,
                 epochs: int, batch: int, seed: int) -> float:
    """Test accuracy (a fraction) of a linear classifier on frozen features: standardised with the training features'
    mean and (unbiased) std, a zero-variance feature left unscaled (as dinopl's ``normalize_data``);
    nn.Linear with torch's default init; AdamW with torch's defaults; ``epochs`` shuffled passes."""
    mean = ftr.mean(0)
    std = ftr.std(0)
    std[std < 10 * torch.finfo(std.dtype).eps] = 1.0
    ftr, fte = (ftr - mean) / std, (fte - mean) / std
    g = torch.Generator().manual_seed(seed)
    clf = nn.Linear(ftr.shape[1], n_classes)
    with torch.no_grad():
        bound = 1 / math.sqrt(ftr.shape[1])
        clf.weight.uniform_(-bound, bound, generator=g)
        clf.bias.uniform_(-bound, bound, generator=g)
    opt = torch.optim.AdamW(clf.parameters())
    for _ in range(epochs):
        perm = torch.randperm(len(ftr), generator=g)
        for i in range(0, len(ftr), batch):
            idx = perm[i : i + batch]
            loss = F.cross_entropy(clf(ftr[idx]), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        return (clf(fte).argmax(1) == yte).float().mean().item()


def _standardised(data: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images to flat float32 in [0, 1], then standardised with the training split's pixel mean and std
    (one scalar each, as the official MNIST transform ``Normalize(0.1307, 0.3081)``)."""
    (xtr, ytr), (xte, yte) = data["train"], data["test"]
    xtr = torch.from_numpy(np.asarray(xtr, dtype=np.float32).reshape(len(xtr), -1) / 255.0)
    xte = torch.from_numpy(np.asarray(xte, dtype=np.float32).reshape(len(xte), -1) / 255.0)
    mu, sd = xtr.mean(), xtr.std()
    return (xtr - mu) / sd, torch.from_numpy(np.asarray(ytr, np.int64)), (xte - mu) / sd, torch.from_numpy(np.asarray(yte, np.int64))


def distill(student: Model, teacher: Model, x: torch.Tensor, p: dict, seed: int, log=None) -> list[float]:
    """Train ``student`` on ``x`` against the frozen ``teacher`` for ``steps`` AdamW steps; the loss every ``log_every``."""
    opt = torch.optim.AdamW(student.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
    g = torch.Generator().manual_seed(seed)
    n, b = len(x), int(p["batch_size"])
    perm, pos, losses = torch.randperm(n, generator=g), 0, []
    for step in range(1, int(p["steps"]) + 1):
        if pos + b > n:  # a new epoch; the last incomplete batch of the old one is dropped
            perm, pos = torch.randperm(n, generator=g), 0
        xb = x[perm[pos : pos + b]]
        pos += b
        with torch.no_grad():
            t = teacher(xb)
        loss = distillation_loss(student(xb), t, p["t_temp"], p["s_temp"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % int(p["log_every"]) == 0 or step == int(p["steps"]):
            losses.append(float(loss.detach()))
            if log:
                log(step)
    return losses


@BENCHMARKS.register("random_teacher", params=tuple(DEFAULTS))
def run_benchmark(params: dict, seed: int, progress=None) -> tuple[dict, list[dict]]:
    """Metrics (fractions; the specs' unit ``percent`` shows them x 100): ``probe_input``, ``probe_teacher``, ``probe_student_<inputs>`` per input kind
    (``data``, ``gaussian``), and ``gain_<inputs>`` = student - teacher; ``loss_<inputs>`` the last logged
    distillation loss.  One row per logged step with each student's loss."""
    if "data" not in params:
        raise NotRun("random_teacher reads a dataset: the experiment must declare `dataset:`")
    p = {**DEFAULTS, **{k: v for k, v in params.items() if k in DEFAULTS}}
    torch.set_num_threads(int(params.get("threads", 1)))
    xtr, ytr, xte, yte = _standardised(params["data"])
    n_classes = int(max(ytr.max(), yte.max()) + 1)
    keep = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(0))  # one fixed order for every seed
    x_distill = xtr[keep[: p["train_subset"]]] if p["train_subset"] else xtr
    ptr = keep[: p["probe_train"]] if p["probe_train"] else keep
    x_probe, y_probe = xtr[ptr], ytr[ptr]
    if p["probe_test"]:
        xte, yte = xte[: p["probe_test"]], yte[: p["probe_test"]]

    torch.manual_seed(seed)
    d = xtr.shape[1]
    teacher, fresh = Model(d, p), Model(d, p)  # the teacher's initialisation, then theta~
    teacher.requires_grad_(False).eval()

    def probe(fn, tag: int) -> float:
        return linear_probe(embed(fn, x_probe), y_probe, embed(fn, xte), yte, n_classes,
                            int(p["probe_epochs"]), int(p["probe_batch"]), seed * 1000 + tag)

    metrics = {"probe_input": probe(lambda x: x, 1), "probe_teacher": probe(teacher.enc, 2)}
    rows: dict[int, dict] = {}
    kinds = list(p["inputs"])
    total = len(kinds) * int(p["steps"])
    for k, kind in enumerate(kinds):
        student = Model(d, p)
        interpolate_init(student, teacher, fresh, float(p["alpha"]))
        if kind == "data":
            x = x_distill
        elif kind == "gaussian":
            g = torch.Generator().manual_seed(seed * 7919 + 17)
            x = float(p["sigma"]) * torch.randn(len(x_distill), d, generator=g)
        else:
            raise ValueError(f"random_teacher: unknown inputs {kind!r} (data, gaussian)")
        done = k * int(p["steps"])
        losses = distill(student, teacher, x, p, seed * 100 + k,
                         log=(lambda s: progress(done + s, total)) if progress else None)
        logged = [s for s in range(1, int(p["steps"]) + 1) if s % int(p["log_every"]) == 0 or s == int(p["steps"])]
        for s, v in zip(logged, losses):
            rows.setdefault(s, {"step": s})[f"loss_{kind}"] = v
        student.eval()
        metrics[f"probe_student_{kind}"] = probe(student.enc, 10 + k)
        metrics[f"gain_{kind}"] = metrics[f"probe_student_{kind}"] - metrics["probe_teacher"]
        metrics[f"loss_{kind}"] = losses[-1]
    return metrics, [rows[s] for s in sorted(rows)]


run_benchmark.figure = {"kind": "sweep", "x": "step", "y_prefix": "loss_", "ylabel": "distillation loss (cross-entropy)"}
