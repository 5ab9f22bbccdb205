"""The report's sections, built from a results folder alone (``load``): each section function
returns a list of items, HTML strings or matplotlib figures, which ``show`` displays in the
notebook.  Nothing here reads a spec or imports the engine."""
from __future__ import annotations

import datetime as dt
import html
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from softrepro.report import figures

E = html.escape
LEVEL_TEXT = {
    "faithful": "the paper's data, model and protocol (differences, if any, are minor: a re-implementation, more seeds)",
    "cut": "the paper's data and model with a shortened schedule, grid or subset",
    "stand-in": "other data, model or procedure standing in for the paper's",
}


@dataclass
class Results:
    out: Path                 # results/<scale>
    claims: pd.DataFrame
    runs: pd.DataFrame
    curves: pd.DataFrame      # "up to" claims: per-size medians and bootstrap bands
    context: dict             # papers.json: scale, papers (titles, deviations, claims' shapes, figures)

    @property
    def scale(self) -> dict:
        return self.context["scale"]


def load(results_dir: str | Path, scale: str) -> Results:
    out = Path(results_dir) / scale
    curves = out / "up_to_curves.csv"
    return Results(out, pd.read_csv(out / "claims.csv"), pd.read_csv(out / "runs.csv"),
                   pd.read_csv(curves) if curves.is_file() and curves.stat().st_size > 1 else pd.DataFrame(),
                   json.loads((out / "papers.json").read_text()))


def show(items) -> None:
    """Display a section's items in the notebook (figures are closed once shown)."""
    import io

    import matplotlib.pyplot as plt
    from IPython.display import HTML, Image, display

    for item in items:
        if item is None:
            continue
        if isinstance(item, str):
            display(HTML(item))
        else:
            buf = io.BytesIO()
            item.savefig(buf, format="png", dpi=110, bbox_inches="tight")
            plt.close(item)
            display(Image(buf.getvalue()))


# ----------------------------------------------------------------------------- cells and tables

def fmt(x, nd: int = 3) -> str:
    if x is None or pd.isna(x):
        return ""
    return f"{x:.{nd}g}" if abs(x) < 1e-2 or abs(x) >= 1e4 else f"{x:.{nd}f}".rstrip("0").rstrip(".")


def verdict_class(v) -> str:
    return "v-" + figures.verdict_group(v).replace(" ", "-")


def reproduced_cell(r) -> str:
    if pd.isna(r.reproduced_mean):
        return "&mdash;"
    ci = "" if pd.isna(r.ci_low) else f" [{fmt(r.ci_low)}, {fmt(r.ci_high)}]"
    lab = "&Delta;(a&minus;b) " if r.kind in ("comparison", "qualitative", "parity") else "first step " if r.kind == "threshold" else ""
    return f"{lab}{fmt(r.reproduced_mean)}{ci} (n={int(r.n)})"


def published_cell(r) -> str:
    text = E(str(r.published_as_printed))
    if r.kind in ("comparison", "qualitative") and not pd.isna(r.published):
        text += f"; &Delta; {fmt(r.published)}"
    return text + ("" if r.published_from == "paper" else f" <i>({E(str(r.published_from))})</i>")


def table(rows: list[list[str]], cols: list[str], classes: list[str] | None = None) -> str:
    """An HTML table; ``classes`` colours each row's last cell (the verdict)."""
    head = "".join(f"<th>{E(c)}</th>" for c in cols)
    body = ""
    for i, row in enumerate(rows):
        cls = f" class='{classes[i]}'" if classes else ""
        body += "<tr>" + "".join(f"<td{cls if j == len(row) - 1 else ''}>{cell}</td>" for j, cell in enumerate(row)) + "</tr>"
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def counts_by_level(claims: pd.DataFrame) -> pd.DataFrame:
    """Verdict counts, one row per evidence level (faithful first), one column per verdict."""
    c = claims.assign(v=claims["verdict"].map(figures.verdict_group))
    t = c.groupby(["evidence_level", "v"]).size().unstack(fill_value=0)
    return t.reindex(index=[lvl for lvl in figures.LEVEL_ORDER if lvl in t.index],
                     columns=[v for v in figures.VERDICT_ORDER if v in t.columns], fill_value=0)


def headline_sentence(claims: pd.DataFrame) -> str:
    faithful = claims[claims["evidence_level"] == "faithful"]
    judged = faithful[~faithful["verdict"].str.startswith("not run")]
    n = lambda v: int((judged["verdict"] == v).sum())  # noqa: E731
    below = claims[claims["evidence_level"] != "faithful"]
    m = lambda v: int((below["verdict"] == v).sum())  # noqa: E731
    def many(n: int, one: str, more: str) -> str:
        return f"{n} {one if n == 1 else more}"

    return (f"<p><b>{many(len(claims), 'claim', 'claims')} from {many(claims['paper'].nunique(), 'paper', 'papers')}.</b> "
            f"<b>{many(len(judged), 'was', 'were')} judged at a faithful protocol</b> (the paper's own data, model and protocol; "
            f"{len(faithful) - len(judged)} more could not run): {n('reproduced')} reproduced, {n('direction holds')} direction holds, "
            f"{n('not reproduced')} not reproduced, {n('inconclusive')} inconclusive. "
            f"The other {len(below)} ran at a cut or stand-in protocol, which can only agree or disagree with the paper's "
            f"direction: {m('consistent')} consistent, {m('contradicts')} contradict it, {m('inconclusive')} inconclusive, "
            f"{m('not comparable at this scale')} values not comparable, "
            f"{int(below['verdict'].str.startswith('not run').sum())} not run.</p>")


# ----------------------------------------------------------------------------- sections

def front(res: Results) -> list:
    sc, claims = res.scale, res.claims
    commits = sorted({str(c)[:10] for c in res.runs.get("git_commit", pd.Series(dtype=str)).dropna()})
    banner = "" if sc["evidence"] else (
        "<div class='banner'><b>Smoke scale.</b> Tiny subsets and a handful of steps: these numbers check that the "
        "pipeline runs end to end. They are <b>not evidence</b> for or against any claim.</div>")
    levels = "".join(f"<li><b>{lvl}</b>: {E(t)}</li>" for lvl, t in LEVEL_TEXT.items())
    counts = counts_by_level(claims)
    count_table = table([[f"<b>{E(lvl)}</b>", *[str(counts.loc[lvl, v]) for v in counts.columns], str(counts.loc[lvl].sum())]
                         for lvl in counts.index], ["evidence level", *counts.columns, "total"])
    return [f"""<h1>softrepro report &mdash; scale <code>{E(sc['name'])}</code></h1>
<p class="small">Rendered {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC} from the results in <code>{E(str(res.out))}</code>
(runs at commit{'s' * (len(commits) != 1)} {E(', '.join(commits) or 'unknown')}). Scale: {E(sc['description'])}
Seeds: {', '.join(map(str, sc['seeds']))}; a verdict needs at least {sc['min_seeds']}.</p>{banner}
{headline_sentence(claims)}""", count_table, figures.headline(claims),
            f"""<p class="small"><b>Evidence levels</b>, derived from each experiment's recorded deviations:</p><ul class="small">{levels}</ul>
<p class="small"><b>Verdicts.</b> At a <i>faithful</i> protocol: <i>reproduced</i> (within the claim's tolerance of the published number;
comparisons and ratios also significant in the paper's direction), <i>direction holds</i> (significant, the paper's direction, size outside
the tolerance), <i>not reproduced</i> (the 95&nbsp;% CI excludes the tolerance band, or a significant effect points the other way),
<i>inconclusive</i>. At a <i>cut</i> or <i>stand-in</i> protocol a paper can be neither reproduced nor refuted: a comparison is
<i>consistent</i> (significant in the paper's direction) or <i>contradicts</i> it (significant the other way) or is <i>inconclusive</i>;
a value is <i>not comparable at this scale</i> (the number is shown). Every verdict needs at least {sc['min_seeds']} (paired) seeds, and seeds
that agree exactly give no CI. Each row says what outcome would have refuted the claim at the scale it ran.</p>"""]


def summary(res: Results) -> list:
    rows, classes = [], []
    order = {lvl: i for i, lvl in enumerate(figures.LEVEL_ORDER)}
    for r in res.claims.assign(o=res.claims["evidence_level"].map(order)).sort_values(["o", "paper"], kind="stable").itertuples():
        rows.append([E(r.evidence_level), E(r.paper), f"<b>{E(r.claim)}</b>", E(str(r.source)), published_cell(r),
                     reproduced_cell(r), E(str(r.refutation)), E(str(r.verdict))])
        classes.append(verdict_class(r.verdict))
    return ["<h2>Summary of claims, by evidence level</h2>",
            table(rows, ["level", "paper", "claim", "source", "published", "reproduced mean [95% CI]", "what would refute it",
                         "verdict"], classes)]


def scatter(res: Results) -> list:
    fig = figures.published_vs_reproduced(res.claims)
    return ["<h2>Published vs reproduced</h2>",
            fig if fig is not None else "<p>No claim has both a published and a reproduced number at this scale.</p>"]


def cannot_fail(res: Results) -> list:
    c = res.claims[~res.claims["can_fail"].astype(bool)]
    rows = [[E(r.paper), f"<b>{E(r.claim)}</b>", E(r.evidence_level), E(str(r.refutation))] for r in c.itertuples()]
    return [f"<h2>Claims that cannot fail at this scale ({len(c)} of {len(res.claims)})</h2>"
            "<p class='small'>No outcome of these rows' runs could have counted against the claim here: the reason is given. "
            "They are reported, never dropped.</p>", table(rows, ["paper", "claim", "level", "why"]) if rows else "<p>None.</p>"]


def paper(res: Results, pid: str) -> list:
    doc = res.context["papers"][pid]
    pc = res.claims[res.claims["paper"] == pid]
    links = f"arXiv:{E(doc['arxiv'])} ({doc['year']})" + (f" &middot; code: {E(doc['code'])}" if doc.get("code") else "")
    items = [f"<h2>{E(doc['title'])}</h2><p class='small'>{E(', '.join(doc.get('authors') or []))} &middot; {links} &middot; "
             f"spec <code>configs/papers/{E(pid)}.yaml</code> &middot; seed file(s): {E(', '.join(doc['seed_files']) or 'none (not in the seed pages)')}</p>"]
    if doc.get("protocol_sources"):
        items.append("<p class='small'><b>Protocol read from:</b> " + "; ".join(E(s) for s in doc["protocol_sources"]) + "</p>")
    rows, classes = [], []
    for r in pc.itertuples():
        rows.append([f"<b>{E(r.claim)}</b>", E(r.text), E(str(r.source)), E(r.evidence_level), published_cell(r),
                     reproduced_cell(r), fmt(r.p_value), E("" if pd.isna(r.note) else str(r.note)), E(str(r.refutation)),
                     E(str(r.verdict))])
        classes.append(verdict_class(r.verdict))
    items.append("<h3>Claims</h3>" + table(rows, ["claim", "as stated", "source", "level", "published", "reproduced [95% CI]",
                                                   "p", "note", "what would refute it", "verdict"], classes))
    items.append(deviations(doc, res.scale["name"]))
    items.append(runs_table(res, pid, pc))
    items += ood_tables(res, pid)
    data = {e: figures.step_logs(res.out, pid, e) for c in doc["claims"].values() for e in c["experiments"]}
    for r in pc.itertuples():
        claim = doc["claims"][r.claim]
        if r.kind == "threshold" and len(data[claim["experiments"][0]]):
            items.append(figures.threshold(data[claim["experiments"][0]], r.claim, claim, r.verdict))
        if "sweep" in claim:
            items.append(figures.sweep_claim(res.out, pid, claim, doc["experiments"], r.claim, r.verdict))
        if "up_to" in claim and len(res.curves):
            curve = res.curves[(res.curves["paper"] == pid) & (res.curves["claim"] == r.claim)]
            items.append(figures.up_to(curve, r.claim, claim["up_to"]["over"], r.published, r.verdict))
    by_kind: dict[str, list] = {}
    for e, d in data.items():
        specs = doc["experiments"][e]["figure"] or []
        for spec in specs if isinstance(specs, list) else [specs]:  # an experiment may declare several
            frame = figures.final_metrics(res.out, pid, e) if spec.get("source") == "metrics" else d
            if len(frame):
                by_kind.setdefault(json.dumps(spec, sort_keys=True), []).append(frame)
    metrics = list(dict.fromkeys(m for r in pc.itertuples() for m in str(r.metric).split(" vs ")))
    for spec, frames in by_kind.items():
        spec = json.loads(spec)
        items.append(figures.EXPERIMENT_FIGURES[spec["kind"]](pd.concat(frames, ignore_index=True), metrics, spec))
    items.append(figures.reliability(res.out, pid, list(data)))
    items += [figures.ood(res.out, pid, e) for e in data]
    return items


def deviations(doc: dict, scale: str) -> str:
    planned = {n: e for n, e in doc["experiments"].items() if e["planned"]}
    common = [d for d in next(iter(planned.values()))["deviations"] if all(d in e["deviations"] for e in planned.values())] if planned else []
    out = ["<h3>Deviations from the paper's protocol at this scale</h3>"]
    if common:
        out.append("<p class='small'><b>All experiments:</b> " + "; ".join(E(d) for d in common) + ".</p>")
    out.append("<ul>")
    for name, e in planned.items():
        devs = "; ".join(E(d) for d in e["deviations"] if d not in common) or "no further deviations"
        skip = f" <b>Not run at this scale:</b> {E(e['skip'])}." if e.get("skip") else ""
        out.append(f"<li><b>{E(name)}</b> ({E(e['evidence_level'])}): {devs}.{skip}</li>")
    out.append("</ul>")
    if len(planned) < len(doc["experiments"]):
        out.append(f"<p class='small'>{len(doc['experiments']) - len(planned)} further combinations of this paper's grid are not "
                   f"run at scale <code>{E(scale)}</code> (see the spec's <code>matrix</code>).</p>")
    return "".join(out)


def runs_table(res: Results, pid: str, pc: pd.DataFrame) -> str:
    pr = res.runs[res.runs["paper"] == pid]
    wanted = {f"metric.{m}" for r in pc.itertuples() for m in str(r.metric).split(" vs ")}
    cols = sorted(c for c in pr.columns if c in wanted and pr[c].notna().any())
    rows = []
    for r in pr.sort_values(["experiment", "seed"]).to_dict("records"):
        vals = ", ".join(f"{c[7:]}={fmt(r[c], 4)}" for c in cols if pd.notna(r.get(c)))
        status = r["status"] if r["status"] == "ok" else f"not run: {r['reason']}"
        rows.append([E(r["experiment"]), str(r["seed"]), E(status), E(str(r.get("device") or "")),
                     E(str(r.get("git_commit") or "")[:10]), fmt(r.get("wall_seconds")), E(vals)])
    return "<h3>Runs</h3>" + table(rows, ["experiment", "seed", "status", "device", "commit", "wall s", "metrics"])


OOD_METRIC = re.compile(r"^metric\.ood_(?P<set>[a-z0-9-]+)_(?P<score>.+)_(?P<m>auroc|fpr95)$")


def mean_ci(values: pd.Series) -> str:
    """'mean [lo, hi]' in percent, a t interval over the seeds (the mean alone for one seed)."""
    v = values.dropna().astype(float) * 100
    if len(v) < 2:
        return fmt(v.mean(), 3) if len(v) else ""
    lo, hi = figures.t_interval(v)
    return f"{v.mean():.1f} [{lo:.1f}, {hi:.1f}]"


def ood_tables(res: Results, pid: str) -> list[str]:
    """Per experiment with post-hoc scores: scores x OOD sets, AUROC and FPR95 (%), mean and 95 % CI over seeds."""
    pr = res.runs[(res.runs["paper"] == pid) & (res.runs["status"] == "ok")]
    out = []
    for exp, d in pr.groupby("experiment", sort=True):
        cells: dict[tuple[str, str], dict[str, str]] = {}
        for c in d.columns:
            m = OOD_METRIC.match(c)
            if m and m["set"] != "in" and d[c].notna().any():
                cells.setdefault((m["score"], m["set"]), {})[m["m"]] = mean_ci(d[c])
        if not cells:
            continue
        scores = list(dict.fromkeys(k[0] for k in cells))
        sets = sorted({k[1] for k in cells}, key=lambda x: (x == "avg", x))
        rows = [[f"<b>{E(sc)}</b>"] + [E(" / ".join(cells.get((sc, st), {}).get(k, "") for k in ("auroc", "fpr95"))) for st in sets]
                for sc in scores]
        out.append(f"<h3>{E(exp)}: OOD detection, AUROC / FPR95 (%), mean [95 % CI] over {d['seed'].nunique()} seeds</h3>"
                   + table(rows, ["score", *[("mean over sets" if st == "avg" else st) for st in sets]]))
    return out


def provenance(res: Results) -> list:
    prov = sorted({(str(r.get("device")), str(r.get("git_commit"))[:10]) for r in res.runs.to_dict("records")})
    locks = sorted({str(x)[:16] for x in res.runs.get("lock_sha256", pd.Series(dtype=str)).dropna()})
    return ["<h2>Provenance</h2><p class='small'>Devices and commits of the runs in this report: "
            + "; ".join(f"{E(d)} @ {E(c)}" for d, c in prov) + ". Environment: <code>requirements.lock</code> sha256 "
            + (", ".join(f"<code>{E(x)}…</code>" for x in locks) or "not recorded") + f". Runs: <code>{E(str(res.out / 'runs.csv'))}</code>, "
            f"claims: <code>{E(str(res.out / 'claims.csv'))}</code>.</p>"]
