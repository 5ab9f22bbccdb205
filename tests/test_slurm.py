"""The smoke DAG through the `slurm` profile on a real single-node SLURM (make test-slurm).

Needs root: workflow/slurm/local-cluster.sh installs Debian's slurm-wlm and munge when they are
missing and starts munged, slurmctld and slurmd on this machine.  Selected with `-m slurm`
(`make test-slurm`); the default test run keeps the profile's dry-run test instead."""
import os
import subprocess
import sys

import pandas as pd
import pytest

from conftest import REPO, make_project

SCRIPT = REPO / "workflow" / "slurm" / "local-cluster.sh"
PAPERS = "agarap2017-cnn-svm"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("a local SLURM needs root")
    env = {**os.environ, "SOFTREPRO_SLURM_DIR": str(tmp_path_factory.mktemp("slurm"))}
    start = subprocess.run(["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=900)
    assert start.returncode == 0, start.stdout + start.stderr
    env["SLURM_CONF"] = os.path.join(env["SOFTREPRO_SLURM_DIR"], "slurm.conf")
    yield env
    subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120)


@pytest.mark.slurm
def test_smoke_dag_runs_through_the_slurm_profile(cluster, tmp_path):
    root = make_project(tmp_path / "proj")
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--profile", "workflow/profiles/slurm", "--config", "scale=smoke",
         f"papers={PAPERS}", "--default-resources", "slurm_partition=local", "mem_mb=2000", "runtime=30",
         "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "5",
         "--slurm-keep-successful-logs"],
        cwd=root, env=cluster, capture_output=True, text=True, timeout=1500)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    from softrepro.plan import build

    jobs = len([p for p in build("smoke", PAPERS, root).pools if p.kind == "train"])  # pools: one job each
    submitted = out.count("has been submitted with SLURM jobid")
    assert submitted == jobs == 2, out[-3000:]  # the training jobs (two pools, both seeds) went through sbatch
    logs = list((root / ".snakemake" / "slurm_logs" / "rule_run").rglob("*.log"))
    assert len(logs) == jobs and all("Finished jobid" in f.read_text() for f in logs)
    claims = pd.read_csv(root / "results/smoke/claims.csv")
    assert len(claims) == 6
    if os.environ.get("SOFTREPRO_MIRROR"):  # the data came from the mirror: every claim judged on both seeds
        assert (claims["n"] == 2).all()
    assert (root / "results/smoke/report.pdf").is_file()
