# One job per (paper, experiment, seed).  A run is keyed by its resolved configuration
# (params.config), so editing a claim's text does not retrain; editing the experiment does.


def _job(w):
    return PLAN.job(w.paper, w.experiment, int(w.seed))


def _run_inputs(w):
    j = _job(w)
    return [dataset_marker(RESULTS, j.dataset)] if j.dataset and not j.skip else []


def _resolved(w):
    paper = next(p for p in PLAN.papers if p.id == w.paper)
    return json.dumps(resolve_experiment(paper.experiments[w.experiment], w.scale), sort_keys=True)


rule run:
    input:
        _run_inputs,
    output:
        metrics=f"{RESULTS}/{{scale}}/runs/{{paper}}/{{experiment}}/seed{{seed}}/metrics.json",
        steps=f"{RESULTS}/{{scale}}/runs/{{paper}}/{{experiment}}/seed{{seed}}/steps.csv",
    params:
        config=_resolved,
        out=lambda w, output: str(Path(output.metrics).parent),
    log:
        f"{RESULTS}/{{scale}}/logs/{{paper}}/{{experiment}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/{{scale}}/benchmarks/{{paper}}/{{experiment}}/seed{{seed}}.tsv"
    wildcard_constraints:
        seed=r"\d+",
    threads: lambda w: workflow.cores if _job(w).kind == "benchmark" else PLAN.scale.train_threads
    resources:
        gpu=lambda w: 1 if PLAN.scale.gpu and _job(w).kind == "train" else 0,
    shell:
        "{SR} run --paper {wildcards.paper} --experiment {wildcards.experiment} --seed {wildcards.seed}"
        " --scale {wildcards.scale} --out {params.out} --threads {threads} --results {RESULTS} 2> {log}"
