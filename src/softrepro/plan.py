"""What the DAG runs at a scale: one job per (paper, experiment, seed)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from softrepro.spec import Paper, Scale, load_papers, load_scale, repo_root, resolve_experiment


@dataclass(frozen=True)
class Job:
    paper: str
    experiment: str
    seed: int
    kind: str  # train | benchmark
    dataset: str | None
    skip: str | None

    def run_dir(self, results: str, scale: str) -> str:
        return f"{results}/{scale}/runs/{self.paper}/{self.experiment}/seed{self.seed}"


@dataclass
class Plan:
    scale: Scale
    papers: list[Paper]
    jobs: list[Job]
    results: str = "results"

    @property
    def datasets(self) -> list[str]:
        return sorted({j.dataset for j in self.jobs if j.dataset and not j.skip})

    def job(self, paper: str, experiment: str, seed: int) -> Job:
        for j in self.jobs:
            if (j.paper, j.experiment, j.seed) == (paper, experiment, int(seed)):
                return j
        raise KeyError(f"no job {paper}/{experiment}/seed{seed} at scale {self.scale.name}")

    def metrics_files(self) -> list[str]:
        return [f"{j.run_dir(self.results, self.scale.name)}/metrics.json" for j in self.jobs]


def dataset_marker(results: str, name: str) -> str:
    return f"{results}/datasets/{name}.json"


def build(scale: str, papers="all", root: Path | None = None, results: str = "results") -> Plan:
    root = root or repo_root()
    sc = load_scale(scale, root)
    specs = load_papers(papers, root)
    jobs = []
    for paper in specs:
        for name, exp in paper.experiments.items():
            resolved = resolve_experiment(exp, scale)
            for seed in sc.seeds:
                jobs.append(Job(paper.id, name, seed, resolved["kind"], resolved.get("dataset"), resolved.get("skip")))
    return Plan(sc, specs, jobs, results)
