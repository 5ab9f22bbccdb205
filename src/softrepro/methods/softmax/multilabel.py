"""Simulated multi-label data, its metrics and a linear model, after Martins & Astudillo 2016,
"From Softmax to Sparsemax" (arXiv 1602.02068), section 4 (multi-label experiments).

Source of every procedure below: github.com/Unbabel/sparsemax at 27d2a1a (HEAD), files
``multilabel_dataset.py`` (generator), ``create_toy_multilabel_dataset.py`` (sizes and settings) and
``train_multilabel_classifier_lbfgs.py`` (``classify_dataset``: the metrics).

- generator ``toy_multilabel``: documents as word-count vectors with label proportions as targets.
- task ``multilabel``: loss, JSD, squared error, micro/macro F1, sparsity and support size on a test set.
  The predicted distribution and label set come from the loss (``loss_fn.predict``, set by the
  factories in ``softrepro.methods.softmax.sparsemax``).
- model ``linear``: x -> W x + b, the repo's linear model (it adds a bias feature).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from softrepro.methods.softmax.sparsemax import label_proportions
from softrepro.registry import GENERATORS, MODELS, TASKS


@GENERATORS.register("toy_multilabel")
def toy_multilabel(seed: int, n_classes: int = 10, doc_length: float = 200, n_train: int = 1200,
                   n_test: int = 1000, avg_labels: float = 1.0, class_proportions: bool = True,
                   n_words: int | None = None):
    """The repo's ``make_multilabel_classification`` (a modified copy of scikit-learn's), as called by
    ``create_toy_multilabel_dataset.py`` (``allow_unlabeled=False``, ``num_words = num_classes``).

    Shared by all documents: class priors p_c = u / sum(u), u ~ U[0,1)^K, and word distributions
    p(w|c) = columns of U[0,1)^(V x K) each normalised to sum 1.  Per document, in the repo's order:

    1. number of labels n ~ Poisson(avg_labels), redrawn until 1 <= n <= K (truncated Poisson);
    2. n distinct classes: draw the missing count from p_c (inverse CDF), keep the set, repeat;
    3. length L ~ Poisson(doc_length), redrawn until L > 0;
    4. ``class_proportions`` (the repo's ``use_class_proportions=True``, "random label proportions"):
       proportions r = u / sum(u), u ~ U[0,1)^n; the L words are drawn from sum_c r_c p(w|c) and the
       target is r on the chosen classes.  ``False`` ("uniform label proportions"): the words are
       drawn from the normalised sum of the chosen classes' p(w|c) and the target is uniform, 1/n.

    x: float32 (N, V) word counts (V = ``n_words``, default K as in the repo); y: float32 (N, K)
    proportions, rows sum to 1.  Train and test are consecutive draws from the same p_c and p(w|c).
    The repo drew 1200 train + 200 dev + 1000 test from numpy's global RandomState (its
    ``random_state`` argument is ignored); here every draw comes from ``np.random.default_rng(seed)``:
    the same distributions, not the same numbers.  The repo's toy figures use 5-fold jackknife on its
    1200 training documents; no dev split is generated here.
    """
    K = int(n_classes)
    V = K if n_words is None else int(n_words)
    if K < 1 or V < 1 or avg_labels <= 0 or doc_length <= 0:
        raise ValueError("toy_multilabel needs n_classes >= 1, n_words >= 1, avg_labels > 0 and doc_length > 0")
    rng = np.random.default_rng(seed)
    p_c = rng.random(K)
    p_c /= p_c.sum()
    cum_p_c = np.cumsum(p_c)
    p_w_c = rng.random((V, K))
    p_w_c /= p_w_c.sum(axis=0)

    n = int(n_train) + int(n_test)
    x = np.zeros((n, V), dtype=np.float64)
    y = np.zeros((n, K), dtype=np.float64)
    for i in range(n):
        size = K + 1
        while size == 0 or size > K:
            size = int(rng.poisson(avg_labels))
        labels: set[int] = set()
        while len(labels) != size:
            labels.update(np.minimum(np.searchsorted(cum_p_c, rng.random(size - len(labels))), K - 1).tolist())
        chosen = sorted(labels)
        length = 0
        while length == 0:
            length = int(rng.poisson(doc_length))
        if class_proportions:
            props = rng.random(len(chosen))
            props /= props.sum()
            cum_w = np.cumsum(p_w_c[:, chosen] @ props)
        else:
            props = np.full(len(chosen), 1.0 / len(chosen))
            cum_w = np.cumsum(p_w_c[:, chosen].sum(axis=1))
            cum_w /= cum_w[-1]
        words = np.minimum(np.searchsorted(cum_w, rng.random(length)), V - 1)
        x[i] = np.bincount(words, minlength=V)
        y[i, chosen] = props
    x, y = x.astype(np.float32), y.astype(np.float32)
    tr, te = slice(0, int(n_train)), slice(int(n_train), n)
    return {"train": (x[tr], y[tr]), "test": (x[te], y[te]), "n_outputs": K}


@TASKS.register("multilabel")
def evaluate_multilabel(model, loss_fn, x, y, batch: int = 1000, final: bool = True) -> dict:
    """Test metrics of ``train_multilabel_classifier_lbfgs.py::classify_dataset`` (Unbabel/sparsemax 27d2a1a).

    ``loss_fn.predict(out) -> (p, mask)`` gives the predicted distribution p (N, K) and label set
    (boolean mask); q = y / |y|_1 is the target distribution and its support the gold label set.

    - ``test_loss``: mean of ``loss_fn(out, y, model)`` over the examples.
    - ``test_jsd``: the repo's "JS loss": sum over documents of JS(p, q) = 1/2 KL(p||m) + 1/2 KL(q||m),
      m = (p + q) / 2, natural log, divided by N*K (so K * test_jsd is the mean per-document JSD).
    - ``test_mse``: the repo's "Sq loss": sum over documents of |p - q|^2, divided by N*K.
    - ``test_micro_f1``: F1 of P = sum matched / sum predicted and R = sum matched / sum gold.
    - ``test_macro_f1``: per label l, P_l = matched_l / predicted_l and R_l = matched_l / gold_l (0 when
      the denominator is 0, the repo's nan_to_num); macro-F1 = 2 P R / (P + R) of P = mean_l P_l and
      R = mean_l R_l (the repo's definition, not the mean of the per-label F1s).
    - ``test_sparsity``: mean fraction of exact zeros in p; ``test_avg_support``: mean size of the label set.
    - ``test_support_f1``: micro-F1 of the support of p itself (p > 0) against the gold label sets: how
      well the exact zeros of p fall where a document has no label.  A distribution without zeros
      (softmax) scores 2|g| / (|g| + K); a sparse output scores higher only if its zeros are right.

    A ratio whose denominator is 0 counts as 0 (the repo would print nan).  Differences from the
    repo: for the logistic loss the repo reports no JS loss (it stays 0) and its Sq loss uses the
    unnormalised sigmoids; here both use the normalised sigmoids that ``predict`` returns.
    """
    predict = getattr(loss_fn, "predict", None)
    if predict is None:
        raise ValueError("task 'multilabel' needs a loss with a .predict(out) -> (distribution, label_mask) "
                         "(sparsemax_loss, softmax_multilabel_ce, logistic_multilabel)")
    was_training = model.training
    model.eval()
    n = len(y)
    loss_sum = jsd_sum = sq_sum = zeros = support = 0.0
    matched = predicted = gold = None
    sup_matched = sup_predicted = 0.0
    try:
        with torch.no_grad():
            for i in range(0, n, batch):
                xb, yb = x[i : i + batch], y[i : i + batch]
                out = model(xb)
                loss_sum += float(loss_fn(out, yb, model)) * len(yb)
                p, mask = predict(out)
                p, mask = p.double(), mask.bool()
                q = label_proportions(yb, out.shape[1], torch.float64)
                g = q > 0
                m = (p + q) / 2
                kl_p = torch.where(p > 0, p * torch.log(p / m), torch.zeros_like(p)).sum()
                kl_q = torch.where(g, q * torch.log(q / m), torch.zeros_like(q)).sum()
                jsd_sum += float(0.5 * kl_p + 0.5 * kl_q)
                sq_sum += float(((p - q) ** 2).sum())
                zeros += float((p == 0).sum())
                support += float(mask.sum())
                sup_matched += float(((p > 0) & g).sum())
                sup_predicted += float((p > 0).sum())
                mt, pr, gd = (mask & g).sum(0).double(), mask.sum(0).double(), g.sum(0).double()
                matched, predicted, gold = ((mt, pr, gd) if matched is None else
                                            (matched + mt, predicted + pr, gold + gd))
    finally:
        model.train(was_training)
    k = int(matched.numel())

    def ratio(a, b):
        return torch.where(b > 0, a / b.clamp_min(1), torch.zeros_like(a))

    def f1(p_, r_):
        return 2 * p_ * r_ / (p_ + r_) if p_ + r_ > 0 else 0.0

    micro_p = float(ratio(matched.sum(), predicted.sum()))
    micro_r = float(ratio(matched.sum(), gold.sum()))
    macro_p = float(ratio(matched, predicted).mean())
    macro_r = float(ratio(matched, gold).mean())
    sup_p, sup_r = sup_matched / max(sup_predicted, 1.0), sup_matched / max(float(gold.sum()), 1.0)
    return {"test_loss": loss_sum / n, "test_jsd": jsd_sum / (n * k), "test_mse": sq_sum / (n * k),
            "test_micro_f1": f1(micro_p, micro_r), "test_macro_f1": f1(macro_p, macro_r),
            "test_sparsity": zeros / (n * k), "test_avg_support": support / n, "test_support_f1": f1(sup_p, sup_r)}


class Linear(nn.Module):
    """x -> W x + b on the flattened input (``self.readout``); ``self.penultimate`` is the input.
    ``init="zeros"`` starts from W = 0, b = 0 as the repo's L-BFGS does; "torch" keeps PyTorch's default."""

    def __init__(self, in_shape=(10,), n_classes=10, bias=True, init="torch"):
        super().__init__()
        self.readout = nn.Linear(int(np.prod(in_shape)), n_classes, bias=bias)
        if init == "zeros":
            nn.init.zeros_(self.readout.weight)
            if bias:
                nn.init.zeros_(self.readout.bias)
        elif init != "torch":
            raise ValueError(f"unknown init {init!r} (torch, zeros)")
        self.penultimate: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.penultimate = x.flatten(1)
        return self.readout(self.penultimate)


@MODELS.register("linear", forwards_to=Linear)
def linear(in_shape, n_classes, **kw) -> nn.Module:
    return Linear(in_shape=in_shape, n_classes=n_classes, **kw)
