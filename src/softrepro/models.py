"""Built-in models, registered by name for the specs (plain torch, no torchvision)."""
from __future__ import annotations

import torch
from torch import nn

from softrepro.registry import MODELS


def _init(module: nn.Module, init: str, divisors=None) -> None:
    if init == "torch":
        return
    if init == "unit_norm":  # each unit's weight vector N(0, I) scaled to unit L2 norm, / sqrt(divisor); zero biases
        linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
        divisors = list(divisors) if divisors is not None else [1.0] * len(linears)
        if len(divisors) != len(linears):
            raise ValueError(f"init_divisors has {len(divisors)} entries for {len(linears)} linear layers")
        with torch.no_grad():
            for m, d in zip(linears, divisors):
                w = torch.randn_like(m.weight)
                m.weight.copy_(w / w.norm(dim=1, keepdim=True) / float(d) ** 0.5)
                if m.bias is not None:
                    m.bias.zero_()
        return
    if init == "truncnormal":  # N(0, 0.1) truncated at 2 std, bias 0.1 (the TF tutorials' init)
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.1, a=-0.2, b=0.2)
                nn.init.constant_(m.bias, 0.1)
        return
    if init == "glorot":  # Keras' defaults: glorot-uniform weights, zero biases
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        return
    raise ValueError(f"unknown init {init!r} (torch, truncnormal, glorot, unit_norm; an MLP also takes normal)")


def _init_normal(module: nn.Module, std: float) -> None:
    """Every weight N(0, std^2), every bias 0."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, 0.0, float(std))
                if m.bias is not None:
                    m.bias.zero_()


class ConvNet(nn.Module):
    """conv(k, 'same') -> ReLU -> maxpool 2 per entry of ``channels``, then one hidden
    fully-connected layer with dropout and a linear readout (``self.readout``).
    ``channels_last`` computes the convolutions in NHWC memory layout (about a fifth faster on
    a CPU; the same model, other rounding)."""

    def __init__(self, in_shape=(1, 28, 28), n_classes=10, channels=(32, 64), kernel=5, hidden=1024,
                 dropout=0.5, init="torch", channels_last: bool = False):
        super().__init__()
        c, h, w = in_shape
        layers = []
        for out in channels:
            layers += [nn.Conv2d(c, out, kernel, padding=kernel // 2), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True)]
            c, h, w = out, -(-h // 2), -(-w // 2)
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.hidden = nn.Sequential(nn.Linear(c * h * w, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.readout = nn.Linear(hidden, n_classes)
        self.penultimate: torch.Tensor | None = None
        _init(self, init)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.features.to(memory_format=self.memory_format)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.penultimate = self.hidden(self.features(x.contiguous(memory_format=self.memory_format)))
        return self.readout(self.penultimate)


@MODELS.register("convnet", forwards_to=ConvNet)
def convnet(in_shape, n_classes, **kw) -> nn.Module:
    return ConvNet(in_shape=in_shape, n_classes=n_classes, **kw)


OUTPUTS = {"linear": nn.Identity, "relu": nn.ReLU}
# hidden activations; gelu is the exact (erf) form, gelu_tanh the tanh approximation (TF's old gelu_fast)
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU(approximate="tanh")}  # relu: the ReLU classifier of Agarap 2018


def _output_activation(output: str) -> nn.Module:
    if output not in OUTPUTS:
        raise ValueError(f"unknown output {output!r} ({', '.join(OUTPUTS)})")
    return OUTPUTS[output]()


class MLP(nn.Module):
    """Fully-connected ReLU network: ``hidden`` widths (``bias=False``: no biases anywhere), dropout after each hidden layer, a
    linear readout (``self.readout``) and an optional output activation (``relu``: the
    ReLU classifier of Agarap 2018).  ``self.penultimate`` holds the readout's last input.

    ``input_dropout``: dropout on the input pixels too.  ``init: normal``: weights N(0, ``init_std``²),
    zero biases.  ``max_sq_norm``: after every optimizer step (``constrain``, called by the training
    loop) each hidden unit whose incoming weight vector has a squared L2 length above it is scaled
    back to that length (biases and the readout are not constrained)."""

    def __init__(self, in_shape=(784,), n_classes=10, hidden=(256, 256), dropout=0.0, output="linear",
                 activation="relu", init="torch", bias=True, init_divisors=None, input_dropout=0.0,
                 init_std=0.01, max_sq_norm=None):
        super().__init__()
        act = ACTIVATIONS[activation]
        d, layers = int(torch.tensor(in_shape).prod()), [nn.Flatten()]
        if input_dropout:
            layers.append(nn.Dropout(input_dropout))
        for width in hidden:
            layers += [nn.Linear(d, width, bias=bias), act()] + ([nn.Dropout(dropout)] if dropout else [])
            d = width
        self.body = nn.Sequential(*layers)
        self.readout = nn.Linear(d, n_classes, bias=bias)
        self.output = _output_activation(output)
        self.penultimate: torch.Tensor | None = None
        if max_sq_norm is not None and not float(max_sq_norm) > 0:
            raise ValueError(f"mlp max_sq_norm must be positive, not {max_sq_norm!r}")
        self.max_sq_norm = None if max_sq_norm is None else float(max_sq_norm)
        if init == "normal":
            _init_normal(self, init_std)
        else:
            _init(self, init, init_divisors)

    def hidden_layers(self) -> list[nn.Linear]:
        return [m for m in self.body if isinstance(m, nn.Linear)]

    @torch.no_grad()
    def constrain(self) -> None:
        """The max-norm constraint (``max_sq_norm``) on each hidden unit's incoming weights."""
        if self.max_sq_norm is None:
            return
        for layer in self.hidden_layers():
            sq = layer.weight.square().sum(1, keepdim=True)
            layer.weight.mul_(torch.where(sq > self.max_sq_norm, (self.max_sq_norm / sq).sqrt(), torch.ones_like(sq)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.penultimate = self.body(x)
        return self.output(self.readout(self.penultimate))


@MODELS.register("mlp", forwards_to=MLP)
def mlp(in_shape, n_classes, **kw) -> nn.Module:
    return MLP(in_shape=in_shape, n_classes=n_classes, **kw)


class VGGNet(nn.Module):
    """Keras' "VGG-like convnet" example: per block two 'valid' 3x3 ReLU convolutions, a 2x2
    max-pool and dropout; then a dense ReLU layer with dropout and a linear readout with an
    optional output activation (``relu`` for Agarap 2018's ReLU classifier)."""

    def __init__(self, in_shape=(1, 16, 16), n_classes=10, blocks=((32, 32), (64, 64)), kernel=3,
                 block_dropout=0.25, hidden=256, dropout=0.5, output="linear", init="torch"):
        super().__init__()
        c, h, w = in_shape
        layers = []
        for block in blocks:
            for out in block:
                layers += [nn.Conv2d(c, out, kernel), nn.ReLU()]
                c, h, w = out, h - kernel + 1, w - kernel + 1
            layers += [nn.MaxPool2d(2), nn.Dropout(block_dropout)]
            h, w = h // 2, w // 2
        if h < 1 or w < 1:
            raise ValueError(f"input {in_shape} is too small for {len(blocks)} blocks")
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.hidden = nn.Sequential(nn.Linear(c * h * w, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.readout = nn.Linear(hidden, n_classes)
        self.output = _output_activation(output)
        self.penultimate: torch.Tensor | None = None
        _init(self, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.penultimate = self.hidden(self.features(x))
        return self.output(self.readout(self.penultimate))


@MODELS.register("vggnet", forwards_to=VGGNet)
def vggnet(in_shape, n_classes, **kw) -> nn.Module:
    kw["blocks"] = tuple(tuple(b) for b in kw.get("blocks", ((32, 32), (64, 64))))
    return VGGNet(in_shape=in_shape, n_classes=n_classes, **kw)
