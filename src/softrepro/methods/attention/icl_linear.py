"""In-context linear regression with one layer of multi-head attention (He, Pan, Chen, Yang, ICML 2025,
arXiv 2503.12734; official code XintianPan/ICL_linear: ``icl_linear.ipynb``, ``src/models.py``,
``utils/data_utils.py``).

Task (``LinearReg`` in the official ``utils/data_utils.py``).  Each task draws beta ~ N(0, I_d / d), context
inputs x_1..x_L and a query x_q ~ N(0, I_d), and targets y = beta^T x + eps with eps ~ N(0, noise_var); the
query target y_q carries the same noise.  Tokens are the rows z_i = [x_i; y_i] (width d + 1) and the query
token is z_q = [x_q; 0].  Every training step draws a fresh batch of tasks (``sample_batch``: the same
distribution from one ``randn`` call).

Model (``MultiHeadAttention`` of ``src/models.py`` with one layer, as the notebook builds it).  Each head h
has its own Q_h, K_h, V_h of shape (d+1) x (d+1) (every head has the full width d + 1; no splitting) and an
output row O_h of width d + 1; no biases; PyTorch's default ``nn.Linear`` initialisation:

    TF(Z, z_q) = sum_h O_h V_h Z^T a_h,   a_h = softmax(Z K_h^T Q_h z_q / sqrt(d + 1))

The query is projected to a query vector only; keys and values come from the L context tokens alone, so
the query never attends to itself.  Loss: mean squared error against y_q, Adam with default betas.

Linear attention (``attention: linear``).  The official repository has no linear-attention model (its
``src/models.py`` and notebooks contain softmax attention only), so this benchmark uses the standard
linear-attention form of the in-context-regression literature (e.g. Zhang, Frei & Bartlett 2023): the same
model with the softmax replaced by division by the number of context tokens,

    a_h = Z K_h^T Q_h z_q / (sqrt(d + 1) * n),

n the context length the model is given (so the same weights can be read at any length).  Because
training uses a single length L, the weights of this model are identical to those of a linear attention
scaled by the constant 1 / L; the benchmark therefore also evaluates the trained linear model with the
training normalisation kept fixed (``*_fixed_norm`` metrics, a = scores / (sqrt(d+1) L) at every test
length), which is how an unnormalised linear attention behaves at lengths it was not trained on.

Validation.  The notebook's printed "Validation Loss" is the MSE on one fresh batch of 256 tasks (noisy
target).  Here the validation set is ``eval_tasks`` tasks drawn once from a generator seeded with
``eval_seed`` (not with the run's seed), so every experiment and every seed is measured on the same tasks;
for the longer ``eval_lengths`` the same tasks (same beta, query and query noise) are given more context
examples (the first n of one long draw), so the lengths are compared task by task.

References on the same validation tasks (noisy target):

* ``bayes_mse_L{n}``: the posterior mean, ridge regression with the prior's penalty.  beta ~ N(0, I/d) and
  noise variance s2 give the posterior mean (X^T X + s2 d I)^-1 X^T y, so lambda = noise_var * d.
* ``gd_mse_L{n}``: one step of gradient descent from zero, eta x_q^T X^T y / n, with eta the minimiser of
  the MSE on the validation tasks themselves (a 1-D least-squares fit, ``gd_eta_L{n}``); with 10,000
  tasks its optimism is negligible.  ``gd_mse_L{n}_theory`` is the closed form for Gaussian x with
  E|beta|^2 = 1: the best eta is n / (n + d + 1 + s2 d) and the MSE 1 + s2 - n / (n + d + 1 + s2 d).
* ``dgd_mse_L{n}``: the debiased one-step GD predictor eta x_q^T sum_i (x_i - xbar) y_i / n (the repo's
  ``TFEst.DGDEst``), eta fitted the same way.

Weight structure (final weights; the repo's ``extract_qk`` / ``extract_ov``).  KQ_h = Q_h^T K_h, so the
score of token z_i is z_q^T KQ_h z_i; its top-left d x d block acts on x_q and x_i.  OV_h = V_h^T O_h^T is
the vector u_h with head output u_h^T (Z^T a_h); its last entry is the weight on y.

* ``kq_diag_cv``: std / |mean| of the diagonal of each head's d x d KQ block (0: a homogeneous diagonal);
  ``kq_offdiag_ratio``: mean |off-diagonal| / mean |diagonal| of that block (0: diagonal).  Both are
  averaged over heads with weights |u_h[-1]| / sum_h |u_h[-1]|: a head whose output is zero (a "dummy"
  head) receives no gradient on its KQ, which stays random, and says nothing about the pattern.
* ``ov_last_frac``: sum_h |u_h[-1]| / sum_h ||u_h||_1 (1: only the last entry is used);
  ``ov_zero_sum``: |sum_h u_h[-1]| / sum_h |u_h[-1]| (0: the last entries sum to zero; 1 for one head).
* per head: ``kq_diag_mean_h{h}`` (signed mean of the diagonal) and ``ov_last_h{h}``.

Rows: one per evaluation (every ``eval_every`` steps, at step 0 and at the end): ``step``, ``train_mse``
(mean training loss since the previous row), ``val_mse_L{L}`` on the validation tasks at the training
length, and the four structure measures.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from softrepro.registry import BENCHMARKS

PARAMS = ("d", "L", "noise_var", "heads", "steps", "batch", "lr", "attention", "eval_lengths", "eval_tasks",
          "eval_every", "eval_seed")
DEFAULTS = {"d": 5, "L": 40, "noise_var": 0.1, "heads": 4, "steps": 50_000, "batch": 256, "lr": 1e-3,
            "attention": "softmax", "eval_lengths": [40, 80, 160], "eval_tasks": 10_000, "eval_every": 1000,
            "eval_seed": 2503}
EVAL_CHUNK = 2048  # validation tasks per forward pass
STRUCTURE = ("kq_diag_cv", "kq_offdiag_ratio", "ov_last_frac", "ov_zero_sum")  # logged in every row


def sample_tasks(n_tasks: int, L: int, d: int, noise_var: float, gen: torch.Generator,
                 dtype=torch.float32) -> dict[str, torch.Tensor]:
    """``n_tasks`` regression tasks with ``L`` context examples each (the official ``LinearReg``):
    x (n, L, d), y (n, L), xq (n, d), yq (n,) noisy, yq_clean (n,) = beta^T x_q, beta (n, d)."""
    x = torch.randn(n_tasks, L, d, generator=gen, dtype=dtype)
    xq = torch.randn(n_tasks, d, generator=gen, dtype=dtype)
    beta = torch.randn(n_tasks, d, generator=gen, dtype=dtype) / math.sqrt(d)
    sd = math.sqrt(noise_var)
    y = torch.einsum("nld,nd->nl", x, beta) + sd * torch.randn(n_tasks, L, generator=gen, dtype=dtype)
    yq_clean = (xq * beta).sum(-1)
    yq = yq_clean + sd * torch.randn(n_tasks, generator=gen, dtype=dtype)
    return {"x": x, "y": y, "xq": xq, "yq": yq, "yq_clean": yq_clean, "beta": beta}


def sample_batch(n_tasks: int, L: int, d: int, noise_var: float, gen: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A training batch of the same distribution as ``sample_tasks``, drawn with one ``randn`` call and
    returned as tokens: (z_q (n, 1, d+1), Z (n, L, d+1), y_q (n,) noisy).  About three times faster than
    ``sample_tasks`` followed by ``tokens``, which matters at 50,000 steps of a model this small."""
    r = torch.randn(n_tasks, L * d + 2 * d + L + 1, generator=gen)
    x = r[:, : L * d].view(n_tasks, L, d)
    xq, beta = r[:, L * d : L * d + d], r[:, L * d + d : L * d + 2 * d] / math.sqrt(d)
    eps = r[:, L * d + 2 * d :] * math.sqrt(noise_var)
    z = torch.empty(n_tasks, L, d + 1)
    z[..., :d] = x
    z[..., d] = torch.bmm(x, beta.unsqueeze(-1)).squeeze(-1) + eps[:, :L]
    zq = F.pad(xq, (0, 1)).unsqueeze(1)
    return zq, z, (xq * beta).sum(-1) + eps[:, L]


def tokens(x: torch.Tensor, y: torch.Tensor, xq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(z_q (n, 1, d+1) = [x_q; 0], Z (n, L, d+1) = rows [x_i; y_i])."""
    z = torch.cat([x, y.unsqueeze(-1)], -1)
    zq = torch.cat([xq, torch.zeros_like(xq[:, :1])], -1).unsqueeze(1)
    return zq, z


class ICLAttention(nn.Module):
    """One layer of multi-head attention read at the query token (the official ``MultiHeadAttention``).

    ``q``, ``k``, ``v``: (d+1) -> H (d+1), head h in rows h(d+1) .. (h+1)(d+1) - 1; ``o``: H (d+1) -> 1."""

    def __init__(self, d: int, heads: int, attention: str = "softmax", gen: torch.Generator | None = None):
        super().__init__()
        if attention not in ("softmax", "linear"):
            raise ValueError(f"attention must be 'softmax' or 'linear', not {attention!r}")
        self.d, self.heads, self.attention, self.e = d, heads, attention, d + 1
        e = self.e
        self.q = nn.Linear(e, e * heads, bias=False)
        self.k = nn.Linear(e, e * heads, bias=False)
        self.v = nn.Linear(e, e * heads, bias=False)
        self.o = nn.Linear(e * heads, 1, bias=False)
        with torch.no_grad():  # nn.Linear's default init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), from ``gen``
            for lin in (self.q, self.k, self.v, self.o):
                bound = 1.0 / math.sqrt(lin.in_features)
                lin.weight.copy_((torch.rand(lin.weight.shape, generator=gen) * 2 - 1) * bound)

    def scores(self, zq: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Scaled scores (B, H, n) of the query against the n context tokens, z_i^T K_h^T Q_h z_q / sqrt(d+1).

        Computed as z_i^T w_h with w_h = K_h^T (Q_h z_q): the same numbers as projecting every token to a
        key, with one small matrix product per head instead of one per token (several times faster)."""
        b, e, h = z.shape[0], self.e, self.heads
        q = F.linear(zq.reshape(b, e), self.q.weight).view(b, h, e)  # Q_h z_q
        w = torch.einsum("bhi,hij->bhj", q, self.k.weight.view(h, e, e))  # (K_h^T Q_h z_q)^T
        return torch.bmm(w, z.transpose(1, 2)) * e ** -0.5

    def weights(self, zq: torch.Tensor, z: torch.Tensor, norm_length: int | None = None) -> torch.Tensor:
        """Attention weights (B, H, n) of the query over the context: softmax, or scores / length
        (``norm_length`` or the context length n) for linear attention."""
        s = self.scores(zq, z)
        return torch.softmax(s, -1) if self.attention == "softmax" else s / (norm_length or z.shape[1])

    def forward(self, zq: torch.Tensor, z: torch.Tensor, norm_length: int | None = None) -> torch.Tensor:
        """The prediction for y_q, shape (B,): sum_h O_h V_h (Z^T a_h) = sum_h u_h . (Z^T a_h), u_h = V_h^T O_h."""
        e, h = self.e, self.heads
        zbar = torch.bmm(self.weights(zq, z, norm_length), z)  # (B, H, e): each head's attention-weighted token
        u = torch.einsum("hi,hij->hj", self.o.weight.view(h, e), self.v.weight.view(h, e, e))  # OV_h = V_h^T O_h
        return (zbar * u).sum((1, 2))

    def kq_ov(self) -> tuple[np.ndarray, np.ndarray]:
        """(KQ (H, d+1, d+1) with score z_q^T KQ_h z_i, OV (H, d+1) with head output OV_h^T Z^T a_h)."""
        e, h = self.e, self.heads
        wq = self.q.weight.detach().double().view(h, e, e)
        wk = self.k.weight.detach().double().view(h, e, e)
        wv = self.v.weight.detach().double().view(h, e, e)
        wo = self.o.weight.detach().double().view(h, e)
        kq = wq.transpose(1, 2) @ wk
        ov = torch.einsum("hij,hi->hj", wv, wo)
        return kq.numpy(), ov.numpy()


def weight_structure(model: ICLAttention) -> dict[str, float]:
    """The KQ and OV pattern measures of the module docstring."""
    kq, ov = model.kq_ov()
    d = model.d
    block = kq[:, :d, :d]
    diag = np.diagonal(block, axis1=1, axis2=2)  # (H, d)
    off = np.abs(block[:, ~np.eye(d, dtype=bool)])  # (H, d(d-1))
    cv = diag.std(1) / np.maximum(np.abs(diag.mean(1)), 1e-30)
    offr = off.mean(1) / np.maximum(np.abs(diag).mean(1), 1e-30)
    last = ov[:, -1]
    w = np.abs(last) / max(np.abs(last).sum(), 1e-30)
    out = {"kq_diag_cv": float((w * cv).sum()), "kq_offdiag_ratio": float((w * offr).sum()),
           "ov_last_frac": float(np.abs(last).sum() / max(np.abs(ov).sum(), 1e-30)),
           "ov_zero_sum": float(abs(last.sum()) / max(np.abs(last).sum(), 1e-30))}
    for h in range(model.heads):
        out[f"kq_diag_mean_h{h}"] = float(diag[h].mean())
        out[f"ov_last_h{h}"] = float(last[h])
    return out


# ----------------------------------------------------------------------------- references

def bayes_predictions(x: torch.Tensor, y: torch.Tensor, xq: torch.Tensor, noise_var: float) -> torch.Tensor:
    """Posterior mean x_q^T (X^T X + noise_var d I)^-1 X^T y under beta ~ N(0, I/d) (float64)."""
    x, y, xq = x.double(), y.double(), xq.double()
    d = x.shape[-1]
    a = x.transpose(1, 2) @ x + noise_var * d * torch.eye(d, dtype=x.dtype)
    beta = torch.linalg.solve(a, (x.transpose(1, 2) @ y.unsqueeze(-1))).squeeze(-1)
    return (xq * beta).sum(-1)


def gd_direction(x: torch.Tensor, y: torch.Tensor, xq: torch.Tensor, debiased: bool = False) -> torch.Tensor:
    """x_q^T X^T y / n (one GD step from zero with unit step), or with x_i - xbar (debiased), float64."""
    x, y, xq = x.double(), y.double(), xq.double()
    if debiased:
        x = x - x.mean(1, keepdim=True)
    return torch.einsum("nld,nd,nl->n", x, xq, y) / x.shape[1]


def best_step(direction: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """(eta, MSE) of the best predictor eta * direction for ``target``: a 1-D least-squares fit."""
    target = target.double()
    eta = float((direction * target).sum() / (direction * direction).sum())
    return eta, float(((eta * direction - target) ** 2).mean())


def gd_mse_theory(n: int, d: int, noise_var: float) -> tuple[float, float]:
    """(best eta, expected MSE) of one-step GD for x ~ N(0, I_d), beta ~ N(0, I/d), noisy target:
    E(eta s - beta)^2 = eta^2 (n + d + 1 + s2 d) / n - 2 eta + 1, so eta* = n / (n + d + 1 + s2 d)."""
    eta = n / (n + d + 1 + noise_var * d)
    return eta, 1.0 + noise_var - eta


# ----------------------------------------------------------------------------- the benchmark

def _params(params: dict) -> dict:
    unknown = sorted(set(params) - set(PARAMS) - {"threads"})
    if unknown:
        raise ValueError(f"icl_linear: unknown parameter(s) {', '.join(map(repr, unknown))} "
                         f"(it takes: {', '.join(PARAMS)})")
    p = {**DEFAULTS, **{k: v for k, v in params.items() if k != "threads"}}
    if p["attention"] not in ("softmax", "linear"):
        raise ValueError(f"icl_linear: attention must be 'softmax' or 'linear', not {p['attention']!r}")
    for key in ("d", "L", "heads", "steps", "batch", "eval_tasks", "eval_every"):
        if int(p[key]) != p[key] or p[key] < 1:
            raise ValueError(f"icl_linear: {key} must be a positive integer, not {p[key]!r}")
    return p


@torch.no_grad()
def _predict(model: ICLAttention, tasks: dict, n: int, norm_length: int | None = None) -> torch.Tensor:
    out = []
    for i in range(0, len(tasks["yq"]), EVAL_CHUNK):
        sl = slice(i, i + EVAL_CHUNK)
        zq, z = tokens(tasks["x"][sl, :n], tasks["y"][sl, :n], tasks["xq"][sl])
        out.append(model(zq, z, norm_length))
    return torch.cat(out)


def _mse(pred: torch.Tensor, target: torch.Tensor) -> float:
    return float(((pred.double() - target.double()) ** 2).mean())


@BENCHMARKS.register("icl_linear", params=PARAMS)
def run_benchmark(params: dict, seed: int, progress=None) -> tuple[dict, list[dict]]:
    """Train on fresh tasks every step (seeded by ``seed``), evaluate on the fixed validation tasks."""
    p = _params(params)
    torch.set_num_threads(int(params.get("threads", 1)))
    d, L, s2, steps = int(p["d"]), int(p["L"]), float(p["noise_var"]), int(p["steps"])
    lengths = sorted({int(n) for n in p["eval_lengths"]} | {L})

    val = sample_tasks(int(p["eval_tasks"]), max(lengths), d, s2, torch.Generator().manual_seed(int(p["eval_seed"])))
    gen = torch.Generator().manual_seed(int(seed))
    model = ICLAttention(d, int(p["heads"]), p["attention"], gen)
    opt = torch.optim.Adam(model.parameters(), lr=float(p["lr"]), fused=True)  # the same update, fewer ops

    rows: list[dict] = []
    loss_sum, loss_count = torch.zeros(()), 0

    def record(step: int) -> None:
        nonlocal loss_sum, loss_count
        rows.append({"step": step, "train_mse": float(loss_sum / loss_count) if loss_count else float("nan"),
                     f"val_mse_L{L}": _mse(_predict(model, val, L), val["yq"]),
                     **{k: v for k, v in weight_structure(model).items() if k in STRUCTURE}})
        loss_sum, loss_count = torch.zeros(()), 0
        if progress:
            progress(step, steps)

    record(0)
    for step in range(1, steps + 1):
        zq, z, yq = sample_batch(int(p["batch"]), L, d, s2, gen)
        loss = F.mse_loss(model(zq, z), yq)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += loss.detach()
        loss_count += 1
        if step % int(p["eval_every"]) == 0 or step == steps:
            record(step)

    metrics: dict[str, float] = {"train_mse": rows[-1]["train_mse"]}
    for n in lengths:
        pred = _predict(model, val, n)
        err2 = (pred.double() - val["yq"].double()) ** 2
        metrics[f"val_mse_L{n}"] = float(err2.mean())
        metrics[f"val_mse_L{n}_noiseless"] = _mse(pred, val["yq_clean"])
        metrics[f"val_se256_L{n}"] = float(err2.std() / math.sqrt(256))  # s.d. of a notebook-style 256-task batch
        if p["attention"] == "linear":
            metrics[f"val_mse_L{n}_fixed_norm"] = _mse(_predict(model, val, n, norm_length=L), val["yq"])
        x, y, xq = val["x"][:, :n], val["y"][:, :n], val["xq"]
        metrics[f"bayes_mse_L{n}"] = _mse(bayes_predictions(x, y, xq, s2), val["yq"])
        metrics[f"gd_eta_L{n}"], metrics[f"gd_mse_L{n}"] = best_step(gd_direction(x, y, xq), val["yq"])
        metrics[f"gd_mse_L{n}_theory"] = gd_mse_theory(n, d, s2)[1]
        metrics[f"dgd_eta_L{n}"], metrics[f"dgd_mse_L{n}"] = best_step(gd_direction(x, y, xq, debiased=True), val["yq"])
        metrics[f"val_over_bayes_L{n}"] = metrics[f"val_mse_L{n}"] / metrics[f"bayes_mse_L{n}"]
    for n in lengths:  # length generalisation: the error at n relative to the training length
        metrics[f"val_ratio_L{n}"] = metrics[f"val_mse_L{n}"] / metrics[f"val_mse_L{L}"]
        if p["attention"] == "linear":
            metrics[f"val_ratio_L{n}_fixed_norm"] = metrics[f"val_mse_L{n}_fixed_norm"] / metrics[f"val_mse_L{L}"]
    metrics.update(weight_structure(model))
    return metrics, rows


# The report draws the validation MSE at the training length against the training step.
run_benchmark.figure = {"kind": "sweep", "x": "step", "y_prefix": "val_mse_", "ylabel": "validation MSE (noisy target)"}
