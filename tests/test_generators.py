import numpy as np
import pytest

from softrepro.registry import GENERATORS


def test_modular_arithmetic_is_every_pair_once_with_the_right_labels():
    d = GENERATORS.get("modular_arithmetic")(seed=0, p=7, op="add", train_fraction=0.4)
    (xtr, ytr), (xte, yte) = d["train"], d["test"]
    assert len(ytr) == int(0.4 * 49) and len(ytr) + len(yte) == 49
    x, y = np.concatenate([xtr, xte]), np.concatenate([ytr, yte])
    assert x.shape == (49, 14) and (x.sum(1) == 2).all()
    a, b = x[:, :7].argmax(1), x[:, 7:].argmax(1)
    assert len({(i, j) for i, j in zip(a, b)}) == 49  # every pair exactly once
    assert ((a + b) % 7 == y).all()
    sub = GENERATORS.get("modular_arithmetic")(seed=0, p=7, op="sub")
    xs, ys = sub["train"]
    assert ((xs[:, :7].argmax(1) - xs[:, 7:].argmax(1)) % 7 == ys).all()


def test_modular_arithmetic_split_depends_on_the_seed_only():
    g = GENERATORS.get("modular_arithmetic")
    a, b, c = g(seed=1, p=11), g(seed=1, p=11), g(seed=2, p=11)
    assert np.array_equal(a["train"][0], b["train"][0]) and not np.array_equal(a["train"][0], c["train"][0])
    with pytest.raises(ValueError, match="unknown op"):
        g(seed=0, p=5, op="div")
