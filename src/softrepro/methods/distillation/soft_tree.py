"""The soft decision tree of Frosst & Hinton 2017, "Distilling a Neural Network Into a Soft Decision
Tree" (arXiv 1711.09784): a "hierarchical mixture of bigots".  What was and was not read of the paper
is in docs/sources/distillation-soft-tree.md; the choices below that the sources did not fix are
marked *ours*.

Model (``soft_tree``), a complete binary tree of ``depth`` levels of inner nodes (2^depth - 1 of them,
numbered breadth first: node i has children 2i + 1 (left) and 2i + 2 (right)) over 2^depth leaves:

* inner node i sends x to its right child with probability p_i(x) = sigmoid(beta * (x . w_i + b_i)),
  to its left child with 1 - p_i(x); beta is an inverse temperature (fixed, or learned with
  ``learn_beta``);
* leaf l holds a learned distribution Q^l = softmax(phi^l) over the classes, the same for every x;
* the path probability P^l(x) of leaf l is the product of the branch probabilities from the root.

Forward returns the log of the distribution of the leaf with the greatest path probability,
log Q^{argmax_l P^l(x)}: the prediction the paper evaluates ("the leaf with the maximum path
probability"), so the engine's accuracy is that leaf's argmax.  ``prediction: mixture`` returns the
path-weighted average log sum_l P^l(x) Q^l instead.  The forward keeps what the loss needs
(``leaf_log_path``, ``leaf_log_q`` and, in training mode, ``alpha``), as ``MLP`` keeps its
``penultimate``.

Loss (``soft_tree``): the expected log loss over the leaves, weighted by the path probabilities,

    L(x) = - sum_l P^l(x) sum_k T_k log Q^l_k,

batch mean, with T the one-hot label, or with a teacher the teacher's softmax at ``temperature``
(``alpha`` < 1 mixes the labels back in: alpha * soft + (1 - alpha) * hard; 1 = soft targets alone).
In training mode it adds the balancing penalty over the inner nodes,

    C = - lambda * sum_i 2^(-d_i) * [0.5 log alpha_i + 0.5 log(1 - alpha_i)],
    alpha_i = sum_x P^i(x) p_i(x) / sum_x P^i(x),

P^i the path probability of reaching node i, d_i its depth (0 at the root).  alpha_i is smoothed
over batches by an exponentially decaying running average whose time window grows as 2^d_i:
alpha~_i = g_i * alpha_avg_i + (1 - g_i) * alpha_i(batch) with g_i = 1 - 1 / (ema_window * 2^d_i)
(``ema_window`` 0: the batch alone), the running average a buffer of the model, updated by each
training-mode forward (like batch normalisation's statistics), so checkpoints carry it.  The penalty
is evaluated at alpha~_i and its gradient reaches the parameters through the current batch's
alpha_i with full weight (alpha_i + (alpha~_i - alpha_i).detach()): the running average steadies the
estimate of a deep node, which sees few examples per batch, without shrinking its gradient by
1 - g_i.  The exact form of the paper's running average, lambda, beta and the window were not read
(ours).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from softrepro.registry import LOSSES, MODELS

EPS = 1e-12


def node_depths(depth: int) -> torch.Tensor:
    """Depth of each inner node in breadth-first order (root 0): 1 node at 0, 2 at 1, ..."""
    return torch.cat([torch.full((2**d,), d, dtype=torch.long) for d in range(depth)])


def path_log_probs(log_right: torch.Tensor, log_left: torch.Tensor, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(log P of every inner node, log P of every leaf) from the per-node log branch probabilities
    (B, 2^depth - 1), breadth first; the root is reached with probability 1."""
    log_p = log_right.new_zeros(log_right.shape[0], 1)
    inner = []
    for d in range(depth):
        inner.append(log_p)
        lo, hi = 2**d - 1, 2 ** (d + 1) - 1
        # child 2j of level d + 1 is the left child of node j of level d, child 2j + 1 its right child
        log_p = torch.stack([log_p + log_left[:, lo:hi], log_p + log_right[:, lo:hi]], -1).flatten(1)
    return torch.cat(inner, 1), log_p


class SoftDecisionTree(nn.Module):
    def __init__(self, in_shape=(784,), n_classes=10, depth: int = 8, beta: float = 1.0, learn_beta: bool = False,
                 ema_window: float = 1.0, prediction: str = "max_path", leaf_init_std: float = 0.0):
        super().__init__()
        if depth < 1 or beta <= 0 or ema_window < 0 or prediction not in ("max_path", "mixture"):
            raise ValueError(f"soft_tree: depth >= 1, beta > 0, ema_window >= 0, prediction max_path|mixture "
                             f"(got {depth}, {beta}, {ema_window}, {prediction!r})")
        self.depth, self.prediction, self.ema_window = int(depth), prediction, float(ema_window)
        n_inner, n_leaves = 2**self.depth - 1, 2**self.depth
        self.inner = nn.Linear(int(torch.tensor(in_shape).prod()), n_inner)  # row i: the filter w_i, bias b_i
        self.phi = nn.Parameter(torch.randn(n_leaves, n_classes) * leaf_init_std)  # leaf logits (ours: zeros)
        if learn_beta:
            self.beta = nn.Parameter(torch.tensor(float(beta)))
        else:
            self.register_buffer("beta", torch.tensor(float(beta)))
        self.register_buffer("depths", node_depths(self.depth))
        self.register_buffer("alpha_avg", torch.full((n_inner,), 0.5))
        self.register_buffer("alpha_seen", torch.zeros((), dtype=torch.bool))
        self.leaf_log_path: torch.Tensor | None = None
        self.leaf_log_q: torch.Tensor | None = None
        self.alpha: torch.Tensor | None = None

    def smoothing(self) -> torch.Tensor:
        """g_i, the weight of the running average of node i (0: the batch alone)."""
        if self.ema_window == 0:
            return torch.zeros_like(self.alpha_avg)
        return (1 - 1 / (self.ema_window * 2.0 ** self.depths.to(self.alpha_avg.dtype))).clamp_min(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.beta * self.inner(x.flatten(1))
        log_right, log_left = F.logsigmoid(z), F.logsigmoid(-z)
        inner_log_path, leaf_log_path = path_log_probs(log_right, log_left, self.depth)
        log_q = F.log_softmax(self.phi, 1)
        self.leaf_log_path, self.leaf_log_q = leaf_log_path, log_q
        if self.training:
            reach = inner_log_path.exp()
            batch_alpha = (reach * log_right.exp()).sum(0) / reach.sum(0).clamp_min(EPS)
            g = self.smoothing() * self.alpha_seen.to(batch_alpha.dtype)  # the first batch starts the average
            smoothed = (g * self.alpha_avg + (1 - g) * batch_alpha).detach()
            self.alpha = batch_alpha + (smoothed - batch_alpha).detach()  # the value of smoothed, the batch's gradient
            with torch.no_grad():
                self.alpha_avg.copy_(smoothed)
                self.alpha_seen.fill_(True)
        if self.prediction == "mixture":
            return torch.logsumexp(leaf_log_path[:, :, None] + log_q[None], 1)
        return log_q[leaf_log_path.argmax(1)]


@MODELS.register("soft_tree", forwards_to=SoftDecisionTree)
def soft_tree(in_shape, n_classes, **kw) -> nn.Module:
    return SoftDecisionTree(in_shape=in_shape, n_classes=n_classes, **kw)


def leaf_cross_entropies(log_q: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, leaves): - sum_k T_k log Q^l_k for target rows T (B, K) or class indices (B,)."""
    if targets.dim() == 1:
        return -log_q[:, targets].T
    return -targets @ log_q.T


def balance_penalty(alpha: torch.Tensor, depths: torch.Tensor, strength: float) -> torch.Tensor:
    """- strength * sum_i 2^-d_i (0.5 log alpha_i + 0.5 log(1 - alpha_i))."""
    eps = torch.finfo(alpha.dtype).eps  # (1 - 1e-12 would round to 1 in float32)
    a = alpha.clamp(eps, 1 - eps)
    return -strength * (2.0 ** -depths.to(a.dtype) * 0.5 * (a.log() + (1 - a).log())).sum()


@LOSSES.register("soft_tree")
class SoftTreeLoss:
    def __init__(self, penalty: float = 0.1, temperature: float = 1.0, alpha: float = 1.0):
        if penalty < 0 or temperature <= 0 or not 0 <= alpha <= 1:
            raise ValueError(f"soft_tree loss: penalty >= 0, temperature > 0, alpha in [0, 1] (got {penalty}, {temperature}, {alpha})")
        self.penalty, self.temperature, self.alpha = float(penalty), float(temperature), float(alpha)
        self._mixture: torch.Tensor | None = None

    def __call__(self, logits, targets, model, teacher=None):
        log_path, log_q = model.leaf_log_path, model.leaf_log_q
        ce = leaf_cross_entropies(log_q, targets)
        if teacher is not None:
            soft = leaf_cross_entropies(log_q, F.softmax(teacher.to(log_q.dtype) / self.temperature, 1))
            ce = self.alpha * soft + (1 - self.alpha) * ce if self.alpha < 1 else soft
        loss = (log_path.exp() * ce).sum(1).mean()
        if model.training:
            if self.penalty:
                loss = loss + balance_penalty(model.alpha, model.depths, self.penalty)
        else:  # kept for test_counts: the path-weighted average prediction of the same forward
            self._mixture = torch.logsumexp(log_path[:, :, None] + log_q[None], 1).detach()
        return loss

    def test_counts(self, outputs, labels) -> dict:
        """The accuracy of the path-weighted average of the leaves (the paper's other prediction), beside
        the engine's accuracy of the maximum-path leaf."""
        return {"test_mixture_accuracy": float((self._mixture.argmax(1) == labels).sum())}
