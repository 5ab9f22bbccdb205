"""The abnormality module of Hendrycks & Gimpel 2017 (§4, Table 11; official
``Vision/MNIST_Abnormality_Module.ipynb``).

Phase 1 trains the classifier with an auxiliary decoder that branches off its second hidden
layer (model ``mlp_decoder``) on 0.9 cross-entropy + 0.1 reconstruction MSE (loss
``ce_reconstruction``).  Phase 2 freezes it and trains the abnormality module (score
``abnormality``): from the logits, the squared reconstruction error and the branch's hidden
units, a GELU network 1050 -> 512 -> 128 -> 1 tells clean training images (positive) from
distorted ones: added Gaussian noise (sigma ~ U(0.9, 1.2)), a Gaussian blur (sigma = 5 U(0.9, 1)),
and rotations by 90 or 270 degrees (zeros, nearly symmetric, get noise of sigma 1 instead).  The
score is the module's logit for "clean".
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from softrepro.models import ACTIVATIONS, _init
from softrepro.ood import Score
from softrepro.registry import LOSSES, MODELS, SCORES


class MLPDecoder(nn.Module):
    """A fully connected classifier whose hidden layer ``branch`` (1-based) also feeds a decoder
    back to the input; ``reconstruction``, ``inputs`` (flattened) and ``branch_out`` are kept."""

    def __init__(self, in_shape=(784,), n_classes=10, hidden=(256, 256, 256), branch=2, decoder=(128, 256, 256),
                 activation="gelu_tanh", init="torch"):
        super().__init__()
        d_in = int(np.prod(in_shape))
        self.act = ACTIVATIONS[activation]()
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip((d_in, *hidden[:-1]), hidden))
        self.readout = nn.Linear(hidden[-1], n_classes)
        self.branch = branch
        widths = (hidden[branch - 1], *decoder)
        self.decoder = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.decoder_out = nn.Linear(widths[-1], d_in)
        _init(self, init)

    def forward(self, x):
        h = self.inputs = x.flatten(1)
        for i, lin in enumerate(self.hidden, start=1):
            h = self.act(lin(h))
            if i == self.branch:
                self.branch_out = h
        self.penultimate = h
        r = self.branch_out
        for lin in self.decoder:
            r = self.act(lin(r))
        self.reconstruction = self.decoder_out(r)
        return self.readout(h)


@MODELS.register("mlp_decoder", forwards_to=MLPDecoder)
def mlp_decoder(in_shape, n_classes, **kw) -> nn.Module:
    return MLPDecoder(in_shape=in_shape, n_classes=n_classes, **kw)


@LOSSES.register("ce_reconstruction")
def ce_reconstruction(weight: float = 0.1):
    """(1 - weight) cross-entropy + weight * mean squared reconstruction error (the model's own)."""
    def fn(logits, targets, model):
        return (1 - weight) * F.cross_entropy(logits, targets) + weight * F.mse_loss(model.reconstruction, model.inputs)

    return fn


def _distort(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, counts: tuple[int, int, int]) -> np.ndarray:
    """Negative examples from clean images [n, 28, 28]: noise, blur, then rotation (or noise for zeros)."""
    from scipy.ndimage import gaussian_filter

    n_noise, n_blur, n_rot = counts
    out, i = [], 0
    for _ in range(n_noise):
        out.append(x[i] + rng.normal(0, rng.uniform(0.9, 1.2), x[i].shape))
        i += 1
    for _ in range(n_blur):
        out.append(gaussian_filter(x[i], sigma=5 * rng.uniform(0.9, 1.0)))
        i += 1
    for _ in range(n_rot):
        out.append(x[i] + rng.normal(0, 1.0, x[i].shape) if y[i] == 0 else np.rot90(x[i], k=rng.choice([1, 3])))
        i += 1
    return np.stack(out)


@SCORES.register("abnormality")
class AbnormalityModule(Score):
    """Phase 2 (the classifier frozen): ``epochs`` of ``steps_per_epoch`` batches, each of ``clean``
    clean training images and ``noise``/``blur``/``rotate`` distorted ones; Adam at ``lr``."""

    def __init__(self, epochs: int = 15, steps_per_epoch: int = 429, clean: int = 42, noise: int = 43, blur: int = 21,
                 rotate: int = 22, lr: float = 1e-3):
        self.epochs, self.steps_per_epoch, self.lr = epochs, steps_per_epoch, lr
        self.clean, self.counts = clean, (noise, blur, rotate)

    def _features(self, model, x):
        logits = model(x)
        return torch.cat([logits, (model.inputs - model.reconstruction) ** 2, model.branch_out], 1)

    def fit(self, ctx):
        model = ctx.model
        for p in model.parameters():
            p.requires_grad_(False)
        x_all = ctx.x_train
        d = self._features(model, x_all[:2]).shape[1]
        torch.manual_seed(ctx.seed)
        self.module = nn.Sequential(nn.Linear(d, 512), nn.GELU(approximate="tanh"), nn.Linear(512, 128),
                                    nn.GELU(approximate="tanh"), nn.Linear(128, 1)).to(device=x_all.device, dtype=x_all.dtype)
        opt = torch.optim.Adam(self.module.parameters(), lr=self.lr)
        rng = np.random.default_rng(ctx.seed)
        images = x_all.reshape(len(x_all), 28, 28).cpu().numpy()
        labels = ctx.y_train.cpu().numpy()
        n_bad = sum(self.counts)
        target = torch.cat([torch.ones(self.clean), torch.zeros(n_bad)]).to(x_all)
        for _ in range(self.epochs * self.steps_per_epoch):
            idx = rng.choice(len(images), self.clean + n_bad, replace=False)
            bad = _distort(images[idx[self.clean:]], labels[idx[self.clean:]], rng, self.counts)
            xb = torch.cat([x_all[idx[: self.clean]], torch.from_numpy(bad).to(x_all).reshape(n_bad, *x_all.shape[1:])])
            with torch.no_grad():
                feats = self._features(model, xb)
            with torch.enable_grad():
                loss = F.binary_cross_entropy_with_logits(self.module(feats).squeeze(1), target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
        for p in model.parameters():
            p.requires_grad_(True)

    @torch.no_grad()
    def score(self, ctx, x):
        out = [self.module(self._features(ctx.model, x[i : i + 1000])).squeeze(1).double().cpu() for i in range(0, len(x), 1000)]
        return torch.cat(out)
