"""Datasets: DVC first, then mirror/canonical download with verified payloads.

``ensure`` is what the data rule runs.  For ``data/<name>``:

1. if ``data/<name>.dvc`` is committed, ``dvc checkout`` (local or shared cache) and,
   when a DVC remote is configured, ``dvc pull``;
2. otherwise download every file from ``$SOFTREPRO_MIRROR/<name>/<file>`` and then the
   canonical URLs, verify the digests (decompressed payloads, so a mirror with other
   gzip headers verifies too), move the payloads into place, ``dvc add`` them and
   ``dvc push`` when a remote is configured.

A digest mismatch raises :class:`ChecksumError` (naming the file and both digests)
before anything is moved into ``data/``.  If no source can be reached, the dataset
is *unavailable*: ``ensure`` says so in its marker and the runs that need it are
reported as "not run: dataset unavailable".
"""
from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

MIRROR_ENV = "SOFTREPRO_MIRROR"
CHUNK = 1 << 20


class ChecksumError(RuntimeError):
    def __init__(self, file: str, expected: str, actual: str, kind: str = "sha256"):
        self.file, self.expected, self.actual = file, expected, actual
        super().__init__(f"checksum mismatch for {file}: expected {kind} {expected}, got {actual}")


class DatasetUnavailable(RuntimeError):
    pass


def _digest(path: Path, algo: str = "sha256") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def sources(name: str, url: str) -> list[str]:
    """Where a file may come from, in order: the mirror (if set), then the canonical URL."""
    out = []
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if mirror:
        base = os.path.basename(urllib.parse.urlparse(url).path)
        if "://" in mirror:
            out.append(f"{mirror.rstrip('/')}/{name}/{base}")
        else:
            out.append(str(Path(mirror).expanduser().resolve() / name / base))
    out.append(url)
    return out


def _download(src: str, dest: Path, timeout: float = 30.0) -> None:
    if "://" not in src or src.startswith("file://"):
        local = Path(urllib.parse.urlparse(src).path if src.startswith("file://") else src)
        shutil.copyfile(local, dest)  # FileNotFoundError when the mirror lacks it
        return
    req = urllib.request.Request(src, headers={"User-Agent": "softrepro"})
    with urllib.request.urlopen(req, timeout=timeout) as resp, open(dest, "wb") as out:
        shutil.copyfileobj(resp, out, CHUNK)


def download_and_verify(name: str, cfg: dict, staging: Path, log=print) -> dict[str, str]:
    """Fetch every file of dataset ``name`` into ``staging``; return payload sha256 per file.

    Raises DatasetUnavailable if some file has no reachable source and
    ChecksumError if a file arrives with the wrong digest.
    """
    staging.mkdir(parents=True, exist_ok=True)
    digests = {}
    for fname, fcfg in cfg["files"].items():
        archive = staging / (fname + ".download")
        errors = []
        for url in fcfg["urls"]:
            for src in sources(name, url):
                try:
                    _download(src, archive)
                    log(f"[{name}] {fname}: fetched from {src}")
                    break
                except (OSError, ValueError) as exc:  # URLError and HTTPError are OSErrors
                    errors.append(f"{src}: {exc}")
            else:
                continue
            break
        else:
            raise DatasetUnavailable(f"no source reachable for {name}/{fname}: " + "; ".join(errors))
        payload = staging / fname
        if fcfg["compression"] == "gzip":
            with gzip.open(archive, "rb") as src_fh, open(payload, "wb") as out:
                shutil.copyfileobj(src_fh, out, CHUNK)
            archive.unlink()
        else:
            archive.replace(payload)
        digests[fname] = _digest(payload)
        if digests[fname] != fcfg["sha256"]:
            payload.unlink()
            raise ChecksumError(f"{name}/{fname}", fcfg["sha256"], digests[fname])
    return digests


def verify_payloads(name: str, cfg: dict, target: Path) -> dict[str, str]:
    """Digest every payload already in ``target``; raise ChecksumError on a mismatch."""
    digests = {}
    for fname, fcfg in cfg["files"].items():
        path = target / fname
        if not path.is_file():
            raise FileNotFoundError(path)
        digests[fname] = _digest(path)
        if digests[fname] != fcfg["sha256"]:
            raise ChecksumError(f"{name}/{fname}", fcfg["sha256"], digests[fname])
    return digests


def dvc(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def dvc_remote_configured(root: Path) -> bool:
    proc = dvc("remote", "default", cwd=root, check=False)
    return proc.returncode == 0 and bool(proc.stdout.strip())


@contextlib.contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # one DVC operation at a time in this checkout
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure(name: str, cfg: dict, root: Path, data_dir: str = "data", log=print) -> dict:
    """Make ``<data_dir>/<name>`` present and verified; return the marker describing it."""
    if cfg["format"] == "sklearn":
        return _sklearn_marker(name, cfg)
    if cfg["format"] == "generated":
        return {"dataset": name, "available": True, "source": f"generated by code (generator {cfg['generator']!r})"}
    data = root / data_dir
    target, dvcfile = data / name, data / f"{name}.dvc"
    rel = target.relative_to(root)
    with _lock(data / ".softrepro.lock"):
        source = None
        if dvcfile.is_file():
            if dvc("checkout", str(dvcfile.relative_to(root)), cwd=root, check=False).returncode == 0 and target.is_dir():
                source = "dvc cache"
            elif dvc_remote_configured(root):
                if dvc("pull", str(dvcfile.relative_to(root)), cwd=root, check=False).returncode == 0 and target.is_dir():
                    source = "dvc remote"
        if source is None and target.is_dir():
            with contextlib.suppress(FileNotFoundError, ChecksumError):
                verify_payloads(name, cfg, target)
                source = "data directory"
        if source is None:
            staging = data / f".{name}.partial"
            shutil.rmtree(staging, ignore_errors=True)
            try:
                download_and_verify(name, cfg, staging, log=log)
            except DatasetUnavailable as exc:
                shutil.rmtree(staging, ignore_errors=True)
                log(f"[{name}] unavailable: {exc}")
                return {"dataset": name, "available": False, "reason": "dataset unavailable", "detail": str(exc)}
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
            source = "download"
        digests = verify_payloads(name, cfg, target)
        if source == "download" or not dvcfile.is_file():
            dvc("add", str(rel), cwd=root)
            if dvc_remote_configured(root):
                dvc("push", str(dvcfile.relative_to(root)), cwd=root)
    log(f"[{name}] ready ({source})")
    return {"dataset": name, "available": True, "source": source, "path": str(rel), "sha256": digests}


def _sklearn_bunch(cfg: dict):
    import sklearn.datasets

    return getattr(sklearn.datasets, cfg["loader"])()


def _sklearn_marker(name: str, cfg: dict) -> dict:
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


def load_image_classification(name: str, root: Path, data_dir: str = "data") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'train': (images uint8 [N,H,W], labels int64), 'test': (...)} for an IDX dataset."""
    base = root / data_dir / name
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x = read_idx(base / f"{prefix}-images-idx3-ubyte")
        y = read_idx(base / f"{prefix}-labels-idx1-ubyte").astype(np.int64)
        out[split] = (x, y)
    return out


def load_classification(name: str, cfg: dict, root: Path, seed: int, data_dir: str = "data", params: dict | None = None):
    """{'train': (x, y), 'test': (x, y)} for any classification dataset of the registry.

    IDX images come as uint8 [N, H, W] with their published split.  scikit-learn tables come
    as float64 [N, D], split into train/test stratified by class with ``test_fraction``; the
    split is seeded by the run's seed, so different seeds also see different splits.
    """
    if cfg["format"] == "idx":
        return load_image_classification(name, root, data_dir)
    if cfg["format"] == "sklearn":
        from sklearn.model_selection import train_test_split

        bunch = _sklearn_bunch(cfg)
        x, y = np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target, dtype=np.int64)
        xtr, xte, ytr, yte = train_test_split(x, y, test_size=cfg["test_fraction"], stratify=y, random_state=seed)
        return {"train": (xtr, ytr), "test": (xte, yte)}
    if cfg["format"] == "generated":
        from softrepro.registry import GENERATORS

        return GENERATORS.get(cfg["generator"])(seed, **{**cfg.get("defaults", {}), **(params or {})})
    raise ValueError(f"dataset {name!r}: format {cfg['format']!r} holds no classification data")
