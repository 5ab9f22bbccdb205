# Runs, pools and jobs.  A run is one resolved configuration, computed once however many papers
# need it, each seed into cache/<key>/seed<k>.  A Snakemake job (rule `run`) computes one pool:
# up to the scale's `configs_per_job` runs of equal cost (plan.Pool), all of the scale's seeds
# (or chunks of `seeds_per_job`), in one process (imports and spec checks are paid once a job),
# then writes its record cache/pools/<pool>/runs_<seeds>.json.  An interrupted job resumes at the
# run and seed it was on.  A run with a teacher (a distillation student) waits for the job that
# trains its teacher's same seeds, and its run key contains the teacher's.  A job of the report is one (paper, experiment, seed): rule `link`
# writes all of a paper's, each its run's record with the paper's own deviations, under
# runs/<paper>/<experiment>/seed<k>, then runs/<paper>/linked.json.  params.config is the rerun
# trigger: editing a claim's text reruns nothing; editing what an experiment computes reruns it
# (a changed run also changes its pool's name; the pool's unchanged runs resume as done).


localrules: link


def _pool(w):
    return PLAN.pool(w.pool)


def _run_inputs(w):
    """The datasets its runs read, and the jobs that train their teachers (the same seeds)."""
    owners = [PLAN.owner(k) for k in _pool(w).keys]
    seeds = tuple(int(s) for s in w.seeds.split("_"))
    teachers = {LAYOUT.pool(PLAN.pool_of(j.teacher).id, PLAN.batch(s)) for j in owners if j.teacher for s in seeds}
    return sorted({LAYOUT.dataset_marker(d) for j in owners for d in j.inputs} | teachers)


def _computing(w):
    return json.dumps([PLAN.computing(k) for k in _pool(w).keys], sort_keys=True)


def _gpu_benchmark(w):
    """A benchmark that times a GPU (``device: cuda``): it holds the whole GPU (every gpu_slot the
    profile offers), so that no training job shares the GPU while it is timed."""
    pool = _pool(w)
    return pool.kind == "benchmark" and PLAN.computing(pool.keys[0])["benchmark"].get("device") == "cuda"


def _offered(name, default):
    """What the profile offers of a resource (``default`` where it sets none, as on SLURM)."""
    value = workflow.global_resources[name] if name in workflow.global_resources else default
    return int(getattr(value, "value", value) or 0)


def _gpu(w):
    if _gpu_benchmark(w):
        return min(1, _offered("gpu", 1))  # 0 where the profile has no GPU: the run then says *not run*
    return 1 if PLAN.scale.gpu and _pool(w).kind == "train" else 0


def _gpu_slots(w):
    if _gpu_benchmark(w):
        return _offered("gpu_slots", 0)
    return 1 if PLAN.scale.gpu and _pool(w).kind == "train" else 0


def _members(w):
    return " ".join(f"--run {PLAN.owner(k).paper}/{PLAN.owner(k).experiment}" for k in _pool(w).keys)


rule run:
    input:
        _run_inputs,
    output:
        LAYOUT.pool("{pool}", "{seeds}"),
    params:
        config=_computing,
        members=_members,
        seeds=lambda w: w.seeds.replace("_", ","),
    log:
        LAYOUT.log("cache/pools/{pool}/{seeds}"),
    benchmark:
        LAYOUT.benchmark("cache/pools/{pool}/{seeds}")
    wildcard_constraints:
        seeds=r"\d+(_\d+)*",
    # a timing benchmark takes every core; one that declares `cores` (it trains small models and times
    # nothing) takes that many
    threads: lambda w: (PLAN.computing(_pool(w).keys[0]).get("cores") or workflow.cores) if _pool(w).kind == "benchmark"
             else PLAN.scale.train_threads
    # longest first: a benchmark (it takes every core), then the training jobs by their expected
    # seconds (benchmarks/throughput.csv) plus those of the students that wait for the teachers they
    # train, so that no long job or chain is left alone on one core at the end
    priority: lambda w: 10**7 if _pool(w).kind == "benchmark" else int(PLAN.chain_seconds(w.pool))
    resources:
        gpu=_gpu,
        gpu_slots=_gpu_slots,
    shell:
        "{SR} run {params.members} --seeds {params.seeds} --scale {SCALE}"
        " --threads {threads} --results {RESULTS} --pool {wildcards.pool} 2> {log}"


def _link_inputs(w):
    return sorted({LAYOUT.pool(PLAN.pool_of(j.key).id, PLAN.batch(j.seed)) for j in PLAN.jobs if j.paper == w.paper and j.key})


def _paper_config(w):
    paper = next(p for p in PLAN.papers if p.id == w.paper)
    return json.dumps({e: PLAN.config(w.paper, e) for e in paper.experiments}, sort_keys=True)


rule link:
    input:
        _link_inputs,
    output:
        LAYOUT.linked("{paper}"),
    params:
        config=_paper_config,
    # one process per paper (not per job): a shell command, not a `run:` block, since Snakemake
    # spawns a whole Snakemake (re-parsing this workflow) for each `run:` job
    shell:
        "{SR} link --paper {wildcards.paper} --scale {SCALE} --results {RESULTS}"
