"""Kernelized attention with positive random features (``prf``), with and without relative-position weights
exp(b_{j-i}) (Luo et al. 2021, arXiv 2106.12566, Eqs. 5 and 10): against a hand computation of
phi(Q) phi(K)^T o exp(B) o causal mask with its rows normalised, against kernelized_rpe's reference, and
causal inside the decoder."""
import math

import pytest
import torch
import torch.nn.functional as F

from softrepro.methods.attention import normalisations as N
from softrepro.methods.attention.decoder import Attention, Decoder
from softrepro.methods.attention.kernelized_rpe import prf, rpe_attention_weights_prf

HEADS, WIDTH, CONTEXT = 1, 2, 4  # head dimension 2


def weights(norm, q, k):
    t, s = q.shape[-2], k.shape[-2]
    mask, n = N.attended(t, s)
    return norm(norm.log_kernel(q, k), mask, n.to(q.dtype))


def test_hand_computed_case_with_causal_mask_and_rpe():
    """m = 2 features W = [[1, 0], [0, 1]], three tokens: phi(x) = exp(x - |x|^2 / 2) / sqrt(2) per coordinate."""
    torch.manual_seed(0)
    norm = N.make({"name": "prf", "features": 2, "rpe": True}, heads=HEADS, width=WIDTH, context=CONTEXT).double()
    norm.w.copy_(torch.eye(2, dtype=torch.float64))
    with torch.no_grad():  # b_{j-i} for j - i = -2, -1, 0 (offsets of earlier keys); index context - 1 + (j - i)
        norm.b[0, CONTEXT - 1 - 2], norm.b[0, CONTEXT - 1 - 1], norm.b[0, CONTEXT - 1] = 0.5, -1.0, 0.25
        norm.b[0, CONTEXT:] = 7.0  # future offsets: masked, must not matter
    x = [[0.0, 0.0], [1.0, 0.0], [0.5, -1.0]]
    q = torch.tensor(x, dtype=torch.float64)
    k = torch.tensor([[1.0, 1.0], [0.0, 2.0], [-1.0, 0.5]], dtype=torch.float64)

    def phi(v):
        sq = sum(c * c for c in v)
        return [math.exp(c - sq / 2) / math.sqrt(2) for c in v]

    b = {0: 0.25, -1: -1.0, -2: 0.5}
    expect = torch.zeros(3, 3, dtype=torch.float64)
    for i in range(3):
        row = [sum(a * c for a, c in zip(phi(x[i]), phi(k[j].tolist()))) * math.exp(b[j - i]) for j in range(i + 1)]
        for j, r in enumerate(row):
            expect[i, j] = r / sum(row)
    w = weights(norm, q[None, None], k[None, None])[0, 0]
    assert torch.allclose(w, expect, atol=0, rtol=1e-12)
    assert torch.allclose(w.sum(-1), torch.ones(3, dtype=torch.float64))
    assert expect[0, 0] == 1 and (w.triu(1) == 0).all()


@pytest.mark.parametrize("t, s", [(6, 6), (3, 6)])  # square, and queries that are the last t of s positions
def test_equals_kernelized_rpe_reference_rows_sum_to_one(t, s):
    torch.manual_seed(1)
    norm = N.make({"name": "prf", "features": 16, "rpe": True}, heads=2, width=8, context=8).double()
    with torch.no_grad():
        norm.b.normal_()
    q, k = torch.randn(2, 2, t, 4, dtype=torch.float64), torch.randn(2, 2, s, 4, dtype=torch.float64)
    w = weights(norm, q, k)
    qfull = torch.cat([torch.randn(2, 2, s - t, 4, dtype=torch.float64), q], -2)  # the reference is square: last t rows
    for h in range(2):
        bh = norm.b[h, 8 - s : 8 + s - 1].detach()  # offsets -(s-1) .. s-1, kernelized_rpe's layout
        ref = rpe_attention_weights_prf(prf(qfull[:, h], norm.w), prf(k[:, h], norm.w), bh, causal=False)[:, s - t :]
        mask, _ = N.attended(t, s)
        ref = ref * mask  # the causal rows: renormalise over the attended keys
        ref = ref / ref.sum(-1, keepdim=True)
        if t == s:  # the module's own causal path agrees too
            assert torch.allclose(ref, rpe_attention_weights_prf(prf(q[:, h], norm.w), prf(k[:, h], norm.w), bh, causal=True),
                                  rtol=1e-10, atol=1e-14)
        assert torch.allclose(w[:, h], ref, rtol=1e-10, atol=1e-14)
    assert torch.allclose(w.sum(-1), torch.ones_like(w.sum(-1)))


def test_rpe_with_b_zero_equals_plain_and_large_inputs_stay_finite():
    torch.manual_seed(2)
    plain = N.make({"name": "prf", "features": 8}, heads=2, width=8, context=8)
    rpe = N.make({"name": "prf", "features": 8, "rpe": True}, heads=2, width=8, context=8)
    rpe.w.copy_(plain.w)
    assert plain.b is None and (rpe.b == 0).all()
    q, k = torch.randn(3, 2, 8, 4), torch.randn(3, 2, 8, 4)
    assert torch.equal(weights(plain, q, k), weights(rpe, q, k))
    w = weights(plain, 30 * q, 30 * k)  # every kernel value far below float32's range: still finite rows summing to 1
    assert torch.isfinite(w).all() and torch.allclose(w.sum(-1), torch.ones(3, 2, 8))


def test_log_kernel_is_log_of_feature_products():
    torch.manual_seed(3)
    norm = N.make({"name": "prf", "features": 5}, heads=1, width=3)
    q, k = torch.randn(4, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    norm.double()
    assert torch.allclose(norm.log_kernel(q, k), torch.log(prf(q, norm.w) @ prf(k, norm.w).T), rtol=1e-12)


def test_offsets_beyond_the_context_share_the_outermost_b():
    norm = N.make({"name": "prf", "rpe": True}, heads=1, width=2, context=3)
    with torch.no_grad():
        norm.b.copy_(torch.arange(5.0))  # offsets -2 .. 2
    off = norm.offsets(6, 6)[0]
    assert off[5, 0] == 0 and off[5, 3] == 0 and off[5, 4] == 1 and off[5, 5] == 2 and off[0, 5] == 4


def test_decoder_is_causal_and_feeds_scaled_or_unit_norm_queries():
    for cfg in ({"name": "prf", "features": 32}, {"name": "prf", "features": 32, "rpe": True, "normalise": True}):
        torch.manual_seed(4)
        model = Decoder((8,), 11, d=16, layers=2, heads=2, attention=cfg).eval()
        with torch.no_grad():
            for blk in model.blocks:
                if blk.attn.norm.b is not None:
                    blk.attn.norm.b.normal_()
        ids = torch.randint(0, 11, (2, 8))
        changed = ids.clone()
        changed[:, 5:] = (ids[:, 5:] + 1) % 11
        a, b = model(ids), model(changed)
        assert torch.isfinite(a).all()
        assert torch.allclose(a[:, :5], b[:, :5], atol=1e-6) and not torch.allclose(a[:, 5:], b[:, 5:])
    # what the Attention hands the kernel: q, k scaled by d_h^(-1/4) each (estimating exp(q·k / sqrt(d_h))), or unit rows
    torch.manual_seed(5)
    att = Attention(8, 2, 8, {"name": "prf", "features": 4}, None, None)
    q, k = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    got = att.logits(q, k, kernel=att.norm.log_kernel)
    assert torch.allclose(got, att.norm.log_kernel(q / 4 ** 0.25, k / 4 ** 0.25), atol=1e-6)
    att = Attention(8, 2, 8, {"name": "prf", "features": 4, "normalise": True}, None, None)
    got = att.logits(q, k, cosine=att.norm.cosine_logits, kernel=att.norm.log_kernel)
    assert torch.allclose(got, att.norm.log_kernel(F.normalize(q, dim=-1), F.normalize(k, dim=-1)), atol=1e-6)


def test_projection_is_a_buffer_from_the_init_rng_and_training_runs():
    torch.manual_seed(6)
    m1 = Decoder((8,), 11, d=16, layers=1, heads=2, attention={"name": "prf", "features": 4, "rpe": True})
    torch.manual_seed(6)
    m2 = Decoder((8,), 11, d=16, layers=1, heads=2, attention={"name": "prf", "features": 4, "rpe": True})
    assert torch.equal(m1.blocks[0].attn.norm.w, m2.blocks[0].attn.norm.w)
    assert "blocks.0.attn.norm.w" in m1.state_dict() and "blocks.0.attn.norm.w" not in dict(m1.named_parameters())
    assert m1.blocks[0].attn.norm.w.shape == (4, 8)
    m1.train()
    loss = F.cross_entropy(m1(torch.randint(0, 11, (2, 8))).flatten(0, 1), torch.randint(0, 11, (16,)))
    loss.backward()
    assert m1.blocks[0].attn.norm.b.grad.abs().sum() > 0
    assert m1.log_stats()["attn_entropy_min"] >= 0


@pytest.mark.parametrize("cfg, words", [
    ({"name": "prf", "features": 0}, "features must be a positive integer"),
    ({"name": "prf", "features": 2.5}, "features must be a positive integer"),
    ({"name": "prf", "rpe": "yes"}, "must be true or false"),
    ({"name": "prf", "kernel": "exp"}, "unexpected keyword"),
])
def test_bad_parameters(cfg, words):
    with pytest.raises(ValueError, match=words):
        N.make(cfg, heads=2, width=8, context=8)


def test_bad_shapes_and_missing_context():
    with pytest.raises(ValueError, match="multiple of heads"):
        N.make("prf", heads=3, width=8)
    with pytest.raises(ValueError, match="needs the training context"):
        N.make({"name": "prf", "rpe": True}, heads=2, width=8)
    with pytest.raises(ValueError, match="cannot feed"):
        Attention(8, 2, 8, {"name": "prf", "normalise": True}, "l2", None)
