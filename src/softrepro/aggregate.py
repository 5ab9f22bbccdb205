"""runs -> runs.csv; claims -> claims.csv (published beside reproduced, the evidence level, the
verdict and what would have refuted it); papers.json (what the report needs from the specs), so
that nothing after this step reads a spec."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from softrepro.atomic import write_csv, write_json
from softrepro.spec import Paper, claim_experiments, claim_metrics, evidence_level, resolve_experiment
from softrepro.verdict import first_step, judge, judge_threshold, judge_up_to, refutation

CLAIM_COLUMNS = [
    "paper", "claim", "text", "source", "published_from", "kind", "metric", "unit", "experiments",
    "published_as_printed", "published", "reproduced_mean", "std", "n", "ci_low", "ci_high", "delta", "p_value",
    "mean_a", "mean_b", "verdict", "note", "scale", "evidence_level", "evidence", "can_fail", "refutation",
    "seeds", "deviations",
]


def load_runs(metrics_files: list[str | Path]) -> pd.DataFrame:
    """One row per job; a job whose record is missing (a partial results folder) reads as not run."""
    rows = []
    for path in metrics_files:
        path = Path(path)
        if not path.is_file():
            paper, exp, seed = path.parts[-4], path.parts[-3], int(path.parts[-2][4:])
            rows.append({"paper": paper, "experiment": exp, "seed": seed, "status": "not_run",
                         "reason": "no run in this results folder"})
            continue
        rec = json.loads(path.read_text())
        row = {k: rec.get(k) for k in ("paper", "experiment", "seed", "scale", "kind", "status", "reason", "wall_seconds")}
        row["git_commit"] = rec.get("provenance", {}).get("git_commit")
        row["device"] = rec.get("provenance", {}).get("device")
        row["lock_sha256"] = rec.get("provenance", {}).get("lock_sha256")
        row.update({f"metric.{k}": v for k, v in rec.get("metrics", {}).items()})
        rows.append(row)
    return pd.DataFrame(rows)


def _printed(claim: dict) -> str:
    pub = claim.get("published")
    if claim["kind"] == "parity":  # no number: the paper says the two match; the margin is the spec's
        return f"a matches b (margin ±{claim['tolerance']['abs']:g})"
    if isinstance(pub, dict):
        return f"a={pub.get('a', 'unknown')}, b={pub.get('b', 'unknown')}".replace("None", "unknown")
    return "unknown" if pub is None else str(pub)


def _step_logs(steps_csv, paper: Paper, exp: str, seeds) -> dict[int, pd.DataFrame]:
    return {s: pd.read_csv(steps_csv(paper.id, exp, s)) for s in sorted(seeds)}


def _threshold(claim: dict, paper: Paper, exp: str, sel: pd.DataFrame, budget: int, steps_csv, level: str, min_seeds: int):
    """Per seed, the first logged step at which the claim's column reaches its level (from steps.csv)."""
    log = claim["log"]
    first, last = [], []
    for seed, steps in _step_logs(steps_csv, paper, exp, sel["seed"]).items():
        if log["column"] not in steps:
            raise KeyError(f"{paper.path}: claim {claim['id']!r}: the step log of {exp} has no column {log['column']!r}")
        rows = steps.dropna(subset=[log["column"]])
        first.append(first_step(rows["step"], rows[log["column"]], log.get("at_least"), log.get("at_most")))
        last.append(int(steps["step"].max()) if len(steps) else 0)
    if budget is None:  # a benchmark that logs its own steps: its runs lasted as long as their logs
        budget = min(last, default=0)
    return judge_threshold(claim, first, budget, level=level, min_seeds=min_seeds), sorted(sel["seed"])


def _up_to(claim: dict, paper: Paper, exp: str, sel: pd.DataFrame, steps_csv, level: str, min_seeds: int):
    col, over = claim["up_to"]["column"], claim["up_to"]["over"]
    logs = _step_logs(steps_csv, paper, exp, sel["seed"])
    table = pd.concat(logs.values(), ignore_index=True)
    if col not in table or over not in table:
        raise KeyError(f"{paper.path}: claim {claim['id']!r}: the step log of {exp} has no columns {col!r} and {over!r}")
    j, curve = judge_up_to(claim, table[over], table[col], n_seeds=len(logs), level=level, min_seeds=min_seeds)
    return j, sorted(logs), curve


def sweep_arm(claim: dict, members: list[str], sel: pd.DataFrame, paper: Paper) -> pd.Series:
    """Per seed (those that ran every member), the sweep statistic of ``claim`` over one arm's matrix
    members.  ``lr_sensitivity`` (Wortsman et al. 2023): the mean over the axis of
    min(metric, ceiling) minus its smallest value; a non-finite metric (a diverged run) counts as
    the ceiling."""
    col = f"metric.{claim['metric']}"
    rows = sel[sel["experiment"].isin(members)]
    if col not in rows:
        raise KeyError(f"{paper.path}: claim {claim['id']!r}: runs of {members[0]} report no metric {claim['metric']!r}")
    table = rows.pivot_table(index="seed", columns="experiment", values=col, aggfunc="first", dropna=False).reindex(columns=members)
    ran = rows.groupby("seed")["experiment"].nunique() == len(members)
    table = table[ran.reindex(table.index, fill_value=False)].astype(float)
    ceiling = float(claim["sweep"]["ceiling"])
    clipped = table.where(np.isfinite(table), ceiling).clip(upper=ceiling)
    return clipped.sub(clipped.min(axis=1), axis=0).mean(axis=1)


def _metric_series(claim: dict, paper: Paper, sel: pd.DataFrame, exp: str, metric: str) -> pd.Series:
    """``metric`` of every seed of ``exp``, indexed by seed."""
    col = f"metric.{metric}"
    rows = sel[sel["experiment"] == exp]
    if col not in rows or rows[col].isna().any():
        raise KeyError(f"{paper.path}: claim {claim['id']!r}: runs of {exp} report no metric {metric!r}")
    return rows.set_index("seed")[col].sort_index()


def _judge_metric(claim: dict, paper: Paper, exps: list[str], sel: pd.DataFrame, level: str, min_seeds: int, deterministic: bool):
    """Judge a claim on a metric of metrics.json, per seed (paired by seed for two experiments); a
    sweep claim on its statistic over each arm's matrix members (``sweep_arm``)."""
    if "sweep" in claim:
        arms = [sweep_arm(claim, [e for e in claim["sweep"]["members"][k] if e in exps], sel, paper) for k in ("a", "b")]
    else:  # one series per arm (both arms may be the same experiment, read through two metrics)
        arms = [_metric_series(claim, paper, sel, e, m) for e, m in zip(exps, claim_metrics(claim))]
    kw = dict(level=level, min_seeds=min_seeds, deterministic=deterministic)
    if len(arms) == 1:
        return judge(claim, arms[0].values, **kw), list(arms[0].index)
    seeds = arms[0].index.intersection(arms[1].index)
    return judge(claim, arms[0][seeds].values, arms[1][seeds].values, **kw), list(seeds)


def judge_claims(papers: list[Paper], runs: pd.DataFrame, scale, steps_csv=None, config=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """claims.csv's rows, and the per-size curves of the "up to" claims; ``steps_csv(paper, experiment,
    seed)`` is where a job's step log lies (threshold and "up to" claims read it); ``config(paper,
    experiment)`` the experiment as resolved by the plan."""
    config = config or (lambda pid, e: resolve_experiment(next(p for p in papers if p.id == pid).experiments[e], scale.name))
    out, curves = [], []
    for paper in papers:
        for claim in paper.claims:
            exps = claim_experiments(claim)
            resolved = {e: config(paper.id, e) for e in exps}
            sweep = claim.get("sweep")
            if sweep:  # the members in this scale's grid; the others are not part of the statistic here
                exps = [e for e in exps if not resolved[e].get("grid_cut")]
                resolved = {e: resolved[e] for e in exps}
            level = evidence_level(list(resolved.values())) if resolved else "stand-in"
            names = ([f"{claim['experiments'][k]} ({len([e for e in sweep['members'][k] if e in resolved])} values of "
                      f"{sweep['over']})" for k in ("a", "b")] if sweep else exps)
            row = {
                "paper": paper.id, "claim": claim["id"], "text": claim["text"], "source": claim["source"],
                "published_from": claim.get("published_from", "paper"), "kind": claim["kind"],
                "metric": " vs ".join(dict.fromkeys(claim_metrics(claim))) + (f" ({sweep['statistic']})" if sweep else ""),
                "unit": claim["unit"], "experiments": " vs ".join(names), "published_as_printed": _printed(claim),
                "scale": scale.name, "evidence_level": level, "evidence": scale.evidence,
                "deviations": " | ".join(dict.fromkeys(f"{r.get('matrix_base', e) if sweep else e}: " + "; ".join(r["deviations"])
                                                       for e, r in resolved.items() if r["deviations"])),
            }
            sel = runs[(runs["paper"] == paper.id) & runs["experiment"].isin(exps)] if len(runs) else runs
            not_run = sel[sel["status"] != "ok"] if len(sel) else sel
            cut = [e for e, r in resolved.items() if r.get("grid_cut")]
            reason = None
            if sweep and not all(set(sweep["members"][k]) & set(exps) for k in ("a", "b")):
                reason = f"no value of {sweep['over']} in the {scale.name} grid for one arm"
            elif cut:
                reason = f"{', '.join(cut)} not in the {scale.name} grid"
            elif len(sel) == 0:
                reason = "no runs at this scale"
            else:  # an arm with no run at all (e.g. a skipped experiment against one that ran): the claim is not run
                for e in exps:
                    arm = sel[sel["experiment"] == e]
                    if not (arm["status"] == "ok").any():
                        reason = str(arm["reason"].iloc[0]) if len(arm) else f"no runs of {e} at this scale"
                        break
            if reason:
                row.update(verdict=f"not run: {reason}", n=0, can_fail=False,
                           refutation=f"cannot fail at this scale: not run ({reason})")
                out.append(_finish_row(row, claim, scale))
                continue
            missing = ""
            if len(not_run):  # judged on the seeds that ran (the seed rule still applies); say which did not
                missing = "; ".join(f"{e} seed {int(r.seed)}: not run ({r.reason})" for e, r in
                                    zip(not_run["experiment"], not_run.itertuples()))
                sel = sel[sel["status"] == "ok"]
            budget = resolved[exps[0]].get("steps") or (resolved[exps[0]].get("benchmark") or {}).get("steps")
            if claim["kind"] == "threshold":
                j, seeds = _threshold(claim, paper, exps[0], sel, budget, steps_csv, level, scale.min_seeds)
            elif "up_to" in claim:
                j, seeds, curve = _up_to(claim, paper, exps[0], sel, steps_csv, level, scale.min_seeds)
                curves.append(curve.assign(paper=paper.id, claim=claim["id"]))
            else:
                deterministic = all(r.get("deterministic", False) for r in resolved.values())
                j, seeds = _judge_metric(claim, paper, exps, sel, level, scale.min_seeds, deterministic)
            d = j.as_dict()
            row.update({k: d[k] for k in ("published", "std", "n", "ci_low", "ci_high", "delta", "p_value",
                                          "mean_a", "mean_b", "verdict", "note")})
            row["reproduced_mean"] = d["mean"]
            row["seeds"] = ",".join(str(s) for s in seeds)
            row["can_fail"], row["refutation"] = refutation(claim, level, scale.min_seeds, budget)
            if missing:
                row["note"] = "; ".join(x for x in (row["note"], missing) if x)
            out.append(_finish_row(row, claim, scale))
    curve_cols = ["paper", "claim", "size", "median", "ci_low", "ci_high", "n"]
    return (pd.DataFrame(out).reindex(columns=CLAIM_COLUMNS),
            pd.concat(curves, ignore_index=True)[curve_cols] if curves else pd.DataFrame(columns=curve_cols))


def _finish_row(row: dict, claim: dict, scale) -> dict:
    if claim.get("notes"):
        row["note"] = " ".join(x for x in (row.get("note"), claim["notes"]) if isinstance(x, str) and x)
    if not scale.evidence:
        row["note"] = ("smoke scale: pipeline check, not evidence. " + (row.get("note") or "")).strip()
    return row


def report_context(papers: list[Paper], scale, config) -> dict:
    """What the report needs from the specs, resolved at this scale (papers.json)."""
    from softrepro.registry import BENCHMARKS, TASKS

    out = {"scale": {"name": scale.name, "description": scale.description, "seeds": list(scale.seeds),
                     "evidence": scale.evidence, "min_seeds": scale.min_seeds}, "papers": {}}
    for paper in papers:
        doc = paper.doc
        exps = {}
        for name in paper.experiments:
            r = config(paper.id, name)
            if r["kind"] == "train":  # the training curves, and the figures a registered task declares
                task = r.get("task", "classification")
                extra = getattr(TASKS.get(task), "figures", []) if task in TASKS else []
                figure = [{"kind": "training"}, *extra] if extra else {"kind": "training"}
            else:  # a benchmark that never runs here (skipped) may not even be registered
                bench = r["benchmark"]["name"]
                figure = getattr(BENCHMARKS.get(bench), "figure", None) if bench in BENCHMARKS else None
            exps[name] = {"deviations": r["deviations"], "skip": r.get("skip"), "planned": not r.get("grid_cut"),
                          "evidence_level": evidence_level([r]), "figure": figure, "matrix_labels": r.get("matrix_labels")}
        claims = {c["id"]: {k: c[k] for k in ("kind", "log", "expect", "published", "up_to", "sweep", "metric") if k in c}
                  | {"experiments": claim_experiments(c), "arms": c.get("experiments")} for c in paper.claims}
        out["papers"][paper.id] = {k: doc.get(k) for k in ("title", "authors", "arxiv", "year", "family", "code", "seed_files",
                                                           "protocol_sources")} | {"experiments": exps, "claims": claims}
    return out


def aggregate(plan, root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    lay = plan.layout
    runs = load_runs([root / f for f in plan.metrics_files()])
    claims, curves = judge_claims(plan.papers, runs, plan.scale, steps_csv=lambda *job: root / lay.steps(*job),
                                  config=plan.config)
    (root / lay.base).mkdir(parents=True, exist_ok=True)
    write_csv(runs, root / lay.file("runs.csv"))
    write_csv(claims, root / lay.file("claims.csv"))
    write_csv(curves, root / lay.file("up_to_curves.csv"))
    write_json(report_context(plan.papers, plan.scale, plan.config), root / lay.file("papers.json"))
    return runs, claims
