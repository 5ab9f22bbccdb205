"""How long a scale's runs would take, from throughput measured by earlier runs.

Every finished run records its training steps per second and device (``metrics.json``). A
planned run is estimated from measured runs of the same *speed signature* (the experiment's
dataset, model, batch size, precision, task and the size of any generated data: what sets the
cost of a step, whatever the loss, noise or step count) on each device class: its steps divided
by the measured steps per second, plus the measured time outside the training loop (data,
evaluation).  Runs whose signature was never measured on a device are counted as unmeasured,
never guessed.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd


SPEED_KEYS = ("dataset", "model", "batch_size", "dtype", "task", "preprocess", "data", "train_subset", "benchmark")


def signature(resolved: dict) -> str:
    return json.dumps({k: resolved.get(k) for k in SPEED_KEYS}, sort_keys=True)


def method(resolved: dict) -> str:
    """The loss and optimizer by name: within one speed signature they still move a step's cost
    (StableMax's float64 log-sum-exp, an orthogonalising optimizer), so the throughput table keeps
    them apart where they were measured."""
    def name(x):
        return x.get("name") if isinstance(x, dict) else x

    return json.dumps({"loss": name(resolved.get("loss")), "optimizer": name(resolved.get("optimizer"))}, sort_keys=True)


def measured(roots: list[Path]) -> pd.DataFrame:
    """One row per finished run found under the results folders: signature, device, steps/s, overhead s."""
    rows = []
    for root in roots:
        for f in root.glob("*/cache/*/seed*/metrics.json"):
            rec = json.loads(f.read_text())
            m = rec.get("metrics") or {}
            if rec.get("status") != "ok" or rec.get("kind") != "train" or not m.get("steps_per_second"):
                continue
            train_s = m.get("train_seconds") or m["steps"] / m["steps_per_second"]
            rows.append({"signature": signature(rec["config"]), "method": method(rec["config"]), "device": rec["provenance"]["device"],
                         "steps_per_second": m["steps_per_second"], "overhead_s": max(rec["wall_seconds"] - train_s, 0.0),
                         "source": str(f.parent)})
    return pd.DataFrame(rows, columns=["signature", "method", "device", "steps_per_second", "overhead_s", "source"])


THROUGHPUT = "benchmarks/throughput.csv"  # committed: measured steps/s per speed signature, method and device


def throughput(roots: list[Path]) -> pd.DataFrame:
    """Per speed signature, method and device: the median steps/s and time outside the training loop
    over the finished runs under ``roots`` (what ``softrepro throughput`` writes to THROUGHPUT)."""
    return (measured(roots).groupby(["signature", "method", "device"])
            .agg(steps_per_second=("steps_per_second", "median"), overhead_s=("overhead_s", "median"),
                 runs=("source", "count")).reset_index())


def expected_seconds(resolved: dict, seeds: int, table: pd.DataFrame | None, device: str = "cpu") -> float:
    """A run's expected seconds for ``seeds`` seeds from ``table`` (THROUGHPUT), or, for a signature
    never measured on ``device``, from steps x batch size at 20 us an example (a rough CPU figure:
    it orders the jobs, nothing more)."""
    if resolved["kind"] != "train":
        return 0.0
    if table is not None and len(table):
        hit = table[(table["signature"] == signature(resolved)) & (table["device"] == device)]
        if "method" in hit:  # the same method where measured, else the median over the signature's methods
            same = hit[hit["method"] == method(resolved)]
            hit = same if len(same) else hit
        if len(hit):
            return seeds * (resolved["steps"] / float(hit["steps_per_second"].median()) + float(hit["overhead_s"].median()))
    return seeds * resolved["steps"] * resolved.get("batch_size", 1) * 2e-5


def estimate(plan, roots: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per planned run and device: expected seconds, or nan where unmeasured; the devices' medians)."""
    speeds = measured(roots)
    per_device = speeds.groupby(["signature", "device"]).agg(steps_per_second=("steps_per_second", "median"),
                                                             overhead_s=("overhead_s", "median")).reset_index()
    devices = sorted(speeds["device"].unique())
    papers = {p.id: p for p in plan.papers}
    rows = []
    for key in plan.keys():
        owner = plan.owner(key)
        r = plan.config(owner.paper, owner.experiment)
        seeds = len(plan.scale.seeds)
        row = {"family": papers[owner.paper].doc["family"], "run": f"{owner.paper}/{owner.experiment}", "kind": r["kind"],
               "seeds": seeds, "steps": r.get("steps", 0)}
        sig = signature(r)
        for dev in devices:
            hit = per_device[(per_device["signature"] == sig) & (per_device["device"] == dev)]
            row[dev] = (seeds * (r["steps"] / hit["steps_per_second"].iloc[0] + hit["overhead_s"].iloc[0])
                        if len(hit) and r["kind"] == "train" else float("nan"))
        rows.append(row)
    return pd.DataFrame(rows), speeds


def report(plan, roots: list[Path]) -> str:
    runs, speeds = estimate(plan, roots)
    devices = [c for c in runs.columns if c not in ("family", "run", "kind", "seeds", "steps")]
    lines = [f"scale {plan.scale.name}: {len(runs)} runs x {len(plan.scale.seeds)} seeds = {int(runs['seeds'].sum())} runs, "
             f"{int((runs['steps'] * runs['seeds']).sum()):,} training steps",
             f"throughput measured in {len(speeds)} finished runs under {', '.join(str(r) for r in roots)}", ""]
    if not devices:
        return "\n".join(lines + ["no measured runs found: run a scale first (e.g. make reproduce) to measure throughput"])
    table = []
    for fam, g in runs.groupby("family"):
        row = {"family": fam, "runs": int(g["seeds"].sum()), "steps": f"{int((g['steps'] * g['seeds']).sum()):,}"}
        for dev in devices:
            known = g[dev].notna()
            row[f"{dev}: hours (one job at a time)"] = round(g.loc[known, dev].sum() / 3600, 2)
            row[f"{dev}: runs measured"] = f"{int(g.loc[known, 'seeds'].sum())} of {int(g['seeds'].sum())}"
        table.append(row)
    lines.append(pd.DataFrame(table).to_markdown(index=False))
    lines += ["", "Hours are one job after another on that device class, for the measured runs only; several jobs",
              "at once (CPU cores, or GPU slots) divide the wall time by at most their number. Unmeasured runs",
              "have no estimate: run them once at any scale with the same speed signature to measure them."]
    return "\n".join(lines)
