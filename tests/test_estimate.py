"""The throughput table that orders the DAG's jobs: measured per speed signature and method."""
import json

import pytest

from softrepro.estimate import expected_seconds, method, signature, throughput


def _config(loss="softmax_ce", optimizer="adamw", steps=1000):
    return {"kind": "train", "dataset": "modular-arithmetic", "model": {"name": "mlp", "hidden": [8]}, "batch_size": 64,
            "loss": {"name": loss}, "optimizer": {"name": optimizer, "lr": 1e-3}, "steps": steps}


def _record(root, key, seed, config, steps_per_second, wall):
    d = root / "cpu" / "cache" / key / f"seed{seed}"
    d.mkdir(parents=True)
    steps = config["steps"]
    (d / "metrics.json").write_text(json.dumps({
        "status": "ok", "kind": "train", "config": config, "provenance": {"device": "cpu"}, "wall_seconds": wall,
        "metrics": {"steps": steps, "steps_per_second": steps_per_second, "train_seconds": steps / steps_per_second}}))


@pytest.fixture
def table(tmp_path):
    for seed in range(3):
        _record(tmp_path, "soft", seed, _config(), 40.0, 1000 / 40.0 + 1.0)
        _record(tmp_path, "stable", seed, _config(loss="stablemax_ce"), 20.0, 1000 / 20.0 + 3.0)
    return throughput([tmp_path])


def test_methods_of_one_signature_are_kept_apart(table):
    assert signature(_config()) == signature(_config(loss="stablemax_ce"))
    assert method(_config()) != method(_config(loss="stablemax_ce"))
    assert len(table) == 2 and set(table["runs"]) == {3}
    assert expected_seconds(_config(), 3, table) == pytest.approx(3 * (1000 / 40.0 + 1.0))
    assert expected_seconds(_config(loss="stablemax_ce", steps=500), 2, table) == pytest.approx(2 * (500 / 20.0 + 3.0))


def test_an_unmeasured_method_takes_the_signatures_median(table):
    # medians over the two measured methods: 30 steps/s and 2 s outside the loop
    assert expected_seconds(_config(optimizer="orthograd"), 1, table) == pytest.approx(1000 / 30.0 + 2.0)


def test_an_unmeasured_signature_falls_back_to_steps_times_batch(table):
    cfg = dict(_config(), batch_size=128)
    assert expected_seconds(cfg, 1, table) == pytest.approx(1000 * 128 * 2e-5)
    assert expected_seconds(dict(cfg, kind="benchmark"), 1, table) == 0.0


def test_a_table_written_before_methods_were_recorded_still_reads(table):
    old = table.drop(columns="method").iloc[:1]
    assert expected_seconds(_config(loss="anything"), 1, old) == pytest.approx(1000 / float(old["steps_per_second"].iloc[0])
                                                                             + float(old["overhead_s"].iloc[0]))
