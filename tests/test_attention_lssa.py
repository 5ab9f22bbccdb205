"""LSSA and LSSAR (Gao & Spratling 2025, arXiv 2501.13428) against their formulas: per position (n = the keys
each query attends), with the causal mask, on hand-computed rows, and fed the cosine of q and k by the decoder."""
import math

import pytest
import torch
import torch.nn.functional as F

from softrepro.methods.attention import normalisations as N
from softrepro.methods.attention.decoder import Attention, Decoder

HEADS, WIDTH = 2, 8  # head dimension d = 4


@pytest.fixture
def cosines():
    g = torch.Generator().manual_seed(0)
    return 2 * torch.rand(2, HEADS, 5, 9, generator=g, dtype=torch.float64) - 1


def lssa_row(c, n):
    """Softplus(log d log n c) / its l1 norm, one row of the attended keys."""
    a = F.softplus(math.log(WIDTH // HEADS) * math.log(n) * c)
    return a / a.sum(-1, keepdim=True)


def lssar_row(c, n, p):
    """ReLU(n A - O)^p / its l1 norm, O = 0 for the first 3 rows (n <= 3) and 1 after; no rescaling."""
    r = torch.relu(n * lssa_row(c, n) - (1.0 if n > 3 else 0.0)) ** p
    return r / r.sum(-1, keepdim=True)


def by_rows(z, mask, row):
    out = torch.zeros_like(z)
    for i in range(z.shape[-2]):
        keys = mask[i].nonzero().flatten()
        out[..., i, keys] = row(z[..., i, keys], len(keys))
    return out


@pytest.mark.parametrize("t, s", [(5, 5), (5, 9)])  # square, and 4 earlier keys: n = s - t + i + 1, not the row index
@pytest.mark.parametrize("cfg, row", [
    ("lssa", lssa_row),
    ({"name": "lssar", "p": 3}, lambda c, n: lssar_row(c, n, 3)),
    ({"name": "lssar", "p": 15}, lambda c, n: lssar_row(c, n, 15)),
    ({"name": "lssar"}, lambda c, n: lssar_row(c, n, 15)),  # p = 15 by default
])
def test_each_is_its_formula_per_position_and_zero_where_masked(cosines, t, s, cfg, row):
    z = cosines[..., :t, :s].clone()
    mask, n = N.attended(t, s)
    assert n.flatten().tolist() == [s - t + i + 1 for i in range(t)]
    z[..., ~mask] = 50.0  # what the masked keys hold must not leak in
    w = N.make(cfg, heads=HEADS, width=WIDTH)(z, mask, n.double())
    assert torch.allclose(w, by_rows(z, mask, row), atol=1e-12, rtol=1e-9)
    assert (w[..., ~mask] == 0).all()
    assert torch.allclose(w.sum(-1), torch.ones_like(w.sum(-1)))


def test_hand_computed_rows():
    """d = 4.  n = 2, cosines (1, 0): A = softplus(ln4 ln2 (1, 0)) / sum; LSSAR p = 3 with O = 0 there: A^3 / sum.
    n = 5, cosines (1, .5, 0, -.5, -1): O = 1, so only keys with A > 1/5 survive ReLU(5A - 1)."""
    lssa = N.make("lssa", heads=HEADS, width=WIDTH)
    lssar3 = N.make({"name": "lssar", "p": 3}, heads=HEADS, width=WIDTH)
    lssar15 = N.make({"name": "lssar", "p": 15}, heads=HEADS, width=WIDTH)
    one = torch.ones(1, 2, dtype=torch.bool)
    z2, n2 = torch.tensor([[1.0, 0.0]], dtype=torch.float64), torch.tensor([[2.0]], dtype=torch.float64)
    assert lssa(z2, one, n2).flatten().tolist() == pytest.approx([0.6495681604947212, 0.35043183950527873], abs=1e-12)
    assert lssar3(z2, one, n2).flatten().tolist() == pytest.approx([0.864294287351197, 0.13570571264880302], abs=1e-12)
    all5 = torch.ones(1, 5, dtype=torch.bool)
    z5, n5 = torch.tensor([[1.0, 0.5, 0.0, -0.5, -1.0]], dtype=torch.float64), torch.tensor([[5.0]], dtype=torch.float64)
    assert lssa(z5, all5, n5).flatten().tolist() == pytest.approx(
        [0.4849813250632159, 0.2908102272669188, 0.14407991155107203, 0.058922555196471646, 0.021205980922321604], abs=1e-12)
    assert lssar3(z5, all5, n5).flatten().tolist() == pytest.approx([0.9686580806255074, 0.03134191937449259, 0, 0, 0], abs=1e-12)
    assert lssar15(z5, all5, n5).flatten().tolist() == pytest.approx([0.9999999645370058, 3.5462994222019686e-08, 0, 0, 0],
                                                                     abs=1e-12)


def test_the_first_row_attends_its_one_key_and_a_large_power_tends_to_the_argmax(cosines):
    mask, n = N.attended(5)
    for cfg in ("lssa", {"name": "lssar", "p": 3}):
        assert N.make(cfg, heads=HEADS, width=WIDTH)(cosines[..., :5, :5], mask, n.double())[..., 0, 0].eq(1).all()
    z = cosines[..., :5, :5]
    w = N.make({"name": "lssar", "p": 400}, heads=HEADS, width=WIDTH)(z, mask, n.double())
    best = z.masked_fill(~mask, -2).argmax(-1)  # A is increasing in the cosine
    assert torch.allclose(w, F.one_hot(best, 5).double(), atol=1e-6)


def test_lssar_stays_finite_where_every_kept_value_is_tiny():
    """ReLU(nA - 1)^15 of a nearly uniform row underflows float32 if computed directly (0 / 0)."""
    mask, n = torch.ones(1, 64, dtype=torch.bool), torch.full((1, 1), 64.0)
    z = torch.zeros(1, 1, 1, 64)
    z[..., 0] = 1e-4
    z.requires_grad_()
    a = N.make("lssa", heads=HEADS, width=WIDTH)(z, mask, n)
    assert float((torch.relu(64 * a.detach() - 1) ** 15).sum()) == 0.0  # the direct formula: 0 / 0 in float32
    w = N.make({"name": "lssar", "p": 15}, heads=HEADS, width=WIDTH)(z, mask, n)
    assert torch.isfinite(w).all() and float(w.detach()[..., 0]) == pytest.approx(1.0)
    w[..., 0].sum().backward()
    assert torch.isfinite(z.grad).all()
    w = N.make({"name": "lssar", "p": 15}, heads=HEADS, width=WIDTH)(torch.zeros(1, 1, 1, 64), mask, n)
    assert torch.allclose(w, torch.full_like(w, 1 / 64))  # exactly uniform: nothing above the offset, LSSA's weights kept


def test_the_decoder_feeds_them_the_cosine_of_q_and_k():
    att = Attention(WIDTH, HEADS, 16, "lssa", None, 10000.0)
    seen = []
    forward = att.norm.forward
    att.norm.forward = lambda z, mask, n: seen.append(z) or forward(z, mask, n)
    x = torch.randn(2, 6, WIDTH)
    out = att(x)
    q, k, _ = att.qkv(x).view(2, 6, 3, HEADS, WIDTH // HEADS).permute(2, 0, 3, 1, 4)
    assert torch.allclose(seen[0], att.logits(q, k, cosine=True))
    assert seen[0].abs().max() <= 1 + 1e-6
    assert not torch.allclose(seen[0], att.logits(q, k))  # not q k / sqrt(d)
    with torch.no_grad():
        att.qkv.weight[: 2 * WIDTH] *= 7.0  # scaling q and k leaves their cosine, so the output, unchanged
    assert torch.allclose(att(x), out, atol=1e-5)


@pytest.mark.parametrize("attention", ["lssa", {"name": "lssar", "p": 3}, {"name": "lssar", "p": 15}])
def test_decoder_is_causal_and_trains_with_them(attention):
    torch.manual_seed(0)
    model = Decoder((16,), 11, d=16, layers=2, heads=2, attention=attention).double()
    ids = torch.randint(0, 11, (2, 16))
    changed = ids.clone()
    changed[:, 9:] = (changed[:, 9:] + 1) % 11
    a, b = model.eval()(ids), model(changed)
    assert torch.allclose(a[:, :9], b[:, :9], atol=1e-12) and not torch.allclose(a[:, 9:], b[:, 9:])
    loss = F.cross_entropy(model.train()(ids).flatten(0, 1), changed.flatten())
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_they_reject_what_does_not_fit():
    with pytest.raises(ValueError, match="LSSA needs the model width"):
        N.make("lssa", heads=2)
    with pytest.raises(ValueError, match="power p must be positive"):
        N.make({"name": "lssar", "p": 0}, heads=2, width=8)
    with pytest.raises(ValueError, match="'lssa'.*unexpected keyword"):
        N.make({"name": "lssa", "p": 3}, heads=2, width=8)
    with pytest.raises(ValueError, match="cosine of q and k"):
        Decoder((8,), 5, d=16, heads=2, attention="lssa", qk_norm="l2")
