"""What the DAG runs at a scale.

A *job* is one (paper, experiment, seed) as the report sees it.  A *run* is what is
actually computed: jobs whose resolved experiments are identical (same ``run_key``)
share one run per seed, so the cross-entropy baseline that several papers compare
against trains once.  Each run's seeds go into ``cache/<key>/seed<k>``; each job's
``runs/<paper>/<experiment>/seed<k>`` is that run's record with the paper's own
description and deviations (paths: ``layout.Layout``).

A *pool* is what one process (one Snakemake job) computes: up to the scale's
``configs_per_job`` runs of equal cost (``pool_signature``: same data, model, batch size,
steps and evaluation) and at most its ``pool_seconds`` expected seconds, each for all of the
scale's seeds (or a chunk of ``seeds_per_job``).
Starting Python and importing torch costs about 3 s a process; a pool pays it once for
all its runs.  A benchmark is a pool of its own (it takes every core).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from softrepro.layout import Layout
from softrepro.spec import NON_COMPUTING_KEYS, experiment_datasets, Paper, Scale, load_papers, load_scale, repo_root, resolve_experiment, run_key


@dataclass(frozen=True)
class Job:
    paper: str
    experiment: str
    seed: int
    kind: str  # train | benchmark
    dataset: str | None
    skip: str | None
    key: str | None = None  # None when the experiment is skipped at this scale
    inputs: tuple[str, ...] = ()  # every dataset the run reads: its own, then e.g. its OOD sets'
    teacher: str | None = None  # the run key of the run whose trained model (same seed) this run reads


@dataclass(frozen=True)
class Pool:
    id: str  # a digest of its runs' keys: a changed run makes a new pool, whose unchanged runs resume as done
    keys: tuple[str, ...]
    kind: str  # train | benchmark


def pool_signature(resolved: dict) -> str:
    """Runs with the same signature cost about the same: what sets the cost of a training step
    (``estimate.signature``), the number of steps, the evaluation (OOD scores, probes) and the inputs."""
    from softrepro.estimate import signature

    extra = {k: resolved.get(k) for k in ("kind", "steps", "ood", "probe", "eval_every", "teacher")}
    return signature(resolved) + json.dumps(extra, sort_keys=True, default=str) + ",".join(experiment_datasets(resolved))


def make_pools(keys: list[str], configs: dict[str, dict], per_job: int, seconds=None, cap: float | None = None) -> list[Pool]:
    """Group run keys (in plan order) by ``pool_signature`` into pools of at most ``per_job``, and,
    given each run's expected ``seconds(key)``, of at most ``cap`` expected seconds (a run longer than
    that is a pool of its own): short pools keep the end of a run from leaving cores idle."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        cfg = configs[key]
        sig = key if cfg["kind"] != "train" else pool_signature(cfg)
        groups.setdefault(sig, []).append(key)
    pools = []
    for members in groups.values():
        chunks, chunk, total = [], [], 0.0
        for key in members:
            s = seconds(key) if seconds and cap else 0.0
            if chunk and (len(chunk) >= max(per_job, 1) or (cap and total + s > cap)):
                chunks.append(chunk)
                chunk, total = [], 0.0
            chunk.append(key)
            total += s
        chunks.append(chunk)
        for chunk in map(tuple, chunks):
            pid = chunk[0] if len(chunk) == 1 else "p" + hashlib.sha1(",".join(chunk).encode()).hexdigest()[:11]
            pools.append(Pool(pid, chunk, configs[chunk[0]]["kind"]))
    order = {k: i for i, k in enumerate(keys)}
    return sorted(pools, key=lambda p: order[p.keys[0]])


@dataclass
class Plan:
    scale: Scale
    papers: list[Paper]
    jobs: list[Job]
    results: str = "results"
    seeds_per_job: int = 0  # 0: all seeds of a run in one job
    configs: dict = None  # (paper, experiment) -> the experiment resolved at this scale, computed once
    root: Path | None = None  # the checkout (for its committed throughput table)

    @cached_property
    def pools(self) -> list[Pool]:
        """What each training process computes (``make_pools``), capped at the scale's ``pool_seconds``
        expected seconds a pool; computed when first asked for (a link job never needs them)."""
        keys = self.keys()
        configs = {k: self.config(self.owner(k).paper, self.owner(k).experiment) for k in keys}
        seeds = len(self.batch(self.scale.seeds[0]))
        return make_pools(keys, configs, self.scale.configs_per_job, lambda k: self.run_seconds(k, seeds), self.scale.pool_seconds)

    def run_seconds(self, key: str, seeds: int) -> float:
        """Run ``key``'s expected seconds for ``seeds`` seeds, from the committed throughput table."""
        from softrepro.estimate import expected_seconds

        return expected_seconds(self.computing(key), seeds, self.throughput, "cuda" if self.scale.gpu else "cpu")

    def config(self, paper: str, experiment: str) -> dict:
        """The experiment as run at this scale (resolved once, when the plan was built)."""
        return self.configs[paper, experiment]

    def computing(self, key: str) -> dict:
        """What run ``key`` computes: its owner's configuration without the keys that do not change numbers."""
        j = self.owner(key)
        return {k: v for k, v in self.config(j.paper, j.experiment).items() if k not in NON_COMPUTING_KEYS}

    @property
    def layout(self) -> Layout:
        return Layout(self.results, self.scale.name)

    @property
    def datasets(self) -> list[str]:
        return sorted({d for j in self.jobs if not j.skip for d in j.inputs})

    def job(self, paper: str, experiment: str, seed: int) -> Job:
        for j in self.jobs:
            if (j.paper, j.experiment, j.seed) == (paper, experiment, int(seed)):
                return j
        raise KeyError(f"no job {paper}/{experiment}/seed{seed} at scale {self.scale.name}")

    def owner(self, key: str) -> Job:
        """The first job (in spec order) that needs run ``key``: its spec tells the runner what to compute."""
        for j in self.jobs:
            if j.key == key:
                return j
        raise KeyError(f"no run {key} at scale {self.scale.name}")

    def sharing(self) -> dict[str, list[str]]:
        """run key -> the 'paper/experiment' names that use it."""
        out: dict[str, list[str]] = {}
        for j in self.jobs:
            if j.key and f"{j.paper}/{j.experiment}" not in out.setdefault(j.key, []):
                out[j.key].append(f"{j.paper}/{j.experiment}")
        return out

    def metrics_files(self) -> list[str]:
        return [self.layout.metrics(j.paper, j.experiment, j.seed) for j in self.jobs]

    def keys(self) -> list[str]:
        """The distinct runs to compute (each for every seed of the scale)."""
        return list(dict.fromkeys(j.key for j in self.jobs if j.key))

    def pool(self, pid: str) -> Pool:
        for p in self.pools:
            if p.id == pid:
                return p
        raise KeyError(f"no pool {pid} at scale {self.scale.name}")

    def pool_of(self, key: str) -> Pool:
        for p in self.pools:
            if key in p.keys:
                return p
        raise KeyError(f"no run {key} at scale {self.scale.name}")

    def pool_seconds(self, pid: str) -> float:
        """The expected seconds of one job of pool ``pid`` (all its runs and seeds), from the committed
        throughput table: the DAG starts the longest jobs first, so that no long job is left to run
        alone on one core at the end."""
        seeds = len(self.batch(self.scale.seeds[0]))
        return sum(self.run_seconds(k, seeds) for k in self.pool(pid).keys)

    def chain_seconds(self, pid: str) -> float:
        """Pool ``pid``'s expected seconds plus the longest chain of pools that wait for it (the
        students of the teachers it trains): its priority in the DAG, so that a teacher starts before
        a longer job that nothing waits for."""
        own = self.pool_seconds(pid)
        return own + max((self.chain_seconds(c) for c in self._waiting.get(pid, ())), default=0.0)

    @cached_property
    def _waiting(self) -> dict[str, set[str]]:
        """For each pool, the pools whose runs read a teacher it trains."""
        out: dict[str, set[str]] = {}
        for j in self.jobs:
            if j.key and j.teacher:
                out.setdefault(self.pool_of(j.teacher).id, set()).add(self.pool_of(j.key).id)
        return out

    @cached_property
    def throughput(self):
        """The committed throughput table (``estimate.THROUGHPUT``), read when first needed; None without one."""
        from softrepro.estimate import THROUGHPUT

        table = (self.root or repo_root()) / THROUGHPUT
        if not table.is_file():
            return None
        import pandas as pd

        return pd.read_csv(table)

    def batch(self, seed: int) -> tuple[int, ...]:
        """The seeds computed by the same job as ``seed`` (all of the scale's, or chunks of ``seeds_per_job``)."""
        seeds = list(self.scale.seeds)
        n = self.seeds_per_job or len(seeds)
        i = seeds.index(seed) // n
        return tuple(seeds[i * n : (i + 1) * n])


def build(scale: str, papers="all", root: Path | None = None, results: str = "results", seeds_per_job: int = 0,
          families: str = "all") -> Plan:
    root = root or repo_root()
    sc = load_scale(scale, root)
    specs = load_papers(papers, root, families)
    jobs, configs = [], {}
    for paper in specs:
        for name, exp in paper.experiments.items():
            resolved = configs[paper.id, name] = resolve_experiment(exp, scale)
            if resolved.get("grid_cut"):
                continue  # this combination of a matrix is not run at this scale
            key = None if resolved.get("skip") else run_key(resolved)
            inputs = experiment_datasets(resolved)
            teacher = (resolved.get("teacher") or {}).get("run_key")
            for seed in sc.seeds:
                jobs.append(Job(paper.id, name, seed, resolved["kind"], resolved.get("dataset"), resolved.get("skip"), key, inputs,
                                teacher))
    return Plan(sc, specs, jobs, results, seeds_per_job, configs, root=root)
