"""LELP, Learning Embedding Linear Projections (Loo, Iliopoulos, Hu & Vee 2024, arXiv:2409.20449): few-class
distillation through pseudo-subclasses cut from the teacher's final embeddings.

No official code was found, and the paper's §3 was not reached in a primary source: the construction below
follows third-party summaries of it (docs/sources/distillation-random-teachers-lelp.md), with every step that
they leave open filled in by us and marked so.

Given the teacher's final embeddings h(x) in R^d, its readout weights W in R^{C x d} and its class
probabilities p_T(c | x):

1. (``null_space``) remove what the logits already carry: h <- (I - W^T (W W^T)^+ W) h, the projection onto
   the null space of W (summaries: "projected onto the zero-space of the teacher's classification weights");
2. per class c, PCA of the embeddings of the training examples labelled c: the class mean mu_c and the top-S
   principal directions V_c in R^{d x S} (ours: each direction's sign is fixed so that its largest
   component is positive);
3. (``rotate``) a random rotation U_c = V_c Q_c, Q_c a Haar-random S x S orthogonal matrix, "to equalise the
   variance" across the S directions (summaries);
4. pseudo-subclass coordinates z_c(x) = U_c^T (h(x) - mu_c), for every example and every class (ours:
   divided by sigma_c, the root-mean-square of z_c over class c's examples, so that beta is scale-free), and
   within-class probabilities q(s | c, x) = softmax_s(z_c(x) / (beta sigma_c)) ("a tempered softmax over the
   PCA coordinates", beta the "subclass temperature");
5. the target over the C x S pseudo-subclasses: p(c, s | x) = p_T(c | x) q(s | c, x) (ours: how the class
   and subclass factors combine is not in the summaries read).

The student has C x S outputs and is trained with the cross-entropy against p(., . | x) alone (the paper's
alpha = 0: "we always set alpha = 0 in equation 1", as quoted in a summary); it predicts the class whose S
pseudo-subclass probabilities sum highest.

The benchmark trains, on one few-class task cut from a 10-class image dataset (``groups``: the original
labels merged into each class), a small CNN teacher (the registry's ``convnet``), then three students of one
MLP architecture for the same steps: ``ce`` (the labels), ``kd`` (Hinton et al.'s soft targets alone at
temperature T, alpha = 0 as in the paper's protocol) and ``lelp``.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from softrepro.registry import BENCHMARKS, MODELS, NotRun

DEFAULTS = {
    "groups": [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]],  # original labels per class of the few-class task
    "train_subset": 20000,  # the teacher's training images (one fixed subset for every seed); None: all
    "student_subset": None,  # the students' (transfer) images: the first of the teacher's; None: all of them
    "test_subset": None,
    "teacher": {"channels": [8, 16], "kernel": 5, "hidden": 128, "channels_last": True},
    "teacher_steps": 800,
    "student_hidden": [256, 256],
    "student_steps": 400,
    "students": ["ce", "kd", "lelp"],
    "batch_size": 128,
    "lr": 1e-3,
    "kd_temperature": 4.0,
    "subclasses": 5,  # S
    "beta": 1.0,
    "null_space": True,
    "rotate": True,
}


def null_space_projection(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """h (I - W^+ W): each row of ``h`` without its component in the row space of ``w`` (C x d)."""
    return h - (h @ torch.linalg.pinv(w)) @ w


def haar_orthogonal(n: int, generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """A Haar-random n x n orthogonal matrix: QR of a Gaussian matrix with R's diagonal signs moved into Q."""
    a = torch.randn(n, n, generator=generator, dtype=dtype)
    q, r = torch.linalg.qr(a)
    return q * torch.sign(torch.diagonal(r)).unsqueeze(0)


def class_directions(h: torch.Tensor, labels: torch.Tensor, n_classes: int, S: int, rotate: bool,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu of shape (C, d), U of shape (C, d, S)): per class the mean and the top-S principal directions of
    its rows of ``h`` (signs fixed: each direction's largest-magnitude component positive), times a Haar
    rotation when ``rotate``."""
    d = h.shape[1]
    if S > d:
        raise ValueError(f"lelp: {S} subclasses need embeddings of at least {S} dimensions (got {d})")
    mus, us = [], []
    for c in range(n_classes):
        hc = h[labels == c]
        if len(hc) < 2:
            raise ValueError(f"lelp: class {c} has {len(hc)} training examples")
        mu = hc.mean(0)
        _, _, vh = torch.linalg.svd(hc - mu, full_matrices=False)
        v = vh[:S].T.clone()  # d x S, by decreasing variance
        idx = v.abs().argmax(0)
        v = v * torch.sign(v[idx, torch.arange(S)]).unsqueeze(0)
        if rotate:
            v = v @ haar_orthogonal(S, generator, v.dtype)
        mus.append(mu)
        us.append(v)
    return torch.stack(mus), torch.stack(us)


def lelp_targets(h: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, w: torch.Tensor, S: int,
                 beta: float, null_space: bool = True, rotate: bool = True, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
    """The (N, C * S) pseudo-subclass targets p(c, s | x) = p_T(c | x) softmax_s(z_c(x) / (beta sigma_c)),
    column c * S + s; computed in float64."""
    h, w = h.double(), w.double()
    n_classes = teacher_logits.shape[1]
    if null_space:
        h = null_space_projection(h, w)
    mu, u = class_directions(h, labels, n_classes, S, rotate, generator or torch.Generator().manual_seed(0))
    z = torch.einsum("nd,cds->ncs", h, u) - torch.einsum("cd,cds->cs", mu, u).unsqueeze(0)  # (N, C, S)
    sigma = torch.stack([z[labels == c, c].pow(2).mean().sqrt() for c in range(n_classes)]).clamp_min(1e-12)
    q = torch.softmax(z / (beta * sigma.view(1, -1, 1)), dim=-1)
    p = torch.softmax(teacher_logits.double(), dim=-1)
    return (p.unsqueeze(-1) * q).reshape(len(h), n_classes * S)


def subclass_predictions(logits: torch.Tensor, n_classes: int) -> torch.Tensor:
    """The class whose pseudo-subclass probabilities sum highest (logits of shape (N, C * S))."""
    return torch.softmax(logits, -1).reshape(len(logits), n_classes, -1).sum(-1).argmax(-1)


def kd_soft_loss(z: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 KL(softmax(teacher / T) || softmax(z / T)), batch mean (Hinton et al.'s soft term, alpha = 0)."""
    t = float(temperature)
    return t * t * F.kl_div(F.log_softmax(z / t, 1), F.log_softmax(teacher / t, 1), log_target=True, reduction="batchmean")


def soft_ce(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Batch mean of -sum_k target_k log softmax(z)_k."""
    return -(target * F.log_softmax(z, -1)).sum(-1).mean()


def binary_task(data: dict, groups, train_subset, test_subset):
    """Images in [0, 1] as (N, 1, H, W) float32 and the few-class labels (the index of the group holding each
    original label); images whose label is in no group are dropped."""
    lookup = np.full(256, -1, dtype=np.int64)
    for c, members in enumerate(groups):
        lookup[np.asarray(members, dtype=np.int64)] = c
    out = []
    for split, cut in (("train", train_subset), ("test", test_subset)):
        x, y = data[split]
        y = lookup[np.asarray(y, dtype=np.int64)]
        keep = np.flatnonzero(y >= 0)
        if split == "train":
            keep = keep[np.random.default_rng(0).permutation(len(keep))]  # one fixed subset for every seed
        if cut:
            keep = keep[: int(cut)]
        xs = torch.from_numpy(np.asarray(x[keep], dtype=np.float32) / 255.0)
        out += [xs.reshape(len(xs), 1, *xs.shape[1:]) if xs.ndim == 3 else xs, torch.from_numpy(y[keep])]
    return out


def train(model, x, loss_fn, steps: int, batch: int, lr: float, seed: int):
    """Adam (lr, cosine decay to 0 over ``steps``) on batches from per-epoch permutations of ``x``;
    ``loss_fn(outputs, index)`` gets the batch's indices into ``x``."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    g = torch.Generator().manual_seed(seed)
    perm, pos = torch.randperm(len(x), generator=g), 0
    model.train()
    for _ in range(int(steps)):
        if pos + batch > len(x):
            perm, pos = torch.randperm(len(x), generator=g), 0
        idx = perm[pos : pos + batch]
        pos += batch
        loss = loss_fn(model(x[idx]), idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    return float(loss.detach())


@torch.no_grad()
def outputs(model, x, batch: int = 2000) -> torch.Tensor:
    return torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])


@BENCHMARKS.register("lelp_few_class", params=tuple(DEFAULTS))
def run_benchmark(params: dict, seed: int, progress=None) -> tuple[dict, list[dict]]:
    """Metrics (fractions; the spec's unit ``percent`` shows them x 100): ``test_accuracy_<arm>`` for the
    teacher and each student, ``test_error_<arm>``,
    ``lelp_target_entropy`` (mean entropy in nats of the within-class pseudo-subclass distribution, log S at
    most) and ``lelp_subclass_purity`` (how well the argmax pseudo-subclass of the training images matches their
    original labels: the share in the majority original label of their pseudo-subclass).  No step rows."""
    if "data" not in params:
        raise NotRun("lelp_few_class reads a dataset: the experiment must declare `dataset:`")
    p = {**DEFAULTS, **{k: v for k, v in params.items() if k in DEFAULTS}}
    torch.set_num_threads(int(params.get("threads", 1)))
    xtr, ytr, xte, yte = binary_task(params["data"], p["groups"], p["train_subset"], p["test_subset"])
    C, S = len(p["groups"]), int(p["subclasses"])
    in_shape = tuple(xtr.shape[1:])
    total = 1 + len(p["students"])
    metrics = {}

    torch.manual_seed(seed)
    teacher = MODELS.get("convnet")(in_shape=in_shape, n_classes=C, dropout=0.0, **p["teacher"])
    train(teacher, xtr, lambda z, i: F.cross_entropy(z, ytr[i]), p["teacher_steps"], p["batch_size"], p["lr"], seed)
    metrics["test_accuracy_teacher"] = (outputs(teacher, xte).argmax(1) == yte).float().mean().item()
    n_s = int(p["student_subset"] or len(xtr))
    xtr, ytr = xtr[:n_s], ytr[:n_s]  # the students' images, and what LELP reads of the teacher on them
    with torch.no_grad():
        t_logits, h = [], []
        for i in range(0, len(xtr), 2000):
            t_logits.append(teacher(xtr[i : i + 2000]))
            h.append(teacher.penultimate)
        t_logits, h = torch.cat(t_logits), torch.cat(h)
    if progress:
        progress(1, total)

    for k, arm in enumerate(p["students"], 1):
        torch.manual_seed(seed * 1000 + 1)  # every student starts from the same weights (apart from its readout width)
        width = C * S if arm == "lelp" else C
        student = MODELS.get("mlp")(in_shape=in_shape, n_classes=width, hidden=p["student_hidden"])
        if arm == "ce":
            loss = lambda z, i: F.cross_entropy(z, ytr[i])  # noqa: E731
        elif arm == "kd":
            loss = lambda z, i: kd_soft_loss(z, t_logits[i], p["kd_temperature"])  # noqa: E731
        elif arm == "lelp":
            g = torch.Generator().manual_seed(seed * 7919 + 3)
            targets = lelp_targets(h, t_logits, ytr, teacher.readout.weight.detach(), S, float(p["beta"]),
                                   bool(p["null_space"]), bool(p["rotate"]), g).float()
            q = targets.reshape(len(targets), C, S)
            q = q / q.sum(-1, keepdim=True)
            metrics["lelp_target_entropy"] = float(-(q * q.clamp_min(1e-30).log()).sum(-1)[torch.arange(len(ytr)), ytr].mean())
            metrics["lelp_subclass_purity"] = _purity(q[torch.arange(len(ytr)), ytr].argmax(-1), ytr,
                                                      _original_labels(params["data"], p["groups"], p["train_subset"])[:n_s])
            loss = lambda z, i: soft_ce(z, targets[i])  # noqa: E731
        else:
            raise ValueError(f"lelp_few_class: unknown student {arm!r} (ce, kd, lelp)")
        train(student, xtr, loss, p["student_steps"], p["batch_size"], p["lr"], seed * 1000 + 2)
        z = outputs(student, xte)
        pred = subclass_predictions(z, C) if arm == "lelp" else z.argmax(1)
        metrics[f"test_accuracy_{arm}"] = (pred == yte).float().mean().item()
        if progress:
            progress(1 + k, total)
    for arm in ["teacher", *p["students"]]:
        metrics[f"test_error_{arm}"] = 1.0 - metrics[f"test_accuracy_{arm}"]
    return metrics, []


def _original_labels(data: dict, groups, train_subset) -> torch.Tensor:
    """The original (10-class) labels of the training images ``binary_task`` keeps, in its order."""
    y = np.asarray(data["train"][1], dtype=np.int64)
    keep = np.flatnonzero(np.isin(y, np.concatenate([np.asarray(g) for g in groups])))
    keep = keep[np.random.default_rng(0).permutation(len(keep))]
    if train_subset:
        keep = keep[: int(train_subset)]
    return torch.from_numpy(y[keep])


def _purity(sub: torch.Tensor, cls: torch.Tensor, original: torch.Tensor) -> float:
    """Share of images whose original label is the most common one in their (class, pseudo-subclass) cell."""
    hits = 0
    for key in torch.unique(cls * 1000 + sub):
        members = original[(cls * 1000 + sub) == key]
        hits += int(torch.bincount(members).max())
    return hits / len(original)
