"""A synthetic passkey-retrieval task for the character-level decoder: retrieval accuracy by length.

Each sequence is filler symbols with a short digit key after a key marker at a random depth, and a
query marker at the end after which the model must repeat the key (this project's design):

    filler ... # d1 ... dk filler ... ? d1 ... dk

Inputs are the sequence without its last symbol, targets the key digits after the query marker at
the last k positions and ``IGNORE`` everywhere else, so that the cross-entropy (``ignore_index``
-100, PyTorch's default) trains on the answer only.  Digits occur nowhere but in the key and its
answer.  The generator ``passkey`` makes the training split at the model's context from the run's
seed, and the test split at every multiple of that context in ``multiples`` from a fixed
``eval_seed``: the same evaluation sequences for every run and seed, each length drawn by its own
generator (so the sequences of one length do not depend on which other lengths are asked for), the
key's depth stratified over the sequences of each length.  Test rows are right-padded to the
longest length (padding is never read: a row's length is where its last answer stands, and the
model is causal).

The task ``passkey`` scores the answers with the inputs given (teacher forcing): a key counts as
retrieved when the argmax at every one of its k answer positions is its digit, which is the same
as greedy decoding getting all of it (its first wrong digit would be the first argmax error).
"""
from __future__ import annotations

import string

import numpy as np
import torch

from softrepro.methods.attention.decoder import Attention, answer_counts, end_of_training
from softrepro.registry import GENERATORS, TASKS

IGNORE = -100  # targets that the loss and the scores skip (F.cross_entropy's default ignore_index)
DIGITS = 10  # ids 0-9: the key's digits
KEY = 10  # the key marker
QUERY = 11  # the query marker
FILLER = 12  # ids 12, 13, ...: the filler symbols
SYMBOLS = string.digits + "#?" + string.ascii_lowercase  # id -> character, for reading sequences


def _check(context: int, key_len: int, n_filler: int, multiples) -> tuple[int, ...]:
    if int(key_len) < 1:
        raise ValueError(f"passkey key_len must be at least 1, not {key_len!r}")
    if not 1 <= int(n_filler) <= len(string.ascii_lowercase):
        raise ValueError(f"passkey n_filler must be between 1 and {len(string.ascii_lowercase)}, not {n_filler!r}")
    if int(context) < 2 * int(key_len) + 2:
        raise ValueError(f"passkey context {context} is too short for a key of {key_len} digits: a sequence holds the "
                         f"marked key, the query marker and the answer ({2 * int(key_len) + 1} symbols) and at least one "
                         f"filler symbol, so the context must be at least {2 * int(key_len) + 2}")
    ms = tuple(multiples)
    if not ms or any(not isinstance(m, int) or isinstance(m, bool) or m < 1 for m in ms) or len(set(ms)) != len(ms):
        raise ValueError(f"passkey multiples must be distinct positive integers, not {list(ms)!r}")
    return ms


def sequences(rng: np.random.Generator, n: int, length: int, key_len: int = 5, n_filler: int = 26,
              stratified: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` passkey rows of ``length`` inputs: (x [n, length] int64, y [n, length] int64, the key
    marker's position [n]).  The sequence (length + 1 symbols) holds f = length - 2 key_len - 1 filler
    symbols, the first p of them before the marked key, p uniform in 0..f (``stratified``: row i's p
    drawn within the i-th of n equal slices of that range, so that the depths cover it)."""
    n, length, k = int(n), int(length), int(key_len)
    f = length - 2 * k - 1
    if n < 1 or f < 1:
        raise ValueError(f"passkey sequences need n >= 1 and length >= 2 key_len + 2 (n={n}, length={length}, key_len={k})")
    s = rng.integers(FILLER, FILLER + int(n_filler), size=(n, length + 1))
    key = rng.integers(0, DIGITS, size=(n, k))
    if stratified:
        p = np.floor((np.arange(n) + rng.random(n)) / n * (f + 1)).astype(np.int64).clip(0, f)
    else:
        p = rng.integers(0, f + 1, size=n)
    rows = np.arange(n)[:, None]
    s[rows[:, 0], p] = KEY
    s[rows, p[:, None] + 1 + np.arange(k)] = key
    s[:, length - k] = QUERY
    s[:, length - k + 1 :] = key
    x = s[:, :length].astype(np.int64)
    y = np.full((n, length), IGNORE, dtype=np.int64)
    y[:, length - k :] = key
    return x, y, p.astype(np.int64)


@GENERATORS.register("passkey")
def passkey(seed: int, context: int = 64, key_len: int = 5, n_filler: int = 26, n_train: int = 16384, n_eval: int = 200,
            multiples: list[int] | tuple[int, ...] = (1, 2, 4, 8), eval_seed: int = 20240601) -> dict:
    """Training rows at ``context`` (``n_train``, from ``seed``, key depth uniform) and ``n_eval`` test rows
    at each multiple of ``context`` in ``multiples`` (from ``eval_seed`` and the multiple alone, key depth
    stratified), right-padded to the longest; ``n_outputs`` is the vocabulary size."""
    ms = _check(context, key_len, n_filler, multiples)
    if int(n_train) < 1 or int(n_eval) < 1:
        raise ValueError(f"passkey n_train and n_eval must be at least 1 (n_train={n_train}, n_eval={n_eval})")
    xtr, ytr, _ = sequences(np.random.default_rng(seed), n_train, context, key_len, n_filler)
    longest = max(ms) * int(context)
    xte = np.zeros((len(ms) * int(n_eval), longest), dtype=np.int64)
    yte = np.full_like(xte, IGNORE)
    for i, m in enumerate(ms):
        x, y, _ = sequences(np.random.default_rng([int(eval_seed), m]), n_eval, m * int(context), key_len, n_filler,
                            stratified=True)
        xte[i * int(n_eval) : (i + 1) * int(n_eval), : x.shape[1]] = x
        yte[i * int(n_eval) : (i + 1) * int(n_eval), : y.shape[1]] = y
    return {"train": (xtr, ytr), "test": (xte, yte), "n_outputs": FILLER + int(n_filler),
            "vocab": list(SYMBOLS[: FILLER + int(n_filler)])}


def row_lengths(y: torch.Tensor) -> torch.Tensor:
    """Each test row's length: one past its last answer position (positions after it are padding)."""
    if y.dim() != 2:
        raise ValueError(f"passkey targets must be [rows, length], not of shape {tuple(y.shape)}")
    answered = y != IGNORE
    empty = (~answered.any(1)).nonzero().flatten()
    if len(empty):
        raise ValueError(f"passkey target row {int(empty[0])} has no answer position (every target is {IGNORE})")
    return y.shape[1] - answered.flip(1).int().argmax(1)


class _KeyAttention:
    """The share of each attention row's weight that the query marker's position puts on the marked key
    (marker and digits), per layer and head, summed over the rows of one length: forward hooks on a
    decoder's attention layers that recompute the query rows' weights from their inputs (a model
    without ``blocks[i].attn`` of the decoder's kind is not measured).  A normalisation whose weights do
    not sum to 1 (sigmoid, ReLU) is measured as a share of its row's total weight."""

    def __init__(self, model):
        blocks = getattr(model, "blocks", None)
        self.layers = [b.attn for b in blocks] if blocks is not None and all(isinstance(getattr(b, "attn", None), Attention)
                                                                          for b in blocks) else []
        self.query = self.key = self.key_len = None
        self.sums: list[torch.Tensor] = []
        self.handles = []

    def __enter__(self):
        for i, attn in enumerate(self.layers):
            self.handles.append(attn.register_forward_hook(lambda mod, args, out, i=i: self._measure(i, mod, args[0])))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()

    def set_rows(self, query: torch.Tensor, key: torch.Tensor, key_len: torch.Tensor) -> None:
        """The next batch's query positions [b] and key blocks (marker position [b], digits [b])."""
        self.query, self.key, self.key_len = query, key, key_len

    def _measure(self, i: int, attn, x: torch.Tensor) -> None:
        """The query rows' weights alone: each row's logits against every key, its own causal mask and n
        (a normalisation treats rows independently), as the layer's ``logits`` computes them."""
        b, t, d = x.shape
        q, k, _ = attn.qkv(x).view(b, t, 3, attn.heads, attn.dh).permute(2, 0, 3, 1, 4)
        norm = attn.norm_after if attn.swapped else attn.norm
        qs, ks, scale = attn.queries_keys(q, k, getattr(norm, "cosine_logits", False))
        z = torch.einsum("bhd,bhtd->bht", qs[torch.arange(b, device=x.device), :, self.query], ks)
        z = z if scale == 1.0 else z * scale
        pos = torch.arange(t, device=x.device)
        mask = pos[None] <= self.query[:, None] if attn.causal else torch.ones(b, t, dtype=torch.bool, device=x.device)
        n = mask.sum(-1).to(z.dtype)
        rows = norm(z[:, :, None], mask[:, None, None], n[:, None, None, None])[:, :, 0]  # [b, heads, t]
        rows = rows.float() * mask[:, None]
        block = (pos >= self.key[:, None]) & (pos <= (self.key + self.key_len)[:, None])  # marker and digits
        share = (rows * block[:, None]).sum(-1) / rows.sum(-1).clamp_min(torch.finfo(rows.dtype).tiny)
        while len(self.sums) <= i:
            self.sums.append(torch.zeros(attn.heads, dtype=torch.float64, device=x.device))
        self.sums[i] += share.double().sum(0)


@torch.no_grad()
def passkey_scores(model, x: torch.Tensor, y: torch.Tensor, multiples=None, tokens_per_batch: int = 8192) -> dict:
    """Per multiple m of the model's training context (``model.context``) found among the rows' lengths
    (or those of ``multiples``): ``passkey_acc_x{m}`` the fraction of keys retrieved whole (every answer
    digit the argmax), ``passkey_digit_acc_x{m}`` the fraction of answer digits right,
    ``passkey_loss_x{m}`` the mean cross-entropy of the answer digits (nats), and, for a decoder,
    ``passkey_key_attn_x{m}``: the largest over layers and heads of the mean share of the query marker's
    attention weight that lands on the marked key (marker and digits)."""
    ctx = getattr(model, "context", None)
    if not isinstance(ctx, int) or ctx < 1:
        raise ValueError("the passkey task needs a sequence model with its training context as `context`")
    if x.shape != y.shape:
        raise ValueError(f"passkey inputs {tuple(x.shape)} and targets {tuple(y.shape)} differ in shape")
    lengths = row_lengths(y)
    bad = (lengths % ctx != 0).nonzero().flatten()
    if len(bad):
        raise ValueError(f"passkey test row {int(bad[0])} has length {int(lengths[bad[0]])}, not a multiple of the "
                         f"model's training context {ctx}")
    found = sorted({int(v) for v in (lengths // ctx).tolist()})
    wanted = found if multiples is None else list(multiples)
    missing = [m for m in wanted if m not in found]
    if missing:
        raise ValueError(f"no passkey test rows at {missing} x the context {ctx} (the rows have {found})")
    out = {}
    for m in wanted:
        length = m * ctx
        rows = (lengths == length).nonzero().flatten()
        exact = right = answers = 0
        loss = 0.0
        step = max(1, tokens_per_batch // length)
        with _KeyAttention(model) as probe:
            for i in range(0, len(rows), step):
                r = rows[i : i + step]
                xb, yb = x[r, :length], y[r, :length]
                answer = yb != IGNORE
                k = answer.sum(1)
                probe.set_rows(length - k, (xb == KEY).int().argmax(1), k)
                e, h, l = answer_counts(model(xb), yb, answer)
                exact, right, answers, loss = exact + e, right + h, answers + int(k.sum()), loss + l
        out[f"passkey_acc_x{m}"] = exact / len(rows)
        out[f"passkey_digit_acc_x{m}"] = right / answers
        out[f"passkey_loss_x{m}"] = loss / answers
        if probe.sums:
            out[f"passkey_key_attn_x{m}"] = float(max(s.max() for s in probe.sums)) / len(rows)
    return out


@TASKS.register("passkey")
def evaluate_passkey(model, loss_fn, x, y, final: bool = False) -> dict:
    """During training the scores at the shortest length only (the training context); at the end at
    every length, whether the run diverged (a non-finite answer loss), and the model's last
    training-batch measures (``final_``) as the ``lm`` task reports them.  ``test_loss`` is the answer
    loss at the shortest length."""
    ctx = getattr(model, "context", None)
    shortest = None
    if isinstance(ctx, int) and ctx > 0:
        shortest = [int(row_lengths(y).min()) // ctx] if not final else None
    out = passkey_scores(model, x, y, shortest)
    first = min(int(k.rpartition("x")[2]) for k in out if k.startswith("passkey_loss_x"))
    out["test_loss"] = out[f"passkey_loss_x{first}"]
    if final:
        out.update(end_of_training(model, out["test_loss"]))
    return out


# The report draws retrieval against the evaluation length (exact and per digit, and the attention
# share on the key), beside the training curves and the attention measures logged during training.
evaluate_passkey.figures = [
    {"kind": "columns", "source": "metrics", "pattern": r"passkey_acc_x(\d+)", "log_x": True,
     "xlabel": "evaluation length / training context", "ylabel": "passkey exact-match accuracy",
     "title": "passkey retrieval against length (mean over seeds, t 95 % CI)"},
    {"kind": "columns", "source": "metrics", "pattern": r"passkey_digit_acc_x(\d+)", "log_x": True,
     "xlabel": "evaluation length / training context", "ylabel": "passkey per-digit accuracy",
     "title": "passkey digits right against length (teacher-forced; mean over seeds, t 95 % CI)"},
    {"kind": "columns", "source": "metrics", "pattern": r"passkey_key_attn_x(\d+)", "log_x": True,
     "xlabel": "evaluation length / training context", "ylabel": "query's attention share on the key",
     "title": "attention on the key from the query marker (best head; mean over seeds, t 95 % CI)"},
    {"kind": "curves", "columns": ["attn_logit_max_l0", "attn_entropy_min"]},
]
