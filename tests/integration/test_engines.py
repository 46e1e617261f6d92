"""The inline engine against Flower's Ray Simulation Engine, and the inline Grid's semantics."""

from __future__ import annotations

import json

import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from flsuite.config import compose_study, to_run_config
from flsuite.flower import InProcessGrid, new_run
from flsuite.simulation import run_local_study, simulated_node_configs
from flsuite.site import build_client_app


def test_a_failing_site_becomes_an_error_reply_and_an_offline_site_none(tmp_path):
    study = compose_study(["experiment=smoke"])
    run = new_run(1, to_run_config(study))
    grid = InProcessGrid.for_client_app(build_client_app(), run=run, node_configs=simulated_node_configs(study))
    nodes = list(grid.get_node_ids())
    with grid:
        bad = [Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=n, message_type="train") for n in nodes[:2]]
        grid.offline.add(nodes[1])
        replies = list(grid.send_and_receive(bad, timeout=10))
    assert len(replies) == 1 and replies[0].has_error()
    assert "arrays" in replies[0].error.reason
    assert nodes[1] not in grid.get_node_ids()


@pytest.mark.slow
def test_same_seeded_study_gives_the_same_metrics_on_inline_and_ray(tmp_path):
    """The default study (DP-SGD and secure aggregation on), three rounds, on both engines."""
    study = compose_study(["experiment=smoke", "federation.rounds=3"])
    inline = run_local_study(study.model_copy(update={"sites_dir": str(tmp_path / "sites-inline")}), tmp_path / "inline")
    ray_study = study.model_copy(update={"engine": study.engine.model_copy(update={"name": "ray"}), "sites_dir": str(tmp_path / "sites-ray")})
    ray = run_local_study(ray_study, tmp_path / "ray")
    inline_rows = json.loads((tmp_path / "inline" / "metrics.json").read_text())
    ray_rows = json.loads((tmp_path / "ray" / "metrics.json").read_text())
    for a, b in zip(inline_rows, ray_rows, strict=True):
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1e-6)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert inline["final_accuracy"] == pytest.approx(ray["final_accuracy"], abs=1e-6)
