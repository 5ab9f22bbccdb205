"""Judging one claim from its runs: mean, 95 % CI, paired tests, the verdict, and what would have
refuted it.

Every claim is judged at an *evidence level*, derived from its experiments' deviations at the
scale (``spec.evidence_level``):

* ``faithful``  the paper's data, model and protocol;
* ``cut``       the paper's data and model, a shortened schedule, grid or subset;
* ``stand-in``  other data, model or procedure.

One rule set, the same in both directions (README, "What the verdicts mean"):

=================  ==========================================  =====================================
claim              faithful                                     cut / stand-in
=================  ==========================================  =====================================
value              *reproduced*: the 95 % CI lies within the    *not comparable at this scale*
                   tolerance band; *not reproduced*: it lies    (the number is shown)
                   outside the band; else *inconclusive*
comparison, ratio  *not reproduced*: the CI lies on the wrong   *consistent*: the CI lies on the
(published size)   side of 0 (ratio: 1), or outside the band;   paper's side of 0 (ratio: 1);
                   *reproduced*: the CI on the paper's side     *contradicts*: on the other side;
                   and the mean in the band; *direction         else *inconclusive*
                   holds*: the CI on the paper's side, the
                   mean outside the band (its CI overlapping
                   it); else *inconclusive*
comparison,        *reproduced*: the CI on the paper's side;    as above
qualitative        *not reproduced*: on the other side; else
(direction only)   *inconclusive*
parity ("a         *reproduced*: the CI of a - b lies inside    *consistent*: inside the margin;
matches b")        the margin +-m; *not reproduced*: wholly     *contradicts*: wholly outside it;
                   outside it; else *inconclusive*              else *inconclusive*
threshold          reached: *reproduced* when every seed        reached: *consistent* when every
(a curve reaching  reaches the level by the printed step        seed reaches it by the printed
a level)           (or within the run), *direction holds* when  step, *contradicts* when no seed
                   every seed reaches it later, *not            does and the run lasted that long;
                   reproduced* when none does; not_reached:     not_reached: *contradicts* when
                   *reproduced* when none does, *not            every seed reaches it; else
                   reproduced* when all do; else inconclusive   *inconclusive*
=================  ==========================================  =====================================

Before any of that, at every level: fewer than the scale's ``min_seeds`` (paired) seeds is
*inconclusive*; so is a CI of zero width (the seeds agree exactly) unless the experiment is
declared ``deterministic`` or a value claim's metric saturates (every seed at 0 or 100 %).  Ratio and comparison claims test the tolerance band before the
direction, so a claimed 40x measured tightly at 1.2x is *not reproduced*, not *direction holds*.
"Up to" claims (``up_to``) are judged on the maximum over sizes of the per-size median over
repeats, with a bootstrap CI over repeats (``up_to_statistic``).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from softrepro.spec import LEVELS

UNIT_FACTOR = {"percent": 100.0, "fraction": 1.0, "x": 1.0, "nats": 1.0, "seconds": 1.0, "steps": 1.0, "MiB": 1.0, "errors": 1.0, "BLEU": 1.0}
UNIT_LABEL = {"percent": "%", "fraction": "", "x": "x", "nats": "nats", "seconds": "s", "steps": "steps", "MiB": "MiB", "errors": "errors", "BLEU": "BLEU"}
FAITHFUL_VERDICTS = ("reproduced", "direction holds", "not reproduced", "inconclusive")
OTHER_VERDICTS = ("consistent", "contradicts", "inconclusive", "not comparable at this scale")
NAN = math.nan


@dataclass
class Summary:
    mean: float
    std: float
    n: int
    ci_low: float
    ci_high: float


def summarize(samples, confidence: float = 0.95) -> Summary:
    """Mean and t-based CI.  Samples that agree exactly give a zero-width CI, which the verdict
    rules do not take for certainty (see ``decide``)."""
    x = np.asarray(samples, dtype=float)
    n = len(x)
    if n == 0:
        return Summary(NAN, NAN, 0, NAN, NAN)
    mean = float(x.mean())
    if n < 2:
        return Summary(mean, NAN, 1, NAN, NAN)
    std = float(x.std(ddof=1))
    if std == 0.0:
        return Summary(mean, 0.0, n, mean, mean)
    lo, hi = stats.t.interval(confidence, n - 1, loc=mean, scale=std / math.sqrt(n))
    return Summary(mean, std, n, float(lo), float(hi))


def half_width(published: float, tolerance: dict) -> float:
    return tolerance["abs"] if "abs" in tolerance else tolerance["rel"] * abs(published)


@dataclass
class Test:
    """What a claim's statistic is compared with: a published value (``null`` None), or a
    difference (null 0) / ratio (null 1) on one ``side`` of the null, within an optional band."""
    stat: str            # "value" | "difference" | "ratio" | "parity"
    published: float     # the published value, difference or ratio (nan when unknown)
    band: tuple[float, float] | None
    null: float | None = None
    side: int = 0        # +1: the paper says greater than the null, -1: less
    bounds: tuple[float, float] | None = None  # the metric's range (percent: 0-100), where every seed may saturate

    @property
    def label(self) -> str:
        return {"value": "the mean", "difference": "the paired difference a - b", "ratio": "the ratio",
                "parity": "the paired difference a - b"}[self.stat]


def claim_test(claim: dict) -> Test:
    kind, pub = claim["kind"], claim.get("published")
    if kind == "parity":  # "a matches b": the paired difference within +-margin (an equivalence test)
        m = claim["tolerance"]["abs"]
        return Test("parity", 0.0, (-m, m), null=0.0)
    if kind == "value" or (kind == "ratio" and pub is None):
        band = None if pub is None else (pub - half_width(pub, claim["tolerance"]), pub + half_width(pub, claim["tolerance"]))
        return Test("value", NAN if pub is None else float(pub), band,
                    bounds=(0.0, 100.0) if claim["unit"] == "percent" else None)
    if kind == "ratio":
        hw = half_width(pub, claim["tolerance"])
        side = {"greater": 1, "less": -1}.get(claim.get("direction"), 1 if pub > 1 else -1)
        return Test("ratio", float(pub), (pub - hw, pub + hw), null=1.0, side=side)
    pub = pub or {}
    pa, pb = pub.get("a"), pub.get("b")
    d = pa - pb if pa is not None and pb is not None else NAN
    side = {"greater": 1, "less": -1}.get(claim.get("direction"), 1 if d > 0 else -1)
    band = None if math.isnan(d) or kind == "qualitative" else (d - half_width(d, claim["tolerance"]), d + half_width(d, claim["tolerance"]))
    return Test("difference", d, band, null=0.0, side=side)


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _band(band: tuple[float, float], unit: str) -> str:
    return f"[{_fmt(band[0])}, {_fmt(band[1])}]" + (f" {unit}" if unit else "")


def decide(test: Test, s: Summary, level: str, min_seeds: int, deterministic: bool = False) -> tuple[str, str]:
    """The verdict and its note for a statistic summarised by ``s`` (see the module's table)."""
    if level not in LEVELS:
        raise ValueError(f"unknown evidence level {level!r}")
    if s.n < min_seeds:
        return "inconclusive", f"{s.n} seed{'s' * (s.n != 1)}: a verdict needs at least {min_seeds}"
    if s.n < 2 and not deterministic:
        return "inconclusive", "one seed: no CI"
    saturated = s.std == 0 and test.bounds is not None and s.mean in test.bounds
    if s.std == 0 and not deterministic and not saturated:
        return "inconclusive", "the seeds agree exactly: a zero-width interval is not a CI (the experiment is not declared deterministic)"
    faithful = level == "faithful"
    at_bound = f"every seed gives {_fmt(s.mean)}, the end of the metric's range: the interval has zero width because the metric saturates"
    if test.stat == "value":
        if not faithful:
            return "not comparable at this scale", f"a {level} protocol's value is not compared with the published number; shown for reference"
        if test.band is None:
            return "inconclusive", "published value unknown (not found in any source read); reproduced value for reference"
        lo, hi = test.band
        if s.ci_high < lo or s.ci_low > hi:
            return "not reproduced", f"the 95 % CI excludes the tolerance band [{_fmt(lo)}, {_fmt(hi)}]" + (f"; {at_bound}" if saturated else "")
        if lo <= s.ci_low and s.ci_high <= hi:
            return "reproduced", at_bound if saturated else ""
        if lo <= s.mean <= hi:
            return "inconclusive", (f"the mean lies in the tolerance band [{_fmt(lo)}, {_fmt(hi)}] but its 95 % CI "
                                    f"[{_fmt(s.ci_low)}, {_fmt(s.ci_high)}] reaches outside it: the seeds spread too much to place the value")
        return "inconclusive", "mean outside the tolerance band but the CI overlaps it"
    if test.stat == "parity":
        lo, hi = test.band
        inside, outside = lo <= s.ci_low and s.ci_high <= hi, s.ci_low > hi or s.ci_high < lo
        if inside:
            return ("reproduced" if faithful else "consistent"), f"the 95 % CI lies inside the margin [{_fmt(lo)}, {_fmt(hi)}]"
        if outside:
            return ("not reproduced" if faithful else "contradicts"), f"the 95 % CI lies outside the margin [{_fmt(lo)}, {_fmt(hi)}]"
        return "inconclusive", f"the 95 % CI straddles the margin [{_fmt(lo)}, {_fmt(hi)}]"
    right = s.ci_low > test.null if test.side > 0 else s.ci_high < test.null
    wrong = s.ci_high < test.null if test.side > 0 else s.ci_low > test.null
    if not faithful:
        if right:
            return "consistent", f"significant in the paper's direction at a {level} protocol"
        if wrong:
            return "contradicts", f"significant in the opposite direction at a {level} protocol"
        return "inconclusive", f"the 95 % CI includes {_fmt(test.null)}"
    if wrong:
        return "not reproduced", "significant in the opposite direction"
    if test.band is not None:
        lo, hi = test.band
        if s.ci_high < lo or s.ci_low > hi:
            return "not reproduced", f"the 95 % CI excludes the tolerance band [{_fmt(lo)}, {_fmt(hi)}]"
        if right:
            return ("reproduced", "") if lo <= s.mean <= hi else \
                ("direction holds", "significant and in the paper's direction; the size lies outside the tolerance band")
    elif right:
        return "reproduced", ""
    return "inconclusive", f"the 95 % CI includes {_fmt(test.null)}"


@dataclass
class Judgement(Summary):
    verdict: str
    published: float  # the published number the reproduced statistic is compared with
    delta: float
    p_value: float
    mean_a: float = NAN
    mean_b: float = NAN
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def judge(claim: dict, a, b=None, level: str = "faithful", min_seeds: int = 3, deterministic: bool = False) -> Judgement:
    """Judge ``claim`` (a spec dict) from per-seed samples ``a`` (and ``b``, paired by seed, for
    comparisons), given in the metric's stored units."""
    factor = UNIT_FACTOR[claim["unit"]]
    a = np.asarray(a, dtype=float) * factor
    test = claim_test(claim)
    warnings.filterwarnings("ignore", "Precision loss", RuntimeWarning)  # scipy, on near-identical samples
    if b is None:
        s = summarize(a)
        p_value = float(stats.ttest_1samp(a, test.published).pvalue) if s.n >= 2 and s.std > 0 and not math.isnan(test.published) else NAN
        mean_a = mean_b = NAN
    else:
        b = np.asarray(b, dtype=float) * factor
        if len(a) != len(b):
            raise ValueError(f"claim {claim['id']}: paired comparison needs equal seeds ({len(a)} vs {len(b)})")
        s = summarize(a - b)
        p_value = float(stats.ttest_rel(a, b).pvalue) if s.n >= 2 and s.std > 0 else NAN
        mean_a, mean_b = float(a.mean()), float(b.mean())
    if deterministic and s.n == 1:
        s = Summary(s.mean, 0.0, 1, s.mean, s.mean)
    verdict, note = decide(test, s, level, min_seeds, deterministic)
    return Judgement(**asdict(s), verdict=verdict, published=test.published, delta=s.mean - test.published,
                     p_value=p_value, mean_a=mean_a, mean_b=mean_b, note=note)


def up_to_statistic(sizes, values, n_boot: int = 2000, seed: int = 0, confidence: float = 0.95):
    """"Up to" claims: per size, the median over repeats; the statistic is the largest of those
    medians, with a percentile bootstrap CI that resamples the repeats within each size.
    Returns (Summary of the statistic, per-size DataFrame: size, median, ci_low, ci_high, n)."""
    import pandas as pd

    df = pd.DataFrame({"size": np.asarray(sizes), "value": np.asarray(values, dtype=float)}).dropna()
    rng = np.random.default_rng(seed)
    alpha = (1 - confidence) / 2
    boot, rows = [], []
    for size, g in df.groupby("size", sort=True):
        v = g["value"].to_numpy()
        med = np.median(v[rng.integers(0, len(v), (n_boot, len(v)))], axis=1)
        boot.append(med)
        rows.append({"size": size, "median": float(np.median(v)), "ci_low": float(np.quantile(med, alpha)),
                     "ci_high": float(np.quantile(med, 1 - alpha)), "n": len(v)})
    curve = pd.DataFrame(rows)
    if not rows:
        return Summary(NAN, NAN, 0, NAN, NAN), curve
    best = np.max(np.stack(boot), axis=0)
    s = Summary(float(curve["median"].max()), float(best.std(ddof=1)), int(curve["n"].min()),
                float(np.quantile(best, alpha)), float(np.quantile(best, 1 - alpha)))
    return s, curve


def judge_up_to(claim: dict, sizes, values, n_seeds: int, level: str = "faithful", min_seeds: int = 3) -> tuple[Judgement, object]:
    s, curve = up_to_statistic(sizes, values)
    test = claim_test(claim)
    if n_seeds < min_seeds:
        verdict, note = "inconclusive", f"{n_seeds} sweep{'s' * (n_seeds != 1)}: a verdict needs at least {min_seeds}"
    else:
        verdict, note = decide(test, s, level, min_seeds=1)
    if len(curve):
        at = curve.loc[curve["median"].idxmax(), "size"]
        note = (note + "; " if note else "") + f"largest median at {claim['up_to']['over']} = {at}; {s.n}+ repeats per size over {n_seeds} sweeps"
    j = Judgement(**asdict(s), verdict=verdict, published=test.published, delta=s.mean - test.published, p_value=NAN, note=note)
    return j, curve


def first_step(steps, values, at_least: float | None = None, at_most: float | None = None) -> float:
    """The first logged step whose value meets the level, or inf if none does."""
    for step, v in zip(steps, values):
        if v == v and ((at_least is not None and v >= at_least) or (at_most is not None and v <= at_most)):
            return float(step)
    return math.inf


def _condition(claim: dict) -> str:
    log = claim["log"]
    return f"{log['column']} {'>=' if 'at_least' in log else '<='} {log.get('at_least', log.get('at_most'))}"


def judge_threshold(claim: dict, first: list[float], budget: int, level: str = "faithful", min_seeds: int = 3) -> Judgement:
    """Judge a threshold claim from each seed's first step at the level within a run of ``budget`` steps."""
    first = np.asarray(first, dtype=float)
    n = len(first)
    reached = np.isfinite(first)
    pub = claim.get("published")
    by = pub if pub is not None else budget
    s = summarize(first[reached])
    steps_txt = ", ".join("never" if not r else str(int(f)) for f, r in zip(first, reached))
    note = f"{int(reached.sum())} of {n} seeds reached {_condition(claim)} (first at: {steps_txt}; runs of {budget} steps)"
    faithful = level == "faithful"
    if n < min_seeds:
        verdict = "inconclusive"
        note += f"; a verdict needs at least {min_seeds} seeds"
    elif claim["expect"] == "reached":
        on_time = reached & (first <= by)
        if on_time.all():
            verdict = "reproduced" if faithful else "consistent"
        elif faithful and reached.all():
            verdict = "direction holds"
        elif not reached.any() and (budget >= by if faithful else pub is not None and budget >= pub):
            verdict = "not reproduced" if faithful else "contradicts"
        else:
            verdict = "inconclusive"
    else:
        if reached.all():
            verdict = "not reproduced" if faithful else "contradicts"
        elif not reached.any() and faithful:
            verdict = "reproduced"
        else:
            verdict = "inconclusive"
            if not reached.any():
                note += f"; not reached within a {level} run, which cannot show that it is never reached"
    return Judgement(mean=s.mean, std=s.std, n=n, ci_low=s.ci_low, ci_high=s.ci_high, verdict=verdict,
                     published=NAN if pub is None else float(pub), delta=(s.mean - pub) if pub is not None and s.n else NAN,
                     p_value=NAN, note=note)


def refutation(claim: dict, level: str, min_seeds: int, budget: int | None = None) -> tuple[bool, str]:
    """Whether the claim can fail at this level, and the outcome that would have refuted it
    (one sentence for the report)."""
    seeds = f" (with at least {min_seeds} seeds)"
    if claim.get("cannot_fail"):
        return False, f"cannot fail: {claim['cannot_fail']}"
    faithful = level == "faithful"
    word = "not reproduced" if faithful else "contradicts"
    unit = UNIT_LABEL[claim["unit"]]
    if claim["kind"] == "threshold":
        cond = _condition(claim)
        pub = claim.get("published")
        if claim["expect"] == "not_reached":
            return True, f"{word} if every seed reaches {cond} within its {budget}-step run{seeds}"
        if faithful or (pub is not None and budget is not None and budget >= pub):
            return True, f"{word} if no seed reaches {cond} within its {budget}-step run{seeds}"
        why = "no step count was printed" if pub is None else f"the run ({budget} steps) stops before the printed step {pub}"
        return False, f"cannot fail at this scale: {why}, and a {level} run that does not reach the level shows nothing"
    test = claim_test(claim)
    if test.stat == "value":
        if not faithful:
            return False, f"cannot fail at this scale: a value is compared with the published number only at a faithful protocol (this one is {level})"
        if test.band is None:
            return False, "cannot fail: the published value is unknown, so the reproduced number is shown for reference only"
        return True, f"not reproduced if the 95 % CI of {claim_metric_name(claim)} lies outside {_band(test.band, unit)}{seeds}"
    if test.stat == "parity":
        return True, f"{word} if the 95 % CI of the paired difference a - b lies wholly outside {_band(test.band, unit)}{seeds}"
    what = "the paired difference a - b" if test.stat == "difference" else "the ratio"
    unit = "pp" if claim["unit"] == "percent" and test.stat == "difference" else unit
    wrong = "below" if test.side > 0 else "above"
    text = f"{word} if the 95 % CI of {what} lies {wrong} {_fmt(test.null)}"
    if faithful and test.band is not None:
        text += f" or outside {_band(test.band, unit)}"
    return True, text + seeds


def claim_metric_name(claim: dict) -> str:
    m = claim["metric"]
    return m if isinstance(m, str) else f"{m['a']} (a) vs {m['b']} (b)"
