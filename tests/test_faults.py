"""Fault injection on the real DAG (SCALE=smoke): each fault is real (SIGKILL, a truncated
checkpoint, a full disk, a second Snakemake in the same checkout), and after it a plain rerun
must end with the same claims.csv as an undisturbed run, with nothing corrupt served.

The quick cases run in `make test` (CI); the ones marked `faults` (SIGKILL at every phase of the
DAG, several trials) run with `make test-faults`, which also rewrites benchmarks/faults.md
from what they found (`SOFTREPRO_FAULTS_REPORT`)."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import FAULTS as RESULTS, REPO, cli_run, make_project, write_dataset

PAPERS = "muller2019-label-smoothing"  # three small runs of two seeds, one dataset, a report


def snakemake(root, *extra, env=None, **kw):
    cmd = [sys.executable, "-m", "softrepro.cli", "dag", "--profile", "workflow/profiles/default", "--cores", "2",
           "--config", "scale=smoke", f"papers={PAPERS}", *extra]  # what make reproduce runs
    return subprocess.Popen(cmd, cwd=root, env=env or os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, **kw)


def finish(proc, timeout=600) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def descendants_matching(pid: int, pattern: str) -> list[int]:
    """Processes in ``pid``'s session whose command line contains ``pattern``."""
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            if os.getsid(int(p.name)) != pid:
                continue
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ProcessLookupError):
            continue
        if pattern in cmd:
            found.append(int(p.name))
    return found


def kill_during(proc, pattern: str, delay: float = 0.0, whole: bool = True, timeout: float = 300) -> bool:
    """SIGKILL Snakemake's whole process group (or only the matching job, ``whole=False``) once a
    process matching ``pattern`` runs, after ``delay`` seconds; False if the phase never came."""
    t0 = time.time()
    while time.time() - t0 < timeout and proc.poll() is None:
        hits = descendants_matching(proc.pid, pattern)
        if hits:
            time.sleep(delay)
            if whole:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                for pid in descendants_matching(proc.pid, pattern):
                    os.kill(pid, signal.SIGKILL)
            proc.communicate(timeout=60)
            return True
        time.sleep(0.02)
    proc.communicate(timeout=600)
    return False


def claims(root) -> pd.DataFrame:
    return pd.read_csv(root / "results/smoke/claims.csv")


def nothing_corrupt(root) -> bool:
    """Every record parses, and the dataset in data/ has the registry's digests."""
    for f in (root / "results").rglob("*.json"):
        json.loads(f.read_text())
    for f in (root / "results").rglob("steps.csv"):
        pd.read_csv(f)
    marker = json.loads((root / "results/datasets/fashion-mnist.json").read_text())
    from softrepro.fetch import verify_payloads
    from softrepro.spec import load_datasets

    return verify_payloads("fashion-mnist", load_datasets(root)["fashion-mnist"], root / marker["path"]) == marker["sha256"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An undisturbed run: the claims every disturbed run must end with."""
    root = make_project(tmp_path_factory.mktemp("faults") / "ref")
    rc, out = finish(snakemake(root))
    assert rc == 0, out[-3000:]
    return claims(root)


def fresh(tmp_path, name="proj", remote=True) -> Path:
    root = make_project(tmp_path / name)
    if remote:  # a DVC remote, so that `dvc push` is a phase that can be interrupted too
        subprocess.run([sys.executable, "-m", "dvc", "remote", "add", "-d", "team", str(tmp_path / f"{name}-remote")],
                       cwd=root, check=True, capture_output=True)
    return root


def rerun_matches(root, reference) -> tuple[bool, str]:
    rc, out = finish(snakemake(root))
    if rc != 0:
        return False, f"rerun failed: {out[-1500:]}"
    same = claims(root).equals(reference)
    return same and nothing_corrupt(root), "same claims.csv, nothing corrupt" if same else "claims.csv differs"


# ----------------------------------------------------------------------------- quick (CI)

def test_second_snakemake_in_the_same_checkout_refuses(tmp_path, reference):
    root = fresh(tmp_path, remote=False)
    first = snakemake(root)
    while not descendants_matching(first.pid, "softrepro.cli run"):  # the first holds the lock and runs jobs
        assert first.poll() is None, finish(first)[1][-2000:]
        time.sleep(0.05)
    rc2, out2 = finish(snakemake(root), timeout=300)
    rc1, out1 = finish(first)
    assert rc2 == 5 and "another `make reproduce` is running in this checkout" in out2, out2[-2000:]  # refused clearly
    assert rc1 == 0, out1[-2000:]
    assert claims(root).equals(reference) and nothing_corrupt(root)
    RESULTS.append({"fault": "a second `make reproduce` in the same checkout while one runs", "trials": 1,
                    "outcome": "refused at once ('another `make reproduce` is running in this checkout', exit 5); the first ends with the reference claims"})


def _tiny_spec(root: Path) -> Path:
    write_dataset(root / "data" / "fashion-mnist")
    marker = root / "results" / "datasets" / "fashion-mnist.json"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"dataset": "fashion-mnist", "available": True}))
    spec = {"id": "faultspec", "title": "t", "arxiv": "0000.00000", "year": 2020, "family": "losses",
            "seed_files": ["004_d8336d9b28eee527.txt"],
            "experiments": {"tiny": {"kind": "train", "dataset": "fashion-mnist", "model": {"name": "mlp", "hidden": [16]},
                                     "loss": {"name": "softmax_ce"}, "optimizer": {"name": "adam", "lr": 0.003},
                                     "batch_size": 32, "steps": 40, "checkpoint_every": 10, "log_every": 10,
                                     "deviations": ["cut: a fixture"]}},
            "claims": [{"id": "c", "text": "t", "source": "s", "kind": "value", "metric": "test_accuracy", "unit": "percent",
                        "experiment": "tiny", "published": 50.0, "tolerance": {"abs": 1}, "faithful_scales": []}]}
    path = root / "configs" / "papers" / "faultspec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _cli_run(root, out, env_extra=None):
    return cli_run(root, "faultspec", "tiny", out, env_extra)


def test_truncated_checkpoint_restarts_and_ends_as_an_undisturbed_run(tmp_path):
    root = make_project(tmp_path / "proj")
    _tiny_spec(root)
    ref = _cli_run(root, root / "ref")
    assert ref.returncode == 0, ref.stderr
    killed = _cli_run(root, root / "run", {"SOFTREPRO_FAULT_AFTER_STEP": "25"})
    assert killed.returncode == -signal.SIGKILL
    ckpt = root / "run" / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 3])  # a half-written checkpoint
    again = _cli_run(root, root / "run")
    assert again.returncode == 0, again.stderr
    assert "unreadable" in again.stderr and "starting afresh" in again.stderr
    a, b = (json.loads((root / d / "metrics.json").read_text())["metrics"] for d in ("ref", "run"))
    assert {k: v for k, v in a.items() if "second" not in k} == {k: v for k, v in b.items() if "second" not in k}
    RESULTS.append({"fault": "a truncated checkpoint.pt (run SIGKILLed at step 25, file cut to a third)", "trials": 1,
                    "outcome": "the run says the checkpoint is unreadable, restarts from scratch, ends with the undisturbed metrics"})


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("a full-disk test needs root to mount a small tmpfs")
    yield mnt
    subprocess.run(["umount", str(mnt)])


def test_full_disk_gives_a_clear_error_and_no_half_written_file(tmp_path, small_disk):
    root = make_project(tmp_path / "proj")
    _tiny_spec(root)
    (small_disk / "filler").write_bytes(b"\0" * (1900 << 10))  # leaves less than a checkpoint's worth
    out = small_disk / "run"
    proc = _cli_run(root, out)
    assert proc.returncode == 4, proc.stderr
    assert "no space left on the device while writing" in proc.stderr and "checkpoint.pt" in proc.stderr
    assert not (out / "checkpoint.pt").exists() and not (out / "metrics.json").exists()
    assert not list(out.glob(".*.tmp"))
    (small_disk / "filler").unlink()  # room again: the same command completes
    assert _cli_run(root, out).returncode == 0 and json.loads((out / "metrics.json").read_text())["status"] == "ok"
    RESULTS.append({"fault": "a full disk (a 2 MiB tmpfs, 1.9 MiB taken) while writing a checkpoint", "trials": 1,
                    "outcome": "exit 4 with 'no space left on the device while writing …/checkpoint.pt'; no partial file; "
                               "the rerun with space completes"})


# ----------------------------------------------------------------------------- slow (make test-faults)

PHASES = [
    ("download", "softrepro.cli data", 0.0),
    ("dvc add / push", "-m dvc add", 0.0),
    ("mid-training", "softrepro.cli run", 3.0),
    ("aggregation", "softrepro.cli aggregate", 0.3),
    ("report rendering", "softrepro.cli report", 2.0),
]


@pytest.mark.faults
@pytest.mark.parametrize("phase,pattern,delay", PHASES, ids=[p[0] for p in PHASES])
def test_sigkill_of_snakemake_during_each_phase(tmp_path, reference, phase, pattern, delay):
    root = fresh(tmp_path)
    hit = kill_during(snakemake(root), pattern, delay)
    ok, why = rerun_matches(root, reference)
    RESULTS.append({"fault": f"SIGKILL of Snakemake and its jobs during {phase}", "trials": 1,
                    "outcome": ("recovered: " + why) if ok and hit else (why if hit else "the phase was never seen")})
    assert hit, f"the phase {phase!r} never ran"
    assert ok, why


@pytest.mark.faults
def test_sigkill_of_one_training_job(tmp_path, reference):
    root = fresh(tmp_path)
    hit = kill_during(snakemake(root), "softrepro.cli run", 2.0, whole=False)
    ok, why = rerun_matches(root, reference)
    RESULTS.append({"fault": "SIGKILL of one training job (Snakemake sees it fail)", "trials": 1,
                    "outcome": ("recovered: " + why) if ok and hit else why})
    assert hit and ok, why


@pytest.mark.faults
def test_sigkill_at_random_times(tmp_path, reference):
    rng = random.Random(20261129)
    outcomes = []
    for trial in range(3):
        root = fresh(tmp_path, f"trial{trial}")
        proc = snakemake(root)
        time.sleep(rng.uniform(0.5, 25.0))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
        outcomes.append(rerun_matches(root, reference))
    ok = all(o for o, _ in outcomes)
    RESULTS.append({"fault": "SIGKILL of Snakemake at a random time (uniform 0.5-25 s)", "trials": len(outcomes),
                    "outcome": "all recovered: same claims.csv, nothing corrupt" if ok else "; ".join(w for _, w in outcomes)})
    assert ok, outcomes


def test_write_fault_table():
    """Writes benchmarks/faults.md from this session's faults (only under make test-faults)."""
    target = os.environ.get("SOFTREPRO_FAULTS_REPORT")
    if not target:
        pytest.skip("set by make test-faults")
    from softrepro import __version__

    rows = "\n".join(f"| {r['fault']} | {r['trials']} | {r['outcome']} |" for r in RESULTS)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    Path(target).write_text(f"""# Fault injection on the real DAG

Regenerated by `make test-faults` (tests/test_faults.py and tests/test_heal.py) at commit {commit}
(softrepro {__version__}), SCALE=smoke, PAPERS={PAPERS}; every disturbed run is followed by a plain
rerun of the same command and compared with an undisturbed run's claims.csv.

| fault injected | trials | outcome |
|---|---|---|
{rows}

The quick cases (every row but the SIGKILL ones) also run in `make test`; `make test-faults`
stops at the first failure, so a table written at all is a table of recoveries.
""")
