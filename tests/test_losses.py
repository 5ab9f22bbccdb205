import numpy as np
import pytest
import torch

from softrepro.registry import LOSSES, MODELS


def test_softmax_ce_matches_formula():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 5.0]])
    y = torch.tensor([0, 1])
    p = np.exp(logits.numpy()) / np.exp(logits.numpy()).sum(1, keepdims=True)
    expected = -np.mean(np.log(p[[0, 1], [0, 1]]))
    assert float(LOSSES.get("softmax_ce")()(logits, y, None)) == pytest.approx(expected, rel=1e-6)


def test_l2svm_matches_formula():
    torch.manual_seed(0)
    model = MODELS.get("convnet")(in_shape=(1, 28, 28), n_classes=4, channels=(2,), hidden=8)
    scores = torch.randn(5, 4)
    y = torch.tensor([0, 3, 1, 1, 2])
    C = 2.5
    t = -np.ones((5, 4)); t[np.arange(5), y.numpy()] = 1.0
    hinge = np.maximum(0.0, 1.0 - t * scores.numpy()) ** 2
    w = model.readout.weight.detach().numpy()
    expected = np.mean(w ** 2) + C * np.mean(hinge)
    got = LOSSES.get("l2svm")(C=C)(scores, y, model)
    assert float(got.detach()) == pytest.approx(expected, rel=1e-5)


def test_unknown_names_list_the_known_ones():
    with pytest.raises(KeyError, match="unknown loss 'nope'.*softmax_ce"):
        LOSSES.get("nope")


def test_convnet_shapes():
    m = MODELS.get("convnet")(in_shape=(1, 28, 28), n_classes=10, init="truncnormal")
    assert m(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert m.hidden[0].in_features == 7 * 7 * 64  # the Agarap CNN's flatten size
    assert float(m.readout.bias[0].detach()) == pytest.approx(0.1)
