"""Judging one claim from its runs: mean, 95 % CI, paired tests and the verdict.

Verdicts (README, "What the verdicts mean"):

* ``reproduced``      — the reproduced number lies within the claim's tolerance of the
  published one (for comparisons: the paired difference is significant, has the
  published sign and lies within tolerance of the published difference);
* ``direction holds`` — comparison/ratio claims: the effect is significant and in the
  published direction, but its size is outside the tolerance;
* ``not reproduced``  — the 95 % CI excludes the published value's tolerance band, or a
  significant effect points the other way;
* ``inconclusive``    — too few seeds or too much spread to tell, or a miss at a scale
  whose protocol is cut (a cut protocol cannot refute a paper);
* ``not run: <why>``  — no run could produce the number (decided by the aggregator).

Threshold claims (``kind: threshold``) are about a run's per-step log: the first logged step
at which a column reaches a level (e.g. test accuracy 100 %).  ``expect: reached`` is
*reproduced* when every seed reaches it within the published step count (or the run's budget
when none is printed), *direction holds* when every seed reaches it but later, *not
reproduced* when no seed reaches it; ``expect: not_reached`` is *reproduced* when no seed
reaches it within the run's budget (at a faithful scale only: a cut run that stops early
proves nothing about later steps) and *not reproduced* when every seed does.  Mixed seeds
are *inconclusive*.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

UNIT_FACTOR = {"percent": 100.0, "fraction": 1.0, "x": 1.0, "nats": 1.0, "seconds": 1.0, "steps": 1.0}
VERDICTS = ("reproduced", "direction holds", "not reproduced", "inconclusive")
NAN = math.nan


@dataclass
class Summary:
    mean: float
    std: float
    n: int
    ci_low: float
    ci_high: float


def summarize(samples, confidence: float = 0.95) -> Summary:
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
class Judgement(Summary):
    verdict: str
    published: float  # the published number the reproduced mean is compared with
    delta: float
    p_value: float
    mean_a: float = NAN
    mean_b: float = NAN
    note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _excludes(s: Summary, lo: float, hi: float) -> bool:
    return s.n >= 2 and (s.ci_high < lo or s.ci_low > hi)


def judge(claim: dict, a, b=None, faithful: bool = True) -> Judgement:
    """Judge ``claim`` (a spec dict) from per-seed samples ``a`` (and ``b`` for comparisons),
    given in the metric's stored units; ``faithful`` is False at scales whose protocol is cut."""
    factor = UNIT_FACTOR[claim["unit"]]
    a = np.asarray(a, dtype=float) * factor
    kind = claim["kind"]
    note = ""
    if kind in ("value", "ratio") and claim.get("published") is None:
        s = summarize(a)
        return Judgement(**asdict(s), verdict="inconclusive", published=NAN, delta=NAN, p_value=NAN,
                         note="published value unknown (not found in any source read); reproduced value for reference")
    if kind in ("value", "ratio"):
        s = summarize(a)
        pub = float(claim["published"])
        hw = half_width(pub, claim["tolerance"])
        delta = s.mean - pub
        p_value = float(stats.ttest_1samp(a, pub).pvalue) if s.n >= 2 and s.std > 0 else NAN
        if abs(delta) <= hw:
            verdict = "reproduced"
        elif kind == "ratio" and s.n >= 2 and ((pub > 1 and s.ci_low > 1) or (pub < 1 and s.ci_high < 1)):
            verdict = "direction holds"
        elif _excludes(s, pub - hw, pub + hw):
            verdict = "not reproduced"
        else:
            verdict = "inconclusive"
            note = "mean outside the tolerance band but the CI overlaps it" if s.n >= 2 else "one seed: no CI"
        return _finish(Judgement(**asdict(s), verdict=verdict, published=pub, delta=delta, p_value=p_value, note=note), faithful)

    b = np.asarray(b, dtype=float) * factor
    if len(a) != len(b):
        raise ValueError(f"claim {claim['id']}: paired comparison needs equal seeds ({len(a)} vs {len(b)})")
    d = a - b
    s = summarize(d)
    pub_vals = claim.get("published") or {}
    pa, pb = pub_vals.get("a"), pub_vals.get("b")
    pub_d = pa - pb if pa is not None and pb is not None else NAN
    expected = claim.get("direction") or ("greater" if pub_d > 0 else "less")
    p_value = float(stats.ttest_rel(a, b).pvalue) if s.n >= 2 and s.std > 0 else NAN
    if s.n < 2:
        verdict, note = "inconclusive", "fewer than two paired seeds"
    elif s.ci_low > 0 or s.ci_high < 0:
        if (s.mean > 0) != (expected == "greater"):
            verdict = "not reproduced"
        elif kind == "qualitative" or math.isnan(pub_d) or abs(s.mean - pub_d) <= half_width(pub_d, claim["tolerance"]):
            verdict = "reproduced"
        else:
            verdict = "direction holds"
    else:
        verdict, note = "inconclusive", "the paired difference's 95 % CI includes 0"
    j = Judgement(**asdict(s), verdict=verdict, published=pub_d, delta=s.mean - pub_d, p_value=p_value,
                  mean_a=float(a.mean()), mean_b=float(b.mean()), note=note)
    return _finish(j, faithful)


def _finish(j: Judgement, faithful: bool) -> Judgement:
    if not faithful and j.verdict == "not reproduced":
        j.verdict = "inconclusive"
        j.note = "missed at a scale whose protocol is cut (see deviations); not evidence against the paper"
    return j


def first_step(steps, values, at_least: float | None = None, at_most: float | None = None) -> float:
    """The first logged step whose value meets the level, or inf if none does."""
    for step, v in zip(steps, values):
        if v == v and ((at_least is not None and v >= at_least) or (at_most is not None and v <= at_most)):
            return float(step)
    return math.inf


def judge_threshold(claim: dict, first: list[float], budgets: list[int], faithful: bool = True) -> Judgement:
    """Judge a threshold claim from each seed's first step at the level and its step budget."""
    first = np.asarray(first, dtype=float)
    n = len(first)
    reached = np.isfinite(first)
    pub = claim.get("published")
    s = summarize(first[reached])
    level = claim["log"]
    cond = f"{level['column']} {'>=' if 'at_least' in level else '<='} {level.get('at_least', level.get('at_most'))}"
    steps_txt = ", ".join("never" if not r else str(int(f)) for f, r in zip(first, reached))
    note = f"{int(reached.sum())} of {n} seeds reached {cond} (first at: {steps_txt}; budgets {sorted(set(budgets))} steps)"
    if n == 0:
        verdict = "inconclusive"
    elif claim["expect"] == "reached":
        on_time = reached & (first <= (pub if pub is not None else np.asarray(budgets)))
        if on_time.all():
            verdict = "reproduced"
        elif reached.all():
            verdict = "direction holds"
        elif not reached.any():
            verdict = "not reproduced"
        else:
            verdict = "inconclusive"
    else:
        verdict = "reproduced" if not reached.any() else "not reproduced" if reached.all() else "inconclusive"
        if verdict == "reproduced" and not faithful:  # stopping early cannot show that a level is never reached
            verdict = "inconclusive"
            note += "; not reached within a cut run (see deviations), which cannot show it is never reached"
    j = Judgement(mean=s.mean, std=s.std, n=n, ci_low=s.ci_low, ci_high=s.ci_high, verdict=verdict,
                  published=NAN if pub is None else float(pub), delta=(s.mean - pub) if pub is not None and s.n else NAN,
                  p_value=NAN, note=note)
    return _finish(j, faithful)
