"""Song et al. 2024's gradient-descent benchmark (softmax against a Gaussian attention kernel) and the
per-head null-attention measures of the decoder (Zhang, Titov & Sennrich 2021's ReLA)."""
import inspect
import math

import pytest
import torch

from softrepro.methods.attention import gd_dynamics as gdd
from softrepro.methods.attention.decoder import Attention, Decoder, evaluate_lm
from softrepro.methods.attention.normalisations import ReLA

# --------------------------------------------------------------------------- Song et al. 2024


def _one_sequence():
    x = torch.tensor([[[[1.0, 0.0], [0.5, -1.0]]]], dtype=torch.float64)  # B = N = 1, n = 2 tokens, D = 2
    wq = torch.tensor([[[1.0, 2.0], [0.0, 1.0]]], dtype=torch.float64)
    wk = torch.tensor([[[0.5, 0.0], [1.0, -1.0]]], dtype=torch.float64)
    wv = torch.tensor([[2.0, 1.0]], dtype=torch.float64)
    return x, wq, wk, wv


def test_attention_kernels_match_their_formulas_by_hand():
    x, wq, wk, wv = _one_sequence()
    # by hand: q_1 = (1, 2), q_2 = (0.5, 0); k_1 = (0.5, 0), k_2 = (-0.75, 1); x w_V = (2, 0)
    q = [(1.0, 2.0), (0.5, 0.0)]
    k = [(0.5, 0.0), (-0.75, 1.0)]
    dot = lambda a, b: a[0] * b[0] + a[1] * b[1]  # noqa: E731
    sq = lambda a, b: (a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2  # noqa: E731
    for kernel, score in (("softmax", lambda a, b: math.exp(dot(a, b) / math.sqrt(2))),
                          ("gaussian", lambda a, b: math.exp(-sq(a, b) / (2 * math.sqrt(2))))):
        want = [[score(qi, kj) / sum(score(qi, kk) for kk in k) for kj in k] for qi in q]
        got = gdd.attention(x, wq, wk, kernel, math.sqrt(2))[0, 0]
        assert got.flatten().tolist() == pytest.approx([w for row in want for w in row], rel=1e-12)
        values = [2.0, 0.0]  # x_1 w_V = 2, x_2 w_V = 0.5 x 2 - 1
        out = gdd.forward(x, wq, wk, wv, kernel, math.sqrt(2))[0, 0]
        assert out.tolist() == pytest.approx([sum(w * v for w, v in zip(row, values)) for row in want], rel=1e-12)
    with pytest.raises(ValueError, match="unknown attention kernel"):
        gdd.attention(x, wq, wk, "laplace", 1.0)


def test_gaussian_kernel_is_softmax_with_the_key_norm_subtracted():
    torch.manual_seed(0)
    x = torch.randn(3, 2, 5, 6, dtype=torch.float64)
    wq, wk = torch.randn(3, 6, 6, dtype=torch.float64), torch.randn(3, 6, 6, dtype=torch.float64)
    q, k = x @ wq[:, None], x @ wk[:, None]
    want = ((q @ k.transpose(-1, -2) - 0.5 * k.pow(2).sum(-1)[..., None, :]) / math.sqrt(6)).softmax(-1)
    assert torch.allclose(gdd.attention(x, wq, wk, "gaussian", math.sqrt(6)), want, atol=1e-12)


def test_zero_padding_to_a_larger_width_changes_nothing_and_stays_zero_under_gd():
    d, width, trials = 3, 8, 2
    cells = gdd.draw_cells(5, [d], 2, 3, trials)
    x, teacher, starts = cells[0]
    for kernel in gdd.KERNELS:
        y = gdd.forward(x[None], *teacher, kernel, math.sqrt(d)).expand(trials, -1, -1)
        xs = x[None].expand(trials, -1, -1, -1)
        plain = gdd.gd(xs, y, starts, kernel, math.sqrt(d), 5, 0.1)
        padded = [gdd.pad(w, width, 2 - (i == 2)) for i, w in enumerate(starts)]
        assert float(padded[0][:, d:].abs().sum() + padded[0][:, :, d:].abs().sum()) == 0.0
        wide = gdd.gd(gdd.pad(xs, width, 1), y, padded, kernel, math.sqrt(d), 5, 0.1)
        assert torch.allclose(plain, wide, rtol=1e-10)


def test_gd_from_the_teacher_stays_at_the_global_optimum_and_gd_lowers_the_loss():
    cells = gdd.draw_cells(1, [4], 3, 4, 3)
    x, teacher, starts = cells[0]
    y = gdd.forward(x[None], *teacher, "softmax", 2.0)
    assert float(gdd.gd(x[None], y, teacher, "softmax", 2.0, 3, 0.2)[0]) == pytest.approx(0.0, abs=1e-25)
    xs, ys = x[None].expand(3, -1, -1, -1), y.expand(3, -1, -1)
    before = gdd.gd(xs, ys, starts, "softmax", 2.0, 0, 0.2)
    after = gdd.gd(xs, ys, starts, "softmax", 2.0, 50, 0.2)
    assert bool((after < before).all())


def test_wilson_interval_by_hand():
    lo, hi = gdd.wilson(8, 16)  # p = 0.5: centre 0.5, half-width 1.96 sqrt(1/64 + 1.96^2/1024) / (1 + 1.96^2/16)
    half = 1.96 * math.sqrt(0.25 / 16 + 1.96**2 / (4 * 256)) / (1 + 1.96**2 / 16)
    assert (lo, hi) == pytest.approx((0.5 - half, 0.5 + half), rel=1e-12)
    assert gdd.wilson(0, 16)[0] == 0.0 and gdd.wilson(16, 16)[1] == 1.0


def test_benchmark_reports_fractions_per_kernel_and_dimension_and_is_seeded():
    params = {"dims": [2, 4], "trials": 3, "steps": 5, "threads": 1}
    metrics, rows = gdd.run_benchmark(params, seed=0)
    for k in gdd.KERNELS:
        for d in (2, 4):
            assert 0.0 <= metrics[f"frac_{k}_D{d}"] <= 1.0
            assert metrics[f"frac_{k}_D{d}"] * 3 == pytest.approx(round(metrics[f"frac_{k}_D{d}"] * 3))
        assert metrics[f"frac_{k}_mean"] == pytest.approx((metrics[f"frac_{k}_D2"] + metrics[f"frac_{k}_D4"]) / 2)
        assert metrics[f"frac_{k}_lo"] <= metrics[f"frac_{k}_mean"] <= metrics[f"frac_{k}_hi"]
    assert [r["D"] for r in rows] == [2, 4] and "reached_gaussian" in rows[0]
    again, _ = gdd.run_benchmark(params, seed=0)
    other, _ = gdd.run_benchmark(params, seed=1)
    assert again == metrics and other["rel_loss_median_softmax_D2"] != metrics["rel_loss_median_softmax_D2"]
    # a tolerance no start can miss: every start counts as reaching it
    assert gdd.run_benchmark({**params, "tol": 1e9}, seed=0)[0]["frac_softmax_mean"] == 1.0


# --------------------------------------------------------------------------- ReLA: null attention per head


def _rela_attention_one_dead_head() -> Attention:
    """Width 4, 2 heads of 2, no RoPE: head 0 has k = -q (logits -x_i.x_j < 0 for positive inputs: every
    query attends to nothing), head 1 has k = q (logits > 0: no weight is 0)."""
    att = Attention(4, 2, 8, "rela", None, None)
    eye = torch.eye(4)
    with torch.no_grad():
        att.qkv.weight.copy_(torch.cat([eye, torch.diag(torch.tensor([-1.0, -1.0, 1.0, 1.0])), eye]))
    return att


def test_attention_counts_null_rows_per_head_by_hand():
    att = _rela_attention_one_dead_head()
    assert isinstance(att.norm, ReLA)
    att.train()(torch.rand(3, 5, 4) + 0.1)  # positive inputs
    assert att.stats["null_heads"].tolist() == [1.0, 0.0]
    assert float(att.stats["null_rows"]) == 0.5
    assert float(att.stats["zero_frac"]) == pytest.approx(0.5)  # head 0's weights are all 0, head 1's none


def test_head_stats_take_the_most_null_head_that_still_attends():
    model = Decoder((8,), 5, d=8, layers=2, heads=2, attention="rela")
    assert model.head_stats() == {}  # nothing measured before a training batch
    model.train()(torch.randint(0, 5, (2, 8)))
    model.blocks[0].attn.stats["null_heads"] = torch.tensor([0.0, 0.3])
    model.blocks[1].attn.stats["null_heads"] = torch.tensor([1.0, 0.5])
    assert model.head_stats() == {"attn_null_head_max": 0.5, "attn_dead_head_frac": 0.25}
    for block in model.blocks:
        block.attn.stats["null_heads"] = torch.tensor([1.0, 1.0])
    assert model.head_stats() == {"attn_null_head_max": 0.0, "attn_dead_head_frac": 1.0}


def test_relu_attention_at_initialisation_is_null_mostly_where_few_keys_are_attended():
    torch.manual_seed(0)
    model = Decoder((16,), 5, d=16, layers=1, heads=2, attention="rela")
    model.train()(torch.randint(0, 5, (64, 16)))
    null = model.blocks[0].attn.stats["null_heads"]
    # a row is null when all of its i + 1 logits are negative: about sum_i 2^-(i+1) / 16 = 1/16 of the rows
    assert float(null.mean()) == pytest.approx(1 / 16, abs=0.03)
    stats = model.head_stats()
    assert 0.0 < stats["attn_null_head_max"] < 0.2 and stats["attn_dead_head_frac"] == 0.0


def test_final_lm_metrics_include_the_per_head_null_measures():
    torch.manual_seed(0)
    model = Decoder((4,), 5, d=8, layers=1, heads=2, attention="rela")
    model.train()(torch.randint(0, 5, (4, 4)))
    stream = torch.randint(0, 5, (1, 65))
    out = evaluate_lm(model, None, stream[:, :-1], stream[:, 1:], final=True)
    assert {"final_attn_null_head_max", "final_attn_dead_head_frac", "final_attn_zero_frac"} <= set(out)


# --------------------------------------------------------------------------- the specs


def test_rela_spec_shares_its_softmax_run_and_measures_its_initialisation_at_lr_zero():
    from softrepro.optim import warmup
    from softrepro.spec import load_paper, repo_root, resolve_experiment, run_key

    paper = load_paper(repo_root() / "configs/papers/zhang2021-rela.yaml", check_names=False)
    wortsman = load_paper(repo_root() / "configs/papers/wortsman2023-small-scale-proxies.yaml", check_names=False)
    for scale in ("smoke", "cpu", "paper"):  # the run of Wortsman et al.'s sweep at 3e-3: it costs nothing extra
        softmax = resolve_experiment(paper.experiments["softmax"], scale)
        assert run_key(softmax) == run_key(resolve_experiment(wortsman.experiments["lr-softmax-3e-3"], scale))
        rela = resolve_experiment(paper.experiments["rela"], scale)  # and ReLA differs from it in the attention only
        assert {**rela, "model": {**rela["model"], "attention": "softmax"}, "description": None, "deviations": None} == \
            {**softmax, "description": None, "deviations": None}
    init = resolve_experiment(paper.experiments["rela-init"], "cpu")
    trained = resolve_experiment(paper.experiments["rela"], "cpu")
    assert init["steps"] == 1 and init["model"] == trained["model"] and init["optimizer"] == trained["optimizer"]
    # the warm-up's factor at step 0 is start / lr, and start defaults to 0: the only step moves nothing, the
    # weights stay at their initialisation (softrepro.optim.warmup)
    sched = init["schedule"]
    start = sched.get("start", inspect.signature(warmup).parameters["start"].default)
    assert sched["name"] == "warmup" and sched["warmup"] > 0 and start == 0.0
