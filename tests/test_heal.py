"""Healing fetch: a corrupt object in the local cache, a shared cache or the DVC remote, or a
corrupt mirror file, is removed, named, and replaced from the next source (fast: CI runs these)."""
import hashlib
import json
import shutil
import subprocess
import sys
import threading

import pytest
import yaml

from softrepro.fetch import MIRROR_ENV, ChecksumError, Dvc, ensure

from conftest import FAULTS, UNREACHABLE, make_project, tiny_cfg as cfg_for, write_dataset

FILE = "train-images-idx3-ubyte"


def dvc(root, *args):
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True, check=True)


def corrupt(path, offset=100, data=b"\xde\xad\xbe\xef" * 8):
    """Overwrite a byte range in place, as disk rot or a half-finished copy would."""
    path.chmod(0o644)
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def object_of(root, rel=FILE, name="tiny"):
    """The DVC object (md5) of one payload of data/<name>.dvc."""
    store = Dvc(root)
    dir_md5 = yaml.safe_load((root / "data" / f"{name}.dvc").read_text())["outs"][0]["md5"]
    entries = json.loads(store.object_path(dir_md5).read_text())
    return next(e["md5"] for e in entries if e["relpath"] == rel)


def quiet(_):
    pass


def test_corrupt_remote_object_heals_from_the_mirror_and_is_pushed_again(tmp_path, mirror, monkeypatch):
    """The issue's scenario: clone A pushes, one remote object rots, clone B's fetch recovers and re-pushes."""
    _, digests = mirror
    remote = tmp_path / "remote"
    a = make_project(tmp_path / "a")
    dvc(a, "remote", "add", "-d", "team", str(remote))
    ensure("tiny", cfg_for(digests), a, log=quiet)
    md5 = object_of(a)
    remote_obj = remote / "files" / "md5" / md5[:2] / md5[2:]
    assert remote_obj.is_file()
    corrupt(remote_obj)
    b = make_project(tmp_path / "b")  # a teammate's clone: A's .dvc file and remote, an empty cache
    shutil.copy(a / "data" / "tiny.dvc", b / "data" / "tiny.dvc")
    shutil.copy(a / ".dvc" / "config", b / ".dvc" / "config")
    lines = []
    marker = ensure("tiny", cfg_for(digests), b, log=lines.append)
    assert marker["available"] and marker["source"] == "download" and marker["sha256"] == digests
    said = "\n".join(marker["healed"])
    assert "DVC remote 'team'" in said and str(remote_obj) in said and "pushed good copies" in said
    assert hashlib.md5(remote_obj.read_bytes()).hexdigest() == md5  # the remote holds a good object again
    # and the next clone restores from the remote, no download
    c = make_project(tmp_path / "c")
    shutil.copy(a / "data" / "tiny.dvc", c / "data" / "tiny.dvc")
    shutil.copy(a / ".dvc" / "config", c / ".dvc" / "config")
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "no-mirror"))
    assert ensure("tiny", cfg_for(digests), c, log=quiet)["source"] == "dvc remote team"
    FAULTS.append({"fault": "a corrupt object in the DVC remote (32 bytes overwritten), fetched by a second clone", "trials": 1,
                   "outcome": "named (remote, object path), data from the mirror, good object pushed over it; a third clone restores from the remote"})


def test_corrupt_local_cache_object_and_workspace_heal_from_the_next_source(project, mirror):
    _, digests = mirror
    ensure("tiny", cfg_for(digests), project, log=quiet)
    obj = Dvc(project).object_path(object_of(project))
    shutil.rmtree(project / "data" / "tiny")  # a fresh checkout: the payload comes from the cache
    corrupt(obj)
    marker = ensure("tiny", cfg_for(digests), project, log=quiet)
    assert marker["source"] == "download" and marker["sha256"] == digests
    assert any("local DVC cache" in h and str(obj) in h for h in marker["healed"])
    assert hashlib.md5(obj.read_bytes()).hexdigest() == object_of(project)  # the cache holds a good object again
    # a truncated object is as corrupt as an overwritten one
    shutil.rmtree(project / "data" / "tiny")
    obj.chmod(0o644)
    obj.write_bytes(obj.read_bytes()[:50])
    assert ensure("tiny", cfg_for(digests), project, log=quiet)["sha256"] == digests
    FAULTS.append({"fault": "a corrupt, then a truncated object in the local DVC cache", "trials": 2,
                   "outcome": "named and removed; data from the next source; the cache holds a good object again"})


def test_a_shared_cache_heals_for_every_clone(tmp_path, mirror):
    _, digests = mirror
    shared = tmp_path / "shared-cache"
    a, b = make_project(tmp_path / "a"), make_project(tmp_path / "b")
    for root in (a, b):
        dvc(root, "cache", "dir", str(shared))
    ensure("tiny", cfg_for(digests), a, log=quiet)
    md5 = object_of(a)
    corrupt(shared / "files" / "md5" / md5[:2] / md5[2:])
    shutil.copy(a / "data" / "tiny.dvc", b / "data" / "tiny.dvc")
    marker = ensure("tiny", cfg_for(digests), b, log=quiet)
    assert marker["sha256"] == digests and any(str(shared) in h for h in marker["healed"])
    shutil.rmtree(a / "data" / "tiny")
    assert ensure("tiny", cfg_for(digests), a, log=quiet)["source"] == "dvc cache"  # healed for A too
    FAULTS.append({"fault": "a corrupt object in a cache folder shared by two clones", "trials": 1,
                   "outcome": "healed by the clone that met it; the other restores from the shared cache"})


def test_corrupt_mirror_file_falls_back_and_no_good_source_stops_with_every_digest(project, mirror, tmp_path):
    root, digests = mirror
    corrupt(root / "tiny" / (FILE + ".gz"), offset=40)  # a truncated or rotten mirror copy
    second = tmp_path / "second-mirror"  # a canonical URL stand-in that holds the good file
    write_dataset(second / "tiny", gz=True)
    cfg = cfg_for(digests)
    cfg["files"][FILE]["urls"] = [f"{UNREACHABLE}/{FILE}.gz", str(second / "tiny" / f"{FILE}.gz")]
    marker = ensure("tiny", cfg, project, log=quiet)
    assert marker["sha256"] == digests
    shutil.rmtree(project / "data" / "tiny")
    (project / "data" / "tiny.dvc").unlink()
    before = sorted(p.name for p in (project / "data").iterdir())
    with pytest.raises(ChecksumError) as err:  # now every source that answers is bad
        ensure("tiny", cfg_for(digests), project, log=quiet)
    msg = str(err.value)
    assert f"tiny/{FILE}" in msg and digests[FILE] in msg and str(root / "tiny" / f"{FILE}.gz") in msg
    assert sorted(p.name for p in (project / "data").iterdir()) == before  # data/ as it was
    FAULTS.append({"fault": "a rotten mirror file; then every source bad", "trials": 2,
                   "outcome": "the next URL used; with none good: the file, the expected sha256 and every source's answer named, data/ as it was"})


def test_two_clones_sharing_a_cache_fetch_once(tmp_path, mirror):
    _, digests = mirror
    shared = tmp_path / "shared-cache"
    clones = [make_project(tmp_path / n) for n in ("a", "b")]
    for root in clones:
        dvc(root, "cache", "dir", str(shared))
    ensure("tiny", cfg_for(digests), clones[0], log=quiet)  # commits the .dvc file both clones share
    dvcfile = (clones[0] / "data" / "tiny.dvc").read_bytes()
    shutil.rmtree(shared)
    shutil.rmtree(clones[0] / "data" / "tiny")
    (clones[1] / "data" / "tiny.dvc").write_bytes(dvcfile)
    logs, results = {0: [], 1: []}, {}

    def fetch(i):
        results[i] = ensure("tiny", cfg_for(digests), clones[i], log=logs[i].append)

    threads = [threading.Thread(target=fetch, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[i]["sha256"] == digests for i in (0, 1))
    downloads = sum(1 for i in (0, 1) for line in logs[i] if "verified from" in line)
    assert downloads == len(digests)  # one clone downloaded each file once; the other checked out the shared cache
    assert sorted(r["source"] for r in results.values()) == ["download", "dvc cache"]
    FAULTS.append({"fault": "two clones sharing a cache fetch the same dataset at once", "trials": 1,
                   "outcome": "both succeed; one download, the other checks out the shared cache"})
