"""Fine-tuning with generated auxiliary outliers (Liu et al. 2020's energy-bounded fine-tuning and
the outlier exposure it is compared with): the losses against their formulas on hand-computed
cases, the generated outliers, and a run that starts from its teacher's trained weights."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from softrepro.ood import auxiliary_outliers
from softrepro.registry import LOSSES

from conftest import write_dataset

# ---------------------------------------------------------------- losses, by hand


def test_energy_margin_loss_by_hand():
    loss = LOSSES.get("energy_margin")(m_in=-1.0, m_out=0.0, weight=0.1)
    z_in = torch.tensor([[0.0, 0.0], [3.0, 0.0]], dtype=torch.float64)
    z_out = torch.tensor([[0.0, 0.0], [-5.0, -5.0]], dtype=torch.float64)
    y = torch.tensor([0, 0])
    # E = -logsumexp: in -log 2 (above m_in = -1 by 1 - log 2) and -log(e^3 + 1) (below: no penalty);
    # out -log 2 (below m_out = 0 by log 2) and 5 - log 2 (above: no penalty)
    ce = (math.log(2) + math.log(1 + math.exp(-3))) / 2
    hinge = (1 - math.log(2)) ** 2 / 2 + math.log(2) ** 2 / 2
    assert loss(z_in, y, None, outliers=z_out).item() == pytest.approx(ce + 0.1 * hinge, rel=1e-12)
    assert loss(z_in, y, None).item() == pytest.approx(ce, rel=1e-12)  # no outliers: the test loss is CE


def test_outlier_exposure_loss_by_hand():
    loss = LOSSES.get("outlier_exposure")(weight=0.5)
    z_in = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    z_out = torch.tensor([[1.0, 3.0], [0.0, 0.0]], dtype=torch.float64)
    # cross-entropy to the uniform distribution: logsumexp - mean logit = log(e + e^3) - 2, and log 2
    uniform_ce = (math.log(math.e + math.e ** 3) - 2 + math.log(2)) / 2
    ce = math.log(1 + math.exp(-2))
    assert loss(z_in, torch.tensor([0]), None, outliers=z_out).item() == pytest.approx(ce + 0.5 * uniform_ce, rel=1e-12)
    with pytest.raises(ValueError, match="weight must be a number"):
        LOSSES.get("outlier_exposure")(weight="0.5")


# ---------------------------------------------------------------- generated outliers


def test_each_outlier_transform_against_its_definition():
    from scipy.ndimage import gaussian_filter

    torch.manual_seed(0)
    x = torch.rand(6, 1, 28, 28, dtype=torch.float64)
    p = auxiliary_outliers(x, ["permute"])
    for a, b in zip(x, p):  # the same pixel values, elsewhere
        assert torch.equal(a.flatten().sort().values, b.flatten().sort().values) and not torch.equal(a, b)
    b = auxiliary_outliers(x, ["blur"], blur_sigma=1.0)
    want = np.stack([gaussian_filter(im[0].numpy(), 1.0, mode="constant", truncate=3.0) for im in x])
    assert np.allclose(b[:, 0].numpy(), want)
    t = auxiliary_outliers(x, ["tiles"], tile=7)

    def tiles(im):
        return sorted(tuple(im[0, r:r + 7, c:c + 7].flatten().tolist()) for r in range(0, 28, 7) for c in range(0, 28, 7))

    for a, c in zip(x, t):  # the same 16 tiles, reordered
        assert tiles(a) == tiles(c) and not torch.equal(a, c)


def test_outliers_mix_the_transforms_and_follow_the_seed():
    x = torch.rand(200, 1, 28, 28)
    torch.manual_seed(1)
    a = auxiliary_outliers(x, ["permute", "blur", "tiles"])
    torch.manual_seed(1)
    assert torch.equal(a, auxiliary_outliers(x, ["permute", "blur", "tiles"]))
    blurred = (a.flatten(1).std(1) < 0.5 * x.flatten(1).std(1)).sum()
    assert 40 < blurred < 100  # about a third of them are blurred (U[0, 1] images lose most of their spread)
    with pytest.raises(ValueError, match="unknown outlier transform"):
        auxiliary_outliers(x, ["rotate"])
    with pytest.raises(ValueError, match="image inputs"):
        auxiliary_outliers(x.flatten(1), ["permute"])
    with pytest.raises(ValueError, match="do not divide"):
        auxiliary_outliers(x, ["tiles"], tile=5)


# ---------------------------------------------------------------- fine-tuning from the teacher's weights

SEEN: list[tuple] = []


def _spy():
    def fn(logits, targets, model=None, outliers=None):
        if outliers is not None:
            SEEN.append((tuple(logits.shape), tuple(outliers.shape)))
        return F.cross_entropy(logits, targets)

    fn.takes_outliers = True
    return fn


if "test_outlier_spy" not in LOSSES._items:
    LOSSES.register("test_outlier_spy")(_spy)

BASE = {"kind": "train", "dataset": "fashion-mnist", "model": {"name": "mlp", "hidden": [16]},
        "loss": {"name": "softmax_ce"}, "optimizer": {"name": "adam", "lr": 0.003},
        "batch_size": 32, "steps": 20, "log_every": 5, "deviations": ["cut: test fixture"]}
FT = {**BASE, "teacher": "base", "teacher_init": True, "steps": 4,
      "loss": {"name": "energy_margin", "m_in": -5.0, "m_out": -1.0, "weight": 0.1},
      "optimizer": {"name": "sgd", "lr": 1.0e-30},  # below half an ulp of every float32 weight: no step moves one
      "outliers": {"transforms": ["permute", "blur", "tiles"], "batch": 8}}


@pytest.fixture
def ft_project(project):
    write_dataset(project / "data" / "fashion-mnist")
    marker = project / "results" / "datasets" / "fashion-mnist.json"
    marker.parent.mkdir(parents=True)
    marker.write_text(json.dumps({"dataset": "fashion-mnist", "available": True}))
    return project


def _spec(root, **experiments):
    spec = {"id": "fttest", "title": "t", "arxiv": "0000.00000", "year": 2020, "family": "ood",
            "seed_files": ["004_d8336d9b28eee527.txt"], "experiments": {"base": BASE, **experiments},
            "claims": [{"id": "c", "text": "t", "source": "none", "kind": "value", "metric": "test_accuracy",
                        "unit": "percent", "experiment": "base", "published": 50.0, "tolerance": {"abs": 1},
                        "faithful_scales": []}]}
    path = root / "configs" / "papers" / "fttest.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _metrics(root, path, experiment, seed=0):
    from softrepro.layout import Layout
    from softrepro.spec import load_paper, resolve_experiment, run_key

    key = run_key(resolve_experiment(load_paper(path, root).experiments[experiment], "smoke"))
    return json.loads((root / Layout("results", "smoke").cache_run(key, seed) / "metrics.json").read_text())


def test_fine_tuning_starts_from_the_teachers_weights_and_trains_on_outliers(ft_project):
    from softrepro.runner import run_pool

    root, quiet = ft_project, dict(progress=False, log=lambda m: None)
    path = _spec(root, frozen=FT, spy={**FT, "loss": {"name": "test_outlier_spy"}, "optimizer": {"name": "sgd", "lr": 0.05}},
                 moved={**FT, "optimizer": {"name": "sgd", "lr": 0.05}})
    run_pool([(path, "base")], [0], "smoke", "b", root, **quiet)
    SEEN.clear()
    run_pool([(path, "frozen"), (path, "spy"), (path, "moved")], [0], "smoke", "f", root, **quiet)
    base, frozen, moved = (_metrics(root, path, e)["metrics"] for e in ("base", "frozen", "moved"))
    # a learning rate too small to move a float32 weight: the fine-tuned model is still the teacher's, to the last bit
    assert frozen["test_accuracy"] == base["test_accuracy"] and frozen["test_loss"] == base["test_loss"]
    assert moved["test_loss"] != base["test_loss"] and moved["test_accuracy"] > 0.3
    assert _metrics(root, path, "moved")["teacher"]["experiment"] == "base"
    assert SEEN == [((32, 10), (8, 10))] * 4  # every step: 32 in-distribution logits and 8 outliers' (10 classes)


def test_fine_tuning_errors_say_what_is_wrong(ft_project):
    from softrepro.runner import run_pool

    root, quiet = ft_project, dict(progress=False, log=lambda m: None)
    path = _spec(root, wider={**FT, "model": {"name": "mlp", "hidden": [24]}},
                 bare={**FT, "outliers": None},
                 plain={**FT, "loss": {"name": "softmax_ce"}})
    spec = yaml.safe_load(path.read_text())
    del spec["experiments"]["bare"]["outliers"]
    path.write_text(yaml.safe_dump(spec))
    run_pool([(path, "base")], [0], "smoke", "b", root, **quiet)
    for name, words in (("wider", "teacher_init: the teacher 'base' has the model"),
                        ("bare", "needs an 'outliers' section"), ("plain", "does not use auxiliary outliers")):
        with pytest.raises(ValueError, match=words):
            run_pool([(path, name)], [0], "smoke", name, root, **quiet)
