import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

from softrepro.datasets import read_idx
from softrepro.fetch import MIRROR_ENV, ChecksumError, ensure, sources

from conftest import REPO, tiny_cfg, write_idx


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
    from softrepro.datasets import load_splits
    from softrepro.spec import load_datasets

    cfg = load_datasets(REPO)["wdbc"]
    marker = ensure("wdbc", cfg, tmp_path)
    assert marker["available"] and marker["source"].startswith("scikit-learn") and marker["shape"] == [569, 30]
    assert not (tmp_path / "data").exists()  # bundled: nothing downloaded, nothing for DVC
    a, b = load_splits("wdbc", cfg, tmp_path, seed=0), load_splits("wdbc", cfg, tmp_path, seed=1)
    (xtr, ytr), (xte, yte) = a["train"], a["test"]
    assert len(ytr) + len(yte) == 569 and len(yte) == 171
    assert abs(ytr.mean() - yte.mean()) < 0.01  # stratified
    assert not np.array_equal(yte, b["test"][1]) or not np.array_equal(xte, b["test"][0])


def test_formats_are_a_registry_and_text_is_character_level(tmp_path):
    from softrepro.datasets import load_splits
    from softrepro.registry import FORMATS

    assert {"idx", "sklearn", "generated", "text"} <= set(FORMATS.names())
    (tmp_path / "data" / "tiny-text").mkdir(parents=True)
    (tmp_path / "data" / "tiny-text" / "input.txt").write_text("abcab\nba" * 10)
    cfg = {"format": "text", "files": {"input.txt": {}}, "train_fraction": 0.75}
    s = load_splits("tiny-text", cfg, tmp_path, seed=0)
    assert s["vocab"] == ["\n", "a", "b", "c"]
    assert len(s["train"]) == 60 and len(s["test"]) == 20 and s["train"].dtype == np.int64
    assert "".join(s["vocab"][i] for i in s["train"][:8]) == "abcab\nba"


def test_to_float_puts_channels_first_for_grey_and_colour_images():
    from softrepro.datasets import to_float

    grey = np.full((2, 4, 5), 255, dtype=np.uint8)
    colour = np.zeros((2, 4, 5, 3), dtype=np.uint8)
    colour[..., 2] = 255
    assert to_float(grey).shape == (2, 1, 4, 5) and to_float(grey).max() == 1.0
    c = to_float(colour)
    assert c.shape == (2, 3, 4, 5) and c[:, 2].min() == 1.0 and c[:, :2].max() == 0.0
    assert to_float(np.arange(3, dtype=np.int32)).dtype == np.int64


@pytest.mark.skipif(not os.environ.get(MIRROR_ENV), reason="needs the data mirror (CI points SOFTREPRO_MIRROR at it)")
def test_tinyshakespeare_verifies_and_loads_from_the_mirror(project):
    from softrepro.datasets import load_splits
    from softrepro.spec import load_datasets

    cfg = load_datasets(project)["tinyshakespeare"]
    marker = ensure("tinyshakespeare", cfg, project, log=lambda m: None)
    assert marker["available"] and marker["sha256"]["input.txt"] == cfg["files"]["input.txt"]["sha256"]
    s = load_splits("tinyshakespeare", cfg, project, seed=0)
    assert len(s["vocab"]) == 65 and len(s["train"]) + len(s["test"]) == 1_115_394
    assert len(s["train"]) == int(1_115_394 * 0.9)
