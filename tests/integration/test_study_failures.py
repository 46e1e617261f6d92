"""A study that did not complete says so (issue 12, items 4 and 9), written as the attacks and
faults that used to end as "completed": rounds that all abort under secure aggregation, a
site whose ledger was tampered with, and a disk that fills up during publish."""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flsuite import protocol
from flsuite.config import compose_study
from flsuite.coordinator.app import build_server_app
from flsuite.errors import StudyAborted
from flsuite.flower import FIRST_NODE_ID, stage_of
from flsuite.registry.registry import Registry
from flsuite.registry.verify import verify_registry
from flsuite.simulation import run_local_study
from flsuite.storage import durable

NO_SPACE = os.strerror(errno.ENOSPC)  # "No space left on device"


def smoke(tmp_path: Path, *overrides: str):
    return compose_study(["experiment=smoke", f"sites_dir={tmp_path / 'sites'}", *overrides])


def audit_entries(registry: Path) -> list[dict]:
    return [json.loads(line) for line in (registry / "audit.jsonl").read_text().splitlines() if line.strip()]


class RecordingServerApp:
    """flsuite's ServerApp, remembering what it raised (the engine hands that to Flower)."""

    def __init__(self) -> None:
        self.app = build_server_app()
        self.raised: BaseException | None = None

    def __call__(self, grid, context) -> None:
        try:
            self.app(grid, context)
        except BaseException as exc:
            self.raised = exc
            raise


def test_a_study_whose_secure_rounds_all_abort_fails_and_its_server_app_raises(tmp_path):
    """Every unmask reply is lost: each secure round aborts. It used to print "completed" and exit 0."""
    study = smoke(tmp_path, "privacy=none")
    server = RecordingServerApp()
    summary = run_local_study(study, tmp_path / "out", server_app=server, drop=lambda m: stage_of(m) == protocol.UNMASK)
    assert summary["status"] == "failed" and summary["rounds_completed"] == 0
    assert [a["round"] for a in summary["aborted_rounds"]] == [1, 2]
    assert summary["reasons"][0].startswith("round 1 was aborted at its unmask stage:")
    assert summary["reasons"][-1] == "only 0 of 2 planned rounds completed"
    assert isinstance(server.raised, StudyAborted) and "round 1 was aborted" in str(server.raised)  # Flower: run failed
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["status"] == "failed"  # written before the raise
    entries = audit_entries(tmp_path / "out" / "registry")
    assert [e["payload"]["round"] for e in entries if e["kind"] == "round.aborted"] == [1, 2]
    (finished,) = [e["payload"] for e in entries if e["kind"] == "study.finished"]
    assert finished["status"] == "failed" and finished["reasons"] == summary["reasons"]


def _tamper_ledger_on_second_train(sites_dir: Path, node: int, name: str):
    """Before the site's second train request, remove the first entry of its ledger (hide what it spent)."""
    seen = []

    def tamper(message):
        if message.metadata.dst_node_id == node and message.metadata.message_type == protocol.TRAIN:
            seen.append(message)
            if len(seen) == 2:
                ledger = sites_dir / name / "ledger.jsonl"
                lines = ledger.read_text().splitlines(keepends=True)
                assert len(lines) >= 2, "the site recorded its first round"
                ledger.write_text("".join(lines[1:]))
        return message

    return tamper


@pytest.mark.parametrize("secagg", ["none", "secure"])
def test_a_site_with_a_tampered_ledger_is_reported_with_its_reason(tmp_path, secagg):
    """Its handler stops with an IntegrityError; the error reply used to be only a failure count."""
    study = smoke(tmp_path, f"secagg={secagg}")
    node = FIRST_NODE_ID + 2
    tamper = _tamper_ledger_on_second_train(tmp_path / "sites", node, "site-2")
    summary = run_local_study(study, tmp_path / "out", tamper=tamper)
    assert summary["status"] == "completed", summary["reasons"]  # the other four sites carried both rounds
    failures = [f for f in summary["site_failures"] if f["node_id"] == node]
    assert failures and failures[0]["round"] == 2 and failures[0]["stage"] == protocol.TRAIN
    assert "IntegrityError" in failures[0]["reason"] and "ledger" in failures[0]["reason"]
    assert "Traceback" not in failures[0]["reason"]
    logged = [e["payload"] for e in audit_entries(tmp_path / "out" / "registry") if e["kind"] == "site.failed"]
    assert [(p["node_id"], p["round"], p["reason"]) for p in logged] == [(f["node_id"], f["round"], f["reason"]) for f in summary["site_failures"]]


def _disk_full_from_second_publish(monkeypatch, *, everything: bool = False) -> None:
    """The registry's second publish hits a full disk (and, with ``everything``, every later durable write)."""
    publish = Registry.publish
    write_atomic = durable.write_atomic
    state = {"calls": 0, "full": False}

    def full_publish(self, *args, **kwargs):
        state["calls"] += 1
        if state["calls"] >= 2:
            state["full"] = everything
            raise OSError(errno.ENOSPC, NO_SPACE)
        return publish(self, *args, **kwargs)

    def full_write(path, data, **kwargs):
        if state["full"]:
            raise OSError(errno.ENOSPC, NO_SPACE)
        return write_atomic(path, data, **kwargs)

    monkeypatch.setattr(Registry, "publish", full_publish)
    monkeypatch.setattr(durable, "write_atomic", full_write)


def test_a_full_disk_during_publish_is_a_failed_study_with_its_summary(tmp_path, monkeypatch):
    """It used to end in an OSError traceback with no summary.json."""
    _disk_full_from_second_publish(monkeypatch)
    out = tmp_path / "out"
    summary = run_local_study(smoke(tmp_path, "privacy=none", "secagg=none", "federation.rounds=3"), out)
    assert summary["status"] == "failed"
    registry = (out / "registry").resolve()
    assert summary["reasons"][0] == f"round 2: could not write its outputs: {registry}: {NO_SPACE}"
    assert summary["rounds_completed"] == 2 and summary["registry_versions"] == [1]  # round 3 did not run
    monkeypatch.undo()
    report = verify_registry(out / "registry")
    assert report.ok, report
    (finished,) = [e["payload"] for e in audit_entries(out / "registry") if e["kind"] == "study.finished"]
    assert finished["status"] == "failed" and NO_SPACE in finished["reasons"][0]


def test_a_full_disk_is_exit_3_with_the_path_and_the_cause_on_the_console(tmp_path, monkeypatch):
    from flsuite.cli.main import app

    _disk_full_from_second_publish(monkeypatch)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", "experiment=smoke", "privacy=none", "secagg=none", f"sites_dir={tmp_path / 's'}",
                                      "--output-dir", str(out)])
    assert result.exit_code == 3, result.output
    assert "The study failed" in result.output and NO_SPACE in result.output and "registry" in result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)


def test_a_disk_that_stays_full_stops_the_study_with_what_it_could_write(tmp_path, monkeypatch, capsys):
    """Not even summary.json fits: StudyAborted names the folder and the cause; the CLI exits 3 without a traceback."""
    from flsuite.cli import main as cli

    _disk_full_from_second_publish(monkeypatch, everything=True)
    out = tmp_path / "out"
    with pytest.raises(StudyAborted, match=f"{out.resolve()}: {NO_SPACE}"):
        run_local_study(smoke(tmp_path, "privacy=none", "secagg=none"), out)
    assert (out / "config.yaml").is_file() and json.loads((out / "metrics.json").read_text())[0]["round"] == 1

    _disk_full_from_second_publish(monkeypatch, everything=True)
    monkeypatch.setattr(sys, "argv", ["flsuite", "run", "experiment=smoke", "privacy=none", "secagg=none",
                                      f"sites_dir={tmp_path / 's'}", "--output-dir", str(tmp_path / "again")])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 3
    err = capsys.readouterr().err
    assert NO_SPACE in err and str((tmp_path / "again").resolve()) in err and "Traceback" not in err
