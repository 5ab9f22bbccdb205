"""The report's figures, drawn from a results folder only (claims.csv, runs.csv, papers.json,
up_to_curves.csv and each run's steps.csv / metrics.json).  Each function returns a matplotlib
figure, or None when there is nothing to draw.

Experiments declare their figure in papers.json (``figure: {kind: ...}``: training runs get
``training``, a benchmark the figure its registry entry names); ``EXPERIMENT_FIGURES`` maps each
kind to the function that draws it.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

LEVEL_ORDER = ["faithful", "cut", "stand-in"]
VERDICT_ORDER = ["reproduced", "direction holds", "not reproduced", "consistent", "contradicts", "inconclusive",
                 "not comparable at this scale", "not run"]
VERDICT_COLOURS = {"reproduced": "#2e8b57", "direction holds": "#8fbc8f", "not reproduced": "#c0392b",
                   "consistent": "#5b9bd5", "contradicts": "#e67e22", "inconclusive": "#e0a800",
                   "not comparable at this scale": "#b0b0b0", "not run": "#7f7f7f"}


def t_interval(values) -> tuple[float, float]:
    """Mean ± Student-t 95 % half-width over seeds: the interval the claims table uses (seaborn's
    default, a 1,000-resample bootstrap per point, is slower by two orders and not deterministic).
    Fewer than two values give no interval."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) < 2:
        m = float(v.mean()) if len(v) else float("nan")
        return m, m
    from scipy import stats

    h = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
    return float(v.mean()) - h, float(v.mean()) + h


def verdict_group(v: str) -> str:
    return "not run" if str(v).startswith("not run") else str(v)


def style() -> None:
    sns.set_theme(style="whitegrid", context="paper")
    plt.rcParams.update({"figure.dpi": 110})


def headline(claims: pd.DataFrame):
    """Verdict counts per evidence level, as stacked bars: the first page's figure."""
    if not len(claims):
        return None
    counts = (claims.assign(v=claims["verdict"].map(verdict_group))
              .groupby(["evidence_level", "v"]).size().unstack(fill_value=0)
              .reindex(index=[lvl for lvl in LEVEL_ORDER if lvl in set(claims["evidence_level"])],
                       columns=[v for v in VERDICT_ORDER if v in set(claims["verdict"].map(verdict_group))], fill_value=0))
    fig, ax = plt.subplots(figsize=(9.5, 0.9 + 0.5 * len(counts)))
    left = np.zeros(len(counts))
    for v in counts.columns:
        ax.barh(counts.index, counts[v], left=left, color=VERDICT_COLOURS[v], label=v, edgecolor="white")
        for i, n in enumerate(counts[v]):
            if n:
                ax.text(left[i] + n / 2, i, str(n), ha="center", va="center", fontsize=8, color="white")
        left += counts[v].to_numpy()
    ax.invert_yaxis()
    ax.set_xlabel("claims")
    ax.set_title("verdicts by evidence level (only a faithful protocol can reproduce or refute a paper)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def published_vs_reproduced(claims: pd.DataFrame):
    """Reproduced mean (95 % CI) against the published number, one panel per evidence level."""
    d = claims[claims["reproduced_mean"].notna() & claims["published"].notna()].copy()
    if not len(d):
        return None
    levels = [lvl for lvl in LEVEL_ORDER if lvl in set(d["evidence_level"])]
    fig, axes = plt.subplots(1, len(levels), figsize=(5.0 * len(levels), 4.3), squeeze=False)
    for ax, level in zip(axes[0], levels):
        x = d[d["evidence_level"] == level]
        for r in x.itertuples():
            # a bootstrap CI (the "up to" statistic) need not contain the point estimate: clip at 0
            err = None if pd.isna(r.ci_low) else [[max(r.reproduced_mean - r.ci_low, 0)], [max(r.ci_high - r.reproduced_mean, 0)]]
            ax.errorbar(r.published, r.reproduced_mean, yerr=err, fmt="o", ms=5, color=VERDICT_COLOURS[verdict_group(r.verdict)],
                        ecolor="grey", lw=1)
            ax.annotate(r.claim, (r.published, r.reproduced_mean), fontsize=5.5, xytext=(3, 3), textcoords="offset points")
        lo = np.nanmin([x["published"].min(), x["ci_low"].min(), x["reproduced_mean"].min()])
        hi = np.nanmax([x["published"].max(), x["ci_high"].max(), x["reproduced_mean"].max()])
        pad = 0.05 * (hi - lo or 1)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], ls="--", c="k", lw=0.8)
        ax.set_xscale("symlog", linthresh=1)
        ax.set_yscale("symlog", linthresh=1)
        ax.set_title(f"{level} ({len(x)} claims)", fontsize=9)
        ax.set_xlabel("published (comparisons: a - b)")
        ax.set_ylabel("reproduced mean, 95 % CI")
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=v) for v, c in VERDICT_COLOURS.items()
               if v in set(d["verdict"].map(verdict_group))]
    fig.legend(handles=handles, fontsize=7, loc="lower center", ncol=len(handles), frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def step_logs(out: Path, paper: str, exp: str) -> pd.DataFrame:
    """Every seed's steps.csv of one experiment, stacked, with ``seed`` and ``experiment`` columns."""
    frames = []
    for f in sorted((out / "runs" / paper / exp).glob("seed*/steps.csv")):
        try:
            df = pd.read_csv(f)
        except pd.errors.EmptyDataError:
            continue
        if len(df):
            frames.append(df.assign(seed=f.parent.name, experiment=exp))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def training(data: pd.DataFrame, metrics=(), spec: dict | None = None):
    """Training loss, and beside it training accuracy, a metric the claims use, or a test metric."""
    if "train_loss" not in data:
        return None
    tests = sorted(c for c in data if c.startswith("test_"))
    logged = [c for c in ["train_accuracy", *[m for m in metrics if m in tests], *tests] if c in data and data[c].notna().any()]
    fig, axes = plt.subplots(1, 1 + bool(logged), figsize=(11 if logged else 5.5, 3.4), squeeze=False)
    ax = axes[0]
    sns.lineplot(data=data, x="step", y="train_loss", hue="experiment", errorbar=t_interval, ax=ax[0])
    if (data["train_loss"] > 0).all():
        ax[0].set_yscale("log")
    ax[0].set_title("training loss (mean over seeds, t 95 % CI)")
    if logged:
        col = logged[0]
        sns.lineplot(data=data.dropna(subset=[col]), x="step", y=col, hue="experiment", errorbar=t_interval, ax=ax[1])
        ax[1].set_title("training accuracy (batch windows)" if col == "train_accuracy" else col.replace("_", " "))
    fig.tight_layout()
    return fig


def sweep(data: pd.DataFrame, metrics=(), spec: dict | None = None):
    """A benchmark swept over a size: one line per ``<y_prefix><variant>`` column, mean and 95 % CI over repeats."""
    spec = spec or {}
    x, prefix = spec["x"], spec["y_prefix"]
    cols = [c for c in data if c.startswith(prefix)]
    if x not in data or not cols:
        return None
    long = data.melt(id_vars=[x, "experiment"], value_vars=cols, var_name="variant", value_name="y")
    long["variant"] = long["variant"].str[len(prefix):]
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    sns.lineplot(data=long, x=x, y="y", hue="variant", style="experiment", errorbar=t_interval, marker="o", ms=3, ax=ax)
    if spec.get("log"):  # True: both axes; "x": the size axis only
        ax.set_xscale("log")
        if spec["log"] is True:
            ax.set_yscale("log")
    ax.set_ylabel(spec.get("ylabel", "value"))
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def final_metrics(out: Path, paper: str, exp: str) -> pd.DataFrame:
    """Every seed's final metrics of one experiment (metrics.json), one row per seed."""
    rows = []
    for f in sorted((out / "runs" / paper / exp).glob("seed*/metrics.json")):
        rec = json.loads(f.read_text())
        if rec.get("status") == "ok":
            rows.append({**rec.get("metrics", {}), "seed": f.parent.name, "experiment": exp})
    return pd.DataFrame(rows)


def sweep_claim(out: Path, paper: str, claim: dict, experiments: dict, claim_id: str, verdict: str):
    """A sweep claim's metric against its axis (e.g. the final loss against the learning rate), one
    line per arm, mean and t 95 % CI over seeds, with the ceiling the statistic clips at."""
    sweep, frames = claim["sweep"], []
    for arm in ("a", "b"):
        for e in sweep["members"].get(arm, []):
            d = final_metrics(out, paper, e)
            if len(d) and claim["metric"] in d:
                label = (experiments.get(e, {}).get("matrix_labels") or {}).get(sweep["over"])
                try:
                    label = float(label)
                except (TypeError, ValueError):  # a label that is not a number: drawn in spec order
                    label = float(len(frames))
                frames.append(d[[claim["metric"]]].assign(arm=f"{arm}: {(claim.get('arms') or {}).get(arm, arm)}", x=label))
    if not frames:
        return None
    data = pd.concat(frames, ignore_index=True)
    data["y"] = data[claim["metric"]].astype(float).where(np.isfinite(data[claim["metric"]].astype(float)), sweep["ceiling"])
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    sns.lineplot(data=data, x="x", y="y", hue="arm", errorbar=t_interval, marker="o", ax=ax)
    ax.axhline(sweep["ceiling"], ls="--", c="k", lw=0.8, label=f"ceiling {sweep['ceiling']:g} (diverged runs)")
    ax.set_xscale("log")
    ax.set_xlabel(sweep["over"])
    ax.set_ylabel(claim["metric"].replace("_", " "))
    ax.set_title(f"{claim_id}: {sweep['statistic'].replace('_', ' ')} — {verdict}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def columns(data: pd.DataFrame, metrics=(), spec: dict | None = None):
    """Final metrics named by a pattern with one number in it (``pattern``, e.g. ``test_loss_x(\\d+)$``)
    drawn against that number, one line per experiment, mean and t 95 % CI over seeds."""
    spec = spec or {}
    import re

    pat = re.compile(spec["pattern"])
    cols = {c: float(m.group(1)) for c in data for m in [pat.fullmatch(c)] if m}
    if not cols:
        return None
    long = data.melt(id_vars=["experiment", "seed"], value_vars=list(cols), var_name="col", value_name="y")
    long["x"] = long["col"].map(cols)
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    sns.lineplot(data=long, x="x", y="y", hue="experiment", errorbar=t_interval, marker="o", ms=3, ax=ax)
    if spec.get("log_x"):
        ax.set_xscale("log", base=2)
    ax.set_xlabel(spec.get("xlabel", "x"))
    ax.set_ylabel(spec.get("ylabel", "value"))
    ax.set_title(spec.get("title", ""), fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def curves(data: pd.DataFrame, metrics=(), spec: dict | None = None):
    """Logged columns against the step, one panel per column of ``columns`` (those a run logged),
    one line per experiment, mean and t 95 % CI over seeds."""
    spec = spec or {}
    cols = [c for c in spec["columns"] if c in data and data[c].notna().any()]
    if not cols or "step" not in data:
        return None
    fig, axes = plt.subplots(1, len(cols), figsize=(4.2 * len(cols), 3.3), squeeze=False)
    for ax, col in zip(axes[0], cols):
        sns.lineplot(data=data.dropna(subset=[col]), x="step", y=col, hue="experiment", errorbar=t_interval, ax=ax)
        ax.set_title(col.replace("_", " "), fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


EXPERIMENT_FIGURES = {"training": training, "sweep": sweep, "columns": columns, "curves": curves}


def threshold(data: pd.DataFrame, claim_id: str, claim: dict, verdict: str):
    """A threshold claim's per-seed curve beside the level and the paper's step count."""
    col = claim["log"]["column"]
    level = claim["log"].get("at_least", claim["log"].get("at_most"))
    if col not in data:
        return None
    d = data.dropna(subset=[col])
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    sns.lineplot(data=d, x="step", y=col, hue="seed", ax=ax, lw=1.2)
    ax.axhline(level, ls="--", c="k", lw=0.8, label=f"level {level}")
    if claim.get("published") is not None:
        ax.axvline(claim["published"], ls=":", c="#c0392b", lw=1.2, label=f"paper: {claim['published']} steps")
    ax.set_title(f"{claim_id}: {verdict}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def up_to(curve: pd.DataFrame, claim_id: str, over: str, published: float, verdict: str):
    """An "up to" claim: the per-size median ratio with its bootstrap band, and the published maximum."""
    if not len(curve):
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    ax.plot(curve["size"], curve["median"], marker="o", ms=3, label="median over repeats")
    ax.fill_between(curve["size"], curve["ci_low"], curve["ci_high"], alpha=0.25, label="95 % bootstrap CI")
    ax.axhline(1.0, c="k", lw=0.8)
    if published == published:
        ax.axhline(published, ls=":", c="#c0392b", lw=1.2, label=f"paper: up to {published:g}x")
    ax.set_xscale("log")
    ax.set_xlabel(over)
    ax.set_ylabel("ratio")
    ax.set_title(f"{claim_id}: {verdict}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def reliability(out: Path, paper: str, experiments: list[str]):
    """Reliability diagram (accuracy against confidence, 15 bins, all seeds pooled)."""
    rows = []
    for e in experiments:
        for f in sorted((out / "runs" / paper / e).glob("seed*/metrics.json")):
            rec = json.loads(f.read_text())
            rows += [{**b, "experiment": e} for b in rec.get("reliability") or []]
    if not rows:
        return None
    d = pd.DataFrame(rows)
    d["acc_n"], d["conf_n"] = d["accuracy"] * d["count"], d["confidence"] * d["count"]
    g = d.groupby(["experiment", "bin"]).sum(numeric_only=True).reset_index()
    g["accuracy"], g["confidence"] = g["acc_n"] / g["count"], g["conf_n"] / g["count"]
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    sns.lineplot(data=g, x="confidence", y="accuracy", hue="experiment", marker="o", ax=ax)
    ax.plot([0, 1], [0, 1], ls="--", c="k", lw=0.8)
    ax.set_title("reliability (15 bins, all seeds pooled)")
    fig.tight_layout()
    return fig


def ood(out: Path, paper: str, experiment: str):
    """Post-hoc scores of one experiment: per OOD set, the ROC curve of every score (mean TPR over
    seeds on a common FPR grid, band = min-max over seeds) and each score's histogram, in vs out
    (the first seed's)."""
    recs = [json.loads(f.read_text()) for f in sorted((out / "runs" / paper / experiment).glob("seed*/metrics.json"))]
    recs = [r for r in recs if (r.get("ood") or {}).get("curves")]
    if not recs:
        return None
    keys = list(recs[0]["ood"]["curves"])
    sets = list(dict.fromkeys(k.split("/")[0] for k in keys))
    scores = list(dict.fromkeys(k.split("/")[1] for k in keys))
    grid = np.linspace(0, 1, 101)
    fig, axes = plt.subplots(len(sets), 1 + len(scores), figsize=(3.0 * (1 + len(scores)), 2.6 * len(sets)), squeeze=False)
    for i, s in enumerate(sets):
        ax = axes[i][0]
        for sc in scores:
            tprs = np.array([np.interp(grid, r["ood"]["curves"][f"{s}/{sc}"]["fpr"], r["ood"]["curves"][f"{s}/{sc}"]["tpr"])
                             for r in recs if f"{s}/{sc}" in r["ood"]["curves"]])
            line, = ax.plot(grid, tprs.mean(0), lw=1.2, label=sc)
            ax.fill_between(grid, tprs.min(0), tprs.max(0), color=line.get_color(), alpha=0.2)
        ax.plot([0, 1], [0, 1], ls=":", c="k", lw=0.6)
        ax.set(xlabel="FPR (OOD accepted)", ylabel="TPR (in-distribution kept)", title=f"{experiment}: in vs {s}")
        ax.title.set_fontsize(8)
        ax.legend(fontsize=6)
        for j, sc in enumerate(scores, start=1):
            c = recs[0]["ood"]["curves"].get(f"{s}/{sc}")
            ax = axes[i][j]
            if c is None:
                ax.axis("off")
                continue
            edges = np.asarray(c["edges"])
            ax.stairs(c["hist_in"], edges, label="in-distribution", fill=True, alpha=0.5)
            ax.stairs(c["hist_out"], edges, label=s, fill=True, alpha=0.5)
            ax.set_title(f"{sc} score (seed {recs[0].get('seed', 0)})", fontsize=8)
            ax.legend(fontsize=6)
    fig.tight_layout()
    return fig
