import numpy as np
import pytest

from softrepro.noise import apply

Y = np.repeat(np.arange(10), 100)


def test_symmetric_flips_exactly_the_rate_to_other_classes():
    y, rec = apply(Y, 10, {"kind": "symmetric", "rate": 0.4}, seed=3)
    assert rec["flipped"] == 400 and rec["realised_rate"] == pytest.approx(0.4)
    changed = y != Y
    assert changed.sum() == 400
    assert len(np.unique(y[changed])) == 10  # spread over the classes


def test_uniform_noise_keeps_some_labels():
    y, rec = apply(Y, 10, {"kind": "uniform", "rate": 0.5}, seed=0)
    assert 0.35 < rec["realised_rate"] < 0.5  # about 0.5 * 9/10


def test_asymmetric_follows_class_map():
    cmap = {7: 1, 2: 7, 5: 6, 6: 5, 3: 8}
    y, rec = apply(Y, 10, {"kind": "asymmetric", "rate": 0.3, "class_map": cmap}, seed=0)
    for src, dst in cmap.items():
        moved = (Y == src) & (y != Y)
        assert moved.sum() == 30 and (y[moved] == dst).all()
    assert ((y != Y) & ~np.isin(Y, list(cmap))).sum() == 0


def test_noise_is_a_function_of_spec_and_seed():
    spec = {"kind": "symmetric", "rate": 0.2}
    a, _ = apply(Y, 10, spec, seed=1)
    b, _ = apply(Y, 10, spec, seed=1)
    c, _ = apply(Y, 10, spec, seed=2)
    assert (a == b).all() and (a != c).any()
    assert apply(Y, 10, None, seed=1)[1]["flipped"] == 0


def test_bad_noise_specs_are_errors():
    with pytest.raises(ValueError, match="class_map"):
        apply(Y, 10, {"kind": "asymmetric", "rate": 0.2}, seed=0)
    with pytest.raises(ValueError, match="unknown noise kind"):
        apply(Y, 10, {"kind": "pairflip", "rate": 0.2}, seed=0)
