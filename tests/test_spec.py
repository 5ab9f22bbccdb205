from pathlib import Path

import pytest
import yaml

from softrepro.spec import SpecError, load_paper, load_papers, load_scale, resolve_experiment

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
