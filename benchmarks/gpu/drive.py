"""Run a scale's training jobs on a GPU machine without Snakemake, as the `gpu` profile would.

The lent GPU machines have PyTorch but neither Snakemake nor DVC, and no network.  This script
does what the `dataset` and `run` rules do there: it verifies the datasets from a local mirror
folder (payload sha256, as `softrepro data` does, without `dvc add`), writes their markers, and
then launches `softrepro run --seeds ...` (the `run` rule's exact command) for each run of the
selected experiments, ``--slots`` jobs at a time on the one GPU (the profile's `gpu_slots`).
It records each job's start and end.  The run folders it leaves (results/<scale>/cache/<key>)
are then linked and aggregated on any machine with ``--collect`` (what the `link` and
`aggregate` rules do; a job whose run did not finish reads "not run: no run in this results
folder"), and the report is rendered with ``softrepro report``.

    python benchmarks/gpu/drive.py --mirror .gpu/data --scale paper --slots 8 \
        --only 'agarap2017-cnn-svm:*' --only 'dang2023-neural-collapse:*' --timings out/jobs.json
    python benchmarks/gpu/drive.py --collect --results results-reference --scale paper --only 'agarap2017-cnn-svm:*'
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from softrepro.fetch import download_and_verify
from softrepro.plan import build
from softrepro.spec import load_datasets


def prepare_data(root: Path, names: list[str], mirror: Path, layout) -> None:
    os.environ["SOFTREPRO_MIRROR"] = str(mirror.resolve())
    datasets = load_datasets(root)
    for name in names:
        cfg = datasets[name]
        marker = root / layout.dataset_marker(name)
        marker.parent.mkdir(parents=True, exist_ok=True)
        if cfg["format"] in ("sklearn", "generated"):
            marker.write_text(json.dumps({"dataset": name, "available": True, "source": cfg["format"]}))
            continue
        target = root / "data" / name
        digests = download_and_verify(name, cfg, target, log=lambda m: print(m, file=sys.stderr))
        marker.write_text(json.dumps({"dataset": name, "available": True, "source": "mirror (no DVC on this machine)",
                                      "sha256": digests}))


def collect(root: Path, plan) -> None:
    from softrepro.aggregate import aggregate
    from softrepro.runner import link_job

    for j in plan.jobs:
        if j.key and (root / plan.layout.cache_run(j.key, j.seed) / "metrics.json").is_file():
            link_job(root / "configs" / "papers" / f"{j.paper}.yaml", j.experiment, j.seed, plan.scale.name,
                     root / plan.layout.run(j.paper, j.experiment, j.seed), root, results=plan.results)
    _, claims = aggregate(plan, root)
    print(claims[["claim", "evidence_level", "verdict"]].to_string(index=False))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", default="paper")
    ap.add_argument("--mirror")
    ap.add_argument("--collect", action="store_true", help="link and aggregate the finished runs instead of running")
    ap.add_argument("--results", default="results")
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", action="append", required=True, help="paper:experiment glob, e.g. agarap2017-cnn-svm:*")
    ap.add_argument("--seeds", help="comma-separated seeds instead of the scale's")
    ap.add_argument("--seeds-per-job", type=int, default=0, help="as the DAG's seeds_per_job: 0 = all seeds in one job")
    ap.add_argument("--timings")
    args = ap.parse_args()
    root = Path.cwd()
    papers = sorted({o.split(":")[0] for o in args.only})
    plan = build(args.scale, ",".join(papers), root, args.results)
    if args.collect:
        collect(root, plan)
        return 0
    owners = {}
    for j in plan.jobs:
        if j.key and any(fnmatch.fnmatch(f"{j.paper}:{j.experiment}", o) for o in args.only):
            owners.setdefault(j.key, j)
    prepare_data(root, sorted({d for j in owners.values() for d in j.inputs}), Path(args.mirror), plan.layout)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(plan.scale.seeds)
    n = args.seeds_per_job or len(seeds)
    steps = {k: plan.config(j.paper, j.experiment).get("steps", 0) for k, j in owners.items()}
    # the longest jobs first, so that the slots stay full to the end
    jobs = [(key, ",".join(map(str, seeds[i:i + n]))) for key in sorted(owners, key=lambda k: -steps[k])
            for i in range(0, len(seeds), n)]

    def launch(job):
        key, chunk = job
        j = owners[key]
        cmd = [sys.executable, "-m", "softrepro.cli", "run", "--paper", j.paper, "--experiment", j.experiment,
               "--seeds", chunk, "--scale", args.scale, "--out", plan.layout.cache(key), "--threads", str(args.threads),
               "--no-progress"]
        t0 = time.time()
        log = root / plan.layout.log(f"cache/{key}/{chunk.replace(',', '_')}")
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as fh:
            rc = subprocess.run(cmd, stderr=fh, stdout=fh).returncode
        return {"key": key, "paper": j.paper, "experiment": j.experiment, "seeds": chunk, "rc": rc,
                "start": t0, "end": time.time(), "slots": args.slots}

    t0 = time.time()
    with ThreadPoolExecutor(args.slots) as pool:
        done = list(pool.map(launch, jobs))
    out = Path(args.timings)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"wall_s": time.time() - t0, "jobs": done}, indent=1))
    print(json.dumps([(d["experiment"], d["rc"], round(d["end"] - d["start"], 1)) for d in done]))
    return max(d["rc"] for d in done) if done else 0


if __name__ == "__main__":
    sys.exit(main())
