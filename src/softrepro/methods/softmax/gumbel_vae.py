"""Categorical VAE trained with the Gumbel-Softmax estimator, after Jang, Gu, Poole 2016,
"Categorical Reparameterization with Gumbel-Softmax" (arXiv 1611.01144), section 4.2 and Table 1 (VAE (Cat.)).

Model (``categorical_vae``): the author's notebook ``Categorical VAE.ipynb`` (github.com/ericjang/gumbel-softmax
at 4deb8bd).  An encoder MLP 784-512-256 (ReLU) gives N x K logits of q(z|x), N categorical latents with K
classes each.  One sample z per latent is fed, flattened, to the mirrored decoder MLP N*K-256-512-784 (ReLU);
it returns the Bernoulli logits of p(x|z).
- ``estimator="gumbel"``: in training z is the continuous relaxed sample softmax((logits + g) / tau).
- ``estimator="st_gumbel"``: Straight-Through Gumbel-Softmax.  The forward pass gives the one-hot of argmax z,
  and the backward pass uses the gradient of the soft z.
- ``estimator="score_function"``: the paper's SF baseline.  In training z is an exact categorical sample
  (the one-hot of argmax(logits + g)) with no gradient through it.  The encoder's whole gradient is the
  score-function (REINFORCE) term, with the variance normalisation the paper says SF needed ("variance
  normalization was necessary ... for SF, DARN, and MuProp"), done as in NVIL (Mnih & Gregor 2014): the
  learning signal l = -log p(x, z) + log q(z|x) of the sample is centred by a running mean c and divided
  by max(1, sqrt(v)) of a running variance v (c, v <- 0.8 c, v + 0.2 batch mean, variance; started
  from the first batch).  The analytic KL still gives the loss its value, but not its encoder gradient:
  differentiating it directly, beside a normalised score term, would let the KL outweigh the
  reconstruction by the normalising factor.  The decoder is trained by the reconstruction's ordinary
  gradient.  c and v live in the loss object and are not checkpointed, so a resumed run restarts them
  from its next batch.
- In eval mode z is the one-hot of argmax(logits + g), a sample of the categorical q(z|x).  The paper says
  samples are "discretized to one-hot vectors during evaluation".
- Temperature (paper §4.2 and the notebook): tau = max(tau_min, tau0 * exp(-r * s)), where s is the last
  multiple of ``anneal_every`` at or below the 0-based step.  So tau is piecewise constant and changes every
  ``anneal_every`` steps.  The notebook counts steps from 1 and updates at i % 1000 == 1, so its schedule is
  the same shifted by one step.  The defaults r = 3e-5 and every = 1000 are the notebook's.  The paper's grid
  is r in {1e-5, 1e-4} and N in {500, 1000}.  ``anneal_rate=0`` keeps tau = tau0.
- Weights are Glorot-uniform with zero biases, TF-slim's ``fully_connected`` defaults, which the notebook
  uses.  ``init="torch"`` keeps PyTorch's defaults instead.

Loss (``neg_elbo``): -ELBO = sum over pixels of BCE-with-logits(decoder logits, x) + sum over the N latents of
KL(q(z_n|x) || Uniform(K)), batch mean.  The KL is analytic, sum_k q_k (log q_k + log K), as in the
notebook's ``q_y*(log_q_y - log(1/K))``.  The notebook adds 1e-20 inside the log; here log_softmax is used.

Task (``vae``): see ``evaluate_vae``.  The paper reports its VAE rows with m = 1000 samples at
evaluation; see the docstring there for what is and is not computed.

Other differences from the paper and the notebook, recorded as deviations:
- Defaults N=20, K=10 are the paper's 20 x 10.  The notebook uses N=30.
- The encoder/decoder widths are the notebook's.  The paper's Fig. 4 caption gives
  "(784 - (20 x 10) - 200)", as printed.
- The optimiser is the spec's choice.  The paper uses SGD with momentum 0.9 and an lr grid; the notebook
  uses Adam at lr 1e-3 multiplied by 0.9 every 1000 steps.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from softrepro.methods.softmax.gumbel import gumbel_softmax_sample
from softrepro.models import _init
from softrepro.registry import LOSSES, MODELS, TASKS

ESTIMATORS = ("gumbel", "st_gumbel", "score_function")


def annealed_tau(step: int, tau0: float = 1.0, tau_min: float = 0.5, anneal_rate: float = 3e-5,
                 anneal_every: int = 1000) -> float:
    """tau = max(tau_min, tau0 * exp(-r * s)), s = the last multiple of ``anneal_every`` <= ``step``."""
    s = (int(step) // int(anneal_every)) * int(anneal_every)
    return max(float(tau_min), float(tau0) * math.exp(-float(anneal_rate) * s))


class CategoricalVAE(nn.Module):
    """MLP encoder -> N x K logits (``self.q_logits``, (B, N, K)) -> one (relaxed) categorical sample per
    latent (``self.z``) -> MLP decoder -> Bernoulli logits (B, D).  ``self.readout`` is the decoder's last
    layer, and ``self.penultimate`` is its input."""

    def __init__(self, in_shape=(1, 28, 28), n_classes=None, n_latent=20, n_categories=10, hidden=(512, 256),
                 estimator="gumbel", tau0=1.0, tau_min=0.5, anneal_rate=3e-5, anneal_every=1000,
                 eval_samples=1, init="glorot"):
        super().__init__()
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {estimator!r} ({', '.join(ESTIMATORS)})")
        if int(anneal_every) < 1:
            raise ValueError("anneal_every must be >= 1")
        d = int(torch.tensor(in_shape).prod())
        if n_classes is not None and int(n_classes) != d:  # the engine passes y's width (784) as n_classes
            raise ValueError(f"categorical_vae reconstructs its input: n_classes {n_classes} != input size {d}")
        self.n_latent, self.n_categories, self.estimator = int(n_latent), int(n_categories), estimator
        self.tau0, self.tau_min = float(tau0), float(tau_min)
        self.anneal_rate, self.anneal_every = float(anneal_rate), int(anneal_every)
        self.eval_samples = int(eval_samples)
        self.tau = self.tau0
        hidden = [int(h) for h in hidden]

        enc, w = [nn.Flatten()], d
        for h in hidden:
            enc += [nn.Linear(w, h), nn.ReLU()]
            w = h
        self.encoder = nn.Sequential(*enc, nn.Linear(w, self.n_latent * self.n_categories))
        dec, w = [], self.n_latent * self.n_categories
        for h in reversed(hidden):
            dec += [nn.Linear(w, h), nn.ReLU()]
            w = h
        self.decoder_body = nn.Sequential(*dec)
        self.readout = nn.Linear(w, d)
        self.q_logits: torch.Tensor | None = None
        self.z: torch.Tensor | None = None
        self.penultimate: torch.Tensor | None = None
        _init(self, init)

    def set_progress(self, step: int, steps: int | None = None) -> None:
        """The schedule depends on the absolute step, as in the paper, not on the fraction step/steps."""
        self.tau = annealed_tau(step, self.tau0, self.tau_min, self.anneal_rate, self.anneal_every)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x).view(-1, self.n_latent, self.n_categories)

    def sample(self, q_logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training: relaxed sample (soft, or hard forward with ST).  Eval: the one-hot of argmax(logits + g)."""
        if self.training and self.estimator == "score_function":  # an exact categorical sample, no pathwise gradient
            return gumbel_softmax_sample(q_logits.detach(), 1.0, hard=True, generator=generator).detach()
        hard = self.estimator == "st_gumbel" or not self.training
        return gumbel_softmax_sample(q_logits, self.tau, hard=hard, generator=generator)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        self.penultimate = self.decoder_body(z.flatten(1))
        return self.readout(self.penultimate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.q_logits = self.encode(x)
        self.z = self.sample(self.q_logits)
        return self.decode(self.z)


@MODELS.register("categorical_vae", forwards_to=CategoricalVAE)
def categorical_vae(in_shape=(1, 28, 28), n_classes=None, **kw) -> nn.Module:
    if "hidden" in kw:
        kw["hidden"] = tuple(kw["hidden"])
    return CategoricalVAE(in_shape=in_shape, n_classes=n_classes, **kw)


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x|z) per example: BCE with logits summed over the pixels, (B,)."""
    return F.binary_cross_entropy_with_logits(logits.flatten(1), x.flatten(1).to(logits.dtype),
                                              reduction="none").sum(1)


def categorical_kl_uniform(q_logits: torch.Tensor) -> torch.Tensor:
    """KL(q || Uniform(K)) = sum_k q_k (log q_k + log K), summed over the N latents, (B,)."""
    logq = F.log_softmax(q_logits, -1)
    return (logq.exp() * (logq + math.log(q_logits.shape[-1]))).sum((-2, -1))


class NegELBO:
    """-ELBO = Bernoulli NLL + analytic KL to the uniform prior, batch mean.  After each call
    ``last_recon_nll`` and ``last_kl`` hold the batch means of the two parts (floats, for logging).
    For a model training with ``estimator="score_function"`` the returned value is the same, and its
    gradient carries the variance-normalised score-function term (see the module docstring)."""

    SF_DECAY = 0.8  # NVIL's running-average constant

    def __init__(self):
        self.last_recon_nll = self.last_kl = float("nan")
        self.sf_mean: float | None = None
        self.sf_var: float | None = None

    def score_term(self, recon: torch.Tensor, model) -> torch.Tensor:
        """((l - c) / max(1, sqrt(v))) * log q(z|x) per example, with l = -log p(x|z) - log p(z) + log q(z|x)
        (uniform prior: -log p(z) = N log K), detached; updates c and v first."""
        logq = _onehot_log_q(model.q_logits, model.z)
        n, k = model.q_logits.shape[-2:]
        signal = (recon + logq + n * math.log(k)).detach()
        mean, var = float(signal.mean()), float(signal.var()) if len(signal) > 1 else 0.0
        if self.sf_mean is None:
            self.sf_mean, self.sf_var = mean, var
        else:
            a = self.SF_DECAY
            self.sf_mean, self.sf_var = a * self.sf_mean + (1 - a) * mean, a * self.sf_var + (1 - a) * var
        centred = (signal - self.sf_mean) / max(1.0, math.sqrt(self.sf_var))
        return centred * logq

    def parts(self, outputs, targets, model):
        if getattr(model, "q_logits", None) is None:
            raise ValueError("neg_elbo needs a model that stores q_logits (B, N, K), e.g. categorical_vae")
        return bernoulli_nll(outputs, targets), categorical_kl_uniform(model.q_logits)

    def __call__(self, outputs, targets, model):
        recon, kl = self.parts(outputs, targets, model)
        self.last_recon_nll, self.last_kl = float(recon.detach().mean()), float(kl.detach().mean())
        if model.training and getattr(model, "estimator", None) == "score_function":
            surrogate = self.score_term(recon, model).mean()
            # value: the -ELBO; encoder gradient: the score term only
            return (recon + kl.detach()).mean() + surrogate - surrogate.detach()
        return (recon + kl).mean()


@LOSSES.register("neg_elbo")
def make_neg_elbo():
    return NegELBO()


def _onehot_log_q(q_logits: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log q(z|x) of one-hot z (B, N, K), summed over the latents, (B,)."""
    return (F.log_softmax(q_logits, -1) * z).sum((-2, -1))


@TASKS.register("vae")
def evaluate_vae(model, loss_fn, x, y, batch: int = 1000, eval_samples: int | None = None,
                 generator: torch.Generator | None = None, final: bool = True) -> dict:
    """Test metrics of a categorical VAE in eval mode (z discretised to one-hot categorical samples), no grad.

    Means over the test examples:
    - ``test_recon_nll``: -log p(x|z), one discrete sample z ~ q(z|x) per example.
    - ``test_kl``: the analytic KL(q(z|x) || Uniform) summed over the latents.
    - ``test_neg_elbo``: ``test_recon_nll + test_kl``.  This is a single-sample estimate of the negative ELBO
      with discrete z, the quantity the loss trains on.

    The paper evaluates its VAE rows with m = 1000 samples.  ``eval_samples`` = m > 1 (the argument, else
    the model's ``eval_samples`` in the final evaluation; evaluations logged during training use one
    sample) adds two metrics, each over m discrete samples per example:
    - ``test_neg_elbo_m``: the recon NLL averaged over the m samples, plus the KL.  It has the same
      expectation as ``test_neg_elbo`` but lower variance.
    - ``test_neg_iw_bound``: -log (1/m) sum_i p(x|z_i) p(z_i) / q(z_i|x), the importance-weighted bound on
      -log p(x).  Here log q and log p of the discrete z_i are exact.
    The paper does not say which of the two its "m = 1000" means.  The cost is m decoder passes per example.
    """
    m = int(eval_samples if eval_samples is not None else getattr(model, "eval_samples", 1) if final else 1)
    if m < 1:
        raise ValueError("eval_samples must be >= 1")
    if generator is None:  # its own noise: evaluating mid-run must not shift the training run's random stream
        generator = torch.Generator(device=x.device).manual_seed(0)
    was_training = model.training
    model.eval()
    n = len(x)
    recon_sum = kl_sum = recon_m_sum = iw_sum = 0.0
    try:
        with torch.no_grad():
            for i in range(0, n, batch):
                xb, yb = x[i : i + batch], y[i : i + batch]
                ql = model.encode(xb)
                z = model.sample(ql, generator)
                recon = bernoulli_nll(model.decode(z), yb)
                kl = categorical_kl_uniform(ql)
                recon_sum += float(recon.double().sum())
                kl_sum += float(kl.double().sum())
                if m > 1:
                    log_prior = -ql.shape[-2] * math.log(ql.shape[-1])
                    log_w = [(-recon + log_prior - _onehot_log_q(ql, z)).double()]
                    r_tot = recon.double()
                    for _ in range(m - 1):
                        zj = model.sample(ql, generator)
                        rj = bernoulli_nll(model.decode(zj), yb).double()
                        r_tot = r_tot + rj
                        log_w.append(-rj + log_prior - _onehot_log_q(ql, zj).double())
                        if len(log_w) >= 64:  # keep memory flat: fold into one running logsumexp
                            log_w = [torch.logsumexp(torch.stack(log_w), 0)]
                    lse = torch.logsumexp(torch.stack(log_w), 0)
                    iw_sum += float((-(lse - math.log(m))).sum())
                    recon_m_sum += float((r_tot / m).sum())
    finally:
        model.train(was_training)
    out = {"test_neg_elbo": (recon_sum + kl_sum) / n, "test_recon_nll": recon_sum / n, "test_kl": kl_sum / n}
    if m > 1:
        out.update(test_neg_elbo_m=(recon_m_sum + kl_sum) / n, test_neg_iw_bound=iw_sum / n, test_eval_samples=m)
    return out
