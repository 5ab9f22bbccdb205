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
    exp = {"kind": "train", "steps": 100, "model": {"name": "m", "hidden": 8}, "deviations": ["minor: a"],
           "scales": {"cpu": {"steps": 10, "model": {"hidden": 4}, "deviations": ["cut: b"]}}}
    cpu = resolve_experiment(exp, "cpu")
    assert cpu["steps"] == 10 and cpu["model"] == {"name": "m", "hidden": 4} and cpu["deviations"] == ["minor: a", "cut: b"]
    assert "scales" not in cpu
    assert resolve_experiment(exp, "paper")["steps"] == 100
    assert exp["scales"]["cpu"]["deviations"] == ["cut: b"]  # the spec itself is not mutated


def _paper(tmp_path, experiments, claims=None, name="tinyspec"):
    doc = {"id": name, "title": "t", "arxiv": "0000.00000", "year": 2020, "family": "losses", "seed_files": ["004_d8336d9b28eee527.txt"],
           "experiments": experiments,
           "claims": claims or [{"id": "c", "text": "t", "source": "s", "kind": "qualitative", "metric": "test_accuracy",
                                 "unit": "percent", "experiments": {"a": next(iter(experiments)), "b": next(iter(experiments))},
                                 "direction": "greater", "faithful_scales": []}]}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_protocol_fills_in_and_deviations_concatenate(tmp_path):
    p = load_paper(_paper(tmp_path, {"x": {"kind": "train", "protocol": "fmnist-mlp", "loss": {"name": "poly1", "epsilon": 1.0},
                                           "deviations": ["minor: mine"], "scales": {"cpu": {"deviations": ["cut: mine at cpu"]}}}}), REPO)
    cpu = resolve_experiment(p.experiments["x"], "cpu")
    assert cpu["dataset"] == "fashion-mnist" and cpu["loss"] == {"name": "poly1", "epsilon": 1.0}
    assert cpu["steps"] == 3000  # the protocol's cpu override
    assert cpu["deviations"][0].startswith("stand-in: shared stand-in protocol") and cpu["deviations"][1] == "minor: mine"
    assert cpu["deviations"][-2:] == ["cut: 3,000 steps (6.4 epochs) instead of 14,000", "cut: mine at cpu"]


def test_unknown_protocol_names_the_field(tmp_path):
    with pytest.raises(SpecError, match=r"experiments\.x\.protocol: no protocol 'nope'"):
        load_paper(_paper(tmp_path, {"x": {"kind": "train", "protocol": "nope", "deviations": []}}), REPO)


def test_shared_runs_have_one_key_and_a_changed_loss_gets_another(tmp_path):
    exps = {"ce": {"kind": "train", "protocol": "fmnist-mlp", "deviations": ["minor: paper A's words"]},
            "ce2": {"kind": "train", "protocol": "fmnist-mlp", "deviations": ["minor: paper B's words"], "description": "other"},
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
    claims, _ = judge_claims(plan.papers, pd.DataFrame(columns=["paper", "experiment", "seed", "status"]), plan.scale)
    row = claims.set_index("claim").loc["apl-beats-ce-mnist-sym80"]
    assert row["verdict"].startswith("not run: ") and "not in the cpu grid" in row["verdict"]


def _agarap(tmp_path, mutate, text=None) -> Path:
    """The committed Agarap 2017 spec, mutated; or ``text`` edited as YAML source."""
    if text is not None:
        path = tmp_path / "agarap2017-cnn-svm.yaml"
        path.write_text(text((REPO / "configs/papers/agarap2017-cnn-svm.yaml").read_text()))
        return path
    return _broken(tmp_path, mutate)


@pytest.mark.parametrize("mutate, field, words", [
    # a tolerance band that contains 0: no outcome could refute the claimed difference
    (lambda d: d["claims"][2].update(tolerance={"abs": 1.2}), "claims[2].tolerance", "contains 0"),
    (lambda d: d["claims"][5].update(tolerance={"rel": 1.0}), "claims[5].tolerance", "contains 0"),
    # a comparison with neither a direction nor a published pair
    (lambda d: d["claims"][2].update(published={"a": None, "b": 90.72}), "claims[2].direction", "needs a direction or a published pair"),
    (lambda d: d["claims"][2].update(direction="less"), "claims[2].direction", "contradicts the published pair"),
    # faithful where a deviation says otherwise, and faithful but not declared
    (lambda d: d["claims"][0].update(faithful_scales=["cpu", "paper"]), "claims[0].faithful_scales", "'cut' level there"),
    (lambda d: d["claims"][0].update(faithful_scales=[]), "claims[0].faithful_scales", "so it is faithful there"),
    (lambda d: d["experiments"]["fmnist-softmax"]["deviations"].append("stand-in: other data"), "claims[0].faithful_scales",
     "'stand-in' level there ('stand-in: other data')"),
    # every deviation says what level it leaves the run at
    (lambda d: d["experiments"]["fmnist-softmax"]["deviations"].append("untagged words"),
     "experiments.fmnist-softmax.deviations[2]", "does not match"),
    # a smoke run is never evidence, so it must be marked cut
    (lambda d: d["experiments"]["fmnist-softmax"]["scales"]["smoke"].update(deviations=["minor: x"]),
     "experiments.fmnist-softmax.scales.smoke.deviations", "never evidence"),
])
def test_claims_that_cannot_fail_or_mislabel_their_evidence_are_rejected(tmp_path, mutate, field, words):
    path = _agarap(tmp_path, mutate)
    with pytest.raises(SpecError) as err:
        load_paper(path, REPO)
    msg = str(err.value)
    assert str(path) in msg and f": {field}:" in msg and words in msg, msg


def test_ratio_band_containing_one_is_rejected(tmp_path):
    exps = {"b": {"kind": "benchmark", "benchmark": {"name": "online_softmax"}, "deviations": [],
                  "scales": {"smoke": {"deviations": ["cut: small"]}}}}
    claims = [{"id": "r", "text": "t", "source": "s", "kind": "ratio", "metric": "m", "unit": "x", "experiment": "b",
               "published": 1.05, "tolerance": {"rel": 0.1}, "faithful_scales": ["cpu", "paper"]}]
    with pytest.raises(SpecError, match=r"claims\[0\]\.tolerance: claim 'r': the tolerance band .* contains 1"):
        load_paper(_paper(tmp_path, exps, claims), REPO)


def test_a_secondary_number_cannot_be_judged_faithful(tmp_path):
    exps = {"b": {"kind": "benchmark", "benchmark": {"name": "online_softmax"}, "deviations": [],
                  "scales": {"smoke": {"deviations": ["cut: small"]}}}}
    claim = {"id": "v", "text": "t", "source": "a blog", "published_from": "secondary", "kind": "value", "metric": "m",
             "unit": "x", "experiment": "b", "published": 2.0, "tolerance": {"abs": 0.1}, "faithful_scales": ["cpu", "paper"]}
    with pytest.raises(SpecError, match=r"claims\[0\]\.published_from: claim 'v': its number is known only from a secondary"):
        load_paper(_paper(tmp_path, exps, [claim]), REPO)
    exps["b"]["deviations"] = ["stand-in: other data"]  # runs that are not faithful may show it
    load_paper(_paper(tmp_path, exps, [{**claim, "faithful_scales": []}]), REPO)


def test_duplicate_yaml_keys_are_rejected_anywhere_but_merges_may_override(tmp_path):
    def dup(text):  # a second `steps:` inside the fmnist-softmax experiment
        return text.replace("    steps: 10000\n", "    steps: 10000\n    steps: 20000\n", 1)
    path = _agarap(tmp_path, None, dup)
    with pytest.raises(SpecError, match=r"agarap2017-cnn-svm\.yaml: \(yaml\): .*duplicate key 'steps'"):
        load_paper(path, REPO)
    # `<<: *cnn` followed by `description:` overrides a merged key: that is YAML, not a duplicate
    assert load_paper(REPO / "configs/papers/agarap2017-cnn-svm.yaml", REPO).experiments["fmnist-svm"]["loss"]["name"] == "l2svm"


def test_evidence_level_is_derived_from_the_tagged_deviations():
    from softrepro.spec import evidence_level

    assert evidence_level([{"deviations": []}]) == "faithful"
    assert evidence_level([{"deviations": ["minor: PyTorch re-implementation"]}]) == "faithful"
    assert evidence_level([{"deviations": ["minor: a", "cut: 1,500 of 10,000 steps"]}]) == "cut"
    assert evidence_level([{"deviations": ["cut: a"]}, {"deviations": ["stand-in: Fashion-MNIST for CIFAR"]}]) == "stand-in"
    paper = load_paper(REPO / "configs/papers/agarap2017-cnn-svm.yaml", REPO)
    level = {s: evidence_level([resolve_experiment(paper.experiments["fmnist-softmax"], s)]) for s in ("smoke", "cpu", "paper")}
    assert level == {"smoke": "cut", "cpu": "cut", "paper": "faithful"}
    muller = load_paper(REPO / "configs/papers/muller2019-label-smoothing.yaml", REPO)
    assert all(evidence_level([resolve_experiment(e, "paper")]) == "stand-in" for e in muller.experiments.values())


def test_no_committed_claim_has_a_tolerance_band_around_zero():
    """The validation above, applied to every committed spec (load_papers raises otherwise)."""
    papers = load_papers("all", REPO)
    comparisons = [c for p in papers for c in p.claims if c["kind"] == "comparison" and isinstance(c.get("published"), dict)]
    assert comparisons


def _hg(tmp_path, mutate) -> Path:
    doc = yaml.safe_load((REPO / "configs/papers/hendrycks2017-baseline-ood.yaml").read_text())
    mutate(doc["experiments"]["mlp-msp"])
    path = tmp_path / "hendrycks2017-baseline-ood.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize("mutate, field, words", [
    (lambda e: e["ood"]["scores"].append("oracle"), "experiments.mlp-msp.ood.scores[1].name", "unknown score 'oracle'"),
    (lambda e: e["ood"]["scores"].append({"name": "energy", "temprature": 2}), "experiments.mlp-msp.ood.scores[1].temprature",
     "unknown parameter 'temprature'"),
    (lambda e: e["ood"]["scores"].append({"name": "msp", "temperature": 2}), "experiments.mlp-msp.ood.scores", "share a label"),
    (lambda e: e["ood"].update(tune_sets=["svhn"]), "experiments.mlp-msp.ood.tune_sets[0]", "unknown set 'svhn'"),
    (lambda e: e["ood"]["sets"].update(other={"dataset": "notmnist"}), "experiments.mlp-msp.ood.sets.other.dataset", "unknown dataset"),
    (lambda e: e.update(preprocess={"standardize": True}), "experiments.mlp-msp.ood", "raw input space"),
    (lambda e: e["optimizer"].update(decay=3), "experiments.mlp-msp.optimizer.decay", "is not of type 'string'"),
])
def test_malformed_ood_section_names_the_field(tmp_path, mutate, field, words):
    path = _hg(tmp_path, mutate)
    with pytest.raises(SpecError) as err:
        load_paper(path, REPO)
    assert f": {field}:" in str(err.value) and words in str(err.value), str(err.value)


def test_ood_datasets_are_run_inputs():
    from softrepro.spec import experiment_datasets

    exp = {"dataset": "fashion-mnist", "ood": {"scores": ["msp"], "sets": {"m": {"dataset": "mnist"}, "g": {"noise": "gaussian"},
                                                                          "f": {"dataset": "fashion-mnist"}}}}
    assert experiment_datasets(exp) == ("fashion-mnist", "mnist")
    assert experiment_datasets({"kind": "benchmark"}) == ()


def test_a_claim_with_one_arm_not_run_is_not_run_not_an_error():
    """One arm not run (here the fine-tuning arm, as where its data were missing), the other run: the claim reads 'not run: <why>'."""
    import pandas as pd

    from softrepro.aggregate import judge_claims
    from softrepro.plan import build

    plan = build("cpu", "liu2020-energy-ood", REPO)
    skip = "dataset unavailable"
    runs = pd.DataFrame([{"paper": "liu2020-energy-ood", "experiment": e, "seed": s, "status": st, "reason": r,
                          "metric.ood_avg_energy_fpr95": 0.3 if st == "ok" else None,
                          "metric.ood_avg_msp_fpr95": 0.4 if st == "ok" else None,
                          "metric.ood_avg_energy_auroc": 0.9, "metric.ood_avg_msp_auroc": 0.8}
                         for s in (0, 1, 2) for e, st, r in (("fmnist-scores", "ok", None), ("energy-finetune", "not_run", skip))])
    claims, _ = judge_claims(plan.papers, runs, plan.scale, config=plan.config)
    row = claims.set_index("claim").loc["energy-training-beats-sota"]
    assert row["verdict"] == f"not run: {skip}" and not row["can_fail"]


def test_a_comparison_of_two_metrics_of_one_experiment_pairs_them_by_seed():
    """ODIN vs MSP on the same run: the arms are two metrics of one experiment, not the same column twice."""
    import pandas as pd

    from softrepro.aggregate import judge_claims
    from softrepro.plan import build

    plan = build("cpu", "liang2018-odin", REPO)
    runs = pd.DataFrame([{"paper": "liang2018-odin", "experiment": "fmnist-scores", "seed": s, "status": "ok", "reason": None,
                          "metric.ood_avg_odin_auroc": 0.95 + 0.001 * s, "metric.ood_avg_msp_auroc": 0.80 - 0.002 * s,
                          "metric.ood_avg_odin_fpr95": 0.2, "metric.ood_avg_msp_fpr95": 0.5,
                          "metric.ood_mnist_odin_fpr95": 0.3 + 0.01 * s, "metric.ood_mnist_msp_fpr95": 0.6}
                         for s in (0, 1, 2)])
    claims, _ = judge_claims(plan.papers, runs, plan.scale, config=plan.config)
    row = claims.set_index("claim").loc["odin-auroc-above-msp"]
    assert row["reproduced_mean"] == pytest.approx(100 * (0.95 + 0.001 - 0.80 + 0.002))
    assert row["verdict"] == "consistent"


def test_pools_group_runs_of_equal_cost_and_a_changed_run_renames_its_pool():
    from softrepro.plan import build, make_pools, pool_signature

    plan = build("cpu", "all", REPO)
    members = [k for p in plan.pools for k in p.keys]
    assert sorted(members) == sorted(plan.keys())  # every run in exactly one pool
    for pool in plan.pools:
        cfgs = [plan.config(plan.owner(k).paper, plan.owner(k).experiment) for k in pool.keys]
        assert 1 <= len(pool.keys) <= plan.scale.configs_per_job
        assert len({pool_signature(c) for c in cfgs}) == 1 and {c["kind"] for c in cfgs} == {pool.kind}
        assert pool.kind == "train" or len(pool.keys) == 1  # a benchmark takes every core: alone
    assert any(len(p.keys) == plan.scale.configs_per_job for p in plan.pools)
    same = {"kind": "train", "dataset": "d", "model": {"name": "mlp"}, "steps": 10}
    cfgs = {"a": same, "b": same, "c": {**same, "steps": 20}}
    pools = make_pools(["a", "b", "c"], cfgs, 4)
    assert [p.keys for p in pools] == [("a", "b"), ("c",)] and pools[1].id == "c"
    renamed = make_pools(["a", "b2", "c"], {**cfgs, "b2": same}, 4)
    assert renamed[0].id != pools[0].id
    assert [p.keys for p in make_pools(["a", "b", "c"], cfgs, 1)] == [("a",), ("b",), ("c",)]


def test_pools_stop_at_the_scales_expected_seconds():
    import dataclasses

    from softrepro.plan import build, make_pools

    same = {"kind": "train", "dataset": "d", "model": {"name": "mlp"}, "steps": 10}
    cfgs = {k: same for k in "abcde"}
    secs = {"a": 40, "b": 40, "c": 40, "d": 100, "e": 10}
    pools = make_pools(list("abcde"), cfgs, 4, seconds=secs.get, cap=90)
    assert [p.keys for p in pools] == [("a", "b"), ("c",), ("d",), ("e",)]  # a run longer than the cap is alone
    assert [p.keys for p in make_pools(list("abcde"), cfgs, 4)] == [tuple("abcd"), ("e",)]  # no cap: by count only
    plan = build("cpu", "all", REPO)
    plan.scale = dataclasses.replace(plan.scale, pool_seconds=60.0)
    assert any(len(p.keys) == 1 and plan.pool_seconds(p.id) > 60 for p in plan.pools)  # a long run alone
    for pool in plan.pools:
        if len(pool.keys) > 1:
            assert plan.pool_seconds(pool.id) <= 60


def test_a_teachers_priority_counts_the_students_that_wait_for_it():
    """Hinton et al.'s big net trains the teachers of three students: its pool's priority is its own
    expected seconds plus the longest student pool's, and the students' pools stay under the cap."""
    from softrepro.plan import build

    plan = build("cpu", "hinton2015-distillation", REPO)
    big = plan.pool_of(plan.jobs[[j.experiment for j in plan.jobs].index("big")].key).id
    students = plan._waiting[big]
    assert len(students) >= 2 and all(plan.pool_seconds(s) <= plan.scale.pool_seconds for s in students)
    assert plan.chain_seconds(big) == plan.pool_seconds(big) + max(plan.pool_seconds(s) for s in students)
    small = plan.pool_of(plan.jobs[[j.experiment for j in plan.jobs].index("small")].key).id
    assert plan.chain_seconds(small) == plan.pool_seconds(small)  # nothing waits for it
