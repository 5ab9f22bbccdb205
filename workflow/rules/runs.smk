# Runs and jobs.  A run (rule `run`) is one resolved configuration, computed once however many
# papers need it: its seeds in one process (all of the scale's, or chunks of `seeds_per_job`;
# imports, spec checks and the dataset load are paid once a job), each seed into
# cache/<key>/seed<k>, then the job's record cache/<key>/runs_<seeds>.json.  An interrupted
# job resumes at the seed it was on.  A job is one (paper, experiment, seed): rule `link` writes
# all of a paper's jobs, each its run's record with the paper's own deviations, under
# runs/<paper>/<experiment>/seed<k>, then runs/<paper>/linked.json.  params.config is the rerun
# trigger: editing a claim's text reruns nothing; editing what an experiment computes reruns it.


localrules: link


def _owner(w):
    return PLAN.owner(w.key)


def _run_inputs(w):
    j = _owner(w)
    return [LAYOUT.dataset_marker(d) for d in j.inputs]


def _computing(w):
    return json.dumps(PLAN.computing(w.key), sort_keys=True)


rule run:
    input:
        _run_inputs,
    output:
        LAYOUT.batch("{key}", "{seeds}"),
    params:
        config=_computing,
        owner=lambda w: f"--paper {_owner(w).paper} --experiment {_owner(w).experiment}",
        seeds=lambda w: w.seeds.replace("_", ","),
        out=lambda w: LAYOUT.cache(w.key),
    log:
        LAYOUT.log("cache/{key}/{seeds}"),
    benchmark:
        LAYOUT.benchmark("cache/{key}/{seeds}")
    wildcard_constraints:
        seeds=r"\d+(_\d+)*",
    threads: lambda w: workflow.cores if _owner(w).kind == "benchmark" else PLAN.scale.train_threads
    # a benchmark takes every core: run it first, so that it does not wait at the end while the
    # last training jobs leave cores idle
    priority: lambda w: 10 if _owner(w).kind == "benchmark" else 0
    resources:
        gpu=lambda w: 1 if PLAN.scale.gpu and _owner(w).kind == "train" else 0,
        gpu_slots=lambda w: 1 if PLAN.scale.gpu and _owner(w).kind == "train" else 0,
    shell:
        "{SR} run {params.owner} --seeds {params.seeds} --scale {SCALE} --out {params.out}"
        " --threads {threads} --results {RESULTS} 2> {log}"


def _link_inputs(w):
    return sorted({LAYOUT.batch(j.key, PLAN.batch(j.seed)) for j in PLAN.jobs if j.paper == w.paper and j.key})


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
