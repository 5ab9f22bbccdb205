import math

import numpy as np
import pytest

from softrepro.verdict import judge, summarize

VALUE = {"id": "v", "kind": "value", "unit": "percent", "published": 91.86, "tolerance": {"abs": 0.5}}
CMP = {"id": "c", "kind": "comparison", "unit": "percent", "published": {"a": 91.86, "b": 90.72}, "tolerance": {"abs": 0.5}}
RATIO = {"id": "r", "kind": "ratio", "unit": "x", "published": 1.3, "tolerance": {"rel": 0.1}}


def test_summary_ci_matches_t_distribution():
    s = summarize([1.0, 2.0, 3.0])
    assert s.mean == 2.0 and s.n == 3
    assert s.ci_high - s.mean == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-5)  # t(0.975, 2) = 4.3027
    assert math.isnan(summarize([1.0]).ci_low)


def test_value_within_tolerance_is_reproduced():
    j = judge(VALUE, [0.918, 0.920, 0.917])
    assert j.verdict == "reproduced" and j.mean == pytest.approx(91.8333, abs=1e-3)


def test_value_far_off_with_tight_ci_is_not_reproduced():
    assert judge(VALUE, [0.880, 0.881, 0.879]).verdict == "not reproduced"


def test_value_off_with_wide_ci_is_inconclusive():
    assert judge(VALUE, [0.85, 0.93, 0.90]).verdict == "inconclusive"


def test_miss_at_cut_scale_is_inconclusive_not_refutation():
    j = judge(VALUE, [0.880, 0.881, 0.879], faithful=False)
    assert j.verdict == "inconclusive" and "cut" in j.note


def test_comparison_paired_verdicts():
    a = np.array([0.918, 0.921, 0.916, 0.919])
    assert judge(CMP, a, a - 0.011).verdict == "reproduced"          # diff 1.1 pp, published 1.14
    assert judge(CMP, a, a - 0.030).verdict == "direction holds"     # 3 pp: right sign, too big
    assert judge(CMP, a, a + 0.010).verdict == "not reproduced"      # significant, wrong way
    b = a - np.array([0.01, -0.012, 0.004, -0.003])
    assert judge(CMP, a, b).verdict == "inconclusive"               # CI includes 0


def test_comparison_pairs_by_seed_not_by_pooled_variance():
    # seeds vary a lot, but the per-seed gap is steady: a paired test sees it
    a = np.array([0.80, 0.90, 0.85, 0.95])
    assert judge(CMP, a, a - 0.0114).verdict == "reproduced"


def test_qualitative_direction_only():
    claim = {"id": "q", "kind": "qualitative", "unit": "fraction", "direction": "less"}
    assert judge(claim, [0.1, 0.12, 0.11], [0.3, 0.31, 0.29]).verdict == "reproduced"
    assert judge(claim, [0.3, 0.31, 0.29], [0.1, 0.12, 0.11]).verdict == "not reproduced"


def test_ratio_verdicts():
    assert judge(RATIO, [1.25, 1.32, 1.28]).verdict == "reproduced"
    assert judge(RATIO, [1.10, 1.12, 1.11]).verdict == "direction holds"
    assert judge(RATIO, [0.95, 0.96, 0.94]).verdict == "not reproduced"


def test_unequal_pairs_are_an_error():
    with pytest.raises(ValueError, match="paired"):
        judge(CMP, [0.9, 0.9], [0.9])


def test_unknown_published_value_is_inconclusive_but_keeps_the_reproduced_numbers():
    j = judge({**VALUE, "published": None}, [0.90, 0.91, 0.92])
    assert j.verdict == "inconclusive" and "unknown" in j.note
    assert j.mean == pytest.approx(91.0) and j.n == 3 and j.ci_low < 91.0 < j.ci_high


THRESH = {"id": "t", "kind": "threshold", "unit": "steps", "log": {"column": "test_accuracy", "at_least": 1.0}}


def test_first_step_finds_the_first_logged_crossing_or_inf():
    from softrepro.verdict import first_step

    assert first_step([10, 20, 30], [0.5, 1.0, 0.9], at_least=1.0) == 20
    assert first_step([10, 20], [0.5, 0.9], at_least=1.0) == float("inf")
    assert first_step([10, 20, 30], [3.0, 0.4, 0.1], at_most=0.5) == 20
    assert first_step([10, 20], [float("nan"), 1.0], at_least=1.0) == 20


def test_threshold_reached_within_published_steps():
    from softrepro.verdict import judge_threshold

    claim = {**THRESH, "expect": "reached", "published": 400}
    j = judge_threshold(claim, [300, 350, 390], [500] * 3)
    assert j.verdict == "reproduced" and j.mean == pytest.approx(346.6667, rel=1e-4) and "3 of 3" in j.note
    assert judge_threshold(claim, [300, 450, 480], [500] * 3).verdict == "direction holds"  # all reach, some late
    assert judge_threshold(claim, [float("inf")] * 3, [500] * 3).verdict == "not reproduced"
    assert judge_threshold(claim, [float("inf")] * 3, [500] * 3, faithful=False).verdict == "inconclusive"
    assert judge_threshold(claim, [300, float("inf"), 390], [500] * 3).verdict == "inconclusive"


def test_threshold_not_reached_within_the_budget():
    from softrepro.verdict import judge_threshold

    claim = {**THRESH, "expect": "not_reached", "published": None}
    assert judge_threshold(claim, [float("inf")] * 2, [3000] * 2).verdict == "reproduced"
    assert judge_threshold(claim, [1200, 900], [3000] * 2).verdict == "not reproduced"
    cut = judge_threshold(claim, [float("inf")] * 2, [1000] * 2, faithful=False)  # a short run proves no "never"
    assert cut.verdict == "inconclusive" and "cut run" in cut.note
    reached = {**THRESH, "expect": "reached", "published": None}
    assert judge_threshold(reached, [2900, 100], [3000] * 2).verdict == "reproduced"  # within each run's budget
