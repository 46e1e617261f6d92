"""`flsuite launch --resume`: the rounds a study ran before the restart are shown as earlier rounds,
before the run is submitted; only the rounds this run finishes follow "submitted run", each once
(a round that ran but was never published, and is redone, is not shown from the old file)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from flsuite.cli.main import app
from flsuite.config import compose_study
from flsuite.coordinator import launch as coordinator_launch
from flsuite.coordinator import submit
from flsuite.coordinator.launch import Connection, LaunchPlan
from flsuite.deployment.network import parse_address


def row(round_: int, accuracy: float) -> dict:
    return {"round": round_, "accuracy": accuracy, "loss": 0.5, "sites": 3, "failures": 0, "wall_s": 10.0}


def plan_for(folder: Path, *, resumed_after: int) -> LaunchPlan:
    study = compose_study(["federation.rounds=4"]).model_copy(update={"resume": True, "output_dir": str(folder)})
    connection = Connection("fed", parse_address("127.0.0.1:9093", field="address"), None, folder / "flwr")
    return LaunchPlan(study=study, connection=connection, output_dir=folder, app_dir=folder, resumed_after=resumed_after)


def test_resumed_rounds_are_earlier_rounds_and_new_ones_follow_the_submission(tmp_path, monkeypatch):
    """Was: 'round 1/4', 'round 2/4' (and the unpublished round 3) printed before 'submitted run',
    as if this run had just finished them."""
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps([row(1, 0.61), row(2, 0.72), row(3, 0.33)]))  # round 3 ran, never published
    plan = plan_for(tmp_path, resumed_after=2)

    def fake_submit(plan, *, echo, verbose):
        follower = submit._Follower(plan, echo=echo, verbose=verbose)
        follower.poll_rounds()  # polled before Flower said the run started: the old file
        follower.on_line("Successfully started run 42\n")
        follower.poll_rounds()
        metrics.write_text(json.dumps([row(1, 0.61), row(2, 0.72), row(3, 0.83)]))  # the redone round 3
        follower.poll_rounds()
        metrics.write_text(json.dumps([row(1, 0.61), row(2, 0.72), row(3, 0.83), row(4, 0.91)]))
        follower.poll_rounds()
        follower.poll_rounds()
        return {"status": "completed"}

    monkeypatch.setattr(coordinator_launch, "plan_launch", lambda *a, **k: plan)
    monkeypatch.setattr(coordinator_launch, "check_coordinator_answers", lambda connection: "TLS")
    monkeypatch.setattr(submit, "submit_study", fake_submit)
    monkeypatch.setattr("flsuite.cli.study_commands.print_summary", lambda summary: None)
    result = CliRunner().invoke(app, ["launch", "--resume", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    submitted = lines.index("submitted run 42 to federation fed at 127.0.0.1:9093")
    before, after = lines[:submitted], lines[submitted + 1:]
    assert "rounds 1-2 ran before the restart; this run goes on from round 3" in before
    assert [line for line in before if "round " in line and "/4" in line] == [
        "  earlier round 1/4: accuracy 0.610, loss 0.500, 3 sites (10 s)",
        "  earlier round 2/4: accuracy 0.720, loss 0.500, 3 sites (10 s)",
    ]
    assert after == ["round 3/4: accuracy 0.830, loss 0.500, 3 sites (10 s)",
                     "round 4/4: accuracy 0.910, loss 0.500, 3 sites (10 s)"]


def test_a_fresh_launch_shows_each_round_once(tmp_path):
    plan = plan_for(tmp_path, resumed_after=0)
    plan = LaunchPlan(**{**plan.__dict__, "study": plan.study.model_copy(update={"resume": False})})
    shown: list[str] = []
    follower = submit._Follower(plan, echo=shown.append, verbose=False)
    follower.poll_rounds()
    (tmp_path / "metrics.json").write_text(json.dumps([row(1, 0.5)]))
    follower.poll_rounds()
    (tmp_path / "metrics.json").write_text(json.dumps([row(1, 0.5), row(2, 0.6)]))
    follower.poll_rounds()
    follower.poll_rounds()
    assert [line.split(":")[0] for line in shown] == ["round 1/4", "round 2/4"]


def test_a_redone_round_whose_row_equals_the_stale_one_is_still_shown(tmp_path):
    """The follower hid every row equal to a stale one: a deterministic redo of the unpublished round
    (same row, rewritten by this run) was never shown."""
    import os

    metrics = tmp_path / "metrics.json"
    stale = json.dumps([row(1, 0.61), row(2, 0.72), row(3, 0.83)])
    metrics.write_text(stale)  # round 3 ran, was never published
    shown: list[str] = []
    follower = submit._Follower(plan_for(tmp_path, resumed_after=2), echo=shown.append, verbose=False)
    follower.poll_rounds()
    assert shown == []  # the file as it was before this run: nothing of it is this run's
    rewritten = tmp_path / "metrics.json.tmp"
    rewritten.write_text(stale)  # the redone round 3 came out the same, written as the ServerApp writes
    os.replace(rewritten, metrics)
    follower.poll_rounds()
    follower.poll_rounds()
    assert shown == ["round 3/4: accuracy 0.830, loss 0.500, 3 sites (10 s)"]
