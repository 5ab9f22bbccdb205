# Runs and jobs.  A run (rule `run`) is one resolved configuration, computed once however many
# papers need it: its seeds in one process (all of the scale's, or chunks of `seeds_per_job`;
# imports, spec checks and the dataset load are paid once a job), each seed into
# cache/<key>/seed<k>, then the job's record cache/<key>/runs_<seeds>.json.  An interrupted
# job resumes at the seed it was on.  A job (rule `link`) is one (paper,
# experiment, seed): that run's record with the paper's own deviations, under
# runs/<paper>/<experiment>/seed<k>.  params.config is the rerun trigger: editing a claim's text
# reruns nothing; editing what an experiment computes reruns it.


localrules: link


def _owner(w):
    return PLAN.owner(w.key)


def _run_inputs(w):
    j = _owner(w)
    return [LAYOUT.dataset_marker(j.dataset)] if j.dataset else []


def _resolved(paper_id, experiment):
    paper = next(p for p in PLAN.papers if p.id == paper_id)
    return json.dumps(resolve_experiment(paper.experiments[experiment], SCALE), sort_keys=True)


def _computing(w):
    j = _owner(w)
    cfg = json.loads(_resolved(j.paper, j.experiment))
    return json.dumps({k: v for k, v in cfg.items() if k not in NON_COMPUTING_KEYS}, sort_keys=True)


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
    resources:
        gpu=lambda w: 1 if PLAN.scale.gpu and _owner(w).kind == "train" else 0,
        gpu_slots=lambda w: 1 if PLAN.scale.gpu and _owner(w).kind == "train" else 0,
    shell:
        "{SR} run {params.owner} --seeds {params.seeds} --scale {SCALE} --out {params.out}"
        " --threads {threads} --results {RESULTS} 2> {log}"


def _link_inputs(w):
    j = PLAN.job(w.paper, w.experiment, int(w.seed))
    return [LAYOUT.batch(j.key, PLAN.batch(j.seed))] if j.key else []


rule link:
    input:
        _link_inputs,
    output:
        metrics=LAYOUT.metrics("{paper}", "{experiment}", "{seed}"),
        steps=LAYOUT.steps("{paper}", "{experiment}", "{seed}"),
    params:
        config=lambda w: _resolved(w.paper, w.experiment),
        out=lambda w, output: str(Path(output.metrics).parent),
    wildcard_constraints:
        seed=r"\d+",
    # a shell command, not a `run:` block: Snakemake spawns a whole Snakemake (re-parsing this
    # workflow) for each `run:` job, which costs more than this small CLI call
    shell:
        "{SR} link --paper {wildcards.paper} --experiment {wildcards.experiment} --seed {wildcards.seed}"
        " --scale {SCALE} --out {params.out} --results {RESULTS}"
