# softrepro: datasets -> runs -> metrics -> claims -> report.
#   snakemake --profile workflow/profiles/default --config scale=smoke
# The DAG is derived from configs/papers/*.yaml; nothing here names a paper.
import json
import sys
from pathlib import Path

from snakemake.utils import min_version, validate

from softrepro.plan import build

min_version("9.0")

configfile: "configs/config.yaml"
validate(config, "configs/schemas/config.schema.json")

ROOT = Path(workflow.basedir)
SCALE = str(config["scale"])
RESULTS = str(config["results"])
PAPERS = ",".join(config["papers"]) if isinstance(config["papers"], list) else str(config["papers"])
FAMILIES = str(config.get("families", "all"))
PLAN = build(SCALE, PAPERS, ROOT, RESULTS, int(config.get("seeds_per_job", 0)), FAMILIES)
LAYOUT = PLAN.layout
SR = f"{sys.executable} -m softrepro.cli"

include: "workflow/rules/data.smk"
include: "workflow/rules/runs.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        LAYOUT.file("report.html"),
        LAYOUT.file("report.pdf"),
