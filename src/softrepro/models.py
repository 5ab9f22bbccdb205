"""Built-in models, registered by name for the specs (plain torch, no torchvision)."""
from __future__ import annotations

import torch
from torch import nn

from softrepro.registry import MODELS


def _init(module: nn.Module, init: str) -> None:
    if init == "torch":
        return
    if init == "truncnormal":  # N(0, 0.1) truncated at 2 std, bias 0.1 (the TF tutorials' init)
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.1, a=-0.2, b=0.2)
                nn.init.constant_(m.bias, 0.1)
        return
    raise ValueError(f"unknown init {init!r} (torch, truncnormal)")


class ConvNet(nn.Module):
    """conv(k, 'same') -> ReLU -> maxpool 2 per entry of ``channels``, then one hidden
    fully-connected layer with dropout and a linear readout (``self.readout``)."""

    def __init__(self, in_shape=(1, 28, 28), n_classes=10, channels=(32, 64), kernel=5, hidden=1024,
                 dropout=0.5, init="torch"):
        super().__init__()
        c, h, w = in_shape
        layers = []
        for out in channels:
            layers += [nn.Conv2d(c, out, kernel, padding=kernel // 2), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True)]
            c, h, w = out, -(-h // 2), -(-w // 2)
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.hidden = nn.Sequential(nn.Linear(c * h * w, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.readout = nn.Linear(hidden, n_classes)
        _init(self, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.hidden(self.features(x)))


@MODELS.register("convnet")
def convnet(in_shape, n_classes, **kw) -> nn.Module:
    return ConvNet(in_shape=in_shape, n_classes=n_classes, **kw)
