import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from softrepro.runner import run_job

from conftest import cli_run, write_dataset

SPEC = {
    "id": "tinytest", "title": "Tiny test paper", "arxiv": "0000.00000", "year": 2020, "family": "losses",
    "seed_files": ["004_d8336d9b28eee527.txt"],
    "experiments": {
        "tiny": {
            "kind": "train", "dataset": "fashion-mnist",
            "model": {"name": "convnet", "channels": [4, 8], "kernel": 3, "hidden": 32, "dropout": 0.5},
            "loss": {"name": "softmax_ce"}, "optimizer": {"name": "adam", "lr": 0.003},
            "batch_size": 32, "steps": 30, "log_every": 5, "checkpoint_every": 10, "eval_every": 15,
            "deviations": ["cut: test fixture"],
        },
    },
    "claims": [{"id": "tiny-acc", "text": "t", "source": "none", "kind": "value", "metric": "test_accuracy",
                "unit": "percent", "experiment": "tiny", "published": 50.0, "tolerance": {"abs": 1}, "faithful_scales": []}],
}


@pytest.fixture
def tiny(project):
    """A project with synthetic IDX data standing in for fashion-mnist and a tiny paper spec."""
    write_dataset(project / "data" / "fashion-mnist")
    marker = project / "results" / "datasets" / "fashion-mnist.json"
    marker.parent.mkdir(parents=True)
    marker.write_text(json.dumps({"dataset": "fashion-mnist", "available": True}))
    (project / "configs" / "papers" / "tinytest.yaml").write_text(yaml.safe_dump(SPEC))
    return project


def _run(root, out, seed=0):
    return run_job(root / "configs/papers/tinytest.yaml", "tiny", seed, "smoke", out, root, progress=False, log=lambda m: None)


def test_training_is_deterministic_per_seed_and_learns(tiny):
    a = _run(tiny, tiny / "a")
    b = _run(tiny, tiny / "b")
    c = _run(tiny, tiny / "c", seed=1)
    assert a["status"] == "ok"
    assert a["metrics"]["test_accuracy"] == b["metrics"]["test_accuracy"]
    assert a["metrics"]["test_loss"] == b["metrics"]["test_loss"]
    assert a["metrics"]["test_loss"] != c["metrics"]["test_loss"]
    steps = pd.read_csv(tiny / "a" / "steps.csv")
    assert list(steps["step"]) == [5, 10, 15, 20, 25, 30]
    assert steps["test_accuracy"].notna().sum() == 2
    assert a["metrics"]["test_accuracy"] > 0.3  # separable toy data: well above chance (0.1)
    assert a["provenance"]["device"] == "cpu" and a["deviations"] == ["cut: test fixture"]
    assert (steps["grad_norm"] > 0).all() and np.isfinite(steps["grad_norm"]).all()  # each logged step's gradient norm


def test_the_logged_gradient_norm_is_the_norm_before_clipping():
    """The training loop logs the total gradient norm of each logged step; with ``grad_clip`` it is the
    norm clip_grad_norm_ saw (before clipping), and without it the gradients are left untouched."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(8, 4) * 100, torch.randint(0, 3, (8,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    before = [p.grad.clone() for p in model.parameters()]
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))
    assert float(norm) == pytest.approx(float(torch.cat([g.flatten() for g in before]).norm()), rel=1e-6)
    assert all(torch.equal(a, p.grad) for a, p in zip(before, model.parameters()))  # an infinite bound changes nothing


def _cli(root, out, env_extra=None):
    return cli_run(root, "tinytest", "tiny", out, env_extra)


def test_run_killed_mid_training_resumes_and_matches(tiny):
    # the schedule, the clipping and a loss whose weight follows training progress must all resume exactly
    spec = yaml.safe_load((tiny / "configs/papers/tinytest.yaml").read_text())
    spec["experiments"]["tiny"].update(schedule={"name": "cosine", "eta_min": 0.0001}, grad_clip=1.0,
                                       loss={"name": "maxsup", "alpha": 0.1, "alpha_end": 0.2})
    (tiny / "configs/papers/tinytest.yaml").write_text(yaml.safe_dump(spec))
    reference = _run(tiny, tiny / "ref")
    out = tiny / "killed"
    killed = _cli(tiny, out, {"SOFTREPRO_FAULT_AFTER_STEP": "25"})
    assert killed.returncode == -9, killed.stderr
    assert (out / "checkpoint.pt").exists() and not (out / "metrics.json").exists()
    rerun = _cli(tiny, out)
    assert rerun.returncode == 0, rerun.stderr
    assert "resumed from checkpoint at step 20/30" in rerun.stderr
    done = json.loads((out / "metrics.json").read_text())
    assert not (out / "checkpoint.pt").exists()
    for key in ("test_accuracy", "test_loss", "test_nll"):
        assert done["metrics"][key] == reference["metrics"][key], key


def test_missing_dataset_gives_not_run(tiny):
    (tiny / "results/datasets/fashion-mnist.json").write_text(
        json.dumps({"dataset": "fashion-mnist", "available": False, "reason": "dataset unavailable"}))
    rec = _run(tiny, tiny / "nr")
    assert rec["status"] == "not_run" and rec["reason"] == "dataset unavailable"
    assert json.loads((tiny / "nr" / "metrics.json").read_text())["status"] == "not_run"


def test_noisy_labels_and_calibration_are_recorded(tiny):
    spec = yaml.safe_load((tiny / "configs/papers/tinytest.yaml").read_text())
    spec["experiments"]["tiny"]["noise"] = {"kind": "symmetric", "rate": 0.4}
    (tiny / "configs/papers/tinytest.yaml").write_text(yaml.safe_dump(spec))
    rec = _run(tiny, tiny / "noisy")
    assert rec["label_noise"]["kind"] == "symmetric" and rec["label_noise"]["flipped"] == 240  # 0.4 * 600
    m = rec["metrics"]
    assert 0 <= m["test_ece"] <= 1 and m["test_brier"] > 0 and m["test_nll"] > 0
    assert sum(b["count"] for b in rec["reliability"]) == m["n_test"] == 200


def test_tabular_dataset_with_preprocessing_and_relu_head(tiny):
    """WDBC from scikit-learn: per-seed stratified split, standardisation fitted on train only."""
    spec = yaml.safe_load((tiny / "configs/papers/tinytest.yaml").read_text())
    spec["experiments"]["tab"] = {
        "kind": "train", "dataset": "wdbc", "preprocess": {"standardize": True},
        "model": {"name": "mlp", "hidden": [16], "output": "relu", "init": "glorot"},
        "loss": {"name": "keras_categorical_ce"}, "optimizer": {"name": "adam", "lr": 0.01},
        "batch_size": 64, "steps": 60, "deviations": ["cut: test"]}
    (tiny / "configs/papers/tinytest.yaml").write_text(yaml.safe_dump(spec))
    (tiny / "results/datasets/wdbc.json").write_text(json.dumps({"dataset": "wdbc", "available": True}))
    run = lambda out, seed: run_job(tiny / "configs/papers/tinytest.yaml", "tab", seed, "smoke", tiny / out, tiny,  # noqa: E731
                                    progress=False, log=lambda m: None)
    a, b = run("t0", 0), run("t1", 1)
    assert a["metrics"]["n_train"] == 398 and a["metrics"]["n_test"] == 171  # 569 samples, 30 % test
    assert a["metrics"]["test_accuracy"] > 0.85  # WDBC is nearly linearly separable
    assert a["metrics"]["test_loss"] != b["metrics"]["test_loss"]  # another seed, another split


def test_preprocess_fits_on_the_training_split_only():
    import numpy as np

    from softrepro.datasets import preprocess

    rng = np.random.default_rng(0)
    xtr, xte = rng.normal(3.0, 2.0, (200, 12)), rng.normal(10.0, 1.0, (50, 12))
    a, b = preprocess(xtr, xte, {"standardize": True})
    assert np.allclose(a.mean(0), 0, atol=1e-5) and np.allclose(a.std(0), 1, atol=1e-4)
    assert b.mean() > 2  # the test split is shifted by the training statistics, not its own
    a, b = preprocess(xtr, xte, {"standardize": True, "pca": 4, "reshape": [1, 2, 2]})
    assert a.shape == (200, 1, 2, 2) and b.shape == (50, 1, 2, 2)
    a2, _ = preprocess(xtr, xte, {"standardize": True, "pca": 4, "reshape": [1, 2, 2]})
    assert np.array_equal(a, a2)  # exact PCA: deterministic


def test_evaluations_follow_eval_every_even_off_the_log_grid(tiny):
    """eval_every need not be a multiple of log_every: every evaluation gets its own row."""
    spec = yaml.safe_load((tiny / "configs/papers/tinytest.yaml").read_text())
    spec["experiments"]["tiny"].update(steps=24, log_every=10, eval_every=6)
    (tiny / "configs/papers/tinytest.yaml").write_text(yaml.safe_dump(spec))
    _run(tiny, tiny / "grid")
    steps = pd.read_csv(tiny / "grid" / "steps.csv")
    assert list(steps["step"]) == [6, 10, 12, 18, 20, 24]
    assert list(steps.dropna(subset=["test_accuracy"])["step"]) == [6, 12, 18, 24]


def test_blas_runs_at_the_jobs_thread_count(tmp_path, monkeypatch):
    """PCA's LAPACK rounding depends on the BLAS thread count, so train() pins it to ``threads``
    while it runs (and restores it after)."""
    from threadpoolctl import threadpool_info, threadpool_limits

    import softrepro.train as tr

    blas = lambda: {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}  # noqa: E731
    seen = []

    class Stop(Exception):
        pass

    def load_data(*args, **kwargs):
        seen.append(blas())
        raise Stop

    monkeypatch.setattr(tr, "load_data", load_data)
    with threadpool_limits(limits=2):  # as a launcher that does not pin BLAS threads leaves it
        assert blas() == {2}  # numpy brings a BLAS
        with pytest.raises(Stop):
            tr.train({}, 0, tmp_path, tmp_path, threads=1, progress=False)
        assert seen == [{1}] and blas() == {2}  # one thread inside the run, restored after


def test_optimizer_decay_applies_weight_decay_to_matching_parameters_only():
    import torch

    from softrepro.models import MLP
    from softrepro.train import _make_optimizer

    model = MLP(in_shape=(4,), n_classes=3, hidden=(5, 5), activation="gelu_tanh")
    opt = _make_optimizer({"name": "adam", "lr": 1e-3, "weight_decay": 1e-5, "decay": "body.*.weight"}, model)
    decayed, rest = opt.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in decayed["params"]) == ["body.1.weight", "body.3.weight"]
    assert decayed["weight_decay"] == 1e-5 and rest["weight_decay"] == 0.0
    assert "readout.weight" in {names[id(p)] for p in rest["params"]}
    with pytest.raises(ValueError, match="matches no parameter"):
        _make_optimizer({"name": "adam", "lr": 1e-3, "decay": "nothing.*"}, model)
    x = torch.linspace(-3, 3, 7)
    assert torch.allclose(model.body[2](x), 0.5 * x * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (x + 0.044715 * x**3))))


def test_a_pool_runs_its_configurations_in_one_process_like_separate_jobs_and_resumes(tiny):
    """A pool (what one DAG job computes) gives each run the numbers it gets alone, writes each
    into its own cache folder, and a second call finds every run done."""
    from softrepro.layout import Layout
    from softrepro.runner import run_pool
    from softrepro.spec import load_paper, resolve_experiment, run_key

    spec = yaml.safe_load((tiny / "configs/papers/tinytest.yaml").read_text())
    spec["experiments"]["wide"] = {**spec["experiments"]["tiny"], "model": {**spec["experiments"]["tiny"]["model"], "hidden": 48}}
    (tiny / "configs/papers/tinytest.yaml").write_text(yaml.safe_dump(spec))
    path = tiny / "configs/papers/tinytest.yaml"
    paper = load_paper(path, tiny)
    keys = {e: run_key(resolve_experiment(paper.experiments[e], "smoke")) for e in ("tiny", "wide")}
    members = [(path, "tiny"), (path, "wide")]
    record = run_pool(members, [0, 1], "smoke", "ptest", tiny, progress=False, log=lambda m: None)
    lay = Layout("results", "smoke")
    assert [r["run_key"] for r in record["runs"]] == [keys["tiny"], keys["wide"]]
    assert json.loads((tiny / lay.pool("ptest", [0, 1])).read_text()) == json.loads(json.dumps(record))
    alone = run_job(path, "wide", 1, "smoke", tiny / "alone", tiny, progress=False, log=lambda m: None)
    pooled = json.loads((tiny / lay.cache_run(keys["wide"], 1) / "metrics.json").read_text())
    assert pooled["metrics"]["test_loss"] == alone["metrics"]["test_loss"]
    assert pooled["metrics"]["test_accuracy"] == alone["metrics"]["test_accuracy"]
    again = run_pool(members, [0, 1], "smoke", "ptest", tiny, progress=False, log=lambda m: None)
    assert all(s["resumed"] for r in again["runs"] for s in r["seeds"].values())


def _with_student(tiny, teacher_hidden=32):
    spec = yaml.safe_load((tiny / "configs/papers/tinytest.yaml").read_text())
    spec["experiments"]["tiny"]["model"]["hidden"] = teacher_hidden
    spec["experiments"]["student"] = {**spec["experiments"]["tiny"], "teacher": "tiny",
                                      "model": {"name": "mlp", "hidden": [16]},
                                      "loss": {"name": "kd", "temperature": 4.0, "alpha": 0.9}}
    spec["experiments"]["student2"] = {**spec["experiments"]["student"], "loss": {"name": "kd", "temperature": 2.0, "alpha": 1.0}}
    (tiny / "configs/papers/tinytest.yaml").write_text(yaml.safe_dump(spec))
    return tiny / "configs/papers/tinytest.yaml"


def test_a_student_distils_from_its_teachers_run_of_the_same_seed(tiny):
    from softrepro.layout import Layout
    from softrepro.plan import build
    from softrepro.runner import run_pool

    path = _with_student(tiny)
    plan = build("smoke", "tinytest", tiny)
    keys = {j.experiment: j.key for j in plan.jobs if j.seed == 0}
    teacher = {j.experiment: j.teacher for j in plan.jobs if j.seed == 0}
    assert teacher == {"tiny": None, "student": keys["tiny"], "student2": keys["tiny"]}
    assert list(plan.keys()).count(keys["tiny"]) == 1  # one teacher run per seed, however many students
    assert all(p.keys != (keys["tiny"],) or len(p.keys) == 1 for p in plan.pools)
    quiet = dict(progress=False, log=lambda m: None)
    with pytest.raises(RuntimeError, match="has no finished seed 0"):  # the DAG runs the teacher first
        run_pool([(path, "student")], [0], "smoke", "s", tiny, **quiet)
    run_pool([(path, "tiny")], [0, 1], "smoke", "t", tiny, **quiet)
    rec = run_pool([(path, "student"), (path, "student2")], [0, 1], "smoke", "s", tiny, **quiet)
    assert [r["seeds"][0]["status"] for r in rec["runs"]] == ["ok", "ok"]
    lay = Layout("results", "smoke")
    out = json.loads((tiny / lay.cache_run(keys["student"], 1) / "metrics.json").read_text())
    assert out["teacher"] == {"experiment": "tiny", "run_key": keys["tiny"], "seed": 1}
    assert out["metrics"]["test_accuracy"] > 0.3
    # a changed teacher is another run, and so are its students
    _with_student(tiny, teacher_hidden=48)
    again = {j.experiment: j.key for j in build("smoke", "tinytest", tiny).jobs if j.seed == 0}
    assert again["tiny"] != keys["tiny"] and again["student"] != keys["student"]


def test_the_kd_loss_follows_its_formula():
    import torch
    import torch.nn.functional as F

    from softrepro.methods.distillation.kd import KD

    g = torch.Generator().manual_seed(0)
    z, v = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    T, a = 3.0, 0.7
    p, logq = F.softmax(v / T, 1), F.log_softmax(z / T, 1)
    soft_ce = -(p * logq).sum(1).mean()  # cross-entropy with the soft targets, as the paper writes it
    entropy = -(p * p.log()).sum(1).mean()
    expected = a * T * T * (soft_ce - entropy) + (1 - a) * F.cross_entropy(z, y)
    assert KD(T, a)(z, y, None, teacher=v).item() == pytest.approx(expected.item(), rel=1e-12)
    assert KD(T, a)(z, y, None).item() == pytest.approx(F.cross_entropy(z, y).item())  # no teacher: the test loss


def test_teacher_errors_name_the_field(tiny):
    from softrepro.spec import SpecError, load_paper

    path = _with_student(tiny)
    good = path.read_text()
    for mutate, words in ((lambda s: s["experiments"]["student"].update(teacher="nope"), "unknown experiment 'nope'"),
                          (lambda s: s["experiments"]["tiny"].update(teacher="student"), "cycle"),
                          (lambda s: s["experiments"]["student"].update(train_subset=100), "reads other inputs")):
        spec = yaml.safe_load(path.read_text())
        mutate(spec)
        path.write_text(yaml.safe_dump(spec))
        with pytest.raises(SpecError, match=words) as err:
            load_paper(path, tiny)
        assert "teacher" in str(err.value)
        path.write_text(good)


def test_shift_images_moves_each_image_by_at_most_shift_and_fills_zeros():
    import torch

    from softrepro.train import shift_images

    torch.manual_seed(0)
    x = torch.zeros(64, 1, 9, 9)
    x[:, :, 4, 4] = 1.0  # one lit pixel in the middle
    y = shift_images(x, 2)
    assert y.shape == x.shape and torch.equal(y.sum((1, 2, 3)), torch.ones(64))  # nothing lost, nothing added
    where = y[:, 0].flatten(1).argmax(1)
    rows, cols = where // 9, where % 9
    assert rows.min() >= 2 and rows.max() <= 6 and cols.min() >= 2 and cols.max() <= 6
    assert len({(int(r), int(c)) for r, c in zip(rows, cols)}) > 10  # offsets differ per image
    edge = torch.ones(8, 5, 5)
    assert (shift_images(edge, 1) == 0).any()  # the uncovered border is zero


def test_train_classes_and_logit_shift(tiny):
    """A transfer set without a class, then the errors before and after raising that class's logit."""
    import torch

    from softrepro.train import shifted_errors

    spec = yaml.safe_load((tiny / "configs/papers/tinytest.yaml").read_text())
    spec["experiments"]["tiny"].update(train_classes={"exclude": [3]}, logit_shift={"classes": [3], "by": 50.0})
    (tiny / "configs/papers/tinytest.yaml").write_text(yaml.safe_dump(spec))
    rec = _run(tiny, tiny / "a")
    m = rec["metrics"]
    threes = m["test_errors_class_3"]
    assert threes > 0 and m["n_train"] < 600  # never trained on a 3: its test 3s are missed
    assert m["shifted_test_errors_class_3"] == 0  # +50 on the 3 logit: every 3 is called a 3 ...
    assert m["shifted_test_errors"] > m["test_errors"]  # ... and so are many other digits
    assert m["test_errors"] == round(m["n_test"] * (1 - m["test_accuracy"]))

    z = torch.tensor([[2.0, 0.0, 1.0], [0.0, 3.0, 2.5], [1.0, 0.0, 0.9]])
    out = shifted_errors(z, torch.tensor([2, 2, 0]), [2], 1.5)
    assert out == {"test_errors": 2, "test_error": 2 / 3, "test_errors_class_2": 2,
                   "shifted_test_errors": 1, "shifted_test_error": 1 / 3, "shifted_test_errors_class_2": 0}


def test_a_max_norm_mlp_trained_by_the_engine_keeps_its_bound_and_sgd_momentum_ramp_runs(tiny):
    """The dropout nets' recipe through the training loop: the MLP's max-norm constraint after every update
    (a bound far below where Adam/SGD would take the weights) and SGD under the momentum ramp."""
    import torch

    spec = yaml.safe_load((tiny / "configs/papers/tinytest.yaml").read_text())
    exp = spec["experiments"]["tiny"]
    exp["model"] = {"name": "mlp", "hidden": [32, 32], "input_dropout": 0.2, "dropout": 0.5, "init": "normal",
                    "init_std": 0.01, "max_sq_norm": 0.05}
    exp["optimizer"] = {"name": "sgd", "lr": 10.0, "momentum": 0.5}
    exp["schedule"] = {"name": "momentum_ramp", "epoch_steps": 5, "momentum": [0.5, 0.99], "ramp_epochs": 4,
                       "decay": 0.998}
    (tiny / "configs/papers/tinytest.yaml").write_text(yaml.safe_dump(spec))
    rec = _run(tiny, tiny / "a")
    assert rec["status"] == "ok" and rec["metrics"]["test_loss"] == rec["metrics"]["test_loss"]  # finite
    state = torch.load(tiny / "a" / "model.pt", weights_only=True)
    hidden = [v for k, v in state.items() if k.startswith("body.") and k.endswith(".weight")]
    assert len(hidden) == 2
    for w in hidden:
        assert float(w.square().sum(1).max()) <= 0.05 * (1 + 1e-5)
    assert float(state["readout.weight"].square().sum(1).max()) > 0.05  # the readout is free
