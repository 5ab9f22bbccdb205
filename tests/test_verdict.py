"""One test per cell of the rule table in verdict.py / the README."""
import math

import numpy as np
import pytest

from softrepro.verdict import judge, judge_threshold, judge_up_to, refutation, summarize, up_to_statistic

VALUE = {"id": "v", "kind": "value", "unit": "percent", "published": 91.86, "tolerance": {"abs": 0.5}}
CMP = {"id": "c", "kind": "comparison", "unit": "percent", "published": {"a": 91.86, "b": 90.72}, "tolerance": {"abs": 0.5}}
RATIO = {"id": "r", "kind": "ratio", "unit": "x", "published": 1.3, "tolerance": {"rel": 0.1}}
QUAL = {"id": "q", "kind": "qualitative", "unit": "fraction", "direction": "less"}
A = np.array([0.918, 0.921, 0.916, 0.919])


def test_summary_ci_matches_t_distribution():
    s = summarize([1.0, 2.0, 3.0])
    assert s.mean == 2.0 and s.n == 3
    assert s.ci_high - s.mean == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-5)  # t(0.975, 2) = 4.3027
    assert math.isnan(summarize([1.0]).ci_low)


# --- value claims -------------------------------------------------------------------------------

def test_value_faithful_within_band_is_reproduced():
    j = judge(VALUE, [0.918, 0.920, 0.917])
    assert j.verdict == "reproduced" and j.mean == pytest.approx(91.8333, abs=1e-3)


def test_value_faithful_ci_outside_band_is_not_reproduced():
    assert judge(VALUE, [0.880, 0.881, 0.879]).verdict == "not reproduced"


def test_value_faithful_ci_overlapping_band_is_inconclusive():
    assert judge(VALUE, [0.85, 0.93, 0.90]).verdict == "inconclusive"


def test_value_mean_in_band_with_a_ci_wider_than_the_band_is_inconclusive():
    # mean 91.87 in [91.36, 92.36], but the seeds spread from 90.6 to 93.0: the CI reaches far outside the band
    j = judge(VALUE, [0.906, 0.930, 0.920])
    assert 91.36 <= j.mean <= 92.36 and j.ci_low < 91.36 and j.verdict == "inconclusive"
    assert "spread too much" in j.note


def test_value_saturated_at_the_metrics_bound_is_judged_not_refused():
    sat = {**VALUE, "published": 100, "tolerance": {"abs": 1}}
    j = judge(sat, [1.0, 1.0, 1.0])  # every seed at 100 %: the metric cannot go higher
    assert j.verdict == "reproduced" and "saturates" in j.note
    assert judge({**VALUE, "published": 90, "tolerance": {"abs": 1}}, [1.0, 1.0, 1.0]).verdict == "not reproduced"
    # equal seeds inside the range are still not a CI
    assert judge(VALUE, [0.9186, 0.9186, 0.9186]).verdict == "inconclusive"
    # and a unit without a bounded range never saturates
    assert judge({**VALUE, "unit": "nats", "published": 1.0, "tolerance": {"abs": 0.1}}, [1.0, 1.0, 1.0]).verdict == "inconclusive"


@pytest.mark.parametrize("level", ["cut", "stand-in"])
def test_value_below_faithful_is_not_comparable_either_way(level):
    for samples in ([0.918, 0.920, 0.917], [0.880, 0.881, 0.879]):
        j = judge(VALUE, samples, level=level)
        assert j.verdict == "not comparable at this scale" and j.n == 3 and not math.isnan(j.mean)


def test_value_unknown_published_is_inconclusive_but_keeps_the_reproduced_numbers():
    j = judge({**VALUE, "published": None}, [0.90, 0.91, 0.92])
    assert j.verdict == "inconclusive" and "unknown" in j.note
    assert j.mean == pytest.approx(91.0) and j.n == 3 and j.ci_low < 91.0 < j.ci_high


# --- comparisons with a published size ----------------------------------------------------------

def test_comparison_faithful_cells():
    assert judge(CMP, A, A - 0.011).verdict == "reproduced"          # 1.1 pp against 1.14 +- 0.5
    assert judge(CMP, A, A + 0.010).verdict == "not reproduced"      # significant, wrong way
    assert judge(CMP, A, A - 0.030).verdict == "not reproduced"      # right way, CI excludes the band: the band comes first
    b = A - np.array([0.020, 0.030, 0.005, 0.018])                  # mean 1.83 pp, CI overlaps the band, excludes 0
    j = judge(CMP, A, b)
    assert j.ci_low > 0 and j.ci_low < 1.64 and j.verdict == "direction holds"
    wobble = A - np.array([0.01, -0.012, 0.004, -0.003])
    assert judge(CMP, A, wobble).verdict == "inconclusive"          # CI includes 0


@pytest.mark.parametrize("level", ["cut", "stand-in"])
def test_comparison_below_faithful_is_consistent_or_contradicts_never_reproduced(level):
    assert judge(CMP, A, A - 0.011, level=level).verdict == "consistent"
    assert judge(CMP, A, A - 0.030, level=level).verdict == "consistent"   # size is not judged below faithful
    assert judge(CMP, A, A + 0.010, level=level).verdict == "contradicts"
    wobble = A - np.array([0.01, -0.012, 0.004, -0.003])
    assert judge(CMP, A, wobble, level=level).verdict == "inconclusive"


def test_comparison_pairs_by_seed_not_by_pooled_variance():
    a = np.array([0.80, 0.90, 0.85, 0.95])  # seeds vary a lot, the per-seed gap is steady
    assert judge(CMP, a, a - 0.0114).verdict == "reproduced"


def test_unequal_pairs_are_an_error():
    with pytest.raises(ValueError, match="paired"):
        judge(CMP, [0.9, 0.9], [0.9])


# --- direction-only claims ----------------------------------------------------------------------

def test_qualitative_faithful_cells():
    lo, hi = [0.1, 0.12, 0.11], [0.3, 0.31, 0.29]
    assert judge(QUAL, lo, hi).verdict == "reproduced"
    assert judge(QUAL, hi, lo).verdict == "not reproduced"
    assert judge(QUAL, [0.1, 0.3, 0.2], [0.2, 0.1, 0.3]).verdict == "inconclusive"


def test_qualitative_below_faithful_cells():
    lo, hi = [0.1, 0.12, 0.11], [0.3, 0.31, 0.29]
    assert judge(QUAL, lo, hi, level="stand-in").verdict == "consistent"
    assert judge(QUAL, hi, lo, level="stand-in").verdict == "contradicts"
    assert judge(QUAL, [0.1, 0.3, 0.2], [0.2, 0.1, 0.3], level="cut").verdict == "inconclusive"


def test_comparison_with_direction_and_unknown_pair_is_judged_on_direction():
    claim = {"id": "d", "kind": "comparison", "unit": "percent", "published": {"a": None, "b": 90.0},
             "direction": "greater", "tolerance": {"abs": 1}}
    gap = np.array([0.010, 0.012, 0.009, 0.011])
    assert judge(claim, A, A - gap).verdict == "reproduced"
    assert judge(claim, A, A + gap).verdict == "not reproduced"



# --- parity ("a matches b") ---------------------------------------------------------------------
PARITY = {"id": "p", "kind": "parity", "unit": "nats", "tolerance": {"abs": 0.05}}


@pytest.mark.parametrize("level, inside, outside", [("faithful", "reproduced", "not reproduced"),
                                                    ("stand-in", "consistent", "contradicts")])
def test_parity_cells(level, inside, outside):
    b = np.array([1.50, 1.52, 1.49, 1.51])
    assert judge(PARITY, b + [0.01, -0.01, 0.0, 0.005], b, level=level).verdict == inside
    assert judge(PARITY, b + [0.20, 0.22, 0.19, 0.21], b, level=level).verdict == outside
    assert judge(PARITY, b - [0.20, 0.22, 0.19, 0.21], b, level=level).verdict == outside
    # a CI that reaches past the margin: neither a match nor a mismatch
    assert judge(PARITY, b + [0.0, 0.1, -0.05, 0.06], b, level=level).verdict == "inconclusive"


def test_parity_can_fail_and_says_how():
    can, text = refutation(PARITY, "stand-in", 3)
    assert can and "wholly outside [-0.05, 0.05] nats" in text and text.startswith("contradicts")

# --- ratios -------------------------------------------------------------------------------------

def test_ratio_faithful_cells():
    assert judge(RATIO, [1.25, 1.32, 1.28]).verdict == "reproduced"
    assert judge(RATIO, [1.15, 1.12, 1.20]).verdict == "direction holds"   # CI overlaps [1.17, 1.43], mean below it
    assert judge(RATIO, [0.95, 0.96, 0.94]).verdict == "not reproduced"    # the other side of 1


def test_ratio_exclusion_comes_before_direction():
    claim = {"id": "r40", "kind": "ratio", "unit": "x", "published": 40, "tolerance": {"rel": 0.1}}
    j = judge(claim, [1.19, 1.20, 1.21])  # claimed 40x, measured tightly at 1.2x
    assert j.verdict == "not reproduced" and "band" in j.note
    assert judge(RATIO, [1.10, 1.12, 1.11]).verdict == "not reproduced"  # CI below [1.17, 1.43], above 1


def test_ratio_below_faithful_cells():
    assert judge(RATIO, [1.10, 1.12, 1.11], level="stand-in").verdict == "consistent"
    assert judge(RATIO, [0.95, 0.96, 0.94], level="cut").verdict == "contradicts"
    assert judge(RATIO, [0.9, 1.2, 1.05], level="cut").verdict == "inconclusive"


# --- rules before any cell ----------------------------------------------------------------------

@pytest.mark.parametrize("claim,a,b", [(VALUE, [0.918, 0.92], None), (CMP, A[:2], A[:2] - 0.011),
                                       (RATIO, [1.25, 1.3], None), (QUAL, [0.1, 0.11], [0.3, 0.31])])
def test_fewer_than_min_seeds_is_inconclusive_at_every_level(claim, a, b):
    for level in ("faithful", "cut", "stand-in"):
        j = judge(claim, a, b, level=level, min_seeds=3)
        assert j.verdict == "inconclusive" and "at least 3" in j.note


def test_one_seed_never_gives_a_verdict():
    assert judge(VALUE, [0.9186], min_seeds=1).verdict == "inconclusive"  # no CI without a spread


def test_seeds_that_agree_exactly_are_not_a_ci():
    j = judge(CMP, [0.92, 0.92, 0.92], [0.91, 0.91, 0.91])  # identical quantised accuracies
    assert j.verdict == "inconclusive" and "agree exactly" in j.note
    assert judge(VALUE, [0.9186] * 3).verdict == "inconclusive"


def test_deterministic_experiments_may_agree_exactly():
    assert judge(VALUE, [0.9186] * 3, deterministic=True).verdict == "reproduced"
    assert judge(VALUE, [0.95] * 3, deterministic=True).verdict == "not reproduced"


# --- thresholds ---------------------------------------------------------------------------------

THRESH = {"id": "t", "kind": "threshold", "unit": "steps", "log": {"column": "test_accuracy", "at_least": 1.0}}
INF = float("inf")


def test_first_step_finds_the_first_logged_crossing_or_inf():
    from softrepro.verdict import first_step

    assert first_step([10, 20, 30], [0.5, 1.0, 0.9], at_least=1.0) == 20
    assert first_step([10, 20], [0.5, 0.9], at_least=1.0) == INF
    assert first_step([10, 20, 30], [3.0, 0.4, 0.1], at_most=0.5) == 20
    assert first_step([10, 20], [float("nan"), 1.0], at_least=1.0) == 20


def test_threshold_reached_faithful_cells():
    claim = {**THRESH, "expect": "reached", "published": 400}
    j = judge_threshold(claim, [300, 350, 390], 500)
    assert j.verdict == "reproduced" and j.mean == pytest.approx(346.6667, rel=1e-4) and "3 of 3" in j.note
    assert judge_threshold(claim, [300, 450, 480], 500).verdict == "direction holds"
    assert judge_threshold(claim, [INF] * 3, 500).verdict == "not reproduced"
    assert judge_threshold(claim, [300, INF, 390], 500).verdict == "inconclusive"


def test_threshold_reached_below_faithful_cells():
    claim = {**THRESH, "expect": "reached", "published": 400}
    assert judge_threshold(claim, [300, 350, 390], 500, level="cut").verdict == "consistent"
    assert judge_threshold(claim, [INF] * 3, 500, level="cut").verdict == "contradicts"   # the run lasted past step 400
    assert judge_threshold(claim, [INF] * 3, 300, level="cut").verdict == "inconclusive"  # stopped before step 400
    assert judge_threshold(claim, [300, 450, 480], 500, level="stand-in").verdict == "inconclusive"
    unprinted = {**THRESH, "expect": "reached", "published": None}  # no printed step: a cut run cannot contradict
    assert judge_threshold(unprinted, [INF] * 3, 500, level="cut").verdict == "inconclusive"
    assert judge_threshold(unprinted, [INF] * 3, 500).verdict == "not reproduced"


def test_threshold_not_reached_cells():
    claim = {**THRESH, "expect": "not_reached", "published": None}
    assert judge_threshold(claim, [INF] * 3, 3000).verdict == "reproduced"
    assert judge_threshold(claim, [1200, 900, 400], 3000).verdict == "not reproduced"
    assert judge_threshold(claim, [1200, INF, INF], 3000).verdict == "inconclusive"
    cut = judge_threshold(claim, [INF] * 3, 1000, level="cut")  # a short run proves no "never"
    assert cut.verdict == "inconclusive" and "cannot show" in cut.note
    assert judge_threshold(claim, [1200, 900, 400], 1000, level="cut").verdict == "contradicts"


def test_threshold_follows_the_seed_rule():
    claim = {**THRESH, "expect": "reached", "published": 400}
    j = judge_threshold(claim, [300, 350], 500, min_seeds=3)
    assert j.verdict == "inconclusive" and "at least 3" in j.note
    reached = {**THRESH, "expect": "reached", "published": None}
    assert judge_threshold(reached, [2900, 100, 50], 3000).verdict == "reproduced"  # within the run


# --- "up to" claims -----------------------------------------------------------------------------

def test_up_to_is_the_largest_per_size_median_with_a_bootstrap_ci():
    sizes = [1] * 9 + [2] * 9 + [4] * 9
    values = ([1.0, 1.1, 1.2, 5.0, 1.1, 1.05, 1.1, 1.15, 1.1] + [1.3, 1.25, 1.35, 1.3, 1.28, 1.3, 1.32, 1.3, 1.29]
              + [1.0, 1.0, 1.05, 0.95, 1.0, 1.0, 1.02, 0.98, 1.0])
    s, curve = up_to_statistic(sizes, values)
    assert s.mean == pytest.approx(1.3) and s.n == 9      # the outlier 5.0 does not make the maximum
    assert list(curve["size"]) == [1, 2, 4] and curve["median"].tolist() == pytest.approx([1.1, 1.3, 1.0])
    assert s.ci_low <= 1.3 <= s.ci_high and s.ci_high < 2
    claim = {"id": "u", "kind": "ratio", "unit": "x", "published": 1.3, "tolerance": {"rel": 0.1},
             "up_to": {"column": "speedup", "over": "V"}}
    j, _ = judge_up_to(claim, sizes, values, n_seeds=3)
    assert j.verdict == "reproduced" and "largest median at V = 2" in j.note
    j, _ = judge_up_to(claim, sizes, values, n_seeds=3, level="stand-in")
    assert j.verdict == "consistent"
    j, _ = judge_up_to(claim, sizes, values, n_seeds=2, level="stand-in")
    assert j.verdict == "inconclusive"


# --- what would refute a claim ------------------------------------------------------------------

def test_refutation_sentences_say_what_would_have_failed_the_claim():
    ok, text = refutation(CMP, "faithful", 3)
    assert ok and text == "not reproduced if the 95 % CI of the paired difference a - b lies below 0 or outside [0.64, 1.64] pp (with at least 3 seeds)"
    ok, text = refutation(CMP, "stand-in", 3)
    assert ok and text.startswith("contradicts if the 95 % CI of the paired difference a - b lies below 0")
    ok, text = refutation({**VALUE, "metric": "test_accuracy"}, "faithful", 3)
    assert ok and "test_accuracy lies outside [91.36, 92.36] %" in text
    ok, text = refutation({**VALUE, "metric": "test_accuracy"}, "cut", 3)
    assert not ok and "cannot fail at this scale" in text
    ok, text = refutation({**VALUE, "published": None, "metric": "m"}, "faithful", 3)
    assert not ok and "unknown" in text
    ok, text = refutation(RATIO, "faithful", 3)
    assert ok and "below 1 or outside [1.17, 1.43] x" in text
    reached = {**THRESH, "expect": "reached", "published": 400}
    assert refutation(reached, "cut", 3, budget=500) == (True, "contradicts if no seed reaches test_accuracy >= 1.0 within its 500-step run (with at least 3 seeds)")
    assert not refutation(reached, "cut", 3, budget=300)[0]
    assert refutation({**THRESH, "expect": "not_reached", "published": None}, "cut", 3, budget=300)[0]
    why = "a closed form that any correct softmax satisfies"
    assert refutation({**CMP, "cannot_fail": why}, "faithful", 3) == (False, f"cannot fail: {why}")
