"""Linear cross-entropy without the N x V logits: the chunked version against the plain formula."""
import pytest
import torch

from softrepro.methods.kernels import linear_ce as L
from softrepro.registry import NotRun


def _data(n=300, d=16, v=50, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(n, d, generator=g, dtype=dtype) * 2
    c = torch.randn(v, d, generator=g, dtype=dtype)
    return e, c, torch.randint(0, v, (n,), generator=g)


def _formula(e, c, t, softcap):
    """loss_i = LSE_j s(c_j . e_i) - s(c_{y_i} . e_i), averaged, written out in float64."""
    z = (e @ c.T).double()
    if softcap:
        z = softcap * torch.tanh(z / softcap)
    return (torch.logsumexp(z, 1) - z[torch.arange(len(t)), t]).mean()


@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_chunked_loss_and_gradients_match_the_formula(softcap, chunk):
    e, c, t = _data()
    e1, c1 = e.clone().requires_grad_(), c.clone().requires_grad_()
    ref = _formula(e1, c1, t, softcap)
    ref.backward()
    e2, c2 = e.clone().requires_grad_(), c.clone().requires_grad_()
    loss = L.chunked_linear_cross_entropy(e2, c2, t, softcap, chunk)
    loss.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    assert torch.allclose(e2.grad, e1.grad, atol=1e-6) and torch.allclose(c2.grad, c1.grad, atol=1e-6)
    assert L.naive_linear_cross_entropy(e, c, t, softcap).item() == pytest.approx(ref.item(), rel=1e-6)


def test_chunked_runs_in_bfloat16():
    e, c, t = _data(dtype=torch.bfloat16)
    e.requires_grad_(), c.requires_grad_()
    loss = L.chunked_linear_cross_entropy(e, c, t, 30.0, 64)
    loss.backward()
    assert e.grad.dtype == torch.bfloat16 and c.grad.dtype == torch.bfloat16
    assert loss.item() == pytest.approx(_formula(e.detach().double(), c.detach().double(), t, 30.0).item(), rel=2e-2)


def test_gpu_benchmark_without_a_gpu_is_not_run():
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    with pytest.raises(NotRun, match="needs a GPU"):
        L.run_benchmark({"device": "cuda", "n": 8, "d": 4, "v": 10}, 0)


def test_a_missing_peer_library_is_not_run(monkeypatch):
    import builtins

    real = builtins.__import__

    def fake(name, *a, **k):
        if name.startswith("cut_cross_entropy"):
            raise ImportError("No module named 'cut_cross_entropy'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(NotRun, match="cut-cross-entropy"):
        L._impl("cce", None, 8)


def test_cpu_benchmark_measures_less_memory_for_the_chunked_loss():
    metrics, rows = L.run_benchmark({"device": "cpu", "n": 1024, "d": 64, "v": 8000, "dtype": "float32", "softcap": 30.0,
                                     "chunk": 128, "repeats": 1, "warmup": 0}, 0)
    assert metrics["loss_abs_diff_chunked"] < 1e-4
    assert metrics["grad_cosine_e_chunked"] > 0.999999 and metrics["grad_cosine_c_chunked"] > 0.999999
    # the baseline holds 1024 x 8000 float32 logits (31 MiB) at least once; the chunked loss 128 x 8000 (4 MiB)
    assert metrics["memory_MB_loss_torch"] > 31 > metrics["memory_MB_loss_chunked"]
    assert metrics["memory_ratio_loss_chunked"] > 2
    assert {r["impl"] for r in rows} == {"torch", "chunked"}
