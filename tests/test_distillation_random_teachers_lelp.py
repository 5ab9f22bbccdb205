"""Random-teacher distillation (Sarnthein et al. 2023) and LELP (Loo et al. 2024): their losses, the l2
bottleneck, the student's interpolated initialisation, the linear probe, LELP's pseudo-subclass targets,
against cases worked out by hand; the official dinopl loss and bottleneck re-typed; both benchmarks on tiny
synthetic data; and a benchmark that declares a dataset reading it through the runner."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import REPO, synthetic_images, tiny_cfg, write_dataset
from softrepro.methods.distillation import lelp, random_teachers as rt
from softrepro.registry import NotRun

# ----------------------------------------------------------------------------- random teachers


def test_distillation_loss_by_hand():
    t = torch.tensor([[0.0, math.log(2.0)]])
    # p = (1/3, 2/3), q = (1/2, 1/2): CE = -(1/3 + 2/3) log(1/2) = log 2
    assert rt.distillation_loss(torch.zeros(1, 2), t, 1.0, 1.0).item() == pytest.approx(math.log(2.0))
    # teacher at 0.5: p = softmax(0, 2 log 2) = (1/5, 4/5); student (0, 2 log 2) at 2: q = (1/3, 2/3)
    s = torch.tensor([[0.0, 2 * math.log(2.0)]])
    expected = -(0.2 * math.log(1 / 3) + 0.8 * math.log(2 / 3))
    assert rt.distillation_loss(s, t, 0.5, 2.0).item() == pytest.approx(expected)


def _official_multicrop_ce(pred_logits, targ_logits):
    """dinopl/core.py multicrop_loss_clf (lines 358-406) for one crop with loss_pairing 'same', the head's
    temperatures already applied (core.py line 106): U.cross_entropy(log_softmax(pred), softmax(targ)) =
    sum(targ * -log_pred, -1) (dinopl/utils.py lines 20-21), mean over the batch."""
    log_preds = F.log_softmax(pred_logits, dim=-1)
    targs = torch.exp(F.log_softmax(targ_logits, dim=-1))
    return torch.sum(targs * -log_preds, dim=-1).mean(dim=-1)


def test_distillation_loss_matches_the_official_one():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(16, 50, generator=g), torch.randn(16, 50, generator=g)
    for tt, st in ((1.0, 1.0), (0.04, 0.1)):
        assert rt.distillation_loss(s, t, tt, st).item() == pytest.approx(_official_multicrop_ce(s / st, t / tt).item(), rel=1e-6)


def test_l2_bottleneck_by_hand():
    x = torch.tensor([[3.0, 4.0]])
    w1, b1 = torch.eye(2), torch.zeros(2)  # z = (3, 4) / 5 = (0.6, 0.8)
    v = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert rt.l2_bottleneck(x, w1, b1, v, False)[0].tolist() == pytest.approx([1.2, 0.8, 1.4])
    # unit-norm rows: (1, 0), (0, 1), (1, 1) / sqrt 2
    assert rt.l2_bottleneck(x, w1, b1, v, True)[0].tolist() == pytest.approx([0.6, 0.8, 1.4 / math.sqrt(2)])


def test_l2_bottleneck_without_weight_norm_is_what_the_official_code_computes():
    """dinopl/modules/l2bottleneck.py lines 63-76 with cfg '-/lb/fn/wn/l/-', where Linear.forward
    (dinopl/modules/linear.py lines 16-19) ignores the normalised weight it is passed: F.linear(x, self.weight,
    self.bias) in both layers, the feature normalisation x / max(||x||, 1e-12) between them."""
    g = torch.Generator().manual_seed(1)
    x, w1, b1, v = (torch.randn(5, 8, generator=g), torch.randn(4, 8, generator=g), torch.randn(4, generator=g),
                    torch.randn(7, 4, generator=g))
    h = F.linear(x, w1, b1)
    h = h / h.norm(2, -1, keepdim=True).clamp(min=1e-12).expand_as(h)
    official = F.linear(h, v, None)
    assert torch.allclose(rt.l2_bottleneck(x, w1, b1, v, False), official, atol=1e-6)


def test_interpolated_initialisation():
    p = {**rt.DEFAULTS, "encoder_kind": "mlp", "encoder": [6], "hidden": [5], "bottleneck": 4, "out_dim": 3}
    torch.manual_seed(0)
    t, f, s = rt.Model(9, p), rt.Model(9, p), rt.Model(9, p)
    rt.interpolate_init(s, t, f, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(s.parameters(), t.parameters()))
    rt.interpolate_init(s, t, f, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(s.parameters(), f.parameters()))
    rt.interpolate_init(s, t, f, 0.5)  # (0.5 t + 0.5 f) / sqrt(0.5) = (t + f) / sqrt(2)
    assert all(torch.allclose(a, (b + c) / math.sqrt(2)) for a, b, c in zip(s.parameters(), t.parameters(), f.parameters()))


def test_conv_encoder_shape_and_init():
    enc = rt.ConvEncoder(28 * 28, [16, 16, 16])
    assert enc.embed_dim == 64
    assert enc(torch.randn(3, 784)).shape == (3, 64)
    conv = [m for m in enc.modules() if isinstance(m, torch.nn.Conv2d)][1]
    # Kaiming normal, fan_out = 16 * 3 * 3, relu gain sqrt 2: std sqrt(2 / 144)
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / 144), rel=0.1)


def test_distill_trains_the_student_only():
    p = {**rt.DEFAULTS, "encoder_kind": "mlp", "encoder": [8], "hidden": [8], "bottleneck": 4, "out_dim": 6,
         "steps": 5, "batch_size": 4, "log_every": 2}
    torch.manual_seed(0)
    t, f, s = rt.Model(10, p), rt.Model(10, p), rt.Model(10, p)
    t.requires_grad_(False)
    rt.interpolate_init(s, t, f, 0.1)
    before_t = [q.clone() for q in t.parameters()]
    before_s = [q.clone() for q in s.parameters()]
    losses = rt.distill(s, t, torch.randn(12, 10), p, seed=0)
    assert len(losses) == 3  # steps 2, 4 and the last
    assert all(torch.equal(a, b) for a, b in zip(before_t, t.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before_s, s.parameters()))


def test_linear_probe_separable_and_constant_features():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (300,), generator=g)
    f = torch.randn(300, 4, generator=g) * 0.1
    f[:, :3] += 5 * F.one_hot(y, 3)  # one informative feature per class
    f[:, 3] = 7.0  # zero variance: left unscaled, no NaN
    acc = rt.linear_probe(f[:200], y[:200], f[200:], y[200:], 3, epochs=50, batch=64, seed=0)
    assert acc == pytest.approx(1.0)
    noise = torch.randn(300, 4, generator=g)
    acc = rt.linear_probe(noise[:200], y[:200], noise[200:], y[200:], 3, epochs=20, batch=64, seed=0)
    assert acc < 0.6


def _images(n_train=300, n_test=100):
    (xtr, ytr), (xte, yte) = synthetic_images(n_train, 0), synthetic_images(n_test, 1)
    return {"train": (xtr, ytr.astype(np.int64)), "test": (xte, yte.astype(np.int64))}


RT_TINY = {"hidden": [16, 16], "bottleneck": 8, "out_dim": 32, "steps": 3, "batch_size": 32, "probe_train": 200,
           "probe_epochs": 2, "log_every": 1, "encoder": [4, 4]}


def test_random_teacher_benchmark_runs():
    m, rows = rt.run_benchmark({**RT_TINY, "data": _images()}, seed=0)
    for key in ("probe_input", "probe_teacher", "probe_student_data", "probe_student_gaussian"):
        assert 0.0 <= m[key] <= 1.0
    assert m["gain_data"] == pytest.approx(m["probe_student_data"] - m["probe_teacher"])
    assert m["gain_gaussian"] == pytest.approx(m["probe_student_gaussian"] - m["probe_teacher"])
    assert [r["step"] for r in rows] == [1, 2, 3] and {"loss_data", "loss_gaussian"} <= set(rows[0])
    again, _ = rt.run_benchmark({**RT_TINY, "data": _images()}, seed=0)
    assert again == m  # deterministic for a seed
    other, _ = rt.run_benchmark({**RT_TINY, "data": _images()}, seed=1)
    assert other["probe_teacher"] != m["probe_teacher"]  # another seed, another random teacher


def test_random_teacher_needs_data_and_known_inputs():
    with pytest.raises(NotRun):
        rt.run_benchmark(dict(RT_TINY), seed=0)
    with pytest.raises(ValueError, match="unknown inputs"):
        rt.run_benchmark({**RT_TINY, "inputs": ["uniform"], "data": _images()}, seed=0)


# ----------------------------------------------------------------------------- LELP


def test_null_space_projection():
    h = torch.tensor([[1.0, 2.0, 3.0]])
    assert lelp.null_space_projection(h, torch.tensor([[1.0, 0.0, 0.0]]))[0].tolist() == pytest.approx([0.0, 2.0, 3.0])
    g = torch.Generator().manual_seed(0)
    w, h = torch.randn(2, 5, generator=g, dtype=torch.float64), torch.randn(10, 5, generator=g, dtype=torch.float64)
    p = lelp.null_space_projection(h, w)
    assert torch.allclose(p @ w.T, torch.zeros(10, 2, dtype=torch.float64), atol=1e-12)  # no logit left
    assert torch.allclose(lelp.null_space_projection(p, w), p, atol=1e-12)  # idempotent


def test_haar_rotation_is_orthogonal():
    q = lelp.haar_orthogonal(5, torch.Generator().manual_seed(0))
    assert torch.allclose(q.T @ q, torch.eye(5, dtype=q.dtype), atol=1e-12)


# class 0 spreads along e1 (variance 2) and e2 (0.5) around 0; class 1 along e1 (0.5) and e2 (0.125) around (2, 0)
H = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 1.0], [0.0, -1.0], [3.0, 0.0], [1.0, 0.0], [2.0, 0.5], [2.0, -0.5]])
Y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])


def test_class_directions_by_hand():
    mu, u = lelp.class_directions(H.double(), Y, 2, 2, rotate=False, generator=torch.Generator().manual_seed(0))
    assert mu.tolist() == [[0.0, 0.0], [2.0, 0.0]]
    assert torch.allclose(u[0], torch.eye(2, dtype=torch.float64)) and torch.allclose(u[1], torch.eye(2, dtype=torch.float64))
    _, ur = lelp.class_directions(H.double(), Y, 2, 2, rotate=True, generator=torch.Generator().manual_seed(0))
    for c in range(2):  # a rotation within the same subspace: U U^T unchanged, columns orthonormal
        assert torch.allclose(ur[c] @ ur[c].T, u[c] @ u[c].T, atol=1e-12)
        assert torch.allclose(ur[c].T @ ur[c], torch.eye(2, dtype=torch.float64), atol=1e-12)


def test_lelp_targets_by_hand():
    logits = torch.zeros(8, 2)
    logits[0] = torch.tensor([math.log(3.0), 0.0])  # p_T = (3/4, 1/4) for the first image
    tgt = lelp.lelp_targets(H, logits, Y, torch.zeros(2, 2), S=2, beta=1.0, null_space=False, rotate=False)
    # image (2, 0): class-0 coordinates (2, 0), sigma_0 = sqrt((4 + 4 + 1 + 1) / 8) = sqrt(1.25);
    # q(. | 0) = softmax(2 / sqrt 1.25, 0); class-1 coordinates (0, 0): q(. | 1) = (1/2, 1/2)
    a = 2 / math.sqrt(1.25)
    q0 = 1 / (1 + math.exp(-a))
    assert tgt[0].tolist() == pytest.approx([0.75 * q0, 0.75 * (1 - q0), 0.125, 0.125])
    # image (0, 1): class 1's coordinates (-2, 1) / sigma_1, sigma_1 = sqrt((1 + 1 + 0.25 + 0.25) / 8)
    s1 = math.sqrt(2.5 / 8)
    b = 1 / (1 + math.exp(-(1 + 2) / s1))
    c0 = 1 / (1 + math.exp(1 / math.sqrt(1.25)))
    assert tgt[2].tolist() == pytest.approx([0.5 * c0, 0.5 * (1 - c0), 0.5 * (1 - b), 0.5 * b])
    # a colder beta sharpens the within-class split
    cold = lelp.lelp_targets(H, logits, Y, torch.zeros(2, 2), S=2, beta=0.5, null_space=False, rotate=False)
    assert cold[0, 0] > tgt[0, 0]


def test_lelp_targets_keep_the_teacher_class_marginal():
    g = torch.Generator().manual_seed(0)
    h, logits, w = torch.randn(40, 6, generator=g), torch.randn(40, 3, generator=g), torch.randn(3, 6, generator=g)
    y = torch.arange(40) % 3
    tgt = lelp.lelp_targets(h, logits, y, w, S=2, beta=0.7, generator=torch.Generator().manual_seed(1))
    assert tgt.shape == (40, 6)
    assert torch.allclose(tgt.reshape(40, 3, 2).sum(-1), torch.softmax(logits.double(), -1), atol=1e-12)
    with pytest.raises(ValueError, match="dimensions"):
        lelp.lelp_targets(h, logits, y, w, S=7, beta=1.0)


def test_subclass_predictions_sum_within_a_class():
    probs = torch.tensor([[0.4, 0.0, 0.3, 0.3], [0.1, 0.6, 0.2, 0.1]])
    logits = torch.log(probs + 1e-12)
    assert lelp.subclass_predictions(logits, 2).tolist() == [1, 0]  # row 0: class 1 (0.6) though (0, 0) is the top cell


def test_kd_soft_loss_by_hand():
    teacher, student = torch.zeros(1, 2), torch.tensor([[math.log(3.0), 0.0]])
    # T = 1: KL((1/2, 1/2) || (3/4, 1/4)) = 0.5 log(2/3) + 0.5 log 2
    assert lelp.kd_soft_loss(student, teacher, 1.0).item() == pytest.approx(0.5 * math.log(2 / 3) + 0.5 * math.log(2))
    # T = 2: q = (sqrt 3, 1) / (sqrt 3 + 1); times T^2 = 4
    q = math.sqrt(3) / (math.sqrt(3) + 1)
    assert lelp.kd_soft_loss(student, teacher, 2.0).item() == pytest.approx(4 * (0.5 * math.log(0.5 / q) + 0.5 * math.log(0.5 / (1 - q))), rel=1e-5)


def test_soft_ce_by_hand():
    assert lelp.soft_ce(torch.zeros(1, 4), torch.tensor([[0.5, 0.5, 0.0, 0.0]])).item() == pytest.approx(math.log(4))


def test_binary_task_and_purity():
    x = np.arange(10 * 4, dtype=np.uint8).reshape(10, 2, 2)
    data = {"train": (x, np.arange(10)), "test": (x, np.arange(10))}
    xtr, ytr, xte, yte = lelp.binary_task(data, [[0, 1], [5]], None, None)
    assert sorted(ytr.tolist()) == [0, 0, 1] and yte.tolist() == [0, 0, 1]  # labels 2-4 and 6-9 dropped
    assert xte.shape == (3, 1, 2, 2) and xte.max() <= 1.0
    orig = lelp._original_labels(data, [[0, 1], [5]], None)  # the kept images' 10-class labels, in binary_task's order
    assert sorted(orig.tolist()) == [0, 1, 5] and [int(v == 5) for v in orig.tolist()] == ytr.tolist()
    cls, sub = torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 1, 0])
    assert lelp._purity(sub, cls, torch.tensor([3, 3, 4, 7])) == pytest.approx(1.0)
    assert lelp._purity(sub, cls, torch.tensor([3, 5, 4, 7])) == pytest.approx(0.75)


LELP_TINY = {"groups": [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]], "train_subset": 300, "teacher_steps": 3, "student_steps": 3,
             "batch_size": 32, "teacher": {"channels": [4], "kernel": 3, "hidden": 16}, "student_hidden": [16],
             "subclasses": 3}


def test_lelp_benchmark_runs():
    m, rows = lelp.run_benchmark({**LELP_TINY, "data": _images()}, seed=0)
    assert rows == []
    for arm in ("teacher", "ce", "kd", "lelp"):
        assert 0.0 <= m[f"test_accuracy_{arm}"] <= 1.0
        assert m[f"test_error_{arm}"] == pytest.approx(1.0 - m[f"test_accuracy_{arm}"])
    assert 0.0 <= m["lelp_target_entropy"] <= math.log(3) + 1e-9
    assert 0.0 < m["lelp_subclass_purity"] <= 1.0
    again, _ = lelp.run_benchmark({**LELP_TINY, "data": _images()}, seed=0)
    assert again == m
    with pytest.raises(NotRun):
        lelp.run_benchmark(dict(LELP_TINY), seed=0)


# ----------------------------------------------------------------------------- a benchmark that reads a dataset


def _benchmark_project(tmp_path: Path, available: bool) -> tuple[Path, Path]:
    """A minimal root: the checkout's scales and schemas, a tiny IDX dataset and its marker, one spec whose
    benchmark experiment declares that dataset."""
    root = tmp_path / "root"
    (root / "configs").mkdir(parents=True)
    for sub in ("scales", "schemas"):
        (root / "configs" / sub).symlink_to(REPO / "configs" / sub)
    digests = write_dataset(root / "data" / "tiny", n_train=300, n_test=100)
    (root / "configs" / "datasets.yaml").write_text(yaml.safe_dump({"tiny": tiny_cfg(digests)}))
    marker = root / "results" / "datasets" / "tiny.json"
    marker.parent.mkdir(parents=True)
    marker.write_text(json.dumps({"dataset": "tiny", "available": available, "reason": None if available else "dataset unavailable (test)"}))
    spec = {"id": "rt-probe", "title": "t", "authors": ["t"], "arxiv": "0000.00000", "year": 2023, "code": "none", "protocol_sources": [], "family": "distillation", "seed_files": [],
            "experiments": {"rt": {"kind": "benchmark", "cores": 1, "dataset": "tiny",
                                   "benchmark": {"name": "random_teacher", **RT_TINY},
                                   "deviations": ["stand-in: a test"]}},
            "claims": [{"id": "c", "text": "t", "source": "t", "kind": "qualitative", "metric": {"a": "probe_student_data", "b": "probe_teacher"},
                        "unit": "percent", "experiments": {"a": "rt", "b": "rt"}, "direction": "greater", "faithful_scales": []}]}
    path = root / "configs" / "papers" / "rt-probe.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(spec))
    return root, path


def test_runner_hands_a_benchmark_its_declared_dataset(tmp_path):
    from softrepro.runner import run_job
    from softrepro.spec import experiment_datasets, load_paper, resolve_experiment

    root, path = _benchmark_project(tmp_path, available=True)
    paper = load_paper(path, root)
    assert experiment_datasets(resolve_experiment(paper.experiments["rt"], "smoke")) == ("tiny",)  # a DAG input
    rec = run_job(path, "rt", 0, "smoke", tmp_path / "out", root, progress=False, log=lambda m: None)
    assert rec["status"] == "ok" and rec["dataset"]["dataset"] == "tiny"
    assert 0.0 <= rec["metrics"]["probe_teacher"] <= 1.0


def test_runner_reports_a_benchmark_whose_dataset_is_unavailable(tmp_path):
    from softrepro.runner import run_job

    root, path = _benchmark_project(tmp_path, available=False)
    rec = run_job(path, "rt", 0, "smoke", tmp_path / "out", root, progress=False, log=lambda m: None)
    assert rec["status"] == "not_run" and rec["reason"] == "dataset unavailable (test)"


def test_spec_rejects_a_benchmark_with_an_unknown_dataset(tmp_path):
    from softrepro.spec import SpecError, load_paper

    root, path = _benchmark_project(tmp_path, available=True)
    doc = yaml.safe_load(path.read_text())
    doc["experiments"]["rt"]["dataset"] = "nope"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(SpecError, match="unknown dataset 'nope'"):
        load_paper(path, root)


@pytest.mark.parametrize("pid", ["sarnthein2023-random-teachers", "loo2024-lelp"])
def test_spec_claims_are_stand_in_directions_or_not_run(pid):
    from softrepro.spec import evidence_level, load_paper, resolve_experiment

    paper = load_paper(REPO / "configs" / "papers" / f"{pid}.yaml", REPO)
    for claim in paper.claims:
        resolved = [resolve_experiment(paper.experiments[e], "cpu") for e in claim["experiments"].values()]
        if any(r.get("skip") for r in resolved):  # a table that cannot run here: its published pair is kept
            assert "unavailable" in resolved[0]["skip"] and claim["published"] is not None
            continue
        assert evidence_level(resolved) == "stand-in" and claim["faithful_scales"] == []
        assert claim["kind"] == "qualitative" and claim["direction"] in ("greater", "less")
        assert all(r.get("dataset") for r in resolved)  # read through the DAG's dataset rule
