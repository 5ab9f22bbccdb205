"""runs -> runs.csv, and claims -> claims.csv (published beside reproduced, with a verdict)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from softrepro.spec import Paper, resolve_experiment
from softrepro.verdict import first_step, judge, judge_threshold

CLAIM_COLUMNS = [
    "paper", "claim", "text", "source", "kind", "metric", "unit", "experiments", "published_as_printed",
    "published", "reproduced_mean", "std", "n", "ci_low", "ci_high", "delta", "p_value", "mean_a", "mean_b",
    "verdict", "note", "scale", "faithful", "evidence", "seeds", "deviations",
]


def load_runs(metrics_files: list[str | Path]) -> pd.DataFrame:
    rows = []
    for path in metrics_files:
        rec = json.loads(Path(path).read_text())
        row = {k: rec.get(k) for k in ("paper", "experiment", "seed", "scale", "kind", "status", "reason", "wall_seconds")}
        row["git_commit"] = rec.get("provenance", {}).get("git_commit")
        row["device"] = rec.get("provenance", {}).get("device")
        row.update({f"metric.{k}": v for k, v in rec.get("metrics", {}).items()})
        rows.append(row)
    return pd.DataFrame(rows)


def _printed(claim: dict) -> str:
    pub = claim.get("published")
    if isinstance(pub, dict):
        return f"a={pub.get('a', 'unknown')}, b={pub.get('b', 'unknown')}".replace("None", "unknown")
    return "unknown" if pub is None else str(pub)


def _threshold(claim: dict, paper: Paper, exp: str, sel: pd.DataFrame, budget: int, run_root: Path, faithful: bool):
    """Per seed, the first logged step at which the claim's column reaches its level (from steps.csv)."""
    level = claim["log"]
    first, seeds = [], []
    for seed in sorted(sel["seed"]):
        log = pd.read_csv(run_root / "runs" / paper.id / exp / f"seed{seed}" / "steps.csv")
        if level["column"] not in log:
            raise KeyError(f"{paper.path}: claim {claim['id']!r}: the step log of {exp} has no column {level['column']!r}")
        rows = log.dropna(subset=[level["column"]])
        first.append(first_step(rows["step"], rows[level["column"]], level.get("at_least"), level.get("at_most")))
        seeds.append(seed)
    return judge_threshold(claim, first, [budget] * len(first), faithful=faithful), seeds


def _judge_metric(claim: dict, paper: Paper, exps: list[str], sel: pd.DataFrame, faithful: bool):
    """Judge a claim on a metric of metrics.json, per seed (paired by seed for two experiments)."""
    col = f"metric.{claim['metric']}"
    if col not in sel or sel[col].isna().any():
        raise KeyError(f"{paper.path}: claim {claim['id']!r}: runs of {exps} report no metric {claim['metric']!r}")
    per_exp = {e: sel[sel["experiment"] == e].set_index("seed")[col].sort_index() for e in exps}
    if len(exps) == 1:
        return judge(claim, per_exp[exps[0]].values, faithful=faithful), per_exp[exps[0]].index
    seeds = per_exp[exps[0]].index.intersection(per_exp[exps[1]].index)
    return judge(claim, per_exp[exps[0]][seeds].values, per_exp[exps[1]][seeds].values, faithful=faithful), seeds


def judge_claims(papers: list[Paper], runs: pd.DataFrame, scale, run_root: Path | None = None) -> pd.DataFrame:
    out = []
    for paper in papers:
        for claim in paper.claims:
            exps = [claim["experiment"]] if "experiment" in claim else [claim["experiments"]["a"], claim["experiments"]["b"]]
            resolved = {e: resolve_experiment(paper.experiments[e], scale.name) for e in exps}
            row = {
                "paper": paper.id, "claim": claim["id"], "text": claim["text"], "source": claim["source"],
                "kind": claim["kind"], "metric": claim["metric"], "unit": claim["unit"], "experiments": " vs ".join(exps),
                "published_as_printed": _printed(claim), "scale": scale.name,
                "faithful": scale.name in claim["faithful_scales"], "evidence": scale.evidence,
                "deviations": " | ".join(f"{e}: " + "; ".join(r["deviations"]) for e, r in resolved.items() if r["deviations"]),
            }
            sel = runs[(runs["paper"] == paper.id) & runs["experiment"].isin(exps)] if len(runs) else runs
            not_run = sel[sel["status"] != "ok"] if len(sel) else sel
            cut = [e for e, r in resolved.items() if r.get("grid_cut")]
            if cut:
                row.update(verdict=f"not run: {', '.join(cut)} not in the {scale.name} grid", n=0)
            elif len(sel) == 0:
                row.update(verdict="not run: no runs at this scale", n=0)
            elif len(not_run):
                row.update(verdict=f"not run: {not_run['reason'].iloc[0]}", n=0)
            else:
                if claim["kind"] == "threshold":
                    j, seeds = _threshold(claim, paper, exps[0], sel, resolved[exps[0]]["steps"], run_root, row["faithful"])
                else:
                    j, seeds = _judge_metric(claim, paper, exps, sel, row["faithful"])
                d = j.as_dict()
                row.update({k: d[k] for k in ("published", "std", "n", "ci_low", "ci_high", "delta", "p_value",
                                              "mean_a", "mean_b", "verdict", "note")})
                row["reproduced_mean"] = d["mean"]
                row["seeds"] = ",".join(str(s) for s in seeds)
            out.append(_finish_row(row, claim, scale))
    return pd.DataFrame(out).reindex(columns=CLAIM_COLUMNS)


def _finish_row(row: dict, claim: dict, scale) -> dict:
    if claim.get("notes"):
        row["note"] = " ".join(x for x in (row.get("note"), claim["notes"]) if isinstance(x, str) and x)
    if not scale.evidence:
        row["note"] = ("smoke scale: pipeline check, not evidence. " + (row.get("note") or "")).strip()
    return row


def aggregate(plan, root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    files = [root / f for f in plan.metrics_files()]
    runs = load_runs(files)
    claims = judge_claims(plan.papers, runs, plan.scale, run_root=root / plan.results / plan.scale.name)
    out = root / plan.results / plan.scale.name
    out.mkdir(parents=True, exist_ok=True)
    runs.to_csv(out / "runs.csv", index=False)
    claims.to_csv(out / "claims.csv", index=False)
    return runs, claims
