"""The Triton GPU kernels, run on the CPU through Triton's interpreter (``make test-triton``).

They are checked against float64 references and against torch: softmax in its three variants, top-K
and the three softmax + top-K variants, and the FlashAttention-2-style kernel in its softmax and
sigmoid variants (masking, causal, sequence lengths that are not a multiple of the block); then each
GPU benchmark runs end to end on the CPU (its times mean nothing there).  ``make test`` leaves them out:
triton is an optional extra that the CPU install does not have.
"""
import math
import os

import pytest
import torch

pytestmark = pytest.mark.triton
pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("the Triton kernels run on the CPU only under TRITON_INTERPRET=1 (make test-triton)", allow_module_level=True)

from softrepro.methods.kernels import _triton_attention as ta  # noqa: E402
from softrepro.methods.kernels import _triton_softmax as ts  # noqa: E402
from softrepro.registry import BENCHMARKS, load_methods  # noqa: E402


def rows(shape, scale=10.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) * 2 - 1) * scale


# V = 1 (one element), 63 (one block, masked lanes), 5000 (two blocks of 4,096: the cross-block merge)
@pytest.mark.parametrize("V", [1, 63, 5000])
@pytest.mark.parametrize("variant", ["naive", "safe", "online"])
def test_softmax_variants_match_float64(V, variant):
    x = rows((3, V))
    y = ts.softmax(x, variant)
    assert torch.allclose(y.double(), torch.softmax(x.double(), 1), rtol=1e-5, atol=1e-7)


@pytest.mark.filterwarnings("ignore:overflow encountered in exp", "ignore:invalid value encountered")  # the naive kernel's, on purpose
@pytest.mark.parametrize("variant", ["safe", "online"])
def test_safe_and_online_survive_logits_that_overflow_the_naive_kernel(variant):
    x = rows((2, 300), scale=1000.0)  # exp(1000) overflows float32
    assert not torch.isfinite(ts.softmax(x, "naive")).all()
    assert torch.allclose(ts.softmax(x, variant).double(), torch.softmax(x.double(), 1), atol=1e-6)


def test_online_rescaling_when_the_maximum_arrives_late():
    # an increasing row: every block raises the running maximum, so every lane rescales its sum
    x = torch.linspace(-50, 50, 9000).repeat(2, 1).contiguous()
    assert torch.allclose(ts.softmax(x, "online").double(), torch.softmax(x.double(), 1), atol=1e-7)


@pytest.mark.parametrize("V,k", [(3, 3), (63, 5), (5000, 5), (9000, 8)])
def test_topk_matches_torch(V, k):
    x = rows((4, V), seed=V)
    vals, idx = ts.topk(x, k)
    ref_vals, ref_idx = torch.topk(x, k, dim=1)
    assert torch.equal(idx, ref_idx) and torch.equal(vals, ref_vals)


def test_topk_ties_keep_the_lower_index_first():
    x = torch.zeros((1, 5000))
    x[0, [4999, 7, 4100]] = 1.0  # the same value in both blocks of the row
    _, idx = ts.topk(x, 3)
    assert idx.tolist() == [[7, 4100, 4999]]


@pytest.mark.parametrize("variant", ["safe_topk_unfused", "safe_topk_fused", "online_topk_fused"])
@pytest.mark.parametrize("V", [63, 5000])
def test_softmax_topk_variants_give_the_largest_probabilities(variant, V):
    x = rows((3, V), seed=1)
    probs, idx = ts.softmax_topk(x, 5, variant)
    ref_probs, ref_idx = torch.topk(torch.softmax(x.double(), 1), 5, dim=1)
    assert torch.equal(idx, ref_idx)
    assert torch.allclose(probs.double(), ref_probs, rtol=1e-5, atol=1e-9)


def test_softmax_rejects_a_non_float32_input():
    with pytest.raises(ValueError, match="float32"):
        ts.softmax(torch.zeros((2, 3), dtype=torch.float64))


@pytest.mark.parametrize("normalisation", ["softmax", "sigmoid"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n", [16, 50])  # 50: the last query and key blocks are partly masked
def test_attention_kernel_matches_float64(normalisation, causal, n):
    g = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn((2, n, 16), generator=g) for _ in range(3))
    out = ta.attention(q, k, v, normalisation, causal=causal, bias=-math.log(n), block_m=16, block_n=16)
    ref = ta.reference(q, k, v, normalisation, causal=causal, bias=-math.log(n))
    assert torch.allclose(out.double(), ref, atol=2e-6)


def test_sigmoid_attention_is_not_normalised_over_keys():
    q = torch.zeros((1, 32, 16))
    k = torch.zeros((1, 32, 16))
    v = torch.ones((1, 32, 16))
    # every score is 0, so every weight is sigmoid(0) = 1/2 and the output is 32 / 2 = 16
    out = ta.attention(q, k, v, "sigmoid", block_m=16, block_n=16)
    assert torch.allclose(out, torch.full_like(out, 16.0))
    assert torch.allclose(ta.attention(q, k, v, "softmax", block_m=16, block_n=16), v)


def test_attention_rejects_a_head_dim_triton_cannot_tile():
    x = torch.zeros((1, 8, 12))
    with pytest.raises(ValueError, match="power of two"):
        ta.attention(x, x, x)


def test_online_softmax_gpu_benchmark_end_to_end_in_the_interpreter():
    load_methods()
    metrics, out = BENCHMARKS.get("online_softmax_gpu")({"device": "cpu", "batch_size": 3, "v_start": 63, "v_max": 300, "repeats": 2}, 0)
    assert [r["V"] for r in out] == [63, 126, 252] * 2
    assert metrics["n_sizes"] == 3 and metrics["topk_index_mismatch_online_topk_fused"] == 0.0
    assert metrics["max_abs_err_online"] < 1e-6
    assert {"t_online", "t_torch_softmax", "t_copy", "softmax_speedup", "topk_speedup", "roofline_online"} <= set(out[0])


def test_flash_sigmoid_benchmark_end_to_end_in_the_interpreter():
    load_methods()
    params = {"device": "cpu", "grid": [[1, 48]], "head_dims": [16], "width": 32, "dtype": "float32", "repeats": 1}
    metrics, out = BENCHMARKS.get("flash_sigmoid")(params, 0)
    assert [(r["n"], r["mask"]) for r in out] == [(48, "full"), (48, "causal")]
    assert {"fwd_speedup_full", "fwd_speedup_causal", "fwd_speedup_vs_sdpa_full"} <= set(metrics)
    assert max(v for key, v in metrics.items() if key.startswith("max_abs_err")) < 1e-5
