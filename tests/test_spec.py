from pathlib import Path

import pytest
import yaml

from softrepro.spec import SpecError, load_paper, load_papers, load_scale, resolve_experiment, run_key

from conftest import REPO


def test_every_committed_spec_is_valid():
    papers = load_papers("all", REPO)
    assert papers, "no paper specs found"
    for paper in papers:
        for claim in paper.claims:
            assert claim["source"].strip()


def _broken(tmp_path, mutate) -> Path:
    doc = yaml.safe_load((REPO / "configs/papers/agarap2017-cnn-svm.yaml").read_text())
    mutate(doc)
    path = tmp_path / "agarap2017-cnn-svm.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize("mutate, field, words", [
    (lambda d: d.pop("arxiv"), "(top level)", "'arxiv' is a required property"),
    (lambda d: d["claims"][1].update(published="ninety"), "claims[1].published", "ninety"),
    (lambda d: d["claims"][0].update(kind="vibes"), "claims[0].kind", "vibes"),
    (lambda d: d["claims"][2]["experiments"].update(b="nope"), "claims[2].experiments.b", "unknown experiment 'nope'"),
    (lambda d: d["experiments"]["fmnist-svm"]["loss"].update(name="hinge9"), "experiments.fmnist-svm.loss.name", "unknown loss 'hinge9'"),
    (lambda d: d["experiments"]["fmnist-softmax"].update(dataset="imagenet"), "experiments.fmnist-softmax.dataset", "unknown dataset"),
    (lambda d: d["experiments"]["fmnist-softmax"]["scales"]["cpu"].update(steps="many"),
     "experiments.fmnist-softmax(scale=cpu).steps", "'many' is not of type 'integer'"),
    (lambda d: d["claims"][0].update(tolerance={"abs": 1, "rel": 1}), "claims[0].tolerance", "too many properties"),
])
def test_malformed_spec_names_file_and_field(tmp_path, mutate, field, words):
    path = _broken(tmp_path, mutate)
    with pytest.raises(SpecError) as err:
        load_paper(path, REPO)
    msg = str(err.value)
    assert str(path) in msg
    assert f": {field}:" in msg, msg
    assert words in msg, msg


def test_invalid_yaml_names_file(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("id: [unclosed\n")
    with pytest.raises(SpecError, match=r"x\.yaml: \(yaml\)"):
        load_paper(path, REPO)


def test_unknown_scale_is_an_error():
    with pytest.raises(SpecError, match="unknown scale 'huge'"):
        load_scale("huge", REPO)


def test_resolve_merges_overrides_and_deviations():
    exp = {"kind": "train", "steps": 100, "model": {"name": "m", "hidden": 8}, "deviations": ["a"],
           "scales": {"cpu": {"steps": 10, "model": {"hidden": 4}, "deviations": ["b"]}}}
    cpu = resolve_experiment(exp, "cpu")
    assert cpu["steps"] == 10 and cpu["model"] == {"name": "m", "hidden": 4} and cpu["deviations"] == ["a", "b"]
    assert "scales" not in cpu
    assert resolve_experiment(exp, "paper")["steps"] == 100
    assert exp["scales"]["cpu"]["deviations"] == ["b"]  # the spec itself is not mutated


def _paper(tmp_path, experiments, claims=None, name="tinyspec"):
    doc = {"id": name, "title": "t", "arxiv": "0000.00000", "year": 2020, "seed_files": ["004_d8336d9b28eee527.txt"],
           "experiments": experiments,
           "claims": claims or [{"id": "c", "text": "t", "source": "s", "kind": "qualitative", "metric": "test_accuracy",
                                 "unit": "percent", "experiments": {"a": next(iter(experiments)), "b": next(iter(experiments))},
                                 "direction": "greater", "faithful_scales": []}]}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_protocol_fills_in_and_deviations_concatenate(tmp_path):
    p = load_paper(_paper(tmp_path, {"x": {"kind": "train", "protocol": "fmnist-mlp", "loss": {"name": "poly1", "epsilon": 1.0},
                                           "deviations": ["mine"], "scales": {"cpu": {"deviations": ["mine at cpu"]}}}}), REPO)
    cpu = resolve_experiment(p.experiments["x"], "cpu")
    assert cpu["dataset"] == "fashion-mnist" and cpu["loss"] == {"name": "poly1", "epsilon": 1.0}
    assert cpu["steps"] == 3000  # the protocol's cpu override
    assert cpu["deviations"][0].startswith("shared stand-in protocol") and cpu["deviations"][1] == "mine"
    assert cpu["deviations"][-2:] == [d for d in cpu["deviations"] if d.startswith("cpu:")] + ["mine at cpu"]


def test_unknown_protocol_names_the_field(tmp_path):
    with pytest.raises(SpecError, match=r"experiments\.x\.protocol: no protocol 'nope'"):
        load_paper(_paper(tmp_path, {"x": {"kind": "train", "protocol": "nope", "deviations": []}}), REPO)


def test_shared_runs_have_one_key_and_a_changed_loss_gets_another(tmp_path):
    exps = {"ce": {"kind": "train", "protocol": "fmnist-mlp", "deviations": ["paper A's words"]},
            "ce2": {"kind": "train", "protocol": "fmnist-mlp", "deviations": ["paper B's words"], "description": "other"},
            "ls": {"kind": "train", "protocol": "fmnist-mlp", "loss": {"name": "label_smoothing", "alpha": 0.1}, "deviations": []}}
    p = load_paper(_paper(tmp_path, exps), REPO)
    key = {n: run_key(resolve_experiment(e, "cpu")) for n, e in p.experiments.items()}
    assert key["ce"] == key["ce2"] != key["ls"]
    assert key["ce"] != run_key(resolve_experiment(p.experiments["ce"], "smoke"))
    assert key["ls"].startswith("fashion-mnist-label-smoothing-")


def test_matrix_expands_and_cuts_per_scale(tmp_path):
    exps = {"g": {"kind": "train", "protocol": "fmnist-mlp", "deviations": [],
                  "matrix": {"loss": {"ce": {}, "mae": {"loss": {"name": "mae"}}},
                             "noise": {"clean": {}, "sym40": {"noise": {"kind": "symmetric", "rate": 0.4}}}},
                  "scales": {"cpu": {"matrix": {"noise": ["sym40"]}}}}}
    claims = [{"id": "c", "text": "t", "source": "s", "kind": "qualitative", "metric": "test_accuracy", "unit": "percent",
               "experiments": {"a": "g-mae-clean", "b": "g-ce-clean"}, "direction": "greater", "faithful_scales": []}]
    path = _paper(tmp_path, exps, claims)
    p = load_paper(path, REPO)
    assert sorted(p.experiments) == ["g-ce-clean", "g-ce-sym40", "g-mae-clean", "g-mae-sym40"]
    assert p.experiments["g-mae-sym40"]["loss"] == {"name": "mae"}
    assert resolve_experiment(p.experiments["g-mae-clean"], "cpu").get("grid_cut") is True
    assert not resolve_experiment(p.experiments["g-mae-clean"], "paper").get("grid_cut")
    bad = yaml.safe_load(path.read_text())
    bad["experiments"]["g"]["scales"]["cpu"]["matrix"]["noise"] = ["sym99"]
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(SpecError, match=r"experiments\.g\.scales\.cpu\.matrix\.noise: unknown labels \['sym99'\]"):
        load_paper(path, REPO)


def test_grid_cut_experiments_are_not_planned_and_their_claims_say_so():
    from softrepro.aggregate import judge_claims
    from softrepro.plan import build

    import pandas as pd

    plan = build("cpu", "ma2020-normalized-losses", REPO)
    planned = {j.experiment for j in plan.jobs}
    assert "grid-fmnist-ce-sym80" in planned and not any("mnist-" in e and "fmnist" not in e for e in planned)
    claims = judge_claims(plan.papers, pd.DataFrame(columns=["paper", "experiment", "seed", "status"]), plan.scale)
    row = claims.set_index("claim").loc["apl-beats-ce-mnist-sym80"]
    assert row["verdict"].startswith("not run: ") and "not in the cpu grid" in row["verdict"]
