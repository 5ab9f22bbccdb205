# Aggregate every run of the scale with pandas, judge the claims, render the report.  The report
# reads the results folder only (claims.csv, runs.csv, up_to_curves.csv, papers.json, step logs).


localrules: aggregate, report


rule aggregate:
    input:
        linked=[LAYOUT.linked(p.id) for p in PLAN.papers],
        specs=[str(p.path.relative_to(ROOT)) for p in PLAN.papers],
    output:
        runs=LAYOUT.file("runs.csv"),
        claims=LAYOUT.file("claims.csv"),
        curves=LAYOUT.file("up_to_curves.csv"),
        papers=LAYOUT.file("papers.json"),
    log:
        LAYOUT.log("aggregate"),
    shell:
        "{SR} aggregate --scale {SCALE} --papers {PAPERS} --families {FAMILIES} --results {RESULTS} > {log} 2>&1"


rule report:
    input:
        rules.aggregate.output,
        # the runs' link markers too: a report older than them is stale even when an aggregation that
        # failed left no claims.csv behind (Snakemake does not rerun a job for a missing intermediate file)
        linked=rules.aggregate.input.linked,
        notebook="report/report.ipynb",
    output:
        html=LAYOUT.file("report.html"),
        pdf=LAYOUT.file("report.pdf"),
        notebook=LAYOUT.file("report.ipynb"),
    log:
        LAYOUT.log("report"),
    shell:
        "{SR} report --scale {SCALE} --results {RESULTS} > {log} 2>&1"
