"""Fetching a dataset into ``data/<name>``: every source in turn, each verified, the bad ones healed.

``ensure`` is what the ``dataset`` rule runs.  Sources, in order:

1. the workspace, ``data/<name>``, if its payloads already verify;
2. the DVC cache (the local one, or a ``cache.dir`` shared by a team): its objects for
   ``data/<name>.dvc`` are checked (each object's md5 against its name, each payload's sha256
   against ``configs/datasets.yaml``) *before* ``dvc checkout`` puts them in the workspace;
3. the DVC remote, when one is configured: ``dvc fetch`` into the cache, the same check, then
   ``dvc checkout``;
4. per file, ``$SOFTREPRO_MIRROR/<name>/<file>`` and then the canonical URLs, each download
   verified (decompressed payload sha256) before the next source is tried.

A corrupt object met on the way is removed (from the workspace, the local or shared cache) and
named in the job's log and marker (``healed``), with the remote and object path when it came
from the remote; the dataset then comes from the next source, is ``dvc add``-ed, and when a
remote is configured the good objects are pushed, replacing the corrupt ones there.  If no
source verifies, :class:`ChecksumError` names the file, the expected digest and every source
tried with what it gave, and ``data/`` is left as it was.  If no source can be reached at all,
the dataset is *unavailable*: the marker says so and its claims read "not run: dataset
unavailable".  One lock per checkout serialises DVC there; one lock per dataset in the cache
directory lets clones that share a cache fetch a dataset once.
"""
from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
import zlib
from pathlib import Path

import yaml

MIRROR_ENV = "SOFTREPRO_MIRROR"
CHUNK = 1 << 20


class ChecksumError(RuntimeError):
    """No source gave the file its expected digest; ``tried`` maps each source to what it gave."""

    def __init__(self, file: str, expected: str, tried: dict[str, str], kind: str = "sha256"):
        self.file, self.expected, self.tried = file, expected, tried
        self.actual = next(iter(tried.values()), "")
        got = "; ".join(f"{src}: {what}" for src, what in tried.items())
        super().__init__(f"checksum mismatch for {file}: expected {kind} {expected}, got {got}")


class DatasetUnavailable(RuntimeError):
    pass


def digest(path: Path, algo: str = "sha256") -> str:
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


def _payload(archive: Path, payload: Path, compression: str) -> None:
    if compression == "gzip":
        with gzip.open(archive, "rb") as src_fh, open(payload, "wb") as out:
            shutil.copyfileobj(src_fh, out, CHUNK)
        archive.unlink()
    else:
        archive.replace(payload)


def download_and_verify(name: str, cfg: dict, staging: Path, log=print) -> dict[str, str]:
    """Fetch every file of dataset ``name`` into ``staging``, each from the first of its sources
    that gives the expected payload digest; return the payload sha256 per file.

    Raises ChecksumError when some file had sources that answered but none verified (a
    truncated or corrupt copy), DatasetUnavailable when no source of some file answered."""
    staging.mkdir(parents=True, exist_ok=True)
    digests = {}
    for fname, fcfg in cfg["files"].items():
        archive, payload = staging / (fname + ".download"), staging / fname
        tried: dict[str, str] = {}
        corrupt = False
        for src in (s for url in fcfg["urls"] for s in sources(name, url)):
            try:
                _download(src, archive)
                _payload(archive, payload, fcfg["compression"])
            except (OSError, ValueError, EOFError, zlib.error) as exc:  # URLError/HTTPError are OSErrors
                unreadable = isinstance(exc, (EOFError, gzip.BadGzipFile, zlib.error))  # it answered, with a bad archive
                corrupt |= unreadable
                tried[src] = f"{'unreadable archive' if unreadable else 'unreachable'} ({exc})"
                archive.unlink(missing_ok=True)
                payload.unlink(missing_ok=True)
                continue
            got = digest(payload)
            if got == fcfg["sha256"]:
                log(f"[{name}] {fname}: verified from {src}")
                digests[fname] = got
                break
            tried[src] = f"sha256 {got}"
            corrupt = True
            log(f"[{name}] {fname}: {src} gave sha256 {got}, expected {fcfg['sha256']}; trying the next source")
            payload.unlink()
        else:
            if corrupt:
                raise ChecksumError(f"{name}/{fname}", fcfg["sha256"], tried)
            raise DatasetUnavailable(f"no source reachable for {name}/{fname}: " + "; ".join(f"{s}: {w}" for s, w in tried.items()))
    return digests


def verify_payloads(name: str, cfg: dict, target: Path) -> dict[str, str]:
    """Digest every payload already in ``target``; raise ChecksumError on a mismatch."""
    digests = {}
    for fname, fcfg in cfg["files"].items():
        path = target / fname
        if not path.is_file():
            raise FileNotFoundError(path)
        digests[fname] = digest(path)
        if digests[fname] != fcfg["sha256"]:
            raise ChecksumError(f"{name}/{fname}", fcfg["sha256"], {str(path): f"sha256 {digests[fname]}"})
    return digests


# ----------------------------------------------------------------------------- DVC

def dvc(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


class Dvc:
    """The few facts about a checkout's DVC set-up that fetching needs (DVC's own Python API)."""

    def __init__(self, root: Path):
        from dvc.repo import Repo

        with Repo(str(root)) as repo:
            self.cache = Path(repo.cache.local.path)  # <cache dir>/files/md5
            self.remote = repo.config["core"].get("remote")
            self.remote_url = repo.config["remote"][self.remote]["url"] if self.remote else None
        self.root = root

    def object_path(self, md5: str) -> Path:
        return self.cache / md5[:2] / md5[2:]

    def remote_object(self, md5: str) -> str:
        from dvc.repo import Repo

        with Repo(str(self.root)) as repo:
            odb = repo.cloud.get_remote_odb(self.remote)
            return odb.oid_to_path(md5)

    def replace_remote_object(self, md5: str) -> None:
        """Upload the (verified) cache object ``md5`` over the remote's copy.  ``dvc push`` would
        skip it: the remote already has an object of that name, corrupt or not."""
        from dvc.repo import Repo

        with Repo(str(self.root)) as repo:
            odb = repo.cloud.get_remote_odb(self.remote)
            path = odb.oid_to_path(md5)
            if odb.fs.exists(path):
                odb.fs.remove(path)
            odb.fs.put_file(str(self.object_path(md5)), path)


def _objects(dvcfile: Path, store: Dvc) -> tuple[str, list[tuple[str, str]] | None]:
    """The directory object of a ``.dvc`` file and its entries (relpath, md5); None when the
    directory object is missing from the cache or is not a valid listing."""
    out = yaml.safe_load(dvcfile.read_text())["outs"][0]
    dir_md5 = out["md5"]
    path = store.object_path(dir_md5)
    if not path.is_file():
        return dir_md5, None
    try:
        entries = json.loads(path.read_text())
        return dir_md5, [(e["relpath"], e["md5"]) for e in entries]
    except (ValueError, KeyError, TypeError):
        return dir_md5, None


def _check_cache(name: str, cfg: dict, dvcfile: Path, store: Dvc) -> tuple[bool, list[str]]:
    """Whether the cache holds every object of ``dvcfile`` intact, and the corrupt ones (md5s),
    each removed from the cache.  An object is intact when its md5 is its name and, for a
    payload, its sha256 is the registry's."""
    dir_md5, entries = _objects(dvcfile, store)
    dir_path = store.object_path(dir_md5)
    if entries is None:
        if dir_path.is_file():  # present but not a listing
            dir_path.unlink()
            return False, [dir_md5]
        return False, []
    if digest(dir_path, "md5") != dir_md5.removesuffix(".dir"):
        dir_path.unlink()
        return False, [dir_md5]
    corrupt, complete = [], True
    for rel, md5 in entries:
        path = store.object_path(md5)
        if not path.is_file():
            complete = False
            continue
        want = cfg["files"].get(rel, {}).get("sha256")
        if digest(path, "md5") != md5 or (want and digest(path) != want):
            path.chmod(0o644)
            path.unlink()
            corrupt.append(md5)
    return complete and not corrupt, corrupt


@contextlib.contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure(name: str, cfg: dict, root: Path, data_dir: str = "data", log=print) -> dict:
    """Make ``<data_dir>/<name>`` present and verified; return the marker describing it."""
    if cfg["format"] == "sklearn":
        from softrepro.datasets import sklearn_marker

        return sklearn_marker(name, cfg)
    if cfg["format"] == "generated":
        return {"dataset": name, "available": True, "source": f"generated by code (generator {cfg['generator']!r})"}
    data = root / data_dir
    target, dvcfile = data / name, data / f"{name}.dvc"
    rel = target.relative_to(root)
    with _lock(data / ".softrepro.lock"):  # one DVC operation at a time in this checkout
        store = Dvc(root)
        with _lock(store.cache.parent.parent / f".softrepro-{name}.lock"):  # clones sharing a cache fetch once
            return _ensure(name, cfg, root, target, dvcfile, rel, store, log)


def _ensure(name, cfg, root, target, dvcfile, rel, store, log) -> dict:
    healed: list[str] = []
    remote_corrupt: list[str] = []
    source = None
    with contextlib.suppress(FileNotFoundError, ChecksumError):
        if target.is_dir():
            verify_payloads(name, cfg, target)
            source = "data directory"
    if source is None and dvcfile.is_file():
        intact, corrupt = _check_cache(name, cfg, dvcfile, store)
        healed += [f"local DVC cache {store.cache}: object {store.object_path(m)} was corrupt; removed" for m in corrupt]
        if intact and dvc("checkout", "--force", str(dvcfile.relative_to(root)), cwd=root, check=False).returncode == 0:
            source = "dvc cache"
        elif store.remote:
            dvc("fetch", str(dvcfile.relative_to(root)), cwd=root, check=False)
            intact, corrupt = _check_cache(name, cfg, dvcfile, store)
            remote_corrupt = corrupt
            healed += [f"DVC remote {store.remote!r} ({store.remote_url}): object {store.remote_object(m)} was corrupt; "
                       "removed from the local cache, to be replaced in the remote" for m in corrupt]
            if intact and dvc("checkout", "--force", str(dvcfile.relative_to(root)), cwd=root, check=False).returncode == 0:
                source = f"dvc remote {store.remote}"
    for line in healed:
        log(f"[{name}] {line}")
    if source is not None:
        try:
            digests = verify_payloads(name, cfg, target)
        except (FileNotFoundError, ChecksumError) as exc:  # a link into a cache that changed under us
            healed.append(f"workspace {rel} did not verify after checkout ({exc}); fetching again")
            source = None
    if source is None:
        staging = target.parent / f".{name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            download_and_verify(name, cfg, staging, log=log)
        except DatasetUnavailable as exc:
            shutil.rmtree(staging, ignore_errors=True)
            log(f"[{name}] unavailable: {exc}")
            return {"dataset": name, "available": False, "reason": "dataset unavailable", "detail": str(exc), "healed": healed}
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)  # nothing of a failed fetch reaches data/
            raise
        old = target.parent / f".{name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if target.exists() or target.is_symlink():
            target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
        source = "download"
        digests = verify_payloads(name, cfg, target)
    if source == "download" or not dvcfile.is_file():
        dvc("add", str(rel), cwd=root)
    if store.remote and (source == "download" or remote_corrupt):
        dvc("push", str(dvcfile.relative_to(root)), cwd=root)
        for md5 in remote_corrupt:
            store.replace_remote_object(md5)
        if remote_corrupt:
            healed.append(f"DVC remote {store.remote!r}: pushed good copies of {len(remote_corrupt)} object(s)")
    log(f"[{name}] ready ({source})")
    return {"dataset": name, "available": True, "source": source, "path": str(rel), "sha256": digests, "healed": healed}
