"""``softrepro`` command line: the steps the Snakemake rules call, plus spec checks."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from softrepro.spec import SpecError, repo_root


def _cmd_data(args) -> int:
    from softrepro.atomic import write_json
    from softrepro.fetch import ChecksumError, ensure
    from softrepro.spec import load_datasets

    root = repo_root()
    datasets = load_datasets(root)
    if args.name not in datasets:
        print(f"configs/datasets.yaml: no dataset {args.name!r}", file=sys.stderr)
        return 2
    try:
        marker = ensure(args.name, datasets[args.name], root, log=lambda m: print(m, file=sys.stderr))
    except ChecksumError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    out = Path(args.marker)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(marker, out)
    return 0


def _spec_path(root: Path, paper: str) -> Path:
    spec = root / "configs" / "papers" / f"{paper}.yaml"
    if not spec.is_file():
        raise SpecError(spec, "(file)", f"no paper spec {paper!r} under configs/papers/")
    return spec


def _cmd_run(args) -> int:
    from softrepro.runner import run_batch, run_job, run_pool

    root = repo_root()
    kw = dict(results=args.results, threads=args.threads, progress=not args.no_progress, log=lambda m: print(m, file=sys.stderr))
    if args.run:
        if args.paper or args.experiment or args.out or args.seeds is None or not args.pool:
            raise SystemExit("softrepro run --run PAPER/EXPERIMENT ... takes --seeds and --pool, not --paper/--experiment/--out/--seed")
        members = []
        for m in args.run:
            paper, _, experiment = m.partition("/")
            members.append((_spec_path(root, paper), experiment))
        run_pool(members, [int(s) for s in args.seeds.split(",")], args.scale, args.pool, root, **kw)
        return 0
    if not (args.paper and args.experiment and args.out):
        raise SystemExit("softrepro run needs --paper, --experiment and --out (or --run PAPER/EXPERIMENT ... --pool)")
    spec = _spec_path(root, args.paper)
    if args.seeds is not None:
        run_batch(spec, args.experiment, [int(s) for s in args.seeds.split(",")], args.scale, Path(args.out), root, **kw)
    else:
        run_job(spec, args.experiment, args.seed, args.scale, Path(args.out), root, **kw)
    return 0


def _cmd_link(args) -> int:
    from softrepro.plan import build
    from softrepro.runner import link_paper

    root = repo_root()
    link_paper(build(args.scale, args.paper, root, args.results, families="all"), args.paper, root)
    return 0


def _cmd_aggregate(args) -> int:
    from softrepro.aggregate import aggregate
    from softrepro.plan import build

    root = repo_root()
    _, claims = aggregate(build(args.scale, args.papers, root, args.results, families=args.families), root)
    print(claims[["paper", "claim", "verdict"]].to_string(index=False))
    return 0


def _cmd_report(args) -> int:
    from softrepro.report import render

    root = repo_root()
    for path in render(root, args.scale, args.results):
        print(path)
    return 0


def _cmd_validate(args) -> int:
    from softrepro.spec import load_datasets, load_paper, load_scale, SCALES

    root = repo_root()
    paths = [Path(p) for p in args.paths] or sorted((root / "configs" / "papers").glob("*.yaml"))
    datasets = load_datasets(root)
    for scale in SCALES:
        load_scale(scale, root)
    for path in paths:
        paper = load_paper(path, root, datasets)
        print(f"ok  {path}  ({len(paper.experiments)} experiments, {len(paper.claims)} claims)")
    return 0


def _cmd_plan(args) -> int:
    from softrepro.plan import build

    plan = build(args.scale, args.papers, repo_root(), args.results, families=args.families)
    for j in plan.jobs:
        print(f"{j.paper}\t{j.experiment}\tseed{j.seed}\t{j.kind}\t{j.dataset or '-'}\t{j.skip or ''}")
    return 0


def _cmd_timings(args) -> int:
    """Per-job wall times (Snakemake's benchmark files) beside the job's runs' own times (its
    pool record, cache/pools/<pool>/runs_<seeds>.json), as a Markdown table: the difference is
    the fixed cost of a job."""
    import pandas as pd

    from softrepro.layout import Layout
    from softrepro.plan import build

    root = repo_root()
    sharing = build(args.scale, "all", root, args.results).sharing()
    lay = Layout(args.results, args.scale)
    base = root / Path(lay.benchmark("cache/pools/x/y")).parent.parent
    rows = []
    for tsv in sorted(base.glob("*/*.tsv")):
        record = root / lay.pool(tsv.parent.name, tsv.stem)
        runs = json.loads(record.read_text())["runs"] if record.is_file() else []
        names = [sharing.get(r["run_key"], ["(no longer in the specs)"])[0] for r in runs]
        t = pd.read_csv(tsv, sep="\t")
        rows.append({"job": names[0] + (f" (+{len(names) - 1} more runs)" if len(names) > 1 else "") if names else tsv.parent.name,
                     "runs": sum(len(r["seeds"]) for r in runs), "seeds": tsv.stem,
                     "job_s": float(t["s"].iloc[0]),
                     "runs_s": sum(float(v["wall_seconds"] or 0) for r in runs for v in r["seeds"].values()),
                     "max_rss_MB": float(t["max_rss"].iloc[0])})
    if not rows:
        print(f"no benchmark files under {base}", file=sys.stderr)
        return 1
    df = pd.DataFrame(rows).sort_values("job")
    df["fixed_s_per_run"] = (df["job_s"] - df["runs_s"]) / df["runs"].clip(lower=1)
    print(df.round(1).to_markdown(index=False))
    n = int(df["runs"].sum())
    print(f"\nsum of job times: {df['job_s'].sum():.0f} s for {len(df)} jobs and {n} runs; "
          f"fixed cost (job time outside the runs' own training and evaluation) {df['job_s'].sum() - df['runs_s'].sum():.0f} s, "
          f"{(df['job_s'].sum() - df['runs_s'].sum()) / max(n, 1):.2f} s per run")
    return 0


def _cmd_throughput(args) -> int:
    from softrepro.atomic import write_csv
    from softrepro.estimate import THROUGHPUT, throughput

    import pandas as pd

    root = repo_root()
    table = throughput([root / r for r in args.measured])
    out = root / (args.out or THROUGHPUT)
    kept = 0
    if out.is_file() and not args.replace:
        # rows for the signatures and devices measured now are replaced; the others stay
        old = pd.read_csv(out)
        if "method" not in old:
            old["method"] = None
        measured_now = set(zip(table["signature"], table["device"]))
        old = old[[(s, d) not in measured_now for s, d in zip(old["signature"], old["device"])]]
        kept = len(old)
        table = pd.concat([table, old[table.columns]], ignore_index=True).sort_values(["signature", "method", "device"])
    write_csv(table, out)
    print(f"{len(table)} rows (speed signature x method x device; {kept} kept from the table before) "
          f"from {int(table['runs'].sum())} runs -> {out}")
    return 0


def _cmd_estimate(args) -> int:
    from softrepro.estimate import report
    from softrepro.plan import build

    root = repo_root()
    plan = build(args.scale, args.papers, root, families=args.families)
    print(report(plan, [root / r for r in args.measured]))
    return 0


def _cmd_dag(snakemake_args: list[str]) -> int:
    """Snakemake on this checkout, as `make reproduce` runs it: one at a time (a lock the kernel
    releases when the process dies, so a killed run leaves none behind), and a Snakemake lock that
    a killed run left is removed before the next run, which then resumes."""
    import fcntl
    import subprocess

    root = repo_root()
    (root / ".snakemake").mkdir(exist_ok=True)
    guard = open(root / ".snakemake" / "softrepro-dag.lock", "a+")
    try:
        fcntl.flock(guard, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        guard.seek(0)
        print(f"error: another `make reproduce` is running in this checkout (pid {guard.read().strip() or '?'}; "
              f"lock {root / '.snakemake' / 'softrepro-dag.lock'}); let it finish, or stop it first", file=sys.stderr)
        return 5
    guard.seek(0)
    guard.truncate()
    guard.write(str(os.getpid()))
    guard.flush()
    snakemake = [sys.executable, "-m", "snakemake", *snakemake_args]
    if any((root / ".snakemake" / "locks").glob("*")):  # nobody holds our lock, so these are stale
        print("removing the Snakemake lock that an interrupted run left behind", file=sys.stderr)
        subprocess.run([*snakemake, "--unlock"], cwd=root, check=True, capture_output=True)
    return subprocess.run(snakemake, cwd=root).returncode


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["dag"]:  # everything after it is Snakemake's
        return _cmd_dag(argv[1:])
    p = argparse.ArgumentParser(prog="softrepro", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("data", help="fetch (DVC or download), verify and register one dataset")
    s.add_argument("name")
    s.add_argument("--marker", required=True, help="where to write the dataset's status JSON")
    s.set_defaults(fn=_cmd_data)

    s = sub.add_parser("run", help="run one (paper, experiment) for one seed or several seeds, or a pool of runs (what a "
                                   "DAG job computes) in one process")
    s.add_argument("--paper")
    s.add_argument("--experiment")
    s.add_argument("--run", action="append", metavar="PAPER/EXPERIMENT",
                   help="a run of the pool (repeat it); each into <results>/<scale>/cache/<key>/seed<k>")
    s.add_argument("--pool", help="the pool's name (plan.Pool.id): its record is <results>/<scale>/cache/pools/<pool>/runs_<seeds>.json")
    seeds = s.add_mutually_exclusive_group(required=True)
    seeds.add_argument("--seed", type=int, help="one run into --out")
    seeds.add_argument("--seeds", help="comma-separated seeds, each into --out/seed<k>, then --out/runs_<seeds>.json")
    s.add_argument("--scale", required=True)
    s.add_argument("--out", help="run directory (--seed) or the batch's directory (--seeds)")
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--results", default="results")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(fn=_cmd_run)

    s = sub.add_parser("link", help="write every job record of a paper from the runs it shares (or its not-run records)")
    s.add_argument("--paper", required=True)
    s.add_argument("--scale", required=True)
    s.add_argument("--results", default="results")
    s.set_defaults(fn=_cmd_link)

    for name, fn, help_ in (("aggregate", _cmd_aggregate, "write runs.csv and claims.csv"),
                            ("plan", _cmd_plan, "list the jobs of a scale")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--scale", default="cpu")
        s.add_argument("--papers", default="all")
        s.add_argument("--families", default="all")
        s.add_argument("--results", default="results")
        s.set_defaults(fn=fn)

    s = sub.add_parser("timings", help="per-job times of a finished scale, as Markdown")
    s.add_argument("--scale", default="cpu")
    s.add_argument("--results", default="results")
    s.set_defaults(fn=_cmd_timings)

    sub.add_parser("dag", help="run Snakemake on this checkout with the arguments that follow (what `make reproduce` "
                   "does): one at a time, stale locks of a killed run removed")

    s = sub.add_parser("throughput", help="write the measured steps/s of each speed signature (finished runs under --measured) "
                                          "to benchmarks/throughput.csv, which orders the DAG's jobs longest first")
    s.add_argument("--measured", nargs="+", default=["results"], help="results folders with finished runs")
    s.add_argument("--out", help="default: benchmarks/throughput.csv")
    s.add_argument("--replace", action="store_true",
                   help="write only what --measured holds (default: keep the table's rows for signatures not measured there)")
    s.set_defaults(fn=_cmd_throughput)

    s = sub.add_parser("estimate", help="planned runs of a scale and their expected hours per device, from measured throughput")
    s.add_argument("--scale", default="paper")
    s.add_argument("--papers", default="all")
    s.add_argument("--families", default="all")
    s.add_argument("--measured", nargs="+", default=["results", "results-reference"],
                   help="results folders whose finished runs give the throughput")
    s.set_defaults(fn=_cmd_estimate)

    s = sub.add_parser("report", help="render the report notebook to HTML and PDF")
    s.add_argument("--scale", default="cpu")
    s.add_argument("--results", default="results")
    s.set_defaults(fn=_cmd_report)

    s = sub.add_parser("validate", help="check paper specs against the schema and the registries")
    s.add_argument("paths", nargs="*")
    s.set_defaults(fn=_cmd_validate)

    args = p.parse_args(argv)
    from softrepro.atomic import DiskFull

    try:
        return args.fn(args)
    except SpecError as exc:
        print(f"spec error: {exc}", file=sys.stderr)
        return 2
    except DiskFull as exc:
        print(f"error: {exc.strerror}", file=sys.stderr)
        return 4


if __name__ == "__main__":
    sys.exit(main())
