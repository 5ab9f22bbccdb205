"""Neural-collapse metrics and the unconstrained-features ("direct optimization") deep linear model of
Dang, Tran, Osher, Tran-The, Ho, Nguyen (ICML 2023), "Neural Collapse in Deep Linear Networks: From
Balanced to Imbalanced Data", arXiv 2301.00437.

Written against the official code, github.com/Fsoft-AIC/Neural-Collapse-in-Deep-Linear-Networks at commit
``1869cb1f4d8ebd4716ecaed0a772b0eb0c7a42b4`` (HEAD). The files read were ``synthetic_experiment_balanced.py``,
``synthetic_experiment_imbalanced.py``, ``validate_NC.py``, ``validate_NC_unbalanced.py``, ``train_1st_order.py``,
``utils.py`` and ``README.md``.

Official synthetic-experiment defaults (argparse in ``synthetic_experiment_{balanced,imbalanced}.py``):

- ``NUM_CLASS_SAMPLES = [100, 100, 100, 100]`` (balanced) and ``[200, 100, 50, 50]`` (imbalanced). N is their
  sum, 400. The labels are ``[0]*n_0 + [1]*n_1 + ...``, shuffled by ``torch.randperm``.
- ``--num_classes 4 --hidden 64 --weight_decay 5e-4 --feature_decay 5e-4 --num_iteration 30000 --lr 0.1``.
  ``--seed`` defaults to 2 (``utils.set_seed`` seeds random, numpy and torch).
- ``--depth_linear`` defaults to 1 (balanced) and 6 (imbalanced).
- With last-layer bias by default; ``--no-bias`` makes it bias-free (balanced script). The imbalanced script is
  always bias-free.
- README commands: balanced ``--hidden 64 --num_iteration 30000 --lr 0.1``; imbalanced ``--hidden 2048
  --num_iteration 30000 --depth_linear 1``. One seed per command.
- Optimizer: ``optim.SGD(model.parameters(), lr, momentum=0.9)``, with no optimizer weight decay. Full batch:
  one step per iteration on all N samples.
- Model (``SyntheticModel``):
  - ``H = nn.Parameter(torch.normal(0, 0.1, size=(N, hidden)))``. ``torch.normal``'s second argument is the
    **std**, so the std is 0.1 (variance 0.01).
  - ``depth_linear - 1`` bias-free ``hidden x hidden`` layers, then ``Linear(hidden, K, bias)``.
  - Every ``nn.Linear`` weight is re-initialised by ``nn.init.normal_(std=0.1)``. The last-layer bias keeps
    torch's default init, U(-1/sqrt(hidden), 1/sqrt(hidden)).
- Loss: ``||out - Y||_F^2 / (2N) + wd/2 * sum_i ||W_i||_F^2 + fd/2 * ||H||_F^2``, with one-hot Y.
  - Only the weights are decayed, not the bias.
  - The imbalanced script also computes a cross-entropy but never uses it.

What is implemented here:

- ``nc_metrics``: NC1, NC2 and NC3 exactly as in ``validate_NC.py`` and the balanced script's default path
  (without ``--GOF``). The definitions are in its docstring.
- ``nc_gof_metrics``: the imbalanced script's metrics, against the General Orthogonal Frame (GOF). This is the
  imbalanced script's only path. The balanced script computes the same metrics behind ``--GOF``, but there
  ``NC2_H`` and ``NC3_W_sub_H`` are *not* normalised. Here we follow the imbalanced script and
  ``validate_NC_unbalanced.py``, which normalise them.
  - The official code finds x_k with sympy ``solve``. Here the equivalent polynomial is solved with
    ``numpy.roots``, with Newton polishing.
  - ``validate_NC_unbalanced.py``'s ``NC3_W_div_H`` is not implemented.
- ``GENERATORS["ufm_labels"]``: sample indices 0..N-1 as inputs, labels with the given ``class_counts``. The
  test split is the training split, because the synthetic experiment has no test set.
- ``MODELS["ufm_deep_linear"]``: free features ``nn.Embedding(n_samples, hidden)`` and the linear stack,
  initialised as above.
  - For the same torch seed it draws the same H and weights as ``SyntheticModel``: the same RNG calls, in the
    same order.
  - The labels come from the numpy generator, so they are a different permutation than ``torch.randperm``'s.
  - It exposes ``features_out`` (H rows of the batch), ``penultimate`` (the readout input),
    ``linear_layers()`` and ``linear_product()`` (W = W_L ... W_1, K x hidden).
- ``LOSSES["mse_onehot_decay"]``: the loss above. Run it with an optimizer without weight decay. The loss
  records its decays on the model (``model.nc_decay``) for the GOF probe.
- ``PROBES["neural_collapse"]``: ``nc_metrics`` on the training set, with bias taken from ``model.readout``.
- ``PROBES["neural_collapse_gof"]``: ``nc_gof_metrics``. It needs the decays recorded by
  ``mse_onehot_decay``.

Deviations from the official code:

- All metrics are computed in float64. The official code computes Σ_W and Σ_B in float32 on the GPU and takes
  ``scipy.linalg.pinv`` in float32.
- The official scripts compute the metrics after every iteration but never log them. Here they are computed
  once, after training.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.linalg as scilin
import torch
import torch.nn.functional as F
from torch import nn

from softrepro.registry import GENERATORS, LOSSES, MODELS, PROBES


# ----------------------------------------------------------------------------------------------- metrics
def _np64(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def _labels(y) -> np.ndarray:
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    return np.asarray(y).astype(np.int64)


def class_statistics(H, y, K: int):
    """Class means M (K x d; a class with no samples gets 0, as in the official code), the global mean over all
    samples mu_G (d,), and the class counts (K,)."""
    H, y = _np64(H), _labels(y)
    counts = np.bincount(y, minlength=K)[:K]
    M = np.zeros((K, H.shape[1]))
    for k in range(K):
        if counts[k]:
            M[k] = H[y == k].sum(0) / counts[k]
    return M, H.mean(0), counts


def _fro(a: np.ndarray) -> float:
    return float(np.linalg.norm(a, "fro"))


def _etf(K: int) -> np.ndarray:
    return (np.eye(K) - np.ones((K, K)) / K) / math.sqrt(K - 1)


def _nc2(A: np.ndarray, target: np.ndarray) -> float:
    """||A Aᵀ/||A Aᵀ||_F - target||_F (``compute_NC2_ETF_W`` / ``compute_NC2_Identity_W``)."""
    G = A @ A.T
    return _fro(G / _fro(G) - target)


def nc_metrics(H, y, W, bias: bool) -> dict[str, float]:
    """Neural-collapse metrics of features H (N x d), labels y (N,) and classifier W (K x d), as in the official code.

    W is the product of all linear layers after the features, W_L ... W_1. In the code it is ``W_list[-1]``,
    paired with the features entering the first linear layer (``features_list[-1]``).

    With M the class means (K x d), mu_G the mean over all samples, and Mc = M - mu_G:

    - ``nc1``: tr(Σ_W Σ_B^†)/K, where
      - Σ_W = Σ_i (h_i - mu_{y_i})(h_i - mu_{y_i})ᵀ / N;
      - Σ_B = Σ_k (mu_k - mu_G)(mu_k - mu_G)ᵀ / K;
      - † is ``scipy.linalg.pinv``.
    - ``nc2_etf_w``: ||WWᵀ/||WWᵀ||_F - ETF||_F, where ETF = (I_K - 11ᵀ/K)/sqrt(K-1).
    - ``nc2_identity_w``: ||WWᵀ/||WWᵀ||_F - I_K/sqrt(K)||_F.
    - ``nc2_etf_h``: the same as ``nc2_etf_w`` with Mc in place of W (``compute_NC2_ETF_H``).
    - ``nc2_identity_h``: the same as ``nc2_identity_w`` with M in place of W (``compute_NC2_Identity_H``).
    - ``nc3_etf_wh``: ||W Mcᵀ/||W Mcᵀ||_F - ETF||_F.
    - ``nc3_identity_wh``: ||W Mᵀ/||W Mᵀ||_F - I_K/sqrt(K)||_F.
    - ``nc3_w_sub_h``: ||W/||W||_F - M/||M||_F||_F. ``nc3_w_sub_h_centered`` is the same with Mc
      (``validate_NC.py``).
    - Headline values follow the synthetic scripts' non-GOF path:
      - ``nc2_w`` is ``nc2_etf_w`` with bias and ``nc2_identity_w`` bias-free;
      - ``nc2_h`` and ``nc3`` likewise.

    ``validate_NC.py`` logs ``NC3_ETF_WH`` (centred, against the ETF) even for bias-free models. All variants are
    returned, so a caller can pick either.
    """
    H, y, W = _np64(H), _labels(y), _np64(W)
    K = W.shape[0]
    M, mu_G, _ = class_statistics(H, y, K)
    N = H.shape[0]
    D = H - M[y]
    sigma_w = D.T @ D / N
    Mc = M - mu_G
    sigma_b = Mc.T @ Mc / K
    etf, ident = _etf(K), np.eye(K) / math.sqrt(K)
    WMc, WM = W @ Mc.T, W @ M.T
    out = {
        "nc1": float(np.trace(sigma_w @ scilin.pinv(sigma_b)) / K),
        "nc2_etf_w": _nc2(W, etf),
        "nc2_identity_w": _nc2(W, ident),
        "nc2_etf_h": _nc2(Mc, etf),
        "nc2_identity_h": _nc2(M, ident),
        "nc3_etf_wh": _fro(WMc / _fro(WMc) - etf),
        "nc3_identity_wh": _fro(WM / _fro(WM) - ident),
        "nc3_w_sub_h": _fro(W / _fro(W) - M / _fro(M)),
        "nc3_w_sub_h_centered": _fro(W / _fro(W) - Mc / _fro(Mc)),
    }
    kind = "etf" if bias else "identity"
    out.update(nc2_w=out[f"nc2_{kind}_w"], nc2_h=out[f"nc2_{kind}_h"], nc3=out[f"nc3_{kind}_wh"])
    return out


# ------------------------------------------------------------------------------ GOF (imbalanced, bias-free)
def gof_x(class_counts, depth: int, weight_decay: float, feature_decay: float) -> np.ndarray:
    """x_k from ``compute_x``: the largest real root of b/n_k - M x^(M-1)/(x^M + 1)^2 = 0, set to 0 if negative.

    Here M is the depth, N = sum n_k and b = M N (N wd^M fd)^(1/M). The equation is solved as the polynomial
    (b/n_k)(x^M + 1)^2 - M x^(M-1) = 0. Its roots are those of the rational equation, since x^M = -1 is never a
    root. With no real root, sympy's ``max`` of an empty list raises, and so does this function.
    """
    counts = np.asarray(class_counts, dtype=np.float64)
    M, N = int(depth), counts.sum()
    b = M * N * (N * weight_decay**M * feature_decay) ** (1.0 / M)
    xs = []
    for n in counts:
        c = np.zeros(2 * M + 1)  # coefficients, highest power first
        a = b / n
        c[0] += a  # x^(2M)
        c[M] += 2 * a  # x^M
        c[2 * M] += a  # x^0
        c[2 * M - (M - 1)] -= M  # x^(M-1)
        poly, dpoly = np.poly1d(c), np.poly1d(c).deriv()
        real = []
        for r in np.roots(c):
            if abs(r.imag) <= 1e-6 * (1.0 + abs(r.real)):
                x = r.real
                for _ in range(50):  # Newton polishing
                    d = dpoly(x)
                    if d == 0:
                        break
                    step = poly(x) / d
                    x -= step
                    if abs(step) <= 1e-15 * (1.0 + abs(x)):
                        break
                real.append(x)
        if not real:
            raise ValueError(f"no real solution x for class size {n} "
                             f"(depth {M}, wd {weight_decay}, fd {feature_decay})")
        xs.append(max(max(real), 0.0))
    return np.array(xs)


def gof_s(class_counts, depth: int, weight_decay: float, feature_decay: float) -> np.ndarray:
    """s_k = (N fd x_k^M / c)^(1/(2M)), with c = 1 (``compute_s``)."""
    N = float(np.sum(class_counts))
    x = gof_x(class_counts, depth, weight_decay, feature_decay)
    return (N * feature_decay * x**depth) ** (1.0 / (2 * depth))


def nc_gof_metrics(H, y, W, depth: int, weight_decay: float, feature_decay: float,
                   class_counts=None) -> dict[str, float]:
    """Bias-free imbalanced metrics against the GOF, from ``synthetic_experiment_imbalanced.py``.

    With s_k = ``gof_s``, S = s^(2M), N = sum n_k, fd the feature decay, M the uncentred class means (K x d) and
    W = W_L...W_1, every matrix is normalised to unit Frobenius norm before the difference:

    - ``nc2_w_gof``: ||WWᵀ - diag(S)||;
    - ``nc2_h_gof``: ||M Mᵀ - diag(S/(S + N fd)^2)||;
    - ``nc3_wh_gof``: ||W Mᵀ - diag(S/(S + N fd))||;
    - ``nc3_w_sub_h_gof``: ||W - diag(S + N fd) M||.

    ``class_counts`` default to the counts in y. ``nc1`` is included, since the script computes it too.
    """
    H, y, W = _np64(H), _labels(y), _np64(W)
    K = W.shape[0]
    M, _, counts = class_statistics(H, y, K)
    if class_counts is None:
        class_counts = counts
    N = float(np.sum(class_counts))
    S = gof_s(class_counts, depth, weight_decay, feature_decay) ** (2 * depth)

    def unit(a):
        return a / _fro(a)

    return {
        "nc1": nc_metrics(H, y, W, bias=False)["nc1"],
        "nc2_w_gof": _fro(unit(W @ W.T) - unit(np.diag(S))),
        "nc2_h_gof": _fro(unit(M @ M.T) - unit(np.diag(S / (S + N * feature_decay) ** 2))),
        "nc3_wh_gof": _fro(unit(W @ M.T) - unit(np.diag(S / (S + N * feature_decay)))),
        "nc3_w_sub_h_gof": _fro(unit(W) - unit(np.diag(S + N * feature_decay) @ M)),
    }


# --------------------------------------------------------------------------------------------- generator
@GENERATORS.register("ufm_labels")
def ufm_labels(seed: int, class_counts=(100, 100, 100, 100), shuffle: bool = True):
    """The unconstrained-features setting: x = sample indices 0..N-1 (int64), with ``class_counts[k]`` labels k.

    The labels are shuffled by ``default_rng(seed)`` when ``shuffle`` is set, as the official ``torch.randperm``
    does. Test = train. Official counts: [100, 100, 100, 100] (balanced) and [200, 100, 50, 50] (imbalanced).
    """
    counts = np.asarray(class_counts, dtype=np.int64)
    if counts.ndim != 1 or len(counts) < 2 or (counts < 0).any():
        raise ValueError(f"class_counts must be a list of >= 2 non-negative counts, got {class_counts!r}")
    y = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    if shuffle:
        y = np.random.default_rng(seed).permutation(y)
    x = np.arange(len(y), dtype=np.int64)
    return {"train": (x, y), "test": (x.copy(), y.copy()), "n_outputs": len(counts)}


# ------------------------------------------------------------------------------------------------- model
class UFMDeepLinear(nn.Module):
    """Free features H (``nn.Embedding(n_samples, hidden)``) followed by ``depth_linear - 1`` bias-free
    hidden x hidden linear layers and the readout ``Linear(hidden, K, bias)``.

    The input is a batch of sample indices. ``features_out`` is H for the batch; ``penultimate`` is the readout
    input. ``linear_product()`` is W = W_L ... W_1.
    """

    def __init__(self, n_samples: int, n_classes: int, hidden: int = 64, depth_linear: int = 1, bias: bool = True,
                 init_std: float = 0.1):
        super().__init__()
        if depth_linear < 1:
            raise ValueError(f"depth_linear must be >= 1, got {depth_linear}")
        # Same RNG calls, in the same order, as SyntheticModel: H first, then the Linear layers (whose default
        # init also draws), then normal_ on every Linear weight in module order. The bias keeps torch's default.
        H0 = torch.normal(0, init_std, size=(n_samples, hidden))
        self.embedding = nn.Embedding(n_samples, hidden, _weight=H0)
        self.hidden_layers = nn.ModuleList(nn.Linear(hidden, hidden, bias=False) for _ in range(depth_linear - 1))
        self.readout = nn.Linear(hidden, n_classes, bias=bias)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, mean=0.0, std=init_std)
        self.features_out: torch.Tensor | None = None
        self.penultimate: torch.Tensor | None = None

    def linear_layers(self) -> list[nn.Linear]:
        return [*self.hidden_layers, self.readout]

    def linear_product(self) -> torch.Tensor:
        W = self.readout.weight
        for layer in reversed(self.hidden_layers):
            W = W @ layer.weight
        return W

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embedding(x.long().reshape(-1))
        self.features_out = h
        for layer in self.hidden_layers:
            h = layer(h)
        self.penultimate = h
        return self.readout(h)


@MODELS.register("ufm_deep_linear")
def ufm_deep_linear(in_shape, n_classes, n_samples: int | None = None, hidden: int = 64, depth_linear: int = 1,
                    bias: bool = True, init_std: float = 0.1) -> nn.Module:
    """``n_samples`` (N, the number of free feature vectors) is required. ``in_shape`` is ignored."""
    if n_samples is None:
        raise ValueError("ufm_deep_linear needs n_samples (the number of training samples)")
    return UFMDeepLinear(int(n_samples), n_classes, hidden=hidden, depth_linear=depth_linear, bias=bias,
                         init_std=init_std)


# -------------------------------------------------------------------------------------------------- loss
def _decayed_weights(model: nn.Module) -> list[torch.Tensor]:
    if hasattr(model, "linear_layers"):
        return [m.weight for m in model.linear_layers()]
    return [model.readout.weight]


def _decayed_features(model: nn.Module) -> torch.Tensor:
    if hasattr(model, "embedding"):
        return model.embedding.weight  # all N free feature vectors, as in the official code
    return model.penultimate  # other models: the batch's readout inputs (train_1st_order.py's sep_decay)


@LOSSES.register("mse_onehot_decay")
def mse_onehot_decay(weight_decay: float = 5e-4, feature_decay: float = 5e-4):
    """||out - onehot(y)||_F^2/(2B) + wd/2 * sum_i ||W_i||_F^2 + fd/2 * ||H||_F^2.

    This is the official synthetic loss: B = N in its full-batch runs. Use it with an optimizer without weight
    decay.
    - W_i are the weights of ``model.linear_layers()`` (all linear layers, biases excluded). For other models it
      is only ``model.readout.weight``.
    - H is ``model.embedding.weight``, the whole free-feature matrix. For other models it is the batch's
      ``model.penultimate``.
    """
    wd, fd = float(weight_decay), float(feature_decay)

    def fn(out, targets, model):
        Y = F.one_hot(targets, out.shape[1]).to(out.dtype)
        loss = (out - Y).pow(2).sum() / (2 * out.shape[0])
        loss = loss + wd / 2 * sum(w.pow(2).sum() for w in _decayed_weights(model))
        loss = loss + fd / 2 * _decayed_features(model).pow(2).sum()
        model.nc_decay = (wd, fd)  # read by the neural_collapse_gof probe
        return loss

    return fn


# ------------------------------------------------------------------------------------------------ probes
def _features_and_classifier(model: nn.Module, x: torch.Tensor, chunk: int = 4096):
    """Features entering the first linear layer of the classifier block, and that block's product W (K x d).

    For ``ufm_deep_linear`` these are H and W_L...W_1. Other models give ``penultimate`` and ``readout.weight``.
    """
    feats = []
    for i in range(0, len(x), chunk):
        model(x[i : i + chunk])
        f = getattr(model, "features_out", None)
        feats.append((f if f is not None else model.penultimate).detach())
    W = model.linear_product() if hasattr(model, "linear_product") else model.readout.weight
    return torch.cat(feats), W.detach()


@PROBES.register("neural_collapse")
def neural_collapse_probe(model, x_train, y_train, loss_fn=None) -> dict[str, float]:
    """``nc_metrics`` on the whole training set. ``bias`` is whether ``model.readout`` has a bias."""
    H, W = _features_and_classifier(model, x_train)
    return nc_metrics(H, y_train, W, bias=model.readout.bias is not None)


@PROBES.register("neural_collapse_gof")
def neural_collapse_gof_probe(model, x_train, y_train, loss_fn=None) -> dict[str, float]:
    """``nc_gof_metrics`` on the training set.

    Class counts come from y_train, depth from the number of linear layers, and the decays from
    ``model.nc_decay``, which ``mse_onehot_decay`` sets.
    """
    if getattr(model, "nc_decay", None) is None:
        raise ValueError("neural_collapse_gof needs the decays recorded by the mse_onehot_decay loss")
    wd, fd = model.nc_decay
    depth = len(model.linear_layers()) if hasattr(model, "linear_layers") else 1
    H, W = _features_and_classifier(model, x_train)
    return {k: v for k, v in nc_gof_metrics(H, y_train, W, depth, wd, fd).items() if k != "nc1"}
