"""Every path under the results folder, in one place.

``Layout(results, scale)`` names each file the DAG writes.  Its methods only format strings, so
the Snakemake rules can pass wildcards (``layout.batch("{key}")``) and Python code real values.

    <results>/datasets/<name>.json                      a dataset's marker (any scale)
    <results>/<scale>/cache/<key>/seed<k>/               one run: metrics.json, steps.csv, checkpoint.pt
    <results>/<scale>/cache/<key>/runs_<s1>_<s2>.json    the record of one batch of seeds of run <key>
    <results>/<scale>/cache/pools/<pool>/runs_<s1>_<s2>.json  the record of one job: its runs (a pool), those seeds
    <results>/<scale>/cache/prepared/<hash>.npz          preprocessed inputs shared by runs (a PCA, once)
    <results>/<scale>/runs/<paper>/<experiment>/seed<k>/ a paper's view of a run (its own deviations)
    <results>/<scale>/runs/<paper>/linked.json           the record that all of a paper's jobs are linked
    <results>/<scale>/{runs,claims,up_to_curves}.csv, papers.json, report.{ipynb,html,pdf}
    <results>/<scale>/logs/, benchmarks/                 Snakemake logs and per-job time and memory
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    results: str
    scale: str

    @property
    def base(self) -> str:
        return f"{self.results}/{self.scale}"

    def dataset_marker(self, name: str) -> str:
        return f"{self.results}/datasets/{name}.json"

    def dataset_log(self, name: str) -> str:
        return f"{self.results}/logs/datasets/{name}.log"

    def cache(self, key: str) -> str:
        return f"{self.base}/cache/{key}"

    def cache_run(self, key: str, seed) -> str:
        return f"{self.cache(key)}/seed{seed}"

    def prepared(self) -> str:
        """Preprocessed inputs shared by runs on the same data and settings (e.g. a PCA)."""
        return f"{self.base}/cache/prepared"

    def batch(self, key: str, seeds) -> str:
        """The record of the job that computes ``seeds`` (a tuple, or a wildcard string) of run ``key``."""
        tag = seeds if isinstance(seeds, str) else "_".join(map(str, seeds))
        return f"{self.cache(key)}/runs_{tag}.json"

    def pool(self, pool: str, seeds) -> str:
        """The record of the job that computes ``seeds`` of every run in ``pool`` (``plan.Pool``)."""
        tag = seeds if isinstance(seeds, str) else "_".join(map(str, seeds))
        return f"{self.base}/cache/pools/{pool}/runs_{tag}.json"

    def run(self, paper: str, experiment: str, seed) -> str:
        return f"{self.base}/runs/{paper}/{experiment}/seed{seed}"

    def metrics(self, paper: str, experiment: str, seed) -> str:
        return f"{self.run(paper, experiment, seed)}/metrics.json"

    def steps(self, paper: str, experiment: str, seed) -> str:
        return f"{self.run(paper, experiment, seed)}/steps.csv"

    def linked(self, paper: str) -> str:
        """The record that every job of ``paper`` has been linked from its run."""
        return f"{self.base}/runs/{paper}/linked.json"

    def file(self, name: str) -> str:
        """runs.csv, claims.csv, up_to_curves.csv, papers.json, report.html, report.pdf, report.ipynb"""
        return f"{self.base}/{name}"

    def log(self, name: str) -> str:
        return f"{self.base}/logs/{name}.log"

    def benchmark(self, name: str) -> str:
        return f"{self.base}/benchmarks/{name}.tsv"
