"""A synthetic sequence-to-sequence task (copy or reverse a random string) posed to a decoder-only model.

Each row is a source of ``length`` random symbols, a separator, and the target: the source reversed
(``mode: reverse``) or repeated (``mode: copy``)::

    s1 s2 ... sL | sL ... s2 s1        (reverse)
    s1 s2 ... sL | s1 s2 ... sL        (copy)

Inputs are the row without its last symbol (2 L positions), targets the target symbols at the last L
positions (the separator's position predicts the first) and ``IGNORE`` everywhere else, so that the
cross-entropy (``ignore_index`` -100, PyTorch's default) trains on the target only.  Symbols are ids
0 .. n_symbols - 1, the separator is id ``n_symbols``.  The generator ``seq2seq`` makes ``n_train``
training rows from the run's seed and ``n_eval`` test rows from a fixed ``eval_seed`` (the same
evaluation rows for every run and seed).

The task ``seq2seq`` scores the target with the inputs given (teacher forcing): ``seq2seq_acc`` the
fraction of rows whose every target position has its symbol as the argmax (the same as greedy
decoding getting the whole target right: its first wrong symbol would be the first argmax error),
``seq2seq_token_acc`` the fraction of target symbols right, and ``test_loss`` the mean cross-entropy
of the target symbols (nats).
"""
from __future__ import annotations


import numpy as np
import torch

from softrepro.methods.attention.decoder import answer_counts, end_of_training
from softrepro.registry import GENERATORS, TASKS

IGNORE = -100  # targets that the loss and the scores skip (F.cross_entropy's default ignore_index)
MODES = ("reverse", "copy")


def _check(length: int, n_symbols: int, mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"seq2seq mode must be one of {', '.join(MODES)}, not {mode!r}")
    if not isinstance(length, int) or isinstance(length, bool) or length < 1:
        raise ValueError(f"seq2seq length must be a positive integer, not {length!r}")
    if not isinstance(n_symbols, int) or isinstance(n_symbols, bool) or n_symbols < 2:
        raise ValueError(f"seq2seq n_symbols must be an integer of at least 2, not {n_symbols!r}")


def rows(rng: np.random.Generator, n: int, length: int = 10, n_symbols: int = 10, mode: str = "reverse"
         ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rows: (x [n, 2 length] int64, y [n, 2 length] int64), the source, the separator and the
    target shifted by one as inputs, the target at the last ``length`` positions of y."""
    _check(length, n_symbols, mode)
    if int(n) < 1:
        raise ValueError(f"seq2seq needs at least one row, not {n!r}")
    src = rng.integers(0, n_symbols, size=(int(n), length))
    tgt = src[:, ::-1] if mode == "reverse" else src
    seq = np.concatenate([src, np.full((int(n), 1), n_symbols), tgt], 1)  # [n, 2 length + 1]
    x = np.ascontiguousarray(seq[:, :-1], dtype=np.int64)
    y = np.full_like(x, IGNORE)
    y[:, length:] = tgt
    return x, y


@GENERATORS.register("seq2seq")
def seq2seq(seed: int, length: int = 10, n_symbols: int = 10, mode: str = "reverse", n_train: int = 16384,
            n_eval: int = 1000, eval_seed: int = 20201008) -> dict:
    """Training rows from ``seed`` and test rows from ``eval_seed`` (the same for every seed);
    ``n_outputs`` is the vocabulary size (the symbols and the separator)."""
    _check(length, n_symbols, mode)
    if int(n_train) < 1 or int(n_eval) < 1:
        raise ValueError(f"seq2seq n_train and n_eval must be at least 1 (n_train={n_train}, n_eval={n_eval})")
    train = rows(np.random.default_rng(seed), n_train, length, n_symbols, mode)
    test = rows(np.random.default_rng(int(eval_seed)), n_eval, length, n_symbols, mode)
    return {"train": train, "test": test, "n_outputs": n_symbols + 1}


@torch.no_grad()
def seq2seq_scores(model, x: torch.Tensor, y: torch.Tensor, tokens_per_batch: int = 16384) -> dict:
    """Exact-match and per-symbol accuracy and the mean cross-entropy (nats) of the target positions."""
    if x.dim() != 2 or x.shape != y.shape:
        raise ValueError(f"seq2seq inputs {tuple(x.shape)} and targets {tuple(y.shape)} must be [rows, length] alike")
    target = y != IGNORE
    k = target.sum(1)
    if len(k) == 0 or int(k.min()) == 0:
        raise ValueError(f"seq2seq targets need at least one row and a target position in every row (every target "
                         f"{IGNORE} means none)")
    exact = right = 0
    loss = 0.0
    step = max(1, tokens_per_batch // x.shape[1])
    for i in range(0, len(x), step):
        xb, yb, tb = x[i : i + step], y[i : i + step], target[i : i + step]
        logits = model(xb)
        if logits.shape[:2] != xb.shape:
            raise ValueError(f"the model's logits {tuple(logits.shape)} do not match its inputs {tuple(xb.shape)}")
        e, h, l = answer_counts(logits, yb, tb)
        exact, right, loss = exact + e, right + h, loss + l
    n = int(k.sum())
    return {"seq2seq_acc": exact / len(x), "seq2seq_token_acc": right / n, "test_loss": loss / n}


@TASKS.register("seq2seq")
def evaluate_seq2seq(model, loss_fn, x, y, final: bool = False) -> dict:
    """The scores of ``seq2seq_scores``; at the end also whether the run diverged (a non-finite target
    loss) and the model's last training-batch measures (``final_``), as the ``lm`` task reports them."""
    out = seq2seq_scores(model, x, y)
    if final:
        out.update(end_of_training(model, out["test_loss"]))
    return out


# The report draws the target loss and accuracy logged during training and the attention measures.
evaluate_seq2seq.figures = [
    {"kind": "curves", "columns": ["test_loss", "seq2seq_acc", "seq2seq_token_acc"]},
    {"kind": "curves", "columns": ["attn_logit_max_l0", "attn_entropy_min"]},
]
