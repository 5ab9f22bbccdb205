"""The small ViT (methods/attention/vit.py): patches, shapes, non-causal attention, the relu/seqlen
normalisation reaching its blocks, and the Wortsman et al. 2023 ReLU-ViT spec's runs at cpu."""
import pytest
import torch

from softrepro.methods.attention import normalisations as N
from softrepro.methods.attention.vit import ViT
from softrepro.registry import MODELS

RELU1 = {"name": "relu", "h": "relu", "alpha": 1.0}


def _model(patch=7, attention=RELU1, **kw):
    torch.manual_seed(0)
    return ViT((1, 28, 28), 10, patch=patch, d=16, layers=2, heads=2, mlp_ratio=2, attention=attention, **kw).eval()


@pytest.mark.parametrize("patch, tokens", [(7, 16), (4, 49), (14, 4)])
def test_shapes_and_token_count(patch, tokens):
    m = _model(patch)
    x = torch.rand(3, 1, 28, 28)
    assert m.tokens == tokens and m.pos.shape == (1, tokens, 16)
    assert m.patches(x).shape == (3, tokens, patch * patch)
    assert m.features(x).shape == (3, tokens, 16)
    assert m(x).shape == (3, 10)


def test_patches_are_row_major_blocks():
    m = _model(7)
    x = torch.arange(28 * 28, dtype=torch.float32).view(1, 1, 28, 28)
    p = m.patches(x)
    assert torch.equal(p[0, 0], x[0, 0, :7, :7].flatten())
    assert torch.equal(p[0, 1], x[0, 0, :7, 7:14].flatten())  # second patch of the first row
    assert torch.equal(p[0, 4], x[0, 0, 7:14, :7].flatten())  # first patch of the second row


def test_a_bad_patch_or_input_is_refused():
    with pytest.raises(ValueError, match="does not divide"):
        ViT((1, 28, 28), 10, patch=5)
    with pytest.raises(ValueError, match="images"):
        ViT((784,), 10)


def test_the_blocks_use_the_chosen_normalisation_without_mask_or_rope():
    m = _model(4, attention={"name": "relu", "h": "gelu", "alpha": 0.5})
    for block in m.blocks:
        assert isinstance(block.attn.norm, N.PointwiseOverLength) and block.attn.norm.alpha == 0.5
        assert block.attn.causal is False and block.attn.rope_theta is None
    assert isinstance(_model(4, attention="softmax").blocks[0].attn.norm, N.Softmax)


@pytest.mark.parametrize("attention", ["softmax", RELU1])
def test_attention_is_not_causal(attention):
    """A change in the last patch reaches the first token's output (a causal model would hide it)."""
    m = _model(7, attention)
    x = torch.rand(1, 1, 28, 28)
    y = x.clone()
    y[..., 21:, 21:] += 1.0  # only the last patch
    fx, fy = m.features(x), m.features(y)
    assert not torch.allclose(fx[0, 0], fy[0, 0], atol=1e-6)


def test_permutation_equivariant_up_to_position_embeddings():
    """With the position embedding permuted along with the patches, the tokens come out permuted: the
    blocks see a set (no mask, no RoPE), and the pooled output does not change."""
    m = _model(7)
    with torch.no_grad():
        m.pos.normal_(0, 1.0)  # make the position embedding matter
    x = torch.rand(2, 1, 28, 28)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(1))
    t = m.embed(m.patches(x)) + m.pos
    tp = t[:, perm]
    out, outp = t, tp
    for block in m.blocks:
        out, outp = block(out), block(outp)
    assert torch.allclose(outp, out[:, perm], atol=1e-5)
    assert torch.allclose(m.head(m.ln_f(outp).mean(1)), m(x), atol=1e-5)
    # the position embedding is what breaks it: permuting the patches alone changes the output
    xp = m.patches(x)[:, perm]
    t2 = m.embed(xp) + m.pos
    for block in m.blocks:
        t2 = block(t2)
    assert not torch.allclose(m.head(m.ln_f(t2).mean(1)), m(x), atol=1e-4)


def test_relu_over_length_is_n_to_the_minus_alpha_times_relu():
    """The weights the ViT's attention forms: L^-alpha relu(q.k / sqrt(d_h)) with L the token count."""
    m = _model(4, attention={"name": "relu", "h": "relu", "alpha": 1.0})
    attn = m.blocks[0].attn
    x = torch.randn(1, m.tokens, 16)
    q, k, _ = attn.qkv(x).view(1, m.tokens, 3, 2, 8).permute(2, 0, 3, 1, 4)
    z = attn.logits(q, k)
    mask, n = N.attended(m.tokens, causal=False)
    w = attn.norm(z, mask, n)
    assert torch.allclose(w, torch.relu(q @ k.transpose(-1, -2) / 8**0.5) / 49, atol=1e-7)


def test_registered():
    assert isinstance(MODELS.get("vit")(in_shape=(1, 28, 28), n_classes=10, patch=4, d=8, heads=2), ViT)


def test_spec_runs_at_cpu():
    from softrepro.spec import load_paper, repo_root, resolve_experiment

    paper = load_paper(repo_root() / "configs/papers/wortsman2023-relu-vit.yaml")
    planned = {}
    for name, exp in paper.experiments.items():
        r = resolve_experiment(exp, "cpu")
        if not r.get("grid_cut") and not r.get("skip"):
            planned[name] = r
    assert set(planned) == {f"vit-{a}-p7" for a in ("softmax", "relu-a0", "relu-a1", "relu-a2")}  # patch 7 only
    assert planned["vit-relu-a1-p7"]["model"]["attention"] == {"name": "relu", "h": "relu", "alpha": 1.0}
    assert planned["vit-relu-a1-p7"]["model"]["patch"] == 7 and planned["vit-relu-a1-p7"]["steps"] == 469
    assert len(paper.experiments) == 52  # 26 attention settings x 2 patch sizes at paper scale
    for claim in paper.claims:  # every claim's arms exist; the patch-7 relu/softmax ones are in the cpu grid
        arms = set(claim["experiments"].values())
        assert arms <= set(paper.experiments)
        if "-p4" in claim["id"]:
            assert not arms <= set(planned)
        else:
            assert arms <= set(planned)


def test_vit_without_layernorm_and_with_sigma_reparam():
    """layer_norm: false leaves no LayerNorm; sigma_reparam: true reparametrises every linear layer and,
    with γ from σ(W_init), computes the same function at initialisation."""
    from torch.nn.utils import parametrize

    torch.manual_seed(0)
    bare = ViT((1, 28, 28), 10, patch=7, d=16, layers=2, heads=2, layer_norm=False).eval()
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in bare.modules())
    torch.manual_seed(0)
    sr = ViT((1, 28, 28), 10, patch=7, d=16, layers=2, heads=2, layer_norm=False, sigma_reparam=True).eval()
    linears = [m for m in sr.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(parametrize.is_parametrized(m, "weight") for m in linears)
    x = torch.rand(3, 1, 28, 28)
    assert torch.allclose(sr(x), bare(x), atol=1e-4)
