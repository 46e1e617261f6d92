"""The inline engine against Flower's Ray Simulation Engine, and the inline Grid's semantics."""

from __future__ import annotations

import json

import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from flsuite.config import compose_study, to_run_config
from flsuite.flower import InProcessGrid, new_run
from flsuite.simulation import run_local_study, simulated_node_configs
from flsuite.site import build_client_app, prepare_simulated_sites


def test_a_failing_site_becomes_an_error_reply_and_an_offline_site_none(tmp_path):
    study = compose_study(["experiment=smoke", f"sites_dir={tmp_path}"])
    prepare_simulated_sites(tmp_path, study)
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


def _both_engines(study, tmp_path, tag):
    runs = {}
    for engine in ("inline", "ray"):
        engine_study = study.model_copy(
            update={"engine": study.engine.model_copy(update={"name": engine}), "sites_dir": str(tmp_path / f"sites-{tag}-{engine}")}
        )
        summary = run_local_study(engine_study, tmp_path / f"{tag}-{engine}")
        runs[engine] = summary, json.loads((tmp_path / f"{tag}-{engine}" / "metrics.json").read_text())
    return runs


@pytest.mark.slow
def test_same_seeded_non_private_study_gives_the_same_metrics_on_inline_and_ray(tmp_path):
    """Without DP the seed fixes everything (splits, initialisation, shuffling): both engines agree exactly,
    and so does the inline engine with its sites in two worker processes."""
    study = compose_study(["experiment=smoke", "federation.rounds=3", "privacy=none"])
    runs = _both_engines(study, tmp_path, "plain")
    (inline, inline_rows), (ray, ray_rows) = runs["inline"], runs["ray"]
    for a, b in zip(inline_rows, ray_rows, strict=True):
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1e-6)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert inline["final_accuracy"] == pytest.approx(ray["final_accuracy"], abs=1e-6)
    in_processes = study.model_copy(update={"engine": study.engine.model_copy(update={"parallel_sites": 2}),
                                            "sites_dir": str(tmp_path / "sites-plain-processes")})
    run_local_study(in_processes, tmp_path / "plain-processes")
    processes_rows = json.loads((tmp_path / "plain-processes" / "metrics.json").read_text())
    drop_wall = lambda rows: [{k: v for k, v in row.items() if k != "wall_s"} for row in rows]  # noqa: E731
    assert drop_wall(processes_rows) == drop_wall(inline_rows)
    for a, b in zip(processes_rows, ray_rows, strict=True):
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1e-6)


@pytest.mark.slow
def test_a_dp_study_completes_with_close_accuracy_on_inline_and_ray(tmp_path):
    """The default study (DP-SGD and secure aggregation on), three rounds, on both engines. Its sampling and
    noise are fresh OS entropy at every request (never the seed), so the two runs differ; they must both
    complete and learn about as well."""
    study = compose_study(["experiment=smoke", "federation.rounds=3"])
    runs = _both_engines(study, tmp_path, "dp")
    (inline, inline_rows), (ray, ray_rows) = runs["inline"], runs["ray"]
    assert inline["status"] == ray["status"] == "completed"
    assert len(inline_rows) == len(ray_rows) == 3
    assert min(inline["final_accuracy"], ray["final_accuracy"]) > 0.85
    assert inline["final_accuracy"] == pytest.approx(ray["final_accuracy"], abs=0.08)
