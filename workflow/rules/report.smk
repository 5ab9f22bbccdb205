# Aggregate every run of the scale with pandas, judge the claims, render the report.


localrules: aggregate, report


rule aggregate:
    input:
        runs=PLAN.metrics_files(),
        specs=[str(p.path.relative_to(ROOT)) for p in PLAN.papers],
    output:
        runs=f"{RESULTS}/{SCALE}/runs.csv",
        claims=f"{RESULTS}/{SCALE}/claims.csv",
    log:
        f"{RESULTS}/{SCALE}/logs/aggregate.log",
    shell:
        "{SR} aggregate --scale {SCALE} --papers {PAPERS} --results {RESULTS} > {log} 2>&1"


rule report:
    input:
        rules.aggregate.output,
        notebook="report/report.ipynb",
    output:
        html=f"{RESULTS}/{SCALE}/report.html",
        pdf=f"{RESULTS}/{SCALE}/report.pdf",
        notebook=f"{RESULTS}/{SCALE}/report.ipynb",
    log:
        f"{RESULTS}/{SCALE}/logs/report.log",
    shell:
        "{SR} report --scale {SCALE} --results {RESULTS} > {log} 2>&1"
