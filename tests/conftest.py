import gzip
import hashlib
import json
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) in the IDX format the MNIST family uses."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.tobytes())


def synthetic_images(n: int, seed: int, n_classes: int = 10):
    """Separable toy images: class k lights up a block at a class-specific place, plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    x = rng.integers(0, 60, (n, 28, 28))
    for k in range(n_classes):
        r, c = divmod(k, 4)
        x[y == k, 2 + 6 * r : 8 + 6 * r, 2 + 6 * c : 8 + 6 * c] += 180
    return x.clip(0, 255).astype(np.uint8), y.astype(np.uint8)


def write_dataset(folder: Path, n_train=600, n_test=200, gz=False) -> dict:
    """IDX files for a tiny image-classification dataset; returns {file: payload sha256}."""
    folder.mkdir(parents=True, exist_ok=True)
    digests = {}
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        x, y = synthetic_images(n, seed)
        for kind, arr, suffix in (("images", x, "idx3"), ("labels", y, "idx1")):
            name = f"{prefix}-{kind}-{suffix}-ubyte"
            raw = folder / name
            write_idx(raw, arr)
            digests[name] = hashlib.sha256(raw.read_bytes()).hexdigest()
            if gz:
                with open(raw, "rb") as src, gzip.open(folder / (name + ".gz"), "wb") as dst:
                    shutil.copyfileobj(src, dst)
                raw.unlink()
    return digests


def make_project(dest: Path, with_git: bool = True) -> Path:
    """A copy of this checkout's tracked (and untracked, not ignored) files, as a fresh user would have."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    if with_git:
        subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
        subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
        subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "fixture"], cwd=dest, check=True)
    return dest


@pytest.fixture
def project(tmp_path, monkeypatch):
    root = make_project(tmp_path / "proj")
    monkeypatch.chdir(root)
    return root


UNREACHABLE = "http://softrepro-test.invalid/tiny"  # .invalid never resolves (RFC 2606)


def tiny_cfg(digests: dict) -> dict:
    """A registry entry for the tiny IDX dataset: canonical URLs that never answer, so only a mirror serves it."""
    return {"description": "t", "license": "t", "citation": "t", "format": "idx",
            "files": {name: {"urls": [f"{UNREACHABLE}/{name}.gz"], "compression": "gzip", "sha256": d}
                      for name, d in digests.items()}}


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A mirror folder holding the tiny dataset (gzip), with SOFTREPRO_MIRROR pointing at it."""
    from softrepro.fetch import MIRROR_ENV

    digests = write_dataset(tmp_path / "mirror" / "tiny", gz=True)
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "mirror"))
    return tmp_path / "mirror", digests


def cli_run(root: Path, paper: str, experiment: str, out: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """`softrepro run` of one seed-0 smoke run, as a separate process (so it can be killed)."""
    import os
    import sys

    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "softrepro.cli", "run", "--paper", paper, "--experiment", experiment,
                           "--seed", "0", "--scale", "smoke", "--out", str(out), "--no-progress"],
                          cwd=root, env=env, capture_output=True, text=True)


# Fault-injection outcomes of this session (tests/test_heal.py, tests/test_faults.py), written to
# benchmarks/faults.md by the last test of test_faults.py under `make test-faults`.
FAULTS: list[dict] = []


def write_tiny_text(project, spec: dict, name: str) -> Path:
    """A stand-in tiny-shakespeare (3,000 words of Hamlet's line, seeded), marked available, and
    ``spec`` as configs/papers/<name>.yaml: what a language-model test trains through the engine."""
    import json

    import numpy as np
    import yaml

    words = "to be or not to be that is the question whether tis nobler in the mind to suffer ".split()
    rng = np.random.default_rng(0)
    (project / "data" / "tinyshakespeare").mkdir(parents=True)
    (project / "data" / "tinyshakespeare" / "input.txt").write_text(" ".join(rng.choice(words, 3000)) + "\n")
    marker = project / "results" / "datasets" / "tinyshakespeare.json"
    marker.parent.mkdir(parents=True)
    marker.write_text(json.dumps({"dataset": "tinyshakespeare", "available": True}))
    path = project / "configs" / "papers" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture
def standin(project):
    """A project with tiny synthetic IDX data standing in for fashion-mnist."""
    write_dataset(project / "data" / "fashion-mnist", n_train=512, n_test=200)
    marker = project / "results" / "datasets" / "fashion-mnist.json"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"dataset": "fashion-mnist", "available": True}))
    return project
