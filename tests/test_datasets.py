import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

from softrepro.datasets import ChecksumError, MIRROR_ENV, ensure, read_idx, sources

from conftest import REPO, write_dataset, write_idx

UNREACHABLE = "http://softrepro-test.invalid/tiny"  # .invalid never resolves (RFC 2606)


def tiny_cfg(digests):
    return {"description": "t", "license": "t", "citation": "t", "format": "idx",
            "files": {name: {"urls": [f"{UNREACHABLE}/{name}.gz"], "compression": "gzip", "sha256": d}
                      for name, d in digests.items()}}


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    digests = write_dataset(tmp_path / "mirror" / "tiny", gz=True)
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "mirror"))
    return tmp_path / "mirror", digests


def test_read_idx_round_trip(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a", a)
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), a)
    (tmp_path / "b").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09abc")
    with pytest.raises(ValueError, match="expected"):
        read_idx(tmp_path / "b")


def test_mirror_comes_before_canonical(monkeypatch):
    monkeypatch.setenv(MIRROR_ENV, "https://mirror.example/base/")
    assert sources("fashion-mnist", "http://host/x/train.gz") == ["https://mirror.example/base/fashion-mnist/train.gz", "http://host/x/train.gz"]
    monkeypatch.delenv(MIRROR_ENV)
    assert sources("d", "http://host/f.gz") == ["http://host/f.gz"]


def test_fetch_verifies_adds_to_dvc_and_restores_from_cache(project, mirror):
    _, digests = mirror
    marker = ensure("tiny", tiny_cfg(digests), project, log=lambda m: None)
    assert marker["available"] and marker["source"] == "download" and marker["sha256"] == digests
    assert (project / "data" / "tiny.dvc").is_file()
    # a fresh checkout has the .dvc file but no payload: DVC restores it from its cache, no download
    shutil.rmtree(project / "data" / "tiny")
    again = ensure("tiny", tiny_cfg(digests), project, log=lambda m: None)
    assert again["source"] == "dvc cache" and again["sha256"] == digests


def test_checksum_mismatch_names_file_and_both_digests_and_writes_nothing(project, mirror):
    _, digests = mirror
    wrong = dict(digests, **{"t10k-labels-idx1-ubyte": "0" * 64})
    with pytest.raises(ChecksumError) as err:
        ensure("tiny", tiny_cfg(wrong), project, log=lambda m: None)
    msg = str(err.value)
    assert "tiny/t10k-labels-idx1-ubyte" in msg and "0" * 64 in msg and digests["t10k-labels-idx1-ubyte"] in msg
    assert not (project / "data" / "tiny").exists()
    assert not (project / "data" / "tiny.dvc").exists()
    assert not list((project / "data").glob(".tiny*"))


def test_cli_checksum_mismatch_leaves_no_marker(project, mirror):
    _, digests = mirror
    cfg = yaml.safe_load((project / "configs" / "datasets.yaml").read_text())
    cfg["tiny"] = tiny_cfg(dict(digests, **{"train-images-idx3-ubyte": "f" * 64}))
    (project / "configs" / "datasets.yaml").write_text(yaml.safe_dump(cfg))
    marker = project / "results" / "datasets" / "tiny.json"
    proc = subprocess.run([sys.executable, "-m", "softrepro.cli", "data", "tiny", "--marker", str(marker)],
                          cwd=project, capture_output=True, text=True)
    assert proc.returncode == 3
    assert "checksum mismatch for tiny/train-images-idx3-ubyte" in proc.stderr and "f" * 64 in proc.stderr
    assert not marker.exists() and not (project / "data" / "tiny").exists()


def test_unreachable_dataset_is_reported_unavailable(project, tmp_path, monkeypatch):
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "empty-mirror"))
    marker = ensure("tiny", tiny_cfg({"train-images-idx3-ubyte": "a" * 64}), project, log=lambda m: None)
    assert marker["available"] is False and marker["reason"] == "dataset unavailable"
    assert "softrepro-test.invalid" in marker["detail"]
    assert not (project / "data" / "tiny").exists()


def test_sklearn_dataset_marker_and_split(tmp_path):
    from softrepro.datasets import ensure, load_classification
    from softrepro.spec import load_datasets

    cfg = load_datasets(REPO)["wdbc"]
    marker = ensure("wdbc", cfg, tmp_path)
    assert marker["available"] and marker["source"].startswith("scikit-learn") and marker["shape"] == [569, 30]
    assert not (tmp_path / "data").exists()  # bundled: nothing downloaded, nothing for DVC
    a, b = load_classification("wdbc", cfg, tmp_path, seed=0), load_classification("wdbc", cfg, tmp_path, seed=1)
    (xtr, ytr), (xte, yte) = a["train"], a["test"]
    assert len(ytr) + len(yte) == 569 and len(yte) == 171
    assert abs(ytr.mean() - yte.mean()) < 0.01  # stratified
    assert not np.array_equal(yte, b["test"][1]) or not np.array_equal(xte, b["test"][0])
