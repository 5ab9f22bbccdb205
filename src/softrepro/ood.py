"""Post-hoc confidence scores of a trained classifier: out-of-distribution (OOD) detection and
misclassification detection, for experiments with an ``ood:`` section.

The classifier trains once per seed; every score listed is then computed on the same model
(one run, many scores).  A score is registered in ``SCORES`` (softrepro.registry) as a class
``Score(**params)`` with ``fit(ctx)`` (statistics from the training set, or tuning) and
``score(ctx, x) -> float64 tensor``, higher meaning "more in-distribution".  MSP and the
maximum logit are built in; the papers' scores live under ``softrepro.methods.ood``.

OOD sets (``ood.sets``) are either generated noise in the classifier's input space (pixels in
[0, 1] after ``to_float``), seeded by the run's seed and the set's name, or the test split of
another dataset.  Each set is scored against the in-distribution test set.  Conventions
(stated per metric, since the papers differ):

- ``auroc``: ROC AUC with in-distribution as the positive class (symmetric in the choice);
- ``aupr_in``: average precision with in-distribution positive, scored by the score;
  ``aupr_out``: OOD positive, scored by minus the score (Hendrycks & Gimpel's In/Out);
- ``fpr95``: the share of OOD inputs accepted at the threshold that keeps 95 % of the
  in-distribution inputs (ODIN's and the energy paper's FPR at 95 % TPR, in-distribution positive);
- ``detection_error``: min over thresholds of 0.5 (1 - TPR) + 0.5 FPR (ODIN);
- ``mean_out``: the mean score on the OOD set (H&G's "Pred. Prob (mean)" for MSP);
- ``ood_avg_<score>_<metric>``: the mean over the scored OOD sets (the papers' "average" rows).

Shifts (``ood.shifts``) are perturbed copies of the scored test images with their labels (noise,
blur, brightness, contrast, rotation at a level): for scores with an acceptance rule (a method
``accept(ctx, x) -> bool tensor``) the share accepted and the accuracy of what was accepted
(``shift_<name>_<score>_accept_rate`` / ``_accepted_accuracy``, and ``shift_<name>_accuracy``).

Misclassification detection (``ood.misclassification: true``) scores the in-distribution test
set against its own errors: ``err_<score>_auroc`` (correct positive), ``_aupr_succ`` (correct
positive), ``_aupr_err`` (errors positive, scored by minus the score), ``_mean_wrong`` (mean
score of the wrong predictions), beside ``test_error``.  All from scikit-learn's ``roc_curve``,
``roc_auc_score`` and ``average_precision_score``.

Per-layer scores (Lee et al.'s feature ensemble) read ``Context.layers``: the pooled output of
every hidden layer (``feature_modules``: the first nonlinearity after each linear or convolutional
layer of the model's ``body``), with ``layer_gradient`` for input preprocessing at one layer.

``auxiliary_outliers`` generates training-time outliers from in-distribution images (pixels
permuted, blurred, tiles shuffled) for an experiment's ``outliers`` section (outlier exposure,
energy-bounded fine-tuning; softrepro.train): none of them is an image of an OOD test set.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from softrepro.registry import SCORES

HIST_BINS = 40
ROC_POINTS = 101


# --------------------------------------------------------------------------- metrics

def detection_metrics(s_in: np.ndarray, s_out: np.ndarray) -> dict[str, float]:
    """OOD metrics for scores where higher means in-distribution (see the module docstring)."""
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    s_in, s_out = np.asarray(s_in, np.float64), np.asarray(s_out, np.float64)
    y = np.r_[np.ones(len(s_in)), np.zeros(len(s_out))]
    s = np.r_[s_in, s_out]
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)  # every threshold: fpr95 reads the exact point
    return {
        "auroc": float(roc_auc_score(y, s)),
        "aupr_in": float(average_precision_score(y, s)),
        "aupr_out": float(average_precision_score(1 - y, -s)),
        "fpr95": float(fpr[np.searchsorted(tpr, 0.95, side="left")]),
        "detection_error": float(np.min(0.5 * (1 - tpr) + 0.5 * fpr)),
        "mean_out": float(s_out.mean()),
    }


def misclassification_metrics(score: np.ndarray, correct: np.ndarray) -> dict[str, float]:
    """Error detection on one test set: correct predictions are the positive ("success") class."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    score, correct = np.asarray(score, np.float64), np.asarray(correct, bool)
    if correct.all() or not correct.any():
        return {"auroc": float("nan"), "aupr_succ": float("nan"), "aupr_err": float("nan"),
                "mean_wrong": float(score[~correct].mean()) if (~correct).any() else float("nan")}
    return {
        "auroc": float(roc_auc_score(correct, score)),
        "aupr_succ": float(average_precision_score(correct, score)),
        "aupr_err": float(average_precision_score(~correct, -score)),
        "mean_wrong": float(score[~correct].mean()),
    }


def curves(s_in: np.ndarray, s_out: np.ndarray) -> dict:
    """What the report draws: the ROC curve (at most ROC_POINTS points) and both histograms on shared bins."""
    from sklearn.metrics import roc_curve

    y = np.r_[np.ones(len(s_in)), np.zeros(len(s_out))]
    fpr, tpr, _ = roc_curve(y, np.r_[s_in, s_out])
    keep = np.unique(np.linspace(0, len(fpr) - 1, ROC_POINTS).round().astype(int))
    both = np.r_[s_in, s_out]
    lo, hi = np.percentile(both, [0.5, 99.5])
    edges = np.linspace(lo, hi if hi > lo else lo + 1, HIST_BINS + 1)
    return {"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist(), "edges": edges.tolist(),
            "hist_in": np.histogram(np.clip(s_in, edges[0], edges[-1]), edges)[0].tolist(),
            "hist_out": np.histogram(np.clip(s_out, edges[0], edges[-1]), edges)[0].tolist()}


# --------------------------------------------------------------------------- context

@dataclass
class Context:
    """The trained model and the data a score may use.  ``outputs(x)`` gives (logits, penultimate
    features) in float64 on the CPU, batched; training-set outputs are computed once and shared."""
    model: torch.nn.Module
    x_train: torch.Tensor
    y_train: torch.Tensor
    n_classes: int
    seed: int = 0  # the run's seed, for scores that draw random numbers
    tune: dict = field(default_factory=dict)  # name -> inputs of a set reserved for tuning
    x_tune_in: torch.Tensor | None = None     # in-distribution inputs for tuning (held out from the test set)
    batch: int = 1000
    _train_out: tuple | None = None
    _train_layers: list | None = None

    @torch.no_grad()
    def outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, feats = [], []
        for i in range(0, len(x), self.batch):
            logits.append(self.model(x[i : i + self.batch]).double().cpu())
            pen = getattr(self.model, "penultimate", None)
            feats.append(pen.double().cpu() if pen is not None else logits[-1])
        return torch.cat(logits), torch.cat(feats)

    def train_outputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._train_out is None:
            self._train_out = self.outputs(self.x_train)
        return self._train_out

    def train_layers(self) -> list[torch.Tensor]:
        """``layers`` of the training set, computed once and shared."""
        if self._train_layers is None:
            self._train_layers = self.layers(self.x_train)
        return self._train_layers

    def readout(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The last linear layer's weight and bias (float64, CPU)."""
        lin = self.model.readout
        return lin.weight.detach().double().cpu(), None if lin.bias is None else lin.bias.detach().double().cpu()

    def input_gradient(self, x: torch.Tensor, objective) -> torch.Tensor:
        """d objective(logits, features).sum() / dx, batched (for input-perturbation scores)."""
        grads = []
        for i in range(0, len(x), self.batch):
            xb = x[i : i + self.batch].detach().clone().requires_grad_(True)
            with torch.enable_grad():
                logits = self.model(xb)
                pen = getattr(self.model, "penultimate", None)
                objective(logits, pen if pen is not None else logits).sum().backward()
            grads.append(xb.grad.detach())
        self.model.zero_grad(set_to_none=True)
        return torch.cat(grads)

    def _hooked(self, x: torch.Tensor) -> list[torch.Tensor]:
        """One forward pass of ``x``; the pooled output of every hidden layer (``feature_modules``)."""
        seen: list[torch.Tensor] = []
        hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(pool_features(out)))
                 for m in feature_modules(self.model)]
        try:
            self.model(x)
        finally:
            for h in hooks:
                h.remove()
        return seen

    @torch.no_grad()
    def layers(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The pooled features of every hidden layer (``feature_modules``), float64 on the CPU, batched."""
        parts = [[f.double().cpu() for f in self._hooked(x[i : i + self.batch])] for i in range(0, len(x), self.batch)]
        return [torch.cat(p) for p in zip(*parts)]

    def layer_gradient(self, x: torch.Tensor, layer: int, objective) -> torch.Tensor:
        """d objective(features of hidden layer ``layer``, float64).sum() / dx, batched."""
        grads = []
        for i in range(0, len(x), self.batch):
            xb = x[i : i + self.batch].detach().clone().requires_grad_(True)
            with torch.enable_grad():
                objective(self._hooked(xb)[layer].double()).sum().backward()
            grads.append(xb.grad.detach())
        self.model.zero_grad(set_to_none=True)
        return torch.cat(grads)


_NOT_A_FEATURE = (nn.Linear, nn.modules.conv._ConvNd, nn.Dropout, nn.Flatten, nn.Identity,
                  nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def feature_modules(model: nn.Module) -> list[nn.Module]:
    """The hidden layers a per-layer score reads (Lee et al.'s ``feature_list``): a model's own
    ``feature_modules()`` when it has one, else, in its ``body`` (an ``nn.Sequential``, possibly
    nested), the first nonlinearity after each linear or convolutional layer, in forward order.
    Normalisation, dropout, flattening and pooling are not features.  For the engine's ``mlp``
    these are the hidden activations, the last of which is the penultimate layer."""
    if hasattr(model, "feature_modules"):
        return list(model.feature_modules())
    body = getattr(model, "body", None)
    if not isinstance(body, nn.Module):
        raise ValueError(f"a per-layer score needs a model with a 'body' of layers or a feature_modules() method; "
                         f"{type(model).__name__} has neither")
    out, after_weight = [], False
    for m in body.modules():
        if next(m.children(), None) is not None:
            continue  # a container: its leaves come next
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
            after_weight = True
        elif after_weight and not isinstance(m, _NOT_A_FEATURE) and type(m).__module__ != "torch.nn.modules.pooling":
            out.append(m)
            after_weight = False
    if not out:
        raise ValueError(f"no hidden layer found in the body of {type(model).__name__}")
    return out


def pool_features(out: torch.Tensor) -> torch.Tensor:
    """[N, C, ...] feature maps -> [N, C] by the mean over the spatial positions (as Lee et al.'s
    ``sample_estimator``); [N, D] features are kept as they are."""
    return out.flatten(2).mean(2) if out.dim() > 2 else out


class Score:
    """Base class: ``fit`` does nothing; ``score`` must be defined."""

    def fit(self, ctx: Context) -> None:
        pass

    def score(self, ctx: Context, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def chosen(self) -> dict:
        """Hyper-parameters chosen by ``fit`` (tuning), recorded in metrics.json."""
        return {}


@SCORES.register("msp")
class MaxSoftmax(Score):
    """Maximum softmax probability (Hendrycks & Gimpel 2017), optionally at a temperature."""

    def __init__(self, temperature: float = 1.0):
        self.temperature = temperature

    def score(self, ctx, x):
        return (ctx.outputs(x)[0] / self.temperature).softmax(1).amax(1)


@SCORES.register("max_logit")
class MaxLogit(Score):
    def score(self, ctx, x):
        return ctx.outputs(x)[0].amax(1)


# --------------------------------------------------------------------------- sets

def _seed_for(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{name}".encode()).digest()[:8], "little")


def generate_noise(kind: str, n: int, shape: tuple, seed: int, name: str, params: dict) -> np.ndarray:
    """Noise images in the input space: ``gaussian`` N(mean, std) (optionally clipped to [lo, hi]),
    ``uniform`` U[low, high).  Seeded by (run seed, set name): the same set for every score."""
    rng = np.random.default_rng(_seed_for(seed, name))
    if kind == "gaussian":
        x = rng.normal(params.get("mean", 0.0), params.get("std", 1.0), size=(n, *shape))
    elif kind == "uniform":
        x = rng.uniform(params.get("low", 0.0), params.get("high", 1.0), size=(n, *shape))
    else:
        raise ValueError(f"unknown noise {kind!r} (gaussian, uniform)")
    if params.get("clip") is not None:
        x = np.clip(x, *params["clip"])
    return x.astype(np.float32)


def load_set(name: str, spec: dict, shape: tuple, seed: int, root: Path) -> np.ndarray:
    if "noise" in spec:
        return generate_noise(spec["noise"], spec.get("n", 10000), shape, seed, name, spec)
    from softrepro.datasets import load_splits, to_float
    from softrepro.spec import load_datasets

    ds = spec["dataset"]
    x = to_float(load_splits(ds, load_datasets(root)[ds], root, seed)[spec.get("split", "test")][0])
    if "n" in spec:
        x = x[: spec["n"]]
    if tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(f"OOD set {name!r} ({ds}) has inputs of shape {x.shape[1:]}, the classifier takes {shape}")
    return x


PERTURBATIONS = ("noise", "blur", "brightness", "contrast", "rotation")


def perturb(x: np.ndarray, kind: str, level: float, seed: int, name: str) -> np.ndarray:
    """A shifted copy of images [N, C, H, W] in [0, 1]: ``noise`` (Gaussian, std = level),
    ``blur`` (Gaussian filter, sigma = level pixels), ``brightness`` (+ level), ``contrast``
    (scaled about 0.5 by level), ``rotation`` (level degrees); clipped to [0, 1] again."""
    from scipy import ndimage

    rng = np.random.default_rng(_seed_for(seed, name))
    if kind == "noise":
        y = x + rng.normal(0, level, x.shape)
    elif kind == "blur":
        y = ndimage.gaussian_filter(x, sigma=(0, 0, level, level))
    elif kind == "brightness":
        y = x + level
    elif kind == "contrast":
        y = 0.5 + level * (x - 0.5)
    elif kind == "rotation":
        y = ndimage.rotate(x, level, axes=(2, 3), reshape=False, order=1)
    else:
        raise ValueError(f"unknown perturbation {kind!r} ({', '.join(PERTURBATIONS)})")
    return np.clip(y, 0, 1).astype(np.float32)


OUTLIER_TRANSFORMS = ("permute", "blur", "tiles")


def auxiliary_outliers(x: torch.Tensor, transforms: list[str], blur_sigma: float = 3.0, tile: int = 7) -> torch.Tensor:
    """Generated auxiliary outliers (training-time OOD examples, e.g. for outlier exposure or
    energy-bounded fine-tuning) from in-distribution images ``x`` [N, C, H, W]: each image gets
    one of ``transforms``, drawn uniformly:

    - ``permute``: its pixel positions shuffled by a random permutation of its own (the intensity
      histogram kept, every spatial structure destroyed);
    - ``blur``: a Gaussian filter of ``blur_sigma`` pixels, zero outside the image (only the coarse
      silhouette left);
    - ``tiles``: its ``tile`` x ``tile`` tiles in a random order of its own (local texture kept,
      the global shape destroyed).

    Random numbers come from torch's global generator (on ``x``'s device), whose state the
    training checkpoints keep."""
    unknown = [t for t in transforms if t not in OUTLIER_TRANSFORMS]
    if unknown or not transforms:
        raise ValueError(f"unknown outlier transform(s) {unknown or transforms!r} (known: {', '.join(OUTLIER_TRANSFORMS)})")
    if x.dim() != 4:
        raise ValueError(f"generated outliers need image inputs [N, C, H, W], got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    pick = torch.randint(len(transforms), (n,), device=x.device)
    out = x.clone()
    for k, name in enumerate(transforms):
        rows = (pick == k).nonzero().squeeze(1)
        if len(rows):
            out[rows] = _OUTLIER_FNS[name](x[rows], blur_sigma=blur_sigma, tile=tile)
    return out


def _permute_pixels(x: torch.Tensor, **_) -> torch.Tensor:
    n, c, h, w = x.shape
    order = torch.rand(n, h * w, device=x.device).argsort(1)
    return x.flatten(2).gather(2, order[:, None, :].expand(n, c, h * w)).reshape(x.shape)


def _blur(x: torch.Tensor, blur_sigma: float, **_) -> torch.Tensor:
    import torch.nn.functional as F

    r = max(1, int(np.ceil(3 * blur_sigma)))
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / blur_sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    y = F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), padding=(r, 0), groups=c)
    return F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), padding=(0, r), groups=c)


def _shuffle_tiles(x: torch.Tensor, tile: int, **_) -> torch.Tensor:
    n, c, h, w = x.shape
    if h % tile or w % tile:
        raise ValueError(f"outlier tiles of {tile} pixels do not divide {h} x {w} images")
    gh, gw = h // tile, w // tile
    t = x.reshape(n, c, gh, tile, gw, tile).permute(0, 2, 4, 1, 3, 5).reshape(n, gh * gw, c, tile, tile)
    order = torch.rand(n, gh * gw, device=x.device).argsort(1)
    t = t.gather(1, order[:, :, None, None, None].expand_as(t))
    return t.reshape(n, gh, gw, c, tile, tile).permute(0, 3, 1, 4, 2, 5).reshape(x.shape)


_OUTLIER_FNS = {"permute": _permute_pixels, "blur": _blur, "tiles": _shuffle_tiles}


def shift_metrics(scores: dict, ctx, x_in, y_in, shifts: dict, seed: int) -> dict[str, float]:
    """Per shift (a perturbed copy of the scored test images, labels kept) and for the clean
    images: ``shift_<name>_accuracy``, and for every score with an acceptance rule (``accept``)
    ``shift_<name>_<label>_accept_rate`` and ``_accepted_accuracy``; ``shift_avg_...`` over the shifts."""
    out = {}
    x_np = x_in.cpu().numpy()
    named = {"clean": x_in} | {n: torch.from_numpy(perturb(x_np, s["perturb"], s["level"], seed, n)).to(x_in)
                               for n, s in shifts.items()}
    y = y_in.cpu().numpy()
    for n, x in named.items():
        correct = ctx.outputs(x)[0].argmax(1).numpy() == y
        out[f"shift_{n}_accuracy"] = float(correct.mean())
        for label, sc in scores.items():
            if hasattr(sc, "accept"):
                acc = sc.accept(ctx, x).numpy()
                out[f"shift_{n}_{label}_accept_rate"] = float(acc.mean())
                out[f"shift_{n}_{label}_accepted_accuracy"] = float(correct[acc].mean()) if acc.any() else float("nan")
    keys = {k[len("shift_clean_"):] for k in out if k.startswith("shift_clean_")}
    if shifts:
        for k in keys:
            out[f"shift_avg_{k}"] = float(np.nanmean([out[f"shift_{n}_{k}"] for n in shifts]))
    return out


# --------------------------------------------------------------------------- evaluation

def make_scores(cfg: dict) -> dict[str, Score]:
    """``scores: [name | {name, as?, ...params}]`` -> {label: Score}."""
    out = {}
    for item in cfg["scores"]:
        item = {"name": item} if isinstance(item, str) else dict(item)
        name = item.pop("name")
        label = item.pop("as", name)
        out[label] = SCORES.get(name)(**item)
    return out


def evaluate(model, cfg: dict, x_train, y_train, x_test, y_test, n_classes: int, seed: int, root: Path):
    """All scores on all sets: (scalar metrics, extras for metrics.json: chosen hyper-parameters and curves)."""
    device = x_test.device
    model.eval()
    holdout = int(cfg.get("holdout", 0))
    shape = tuple(x_test.shape[1:])
    sets = {n: torch.from_numpy(load_set(n, s, shape, seed, root)).to(device=device, dtype=x_test.dtype)
            for n, s in cfg.get("sets", {}).items()}
    tune_names = set(cfg.get("tune_sets", []))
    ctx = Context(model, x_train, y_train, n_classes, seed=seed, tune={n: sets[n] for n in tune_names},
                  x_tune_in=x_test[:holdout] if holdout else None)
    x_in, y_in = x_test[holdout:], y_test[holdout:]
    scored = [n for n in sets if n not in tune_names]
    metrics, extras = {}, {"chosen": {}, "curves": {}}
    try:
        if cfg.get("misclassification"):  # the predictions do not depend on the score: once
            correct = ctx.outputs(x_in)[0].argmax(1).numpy() == y_in.cpu().numpy()
            metrics["test_error"] = float(1 - correct.mean())  # on the scored inputs (all but the holdout)
        scores = make_scores(cfg)
        for label, sc in scores.items():
            sc.fit(ctx)
            extras["chosen"][label] = sc.chosen()
            s_in = sc.score(ctx, x_in).numpy()
            if cfg.get("misclassification"):
                metrics |= {f"err_{label}_{k}": v for k, v in misclassification_metrics(s_in, correct).items()}
                metrics[f"err_{label}_mean_correct"] = float(s_in[correct].mean())
            metrics[f"ood_in_{label}_mean"] = float(s_in.mean())
            for name in scored:
                s_out = sc.score(ctx, sets[name]).numpy()
                metrics |= {f"ood_{name}_{label}_{k}": v for k, v in detection_metrics(s_in, s_out).items()}
                extras["curves"][f"{name}/{label}"] = curves(s_in, s_out)
            if len(scored) > 1:  # the mean over the OOD sets, as the papers' "average" columns
                for k in ("auroc", "aupr_in", "aupr_out", "fpr95", "detection_error"):
                    metrics[f"ood_avg_{label}_{k}"] = float(np.mean([metrics[f"ood_{n}_{label}_{k}"] for n in scored]))
        if cfg.get("shifts"):
            metrics |= shift_metrics(scores, ctx, x_in, y_in, cfg["shifts"], seed)
    finally:
        model.train()
    return metrics, extras
