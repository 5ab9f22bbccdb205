"""Ma et al. 2020's MNIST network, the ``ToyModel(type='MNIST')`` of their normalized-losses code."""
from __future__ import annotations

import torch
from torch import nn

from softrepro.registry import MODELS


class ToyCNN(nn.Module):
    """Ma et al. 2020's MNIST network (their ``ToyModel(type='MNIST')``): two blocks of
    3x3 'same' conv + BatchNorm + ReLU + 2x2 max-pool (32, 64 channels), a 128-unit dense
    layer with BatchNorm and ReLU, and a linear readout; Kaiming-uniform (fan-in) conv
    weights and Xavier-uniform dense weights, biases left at torch's defaults."""

    def __init__(self, in_shape=(1, 28, 28), n_classes=10, channels=(32, 64), hidden=128):
        super().__init__()
        c, h, w = in_shape
        layers = []
        for out in channels:
            layers += [nn.Conv2d(c, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(), nn.MaxPool2d(2)]
            c, h, w = out, h // 2, w // 2
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.hidden = nn.Sequential(nn.Linear(c * h * w, hidden), nn.BatchNorm1d(hidden), nn.ReLU())
        self.readout = nn.Linear(hidden, n_classes)
        self.penultimate: torch.Tensor | None = None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.penultimate = self.hidden(self.features(x))
        return self.readout(self.penultimate)


@MODELS.register("toycnn", forwards_to=ToyCNN)
def toycnn(in_shape, n_classes, **kw) -> nn.Module:
    return ToyCNN(in_shape=in_shape, n_classes=n_classes, **kw)
