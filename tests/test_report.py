"""The report's sections and figures, built from a hand-made results folder (no specs, no DAG)."""
import json

import matplotlib.figure
import pandas as pd
import pytest

from softrepro.report import figures, page


def _claim(**kw):
    base = {"paper": "p1", "text": "t", "source": "Table 1", "published_from": "paper", "kind": "comparison",
            "metric": "test_accuracy", "unit": "percent", "experiments": "a vs b", "published_as_printed": "a=91, b=90",
            "published": 1.0, "reproduced_mean": 1.1, "std": 0.1, "n": 3, "ci_low": 0.9, "ci_high": 1.3, "delta": 0.1,
            "p_value": 0.01, "mean_a": 91.0, "mean_b": 89.9, "note": "", "scale": "cpu", "evidence": True,
            "can_fail": True, "refutation": "not reproduced if ...", "seeds": "0,1,2", "deviations": ""}
    return {**base, **kw}


@pytest.fixture
def results(tmp_path):
    out = tmp_path / "results" / "cpu"
    claims = [
        _claim(claim="c-faithful", evidence_level="faithful", verdict="reproduced"),
        _claim(claim="c-standin", evidence_level="stand-in", verdict="contradicts", reproduced_mean=-1.0, ci_low=-1.5, ci_high=-0.5),
        _claim(claim="c-value", evidence_level="cut", kind="value", verdict="not comparable at this scale", published=91.0,
               reproduced_mean=80.0, ci_low=79.0, ci_high=81.0, can_fail=False, refutation="cannot fail at this scale: a value ..."),
        _claim(claim="c-thresh", evidence_level="faithful", kind="threshold", verdict="not reproduced", unit="steps",
               published=20.0, reproduced_mean=float("nan"), ci_low=float("nan"), ci_high=float("nan")),
        _claim(claim="c-upto", evidence_level="stand-in", kind="ratio", verdict="consistent", unit="x", published=1.3,
               reproduced_mean=1.2, ci_low=1.1, ci_high=1.25, experiments="sweep"),
        _claim(claim="c-notrun", evidence_level="faithful", verdict="not run: dataset unavailable", n=0,
               reproduced_mean=float("nan"), can_fail=False, refutation="cannot fail at this scale: not run (dataset unavailable)"),
    ]
    out.mkdir(parents=True)
    pd.DataFrame(claims).to_csv(out / "claims.csv", index=False)
    runs = [{"paper": "p1", "experiment": e, "seed": s, "status": "ok", "reason": None, "wall_seconds": 1.0,
             "git_commit": "abc1234def", "device": "cpu", "metric.test_accuracy": 0.9,
             "metric.ood_gaussian_msp_auroc": 0.9 + 0.01 * s if e == "a" else None,
             "metric.ood_gaussian_max_logit_fpr95": 0.2 if e == "a" else None} for e in ("a", "b") for s in range(3)]
    pd.DataFrame(runs).to_csv(out / "runs.csv", index=False)
    for e in ("a", "b"):
        for s in range(3):
            d = out / "runs" / "p1" / e / f"seed{s}"
            d.mkdir(parents=True)
            pd.DataFrame({"step": [10, 20, 30], "train_loss": [1.0, 0.5, 0.2], "train_accuracy": [0.5, 0.8, 0.9],
                          "test_accuracy": [0.4, 0.7, 0.85]}).to_csv(d / "steps.csv", index=False)
            rec = {"seed": s, "reliability": [{"bin": 0, "count": 10, "accuracy": 0.5, "confidence": 0.6}]}
            if e == "a":  # an experiment with post-hoc OOD scores
                curve = {"fpr": [0, 0.1, 1], "tpr": [0, 0.9, 1], "edges": [0, 0.5, 1], "hist_in": [1, 9], "hist_out": [7, 3]}
                rec["ood"] = {"chosen": {}, "curves": {"gaussian/msp": curve, "gaussian/energy": curve}}
            (d / "metrics.json").write_text(json.dumps(rec))
    for s in range(3):
        d = out / "runs" / "p1" / "sweep" / f"seed{s}"
        d.mkdir(parents=True)
        pd.DataFrame({"V": [64, 64, 128, 128], "repeat": [0, 1, 0, 1], "t_safe": [2.0, 2.1, 4.0, 4.2],
                      "t_online": [1.8, 1.7, 3.1, 3.3]}).to_csv(d / "steps.csv", index=False)
    pd.DataFrame({"paper": "p1", "claim": "c-upto", "size": [64, 128], "median": [1.15, 1.27], "ci_low": [1.1, 1.2],
                  "ci_high": [1.2, 1.3], "n": [6, 6]}).to_csv(out / "up_to_curves.csv", index=False)
    exp = {"deviations": ["minor: re-implementation"], "skip": None, "planned": True, "evidence_level": "faithful",
           "figure": {"kind": "training"}}
    ctx = {"scale": {"name": "cpu", "description": "d", "seeds": [0, 1, 2], "evidence": True, "min_seeds": 3},
           "papers": {"p1": {"title": "Paper One", "authors": ["A"], "arxiv": "0000.00000", "year": 2020, "code": None,
                             "seed_files": ["x.txt"], "protocol_sources": ["README"],
                             "experiments": {"a": exp, "b": exp, "sweep": {**exp, "figure": {"kind": "sweep", "x": "V",
                                                                                             "y_prefix": "t_", "log": True}}},
                             "claims": {"c-faithful": {"kind": "comparison", "experiments": ["a", "b"]},
                                        "c-standin": {"kind": "comparison", "experiments": ["a", "b"]},
                                        "c-value": {"kind": "value", "experiments": ["a"]},
                                        "c-thresh": {"kind": "threshold", "experiments": ["a"], "published": 20,
                                                     "log": {"column": "test_accuracy", "at_least": 0.99}, "expect": "reached"},
                                        "c-upto": {"kind": "ratio", "experiments": ["sweep"], "published": 1.3,
                                                   "up_to": {"column": "speedup", "over": "V"}},
                                        "c-notrun": {"kind": "comparison", "experiments": ["a", "b"]}}}}}
    (out / "papers.json").write_text(json.dumps(ctx))
    return page.load(tmp_path / "results", "cpu")


def test_front_page_counts_verdicts_by_evidence_level(results):
    items = page.front(results)
    text = "".join(i for i in items if isinstance(i, str))
    assert "2 were judged at a faithful protocol" in text and "6 claims from 1 paper." in text
    counts = page.counts_by_level(results.claims)
    assert list(counts.index) == ["faithful", "cut", "stand-in"]
    assert counts.loc["faithful", "reproduced"] == 1 and counts.loc["faithful", "not run"] == 1
    assert counts.loc["stand-in", "contradicts"] == 1 and counts.loc["cut", "not comparable at this scale"] == 1
    assert any(isinstance(i, matplotlib.figure.Figure) for i in items)


def test_headline_sentence_says_how_many_faithful_claims_reproduced(results):
    s = page.headline_sentence(results.claims)
    assert "<b>2 were judged at a faithful protocol</b>" in s and "1 reproduced" in s and "1 not reproduced" in s
    assert "1 contradict it" in s and "1 more could not run" in s


def test_summary_rows_carry_level_and_refutation(results):
    html = "".join(page.summary(results))
    assert html.index("c-faithful") < html.index("c-standin")  # faithful rows first
    assert "what would refute it" in html and "not reproduced if ..." in html


def test_cannot_fail_section_lists_only_rows_that_cannot_fail(results):
    html = "".join(page.cannot_fail(results))
    assert "c-value" in html and "c-notrun" in html and "c-faithful" not in html and "(2 of 6)" in html


def test_paper_section_draws_each_declared_figure(results):
    items = page.paper(results, "p1")
    figs = [i for i in items if isinstance(i, matplotlib.figure.Figure)]
    titles = [ax.get_title() for f in figs for ax in f.axes]
    assert any("c-thresh" in t for t in titles) and any("c-upto" in t for t in titles)
    assert any("training loss" in t for t in titles)
    assert any(ax.get_ylabel() == "value" or ax.get_xscale() == "log" for f in figs for ax in f.axes)  # the sweep
    assert any("reliability" in t for t in titles)
    assert any(t == "a: in vs gaussian" for t in titles) and any(t == "energy score (seed 0)" for t in titles)
    html = "".join(i for i in items if isinstance(i, str))
    assert "Paper One" in html and "minor: re-implementation" in html and "(faithful)" in html


def test_scatter_splits_by_level(results):
    fig = figures.published_vs_reproduced(results.claims)
    assert {ax.get_title().split(" (")[0] for ax in fig.axes} == {"faithful", "cut", "stand-in"}


def test_ood_table_shows_scores_by_set_with_cis(results):
    html = "".join(page.ood_tables(results, "p1"))
    assert "a: OOD detection" in html and "b: OOD" not in html
    assert "91.0 [88.5, 93.5]" in html  # 90, 91, 92 %: t(0.975, 2) * 1 / sqrt(3) = 2.48
    assert "max_logit" in html and "/ 20.0 [20.0, 20.0]" in html


def test_context_traces_and_sweep_figures_draw_from_run_records(tmp_path):
    """The attention family's figures: loss against context (final metrics), logged traces, and a
    sweep claim's metric against its axis with the ceiling."""
    rows, logs = [], []
    for exp, base in (("soft", 2.0), ("ss", 1.9)):
        for seed in range(3):
            rows.append({"experiment": exp, "seed": f"seed{seed}", **{f"test_loss_x{m}": base + 0.1 * m + 0.01 * seed for m in (1, 2, 4)},
                         "test_loss_x2_beyond": 9.0})
            logs += [{"experiment": exp, "seed": f"seed{seed}", "step": s, "attn_logit_max_l0": s / 10, "attn_entropy_min": 1 / s}
                     for s in (10, 20, 30)]
    fig = figures.columns(pd.DataFrame(rows), spec={"pattern": r"test_loss_x(\d+)", "log_x": True})
    assert isinstance(fig, matplotlib.figure.Figure)
    assert len(fig.axes[0].lines) >= 2  # one line per experiment ("_beyond" columns are not drawn)
    assert figures.columns(pd.DataFrame(rows), spec={"pattern": r"nothing_(\d+)"}) is None
    fig = figures.curves(pd.DataFrame(logs), spec={"columns": ["attn_logit_max_l0", "attn_entropy_min", "absent"]})
    assert len(fig.axes) == 2
    out = tmp_path
    members = {"a": ["lr-q-1e-3", "lr-q-1e-1"], "b": ["lr-s-1e-3", "lr-s-1e-1"]}
    experiments = {}
    for arm, names in members.items():
        for e in names:
            experiments[e] = {"matrix_labels": {"lr": e.rsplit("-", 2)[-2] + "-" + e.rsplit("-", 1)[-1]}}
            for seed in range(3):
                d = out / "runs" / "p" / e / f"seed{seed}"
                d.mkdir(parents=True)
                loss = float("nan") if (e == "lr-s-1e-1" and seed == 0) else 2.0 + seed * 0.01
                (d / "metrics.json").write_text(json.dumps({"status": "ok", "metrics": {"test_loss_x1": loss}}))
    claim = {"metric": "test_loss_x1", "arms": {"a": "lr-q", "b": "lr-s"},
             "sweep": {"over": "lr", "statistic": "lr_sensitivity", "ceiling": 4.17, "members": members}}
    fig = figures.sweep_claim(out, "p", claim, experiments, "c", "consistent")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and any(abs(l.get_ydata()[0] - 4.17) < 1e-9 for l in ax.lines if len(l.get_ydata()) == 2)
