"""The training loop for ``kind: train`` experiments (plain torch).

The whole dataset lives in memory as tensors on the device; step ``s`` draws the
batch ``stream[s*B:(s+1)*B]`` of a stream of per-epoch permutations seeded by
(seed, epoch), so a batch depends on the step alone and a resumed run sees the
same batches.  A checkpoint (model, optimiser, RNG states, log so far) is written
atomically every ``checkpoint_every`` steps; a rerun of a killed job resumes from
it and finishes with the same numbers as an uninterrupted run.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from softrepro import noise as label_noise
from softrepro.atomic import write_atomic
from softrepro.calibration import calibration_metrics, fit_temperature, reliability_bins
from softrepro.datasets import load_splits, prepared_key, preprocess_cached, to_float
from softrepro.probes import softmax_collapse_fraction
from softrepro.registry import LOSSES, MODELS, OPTIMIZERS, PROBES, SCHEDULES, TASKS
from softrepro.spec import load_datasets

FAULT_ENV = "SOFTREPRO_FAULT_AFTER_STEP"  # test hook: SIGKILL this process after that step
OUTLIER_SEED = 1_000_000  # the outlier batches' stream is seeded apart from the training batches'


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def config_hash(exp: dict) -> str:
    return hashlib.sha256(json.dumps(exp, sort_keys=True).encode()).hexdigest()[:16]


def load_data(exp: dict, root: Path, device: torch.device, seed: int = 0, threads: int = 1, cache_dir: Path | None = None):
    """Tensors (x_train, y_train, x_test, y_test, n_outputs) on ``device``, and the label-noise record.

    Labels are int64 class indices, or float rows (multi-label proportions) for generated
    multi-label data; ``targets: inputs`` makes the flattened inputs the targets (autoencoders).
    Preprocessed inputs that do not depend on the seed are computed once into ``cache_dir``.
    """
    name = exp["dataset"]
    dataset_cfg = load_datasets(root)[name]
    splits = load_splits(name, dataset_cfg, root, seed, params=exp.get("data"))
    (xtr, ytr), (xte, yte) = splits["train"], splits["test"]
    if "train_range" in exp:
        lo, hi = exp["train_range"]
        xtr, ytr = xtr[lo:hi], ytr[lo:hi]
    if "train_subset" in exp and exp["train_subset"] < len(ytr):
        keep = np.random.default_rng(0).permutation(len(ytr))[: exp["train_subset"]]  # same subset for every seed
        xtr, ytr = xtr[keep], ytr[keep]
    if "train_classes" in exp:  # a transfer set without some classes, or with some only (training split alone)
        keep = np.isin(ytr, exp["train_classes"].get("only", np.unique(ytr)))
        keep &= ~np.isin(ytr, exp["train_classes"].get("exclude", []))
        xtr, ytr = xtr[keep], ytr[keep]
    if "test_subset" in exp:
        xte, yte = xte[: exp["test_subset"]], yte[: exp["test_subset"]]
    labels = ytr.ndim == 1
    n_out = splits.get("n_outputs") or (int(max(ytr.max(), yte.max()) + 1) if labels else ytr.shape[1])
    noise_record = {"kind": "none", "rate": 0.0, "flipped": 0, "realised_rate": 0.0}
    if labels:
        ytr, noise_record = label_noise.apply(ytr, n_out, exp.get("noise"), seed)  # training labels only
    xtr, xte = preprocess_cached(to_float(xtr), to_float(xte), exp.get("preprocess"),
                                 prepared_key(exp, dataset_cfg, threads), cache_dir)
    if exp.get("targets") == "inputs":
        ytr, yte = xtr.reshape(len(xtr), -1), xte.reshape(len(xte), -1)
        n_out = ytr.shape[1]
    dtype = DTYPES[exp.get("dtype", "float32")]

    def to(a):
        t = torch.from_numpy(np.ascontiguousarray(a))
        return (t.to(dtype) if t.is_floating_point() else t).to(device)

    return (to(xtr), to(ytr), to(xte), to(yte), n_out), noise_record


DTYPES = {"float32": torch.float32, "float64": torch.float64}


def save_checkpoint(state: dict, path: Path) -> None:
    """Serialised in memory, then written whole (``write_atomic``): a full disk then raises the
    operating system's ENOSPC, which torch's own file writer reports as an opaque RuntimeError."""
    buf = io.BytesIO()
    torch.save(state, buf)
    write_atomic(path, lambda tmp: tmp.write_bytes(buf.getbuffer()))


class BatchStream:
    """Consecutive batches from concatenated per-epoch permutations (TF ``next_batch`` style)."""

    def __init__(self, n: int, batch: int, seed: int, device: torch.device | str = "cpu"):
        self.n, self.batch, self.seed, self.device = n, batch, seed, device
        self._cache: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        """The epoch's permutation (drawn on the CPU, so the same on every device), moved to the
        training device once per epoch rather than a batch of indices every step."""
        if epoch not in self._cache:
            self._cache = {k: v for k, v in self._cache.items() if k >= epoch - 1}
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._cache[epoch] = torch.randperm(self.n, generator=g).to(self.device)
        return self._cache[epoch]

    def indices(self, step: int) -> torch.Tensor:
        start = step * self.batch
        parts, pos = [], start
        while pos < start + self.batch:
            epoch, offset = divmod(pos, self.n)
            take = min(self.n - offset, start + self.batch - pos)
            parts.append(self._perm(epoch)[offset : offset + take])
            pos += take
        return torch.cat(parts)


@torch.no_grad()
def evaluate(model, loss_fn, x, y, batch: int = 1000, reliability: bool = False):
    """Accuracy, the training loss, and calibration of softmax(outputs) on (x, y)."""
    model.eval()
    correct = correct_top5 = 0
    loss_sum = 0.0
    probs = []
    extra = getattr(loss_fn, "test_counts", None)  # a loss's own test measures: {name: count over the batch}
    counts: dict[str, float] = {}
    for i in range(0, len(y), batch):
        xb, yb = x[i : i + batch], y[i : i + batch]
        out = model(xb)
        loss_sum += float(loss_fn(out, yb, model)) * len(yb)
        probs.append(F.softmax(out.double(), 1).cpu())
        correct += int((out.argmax(1) == yb).sum())
        for name, c in (extra(out, yb) if extra else {}).items():
            counts[name] = counts.get(name, 0) + c
        if out.shape[1] > 5:
            correct_top5 += int((out.topk(5, 1).indices == yb[:, None]).any(1).sum())
    model.train()
    n = len(y)
    p, t = torch.cat(probs), y.cpu()
    metrics = {"test_accuracy": correct / n, "test_errors": n - correct, "test_loss": loss_sum / n,
               **{k: c / n for k, c in counts.items()},
               **calibration_metrics(p, t)}
    if p.shape[1] > 5:
        metrics["test_top5_accuracy"] = correct_top5 / n
    return (metrics, reliability_bins(p, t)) if reliability else metrics


def evaluate_task(task: str, model, loss_fn, x, y, final: bool = False):
    """Test metrics of ``task``: the built-in classification metrics, or a registered task's.
    ``final`` (the evaluation after training) also returns the reliability bins, and lets a task
    spend more on its final numbers than on the evaluations logged during training."""
    if task == "classification":
        return evaluate(model, loss_fn, x, y, reliability=final)
    model.eval()
    try:
        metrics = TASKS.get(task)(model, loss_fn, x, y, final=final)
    finally:
        model.train()
    return (metrics, None) if final else metrics


def _make_optimizer(cfg: dict, model):
    """``decay: <glob>`` (an engine key, not the optimizer's): weight decay only on the parameters
    whose names match, e.g. ``body.*.weight`` for an L2 penalty on the hidden weights alone."""
    kw = {k: v for k, v in cfg.items() if k not in ("name", "decay")}
    params = list(model.named_parameters())
    if "decay" in cfg:
        from fnmatch import fnmatch

        decayed = [p for n, p in params if fnmatch(n, cfg["decay"])]
        if not decayed:
            raise ValueError(f"optimizer.decay {cfg['decay']!r} matches no parameter (names: {', '.join(n for n, _ in params)})")
        rest = [p for n, p in params if not fnmatch(n, cfg["decay"])]
        groups = [{"params": decayed}, {"params": rest, "weight_decay": 0.0}]
        return OPTIMIZERS.get(cfg["name"])(groups, **kw)
    return OPTIMIZERS.get(cfg["name"])([p for _, p in params], **kw)


def _make_schedule(cfg: dict | None, opt, steps: int):
    """Learning-rate schedule stepped once per training step (``schedule: {name, ...}``)."""
    if not cfg:
        return None
    return SCHEDULES.get(cfg["name"])(opt, steps, **{k: v for k, v in cfg.items() if k != "name"})


def train(exp: dict, seed: int, run_dir: Path, root: Path, threads: int = 1, progress: bool = True,
          log=print, cache_dir: Path | None = None, teacher_model: Path | None = None) -> tuple[dict, pd.DataFrame, dict]:
    """Train and evaluate; returns (scalar metrics, per-step log, extras for metrics.json).

    numpy/scipy's BLAS and LAPACK (PCA, standardisation) run at the job's thread count, like
    torch: their rounding depends on it, and a last-bit change in the inputs can turn an
    unstable run (e.g. the ReLU classifier) into another outcome.  A run started by hand then
    matches the same run started by Snakemake."""
    with threadpool_limits(limits=threads):
        return _train(exp, seed, run_dir, root, threads, progress, log, cache_dir, teacher_model)


def predict(model, x: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """The model's outputs on ``x`` in eval mode, in batches, without gradients; the model is left
    in training mode (as the training loop expects it)."""
    model.eval()
    with torch.no_grad():
        out = torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])
    model.train()
    return out


def teacher_outputs(cfg: dict, weights: Path, x: torch.Tensor, n_classes: int, dtype, features: bool = False):
    """The trained teacher's outputs (logits) on ``x``, computed once before the student trains;
    ``cfg`` is the student's resolved ``teacher`` entry (its model and run key).  With ``features``
    also its penultimate features (the model's ``penultimate``) from the same pass: (logits, features)."""
    model_cfg = dict(cfg["model"])
    model = MODELS.get(model_cfg.pop("name"))(in_shape=tuple(x.shape[1:]), n_classes=n_classes, **model_cfg)
    model = model.to(device=x.device, dtype=dtype)
    model.load_state_dict(torch.load(weights, map_location=x.device, weights_only=True))
    if not features:
        return predict(model, x)
    model.eval()
    logits, feats = [], []
    with torch.no_grad():
        for i in range(0, len(x), 1000):
            logits.append(model(x[i : i + 1000]))
            if getattr(model, "penultimate", None) is None:
                raise ValueError(f"the teacher {cfg['experiment']!r} ({cfg['model']['name']}) keeps no penultimate "
                                 "features, which this run's loss reads")
            feats.append(model.penultimate)
    return torch.cat(logits), torch.cat(feats)


def init_from_teacher(model, cfg: dict, weights: Path, model_cfg: dict) -> None:
    """``teacher_init``: the run starts from its teacher's trained weights (fine-tuning), which
    needs the same model; ``cfg`` is the resolved ``teacher`` entry."""
    if cfg["model"] != model_cfg:
        raise ValueError(f"teacher_init: the teacher {cfg['experiment']!r} has the model {cfg['model']}, this run "
                         f"{model_cfg}; fine-tuning starts from the teacher's weights and needs the same model")
    model.load_state_dict(torch.load(weights, map_location=next(model.parameters()).device, weights_only=True))


def shifted_errors(z: torch.Tensor, y: torch.Tensor, classes: list[int], by: float) -> dict:
    """Test errors of the test logits ``z`` before and after adding ``by`` to the logits of ``classes``
    (what raising those classes' output biases does): in all, as a fraction, and on the test images of
    each of ``classes``."""
    z = z.double()
    shifted = z.clone()
    shifted[:, classes] += by
    out = {}
    for tag, logits in (("", z), ("shifted_", shifted)):
        wrong = logits.argmax(1) != y
        out[f"{tag}test_errors"] = int(wrong.sum())
        out[f"{tag}test_error"] = float(wrong.double().mean())
        for k in classes:
            out[f"{tag}test_errors_class_{k}"] = int((wrong & (y == k)).sum())
    return out


def temperature_scaled(z: torch.Tensor, y: torch.Tensor, holdout: int) -> dict:
    """Temperature scaling (Guo et al. 2017) of the test logits ``z`` after training: T fitted by NLL on
    the first ``holdout`` test images, then ECE (15 bins) and NLL on the other test images before
    (T = 1) and after (softmax(z / T)), so that the two are compared on the same images."""
    if not 0 < holdout < len(z):
        raise ValueError(f"temperature_scaling.holdout = {holdout} needs more test images than that (there are {len(z)})")
    z, t = z.double().cpu(), y.cpu()
    temp = fit_temperature(z[:holdout], t[:holdout])
    before = calibration_metrics(F.softmax(z[holdout:], 1), t[holdout:])
    after = calibration_metrics(F.softmax(z[holdout:] / temp, 1), t[holdout:])
    return {"ts_temperature": temp, "ts_ece_before": before["test_ece"], "ts_ece_after": after["test_ece"],
            "ts_nll_before": before["test_nll"], "ts_nll_after": after["test_nll"], "ts_n_eval": len(t) - holdout}


def shift_images(x: torch.Tensor, shift: int) -> torch.Tensor:
    """Each image of the batch moved by its own random whole-pixel offset in [-shift, shift] along
    both axes, the uncovered border zero ("jittering the input"); images are the last two axes.
    Offsets come from torch's global generator, whose state checkpoints keep."""
    b, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    pad = F.pad(x, (shift, shift, shift, shift))
    off = torch.randint(0, 2 * shift + 1, (2, b), device=x.device)
    rows = (off[0][:, None] + torch.arange(h, device=x.device))[:, :, None]  # (b, h, 1)
    cols = (off[1][:, None] + torch.arange(w, device=x.device))[:, None, :]  # (b, 1, w)
    flat = pad.reshape(b, -1, h + 2 * shift, w + 2 * shift)
    out = flat[torch.arange(b, device=x.device)[:, None, None, None], torch.arange(flat.shape[1], device=x.device)[None, :, None, None],
               rows[:, None], cols[:, None]]
    return out.reshape(x.shape)


def _train(exp: dict, seed: int, run_dir: Path, root: Path, threads: int, progress: bool, log, cache_dir, teacher_model=None):
    device = pick_device()
    if device.type == "cpu":
        torch.set_num_threads(threads)  # CPU kernels are deterministic for a fixed thread count
    else:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)  # (costs a second of imports: GPU only)
    seed_everything(seed)

    (xtr, ytr, xte, yte, n_classes), noise_record = load_data(exp, root, device, seed, threads, cache_dir)
    model_cfg = dict(exp["model"])
    model = MODELS.get(model_cfg.pop("name"))(in_shape=tuple(xtr.shape[1:]), n_classes=n_classes, **model_cfg)
    model = model.to(device=device, dtype=DTYPES[exp.get("dtype", "float32")])
    task = exp.get("task", "classification")
    classify = task == "classification"
    loss_cfg = dict(exp["loss"])
    loss_fn = LOSSES.get(loss_cfg.pop("name"))(**loss_cfg)
    loss_bits = getattr(loss_fn, "precision", None)  # a loss computed at another precision (e.g. float64 softmax)
    opt = _make_optimizer(exp["optimizer"], model)
    sched = _make_schedule(exp.get("schedule"), opt, exp["steps"])
    augment = exp.get("augment")  # {shift: pixels}: training inputs jittered each step
    teacher = teacher_features = None
    if exp.get("teacher") and exp.get("teacher_init"):  # fine-tuning: start from the teacher's trained weights
        init_from_teacher(model, exp["teacher"], teacher_model, exp["model"])
    elif exp.get("teacher"):  # a distillation student: the loss gets the teacher's logits of each batch
        # a loss with set_teacher_features(features, labels) also reads the teacher's penultimate features: all
        # of them once (e.g. for class means), and each batch's as teacher_features=
        wants_features = hasattr(loss_fn, "set_teacher_features")
        teacher = teacher_outputs(exp["teacher"], teacher_model, xtr, n_classes, DTYPES[exp.get("dtype", "float32")],
                                  features=wants_features)
        if wants_features:
            teacher, teacher_features = teacher
            loss_fn.set_teacher_features(teacher_features, ytr)
    outliers = exp.get("outliers")  # generated auxiliary outliers: their logits go to the loss as outliers=
    if bool(outliers) != bool(getattr(loss_fn, "takes_outliers", False)):
        raise ValueError(f"loss {exp['loss']['name']!r} and 'outliers' go together: "
                         + ("this loss does not use auxiliary outliers" if outliers else "this loss needs an 'outliers' section"))
    out_stream = None
    if outliers:  # their own stream of training images, transformed each step (softrepro.ood)
        from softrepro.ood import auxiliary_outliers

        out_stream = BatchStream(len(ytr), outliers["batch"], OUTLIER_SEED + seed, device)
        outlier_kw = {k: v for k, v in outliers.items() if k != "batch"}
    clip = exp.get("grad_clip")

    steps, batch = exp["steps"], exp["batch_size"]
    log_every = exp.get("log_every", max(1, steps // 50))
    eval_every = exp.get("eval_every")
    ckpt_every = exp.get("checkpoint_every", max(1, min(200, steps // 5)))
    stream = BatchStream(len(ytr), batch, seed, device)
    ckpt_path = run_dir / "checkpoint.pt"
    chash = config_hash({**exp, "seed": seed})

    start_step, history, elapsed_before = 0, [], 0.0
    state = None
    if ckpt_path.exists():
        try:
            state = torch.load(ckpt_path, map_location=device, weights_only=False)
        except Exception as exc:  # a truncated or corrupt file: never fatal, the run starts again
            log(f"checkpoint {ckpt_path} is unreadable ({type(exc).__name__}: {exc}); starting afresh")
            ckpt_path.unlink()
    if state is not None:
        if state["config_hash"] == chash:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            if sched is not None:
                sched.load_state_dict(state["schedule"])
            torch.set_rng_state(state["rng_cpu"])
            if device.type == "cuda" and state.get("rng_cuda") is not None:
                torch.cuda.set_rng_state(state["rng_cuda"])
            start_step, history, elapsed_before = state["step"], state["history"], state["elapsed"]
            log(f"resumed from checkpoint at step {start_step}/{steps}")
        else:
            log("checkpoint belongs to another configuration; starting afresh")

    progress_hooks = [obj for obj in (loss_fn, model) if hasattr(obj, "set_progress")]  # set_progress(step, steps)
    measuring = getattr(model, "set_measuring", None)
    constrain = getattr(model, "constrain", None)

    def logged(done: int) -> bool:  # whether the step that ends with ``done`` steps writes a log row
        return done % log_every == 0 or done == steps or (bool(eval_every) and done % eval_every == 0)
    fault_step = int(os.environ.get(FAULT_ENV, "0") or 0)
    t0 = time.perf_counter()
    # the window's sums stay on the device (float64, as Python floats were): no sync per step
    win_loss = win_acc = torch.zeros((), dtype=torch.float64, device=device)
    win_n = 0
    model.train()
    bar = tqdm(range(start_step, steps), initial=start_step, total=steps, desc=f"train seed {seed}",
               file=sys.stderr, disable=not progress, mininterval=2.0)
    for step in bar:
        idx = stream.indices(step)
        xb, yb = xtr[idx], ytr[idx]
        if augment:
            xb = shift_images(xb, augment["shift"])
        for hooked in progress_hooks:  # e.g. a loss weight or a temperature that follows training progress
            hooked.set_progress(step, steps)
        log_row = logged(step + 1)  # this step writes a log row
        if measuring is not None:  # a model's own measures are kept for the batches that are logged only
            measuring(log_row)
        extra = {} if teacher is None else {"teacher": teacher[idx]}
        if teacher_features is not None:
            extra["teacher_features"] = teacher_features[idx]
        if out_stream is None:
            out = model(xb)
        else:  # in-distribution and outlier batches in one forward pass, split after
            xo = auxiliary_outliers(xtr[out_stream.indices(step)], **outlier_kw)
            both = model(torch.cat([xb, xo]))
            out, extra["outliers"] = both[: len(xb)], both[len(xb) :]
        if out.dim() == 3:  # a sequence model: every position is one prediction
            out, yb = out.flatten(0, 1), yb.flatten()
        loss = loss_fn(out, yb, model, **extra)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = None
        if clip or log_row:  # the gradients' total norm before clipping (an infinite bound leaves them as they are)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip or float("inf"))
        opt.step()
        if constrain is not None:  # a model's constraint on its weights, after every update (e.g. max-norm)
            constrain()
        if sched is not None:
            sched.step()
        win_loss = win_loss + loss.detach().double()
        if classify:
            win_acc = win_acc + (out.detach().argmax(1) == yb).float().mean().double()
        win_n += 1
        done = step + 1
        evaluate_now = bool(eval_every) and (done % eval_every == 0 or done == steps)
        if log_row:
            row = {"step": done, "train_loss": float(win_loss) / win_n, "grad_norm": float(grad_norm),
                   "elapsed_s": elapsed_before + time.perf_counter() - t0}
            if classify:
                row.update(train_accuracy=float(win_acc) / win_n, train_sc_fraction=softmax_collapse_fraction(out, precision=loss_bits))
            if hasattr(model, "log_stats"):  # a model's own measures of its last training batch (e.g. attention logits)
                row.update(model.log_stats())
            if evaluate_now:
                ev = evaluate_task(task, model, loss_fn, xte, yte)
                row.update({k: v for k, v in ev.items() if k in ("test_accuracy", "test_loss") or not classify})
            history.append(row)
            bar.set_postfix(loss=f"{row['train_loss']:.4f}")
            win_loss = win_acc = torch.zeros((), dtype=torch.float64, device=device)
            win_n = 0
        if done % ckpt_every == 0 and done < steps:
            save_checkpoint({"step": done, "model": model.state_dict(), "optimizer": opt.state_dict(),
                             "schedule": sched.state_dict() if sched is not None else None,
                             "rng_cpu": torch.get_rng_state(),
                             "rng_cuda": torch.cuda.get_rng_state() if device.type == "cuda" else None,
                             "history": history, "elapsed": elapsed_before + time.perf_counter() - t0,
                             "config_hash": chash}, ckpt_path)
        if fault_step and done == fault_step:
            os.kill(os.getpid(), signal.SIGKILL)
    bar.close()

    metrics, reliability = evaluate_task(task, model, loss_fn, xte, yte, final=True)
    if exp.get("logit_shift") or exp.get("temperature_scaling"):  # post-hoc measures on the test logits
        z_test = predict(model, xte)
        if exp.get("logit_shift"):  # a constant added to some classes' logits (their output biases)
            metrics.update(shifted_errors(z_test, yte, exp["logit_shift"]["classes"], exp["logit_shift"]["by"]))
        if exp.get("temperature_scaling"):  # calibration fitted on the first test images
            metrics.update(temperature_scaled(z_test, yte, exp["temperature_scaling"]["holdout"]))
    if exp.get("probes"):  # opt-in end-of-training measurements on the training set
        model.eval()
        with torch.no_grad():
            for name in exp["probes"]:
                metrics.update(PROBES.get(name)(model, xtr, ytr, loss_fn=loss_fn))
        model.train()
    extras = {"label_noise": noise_record, "reliability": reliability}
    if exp.get("ood"):  # post-hoc scores on this model: OOD sets and misclassification detection
        from softrepro import ood

        ood_metrics, extras["ood"] = ood.evaluate(model, exp["ood"], xtr, ytr, xte, yte, n_classes, seed, root)
        metrics.update(ood_metrics)
    wall = elapsed_before + time.perf_counter() - t0
    metrics.update(train_loss_final=history[-1]["train_loss"] if history else math.nan, steps=steps,
                   n_train=len(ytr), n_test=len(yte), train_seconds=wall,
                   steps_per_second=(steps - start_step) / max(time.perf_counter() - t0, 1e-9))
    # the trained weights, for the runs that distil from this one (written before metrics.json)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    write_atomic(run_dir / "model.pt", lambda tmp: tmp.write_bytes(buf.getbuffer()))
    ckpt_path.unlink(missing_ok=True)
    return metrics, pd.DataFrame(history), extras
