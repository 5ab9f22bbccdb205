"""Confidence far from the data (Ulmer & Cinà 2021, "Know Your Limits"): a ReLU network is
piecewise affine, so along x = lambda * x0 it is eventually affine in lambda and the softmax
saturates; its confidence, and its input-gradient, tend to fixed values (the gradient to 0) as
lambda grows, whatever the data.  The probe ``far_field`` scales the training inputs by each
lambda in ``LAMBDAS`` and records, per lambda:

- ``far_msp_mean_l<lambda>``: mean maximum softmax probability at lambda * x0;
- ``far_msp099_l<lambda>``: the share of those points with MSP > 0.99;
- ``far_grad_l<lambda>``: mean L2 norm of the MSP's input-gradient there;
- ``far_auroc_l<lambda>``: AUROC of MSP, training inputs (in) against lambda * x0 (out), 0.5 = no
  better than chance, below 0.5 = the far points look *more* in-distribution;

and ``train_msp_mean`` (lambda = 1)."""
from __future__ import annotations

import torch

from softrepro.registry import PROBES

LAMBDAS = (1, 10, 100, 1000)


def _msp_and_grad(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        msp = model(x).softmax(1).amax(1)
        (grad,) = torch.autograd.grad(msp.sum(), x)
    return msp.detach(), grad.flatten(1).norm(dim=1)


@PROBES.register("far_field")
def far_field(model, x_train, y_train, loss_fn=None) -> dict[str, float]:
    from softrepro.ood import detection_metrics

    out = {}
    msp1, _ = _msp_and_grad(model, x_train)
    out["train_msp_mean"] = float(msp1.mean())
    for lam in LAMBDAS:
        msp, grad = _msp_and_grad(model, lam * x_train)
        out[f"far_msp_mean_l{lam}"] = float(msp.mean())
        out[f"far_msp099_l{lam}"] = float((msp > 0.99).double().mean())
        out[f"far_grad_l{lam}"] = float(grad.mean())
        out[f"far_auroc_l{lam}"] = detection_metrics(msp1.double().cpu().numpy(), msp.double().cpu().numpy())["auroc"]
    return out
