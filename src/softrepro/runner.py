"""Run one job and write ``metrics.json`` (+ ``steps.csv``) with its provenance."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import time
from pathlib import Path

from softrepro import __version__
from softrepro.atomic import write_atomic, write_csv, write_json
from softrepro.layout import Layout
from softrepro.registry import BENCHMARKS, NotRun
from softrepro.spec import SpecError, experiment_datasets, load_paper, load_scale, resolve_experiment, run_key


def _git(root: Path, *args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(root: Path, threads: int) -> dict:
    import numpy as np
    import torch
    from threadpoolctl import threadpool_info

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    lock = root / "requirements.lock"
    return {
        "lock_sha256": hashlib.sha256(lock.read_bytes()).hexdigest() if lock.is_file() else None,
        "git_commit": _git(root, "rev-parse", "HEAD"),
        "git_dirty": bool(_git(root, "status", "--porcelain", "--untracked-files=no")),
        "softrepro": __version__,
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "blas": sorted({f"{p['internal_api']} {p['version']}" for p in threadpool_info() if p["user_api"] == "blas"}),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "device": f"cuda ({gpu})" if gpu else "cpu",
    }


def _experiment(paper, name: str) -> dict:
    """The spec's experiment ``name``; an unknown name is a spec error naming the file and what it has."""
    if name not in paper.experiments:
        raise SpecError(paper.path, "experiments", f"no experiment {name!r} (has: {', '.join(paper.experiments)})")
    return paper.experiments[name]


def run_job(paper_path: Path, experiment: str, seed: int, scale: str, out_dir: Path, root: Path,
            results: str = "results", threads: int = 1, progress: bool = True, log=print, paper=None) -> dict:
    paper = paper or load_paper(paper_path, root)
    exp = resolve_experiment(_experiment(paper, experiment), scale)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "paper": paper.id, "experiment": experiment, "seed": seed, "scale": scale,
        "evidence": load_scale(scale, root).evidence, "kind": exp["kind"], "config": exp,
        "deviations": exp["deviations"], "run_key": None if exp.get("skip") else run_key(exp), "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "provenance": provenance(root, threads),
    }
    import pandas as pd

    if exp["kind"] == "train" and not exp.get("skip"):
        from softrepro.train import train  # imported before the clock starts: a fixed cost, not the run's
        import torch._dynamo  # noqa: F401  (torch.optim imports it on the first optimizer step: ~1.3 s, a fixed cost too)

    steps = pd.DataFrame()
    t0 = time.perf_counter()
    reason = exp.get("skip")
    if not reason:  # a training run's datasets, or the one a benchmark declares (``dataset:``)
        for name in experiment_datasets(exp):  # its own, then e.g. its OOD sets'
            marker = json.loads((root / Layout(results, scale).dataset_marker(name)).read_text())
            record.setdefault("dataset", marker)
            if not marker["available"]:
                reason = marker["reason"]
                break
    teacher_model = None
    if not reason and exp.get("teacher"):  # a distillation student reads its teacher's run of the same seed
        t = exp["teacher"]
        t_dir = root / Layout(results, scale).cache_run(t["run_key"], seed)
        if not (t_dir / "metrics.json").is_file():
            raise RuntimeError(f"the teacher {t['experiment']!r} (run {t['run_key']}) has no finished seed {seed} "
                               f"under {t_dir}: run it first (the DAG does)")
        t_rec = json.loads((t_dir / "metrics.json").read_text())
        teacher_model = t_dir / "model.pt"
        if t_rec.get("status") != "ok":
            reason = f"its teacher {t['experiment']!r} did not run ({t_rec.get('reason')})"
        elif not teacher_model.is_file():
            raise RuntimeError(f"{teacher_model} is missing (a run from before trained weights were kept): delete "
                               f"{t_dir.parent} and run again")
        record["teacher"] = {"experiment": t["experiment"], "run_key": t["run_key"], "seed": seed}
    if reason:
        record.update(status="not_run", reason=reason, metrics={})
        log(f"not run: {reason}")
    elif exp["kind"] == "train":
        metrics, steps, extras = train(exp, seed, out_dir, root, threads=threads, progress=progress, log=log,
                                       cache_dir=root / Layout(results, scale).prepared(), teacher_model=teacher_model)
        record.update(status="ok", metrics=metrics, **extras)
    else:
        params = {k: v for k, v in exp["benchmark"].items() if k != "name"}
        params.setdefault("threads", threads)
        if exp.get("dataset"):  # a benchmark that declares a dataset (a DAG input, as for training) gets its splits
            from softrepro.datasets import load_splits
            from softrepro.spec import load_datasets

            params["data"] = load_splits(exp["dataset"], load_datasets(root)[exp["dataset"]], root, seed)
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(desc=f"benchmark seed {seed}", mininterval=2.0)

        def tick(done: int, total: int) -> None:
            if bar is not None:
                bar.total = total
                bar.update(done - bar.n)

        try:
            metrics, rows = BENCHMARKS.get(exp["benchmark"]["name"])(params, seed, tick)
            steps = pd.DataFrame(rows)
            record.update(status="ok", metrics=metrics)
        except NotRun as why:
            record.update(status="not_run", reason=str(why), metrics={})
            log(f"not run: {why}")
        finally:
            if bar is not None:
                bar.close()
    record["wall_seconds"] = time.perf_counter() - t0
    record["finished"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    write_csv(steps, out_dir / "steps.csv")
    write_json(record, out_dir / "metrics.json")  # last: its presence means the run is complete
    return record


def run_batch(paper_path: Path, experiment: str, seeds: list[int], scale: str, out_root: Path, root: Path,
              results: str = "results", threads: int = 1, progress: bool = True, log=print, paper=None) -> dict:
    """Every seed of one run in one process (the imports, spec checks and dataset load are paid
    once), each into its own ``out_root/seed<k>`` with its own metrics, step log and checkpoint.
    A seed whose ``metrics.json`` already records this run resumes as done, so an interrupted
    batch picks up at the seed it was on (and that seed at its last checkpoint).  Writes the
    batch's record (``Layout.batch``) last."""
    paper = paper or load_paper(paper_path, root)
    key = run_key(resolve_experiment(_experiment(paper, experiment), scale))
    done = {}
    for seed in seeds:
        out = out_root / f"seed{seed}"
        prev = out / "metrics.json"
        if prev.is_file() and (out / "steps.csv").is_file():
            try:
                rec = json.loads(prev.read_text())
            except ValueError:  # unreadable: not a finished run, so it runs again
                rec = {}
            if rec.get("run_key") == key and rec.get("seed") == seed:
                log(f"seed {seed}: already done ({prev})")
                done[seed] = {"status": rec["status"], "wall_seconds": rec.get("wall_seconds"), "resumed": True}
                continue
        rec = run_job(paper_path, experiment, seed, scale, out, root, results=results, threads=threads,
                      progress=progress, log=log, paper=paper)
        done[seed] = {"status": rec["status"], "wall_seconds": rec["wall_seconds"], "resumed": False}
    batch = {"run_key": key, "paper": paper.id, "experiment": experiment, "scale": scale, "seeds": done}
    write_json(batch, out_root / Path(Layout(results, scale).batch(key, seeds)).name)
    return batch


def run_pool(members: list[tuple[Path, str]], seeds: list[int], scale: str, pool: str, root: Path,
             results: str = "results", threads: int = 1, progress: bool = True, log=print) -> dict:
    """One DAG job: each (spec, experiment) run of a pool (``plan.Pool``) for ``seeds``, one after
    the other in this process (``run_batch``: a run or seed already done resumes as done), each
    into ``cache/<key>``; then the pool's record (``Layout.pool``) last."""
    lay = Layout(results, scale)
    runs, papers = [], {}
    for i, (path, experiment) in enumerate(members, 1):
        paper = papers.get(path) or papers.setdefault(path, load_paper(path, root))
        key = run_key(resolve_experiment(_experiment(paper, experiment), scale))
        log(f"[{i}/{len(members)}] {paper.id}/{experiment} (run {key})")
        runs.append(run_batch(path, experiment, seeds, scale, root / lay.cache(key), root, results=results,
                              threads=threads, progress=progress, log=log, paper=paper))
    record = {"pool": pool, "scale": scale, "seeds": list(seeds), "runs": runs}
    out = root / lay.pool(pool, seeds)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(record, out)
    return record


def link_paper(plan, paper_id: str, root: Path) -> dict:
    """Every job of one paper at the plan's scale: its record from the run it shares, with this
    paper's description and deviations (``link_job``), then ``runs/<paper>/linked.json``."""
    paper = next(p for p in plan.papers if p.id == paper_id)
    lay = plan.layout
    linked = []
    for j in (j for j in plan.jobs if j.paper == paper_id):
        link_job(paper.path, j.experiment, j.seed, plan.scale.name, root / lay.run(j.paper, j.experiment, j.seed), root,
                 results=plan.results, paper=paper)
        linked.append(f"{j.experiment}/seed{j.seed}")
    record = {"paper": paper_id, "scale": plan.scale.name, "jobs": linked}
    write_json(record, root / lay.linked(paper_id))
    return record


def link_job(paper_path: Path, experiment: str, seed: int, scale: str, out_dir: Path, root: Path,
             results: str = "results", paper=None) -> dict:
    """Write a job's record from the run it shares (``cache/<key>/seed<k>``), with this
    paper's description and deviations; a job skipped at this scale gets its not-run record."""
    paper = paper or load_paper(paper_path, root, check_names=False)  # checked when its run was planned
    exp = resolve_experiment(paper.experiments[experiment], scale)
    if exp.get("skip"):
        return run_job(paper_path, experiment, seed, scale, out_dir, root, results=results, progress=False,
                       log=lambda m: None, paper=paper)
    key = run_key(exp)
    cache = root / Layout(results, scale).cache_run(key, seed)
    record = json.loads((cache / "metrics.json").read_text())
    if record.get("run_key") != key:
        raise RuntimeError(f"{cache}/metrics.json belongs to run {record.get('run_key')!r}, not {key!r}")
    record.update(paper=paper.id, experiment=experiment, config=exp, deviations=exp["deviations"])
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "steps.csv", lambda tmp: shutil.copyfile(cache / "steps.csv", tmp))
    write_json(record, out_dir / "metrics.json")
    return record
