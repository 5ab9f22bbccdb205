"""Datasets once fetched (``softrepro.fetch`` gets them into ``data/``): loading by format and
preparing arrays for training.

``FORMATS`` maps a dataset's ``format`` (``configs/datasets.yaml``) to its loader: ``idx``
(the MNIST family's image files), ``sklearn`` (tables bundled with scikit-learn), ``generated``
(a registered generator), ``text`` (character-level text).  ``to_float`` and ``preprocess``
turn the arrays into the model's inputs, with statistics from the training split only.
"""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np

from softrepro.registry import FORMATS


def _sklearn_bunch(cfg: dict):
    import sklearn.datasets

    return getattr(sklearn.datasets, cfg["loader"])()


def sklearn_marker(name: str, cfg: dict) -> dict:
    """scikit-learn ships these datasets; record its version and a digest of the arrays."""
    import sklearn

    bunch = _sklearn_bunch(cfg)
    h = hashlib.sha256(np.ascontiguousarray(bunch.data, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(bunch.target, dtype=np.int64).tobytes())
    return {"dataset": name, "available": True, "source": f"scikit-learn {sklearn.__version__} (bundled)",
            "shape": list(bunch.data.shape), "sha256": {"data+target": h.hexdigest()}}


# ----------------------------------------------------------------------------- loading

def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST family's format) into a numpy array."""
    raw = Path(path).read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file")
    dtype = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[raw[2]]
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: expected {shape} items, found {data.size}")
    return data.reshape(shape)


def load_splits(name: str, cfg: dict, root: Path, seed: int, data_dir: str = "data", params: dict | None = None) -> dict:
    """A dataset's splits, from the loader registered for its ``format`` (``FORMATS``):
    ``{'train': (x, y), 'test': (x, y)}`` for classification data (generators may add
    ``n_outputs``), ``{'train': ids, 'test': ids, 'vocab': [...]}`` for text."""
    from softrepro.registry import FORMATS

    return FORMATS.get(cfg["format"])(name, cfg, root / data_dir, seed, params or {})


@FORMATS.register("idx")
def load_idx(name: str, cfg: dict, data: Path, seed: int, params: dict) -> dict:
    """IDX image files (the MNIST family) with their published split: uint8 [N, H, W] grey
    (or [N, H, W, C] colour) images and int64 labels."""
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x = read_idx(data / name / f"{prefix}-images-idx3-ubyte")
        y = read_idx(data / name / f"{prefix}-labels-idx1-ubyte").astype(np.int64)
        out[split] = (x, y)
    return out


@FORMATS.register("sklearn")
def load_sklearn(name: str, cfg: dict, data: Path, seed: int, params: dict) -> dict:
    """A table bundled with scikit-learn, float64 [N, D], split into train/test stratified by class
    with ``test_fraction``; the split is seeded by the run's seed (other seeds, other splits)."""
    from sklearn.model_selection import train_test_split

    bunch = _sklearn_bunch(cfg)
    x, y = np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target, dtype=np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=cfg["test_fraction"], stratify=y, random_state=seed)
    return {"train": (xtr, ytr), "test": (xte, yte)}


@FORMATS.register("generated")
def load_generated(name: str, cfg: dict, data: Path, seed: int, params: dict) -> dict:
    """Data made by a registered generator from the run's seed and the dataset's (and experiment's) parameters."""
    from softrepro.registry import GENERATORS

    return GENERATORS.get(cfg["generator"])(seed, **{**cfg.get("defaults", {}), **params})


@FORMATS.register("text")
def load_text(name: str, cfg: dict, data: Path, seed: int, params: dict) -> dict:
    """Character-level text: the vocabulary is the file's sorted distinct characters, the ids are
    int64, the first ``train_fraction`` of the text is the training split and the rest the
    validation split (the char-rnn / nanoGPT convention)."""
    files = list(cfg["files"])
    text = "".join((data / name / f).read_text(encoding="utf-8") for f in files)
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    ids = np.fromiter((index[c] for c in text), dtype=np.int64, count=len(text))
    cut = int(len(ids) * float(params.get("train_fraction", cfg.get("train_fraction", 0.9))))
    if "context" not in params:
        return {"train": ids[:cut], "test": ids[cut:], "vocab": vocab}
    return {**lm_windows(ids[:cut], ids[cut:], int(params["context"]), params.get("eval_tokens")), "n_outputs": len(vocab),
            "vocab": vocab}


def lm_windows(train: np.ndarray, test: np.ndarray, context: int, eval_tokens: int | None = None) -> dict:
    """Next-token data from two id streams (``data: {context: T[, eval_tokens: N]}``): the training
    split as non-overlapping windows, inputs ``[N, T]`` and the same shifted by one as targets; the
    validation split as one row, its first ``eval_tokens`` + 1 ids (all of it by default), inputs and
    shifted targets ``[1, N]``, which a language-model task cuts into windows of any length."""
    n = (len(train) - 1) // context
    if n < 1:
        raise ValueError(f"a training text of {len(train)} tokens has no window of context {context} + 1")
    x = train[: n * context].reshape(n, context)
    y = train[1 : n * context + 1].reshape(n, context)
    m = len(test) - 1 if eval_tokens is None else min(int(eval_tokens), len(test) - 1)
    return {"train": (x, y), "test": (test[None, :m], test[None, 1 : m + 1])}


# ----------------------------------------------------------------------------- preparation

def to_float(x: np.ndarray) -> np.ndarray:
    """uint8 images to [0, 1] floats with the channel first: grey [N, H, W] -> [N, 1, H, W],
    colour [N, H, W, C] -> [N, C, H, W]; tables as float32; integer features as int64."""
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
        return x[:, None] if x.ndim == 3 else np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if x.ndim == 4 else x
    return x.astype(np.int64) if np.issubdtype(x.dtype, np.integer) else x.astype(np.float32)


def preprocess(xtr: np.ndarray, xte: np.ndarray, cfg: dict | None):
    """Optional ``preprocess: {binarize, normalize, standardize, pca, reshape}``; statistics come from
    the training split only.  ``normalize: [mean, std]`` keeps the shape; the others flatten first."""
    if not cfg:
        return xtr, xte
    if cfg.get("binarize") is not None:  # fixed binarisation at a threshold
        xtr, xte = (xtr > cfg["binarize"]).astype(np.float32), (xte > cfg["binarize"]).astype(np.float32)
    if cfg.get("normalize"):
        mean, std = cfg["normalize"]
        xtr, xte = (xtr - mean) / std, (xte - mean) / std
    if not any(cfg.get(k) for k in ("standardize", "pca", "reshape")):
        return xtr.astype(np.float32), xte.astype(np.float32)
    xtr, xte = xtr.reshape(len(xtr), -1).astype(np.float64), xte.reshape(len(xte), -1).astype(np.float64)
    if cfg.get("standardize"):
        mu, sd = xtr.mean(0), xtr.std(0)
        sd[sd == 0] = 1.0
        xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    if cfg.get("pca"):
        from sklearn.decomposition import PCA

        pca = PCA(n_components=cfg["pca"], svd_solver="full").fit(xtr)  # exact SVD: deterministic
        xtr, xte = pca.transform(xtr), pca.transform(xte)
    if cfg.get("reshape"):
        shape = tuple(cfg["reshape"])
        xtr, xte = xtr.reshape(len(xtr), *shape), xte.reshape(len(xte), *shape)
    return xtr.astype(np.float32), xte.astype(np.float32)


def preprocess_cached(xtr: np.ndarray, xte: np.ndarray, cfg: dict | None, key: str | None, cache_dir: Path | None):
    """``preprocess``, computed once per ``key`` and kept in ``cache_dir`` (an exact PCA of 55,000
    images takes seconds, and every run and seed on the same data and settings needs the same
    result).  The key must name everything the result depends on (``prepared_key``)."""
    if not cfg or key is None or cache_dir is None:
        return preprocess(xtr, xte, cfg)
    path = Path(cache_dir) / f"{key}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                return z["xtr"], z["xte"]
        except (OSError, ValueError, KeyError):  # unreadable: computed again below
            pass
    from softrepro.atomic import write_atomic

    xtr, xte = preprocess(xtr, xte, cfg)
    path.parent.mkdir(parents=True, exist_ok=True)

    def save(tmp):
        with open(tmp, "wb") as fh:
            np.savez(fh, xtr=xtr, xte=xte)

    write_atomic(path, save)
    return xtr, xte


def prepared_key(exp: dict, dataset_cfg: dict, threads: int) -> str | None:
    """The identity of an experiment's prepared inputs, where they do not depend on the seed (a
    dataset with a published split): the data's digests, the slices taken, the preprocessing
    and the thread count (LAPACK's rounding in a PCA depends on it).  None where they do."""
    if dataset_cfg["format"] != "idx" or not exp.get("preprocess"):
        return None
    what = {"files": {f: c["sha256"] for f, c in dataset_cfg["files"].items()}, "threads": threads,
            **{k: exp.get(k) for k in ("dataset", "train_range", "train_subset", "test_subset", "preprocess")}}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:20]
