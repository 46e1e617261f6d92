"""Stragglers and dead sites on the whole study (issue 14.2), inline engine: a site whose secure
train stage never answers in time is pruned after federation.max_missed_rounds rounds, later
rounds run on the others, and the summary, the console table and the registry's audit log
record it with its round and reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flsuite import protocol
from flsuite.cli.study_commands import print_summary
from flsuite.config import compose_study
from flsuite.flower import FIRST_NODE_ID, stage_of
from flsuite.simulation import run_local_study

DEAD = FIRST_NODE_ID + 4


@pytest.mark.slow  # 4 secure rounds on 5 sites: 13 s on an idle machine, 30 s on a busy one
def test_a_site_that_never_answers_its_secure_train_stage_is_pruned_and_recorded(tmp_path: Path, capsys) -> None:
    study = compose_study(["experiment=smoke", f"sites_dir={tmp_path / 'sites'}", "privacy=none", "federation.rounds=4",
                           "federation.max_missed_rounds=2", "federation.round_timeout_s=30", "engine.parallel_sites=5"])
    asked: list[tuple[str, int]] = []

    def record(message):
        if message.metadata.dst_node_id == DEAD:
            asked.append((stage_of(message), int(message.metadata.group_id or 0)))
        return message

    summary = run_local_study(study, tmp_path / "out", tamper=record, drop=lambda m: m.metadata.dst_node_id == DEAD
                              and stage_of(m) == protocol.MASKED_TRAIN)
    assert summary["status"] == "completed" and summary["rounds_completed"] == 4, summary["reasons"]
    assert sorted({r for stage, r in asked if stage == protocol.MASKED_TRAIN}) == [1, 2]  # never asked after round 2
    (pruned,) = summary["pruned_sites"]
    assert pruned["round"] == 2 and pruned["node_id"] == DEAD and pruned["misses"] == 2 and pruned["site"]
    assert "federation.max_missed_rounds=2" in pruned["reason"] and "(deadline 30 s)" in pruned["reason"]
    rows = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert [row["sites"] for row in rows] == [4, 4, 4, 4]
    audit = [json.loads(line) for line in (Path(summary["registry"]) / "audit.jsonl").read_text().splitlines() if line.strip()]
    (entry,) = [e for e in audit if "site.pruned" in json.dumps(e)]
    assert str(DEAD) in json.dumps(entry)
    print_summary(summary)
    shown = capsys.readouterr().out
    assert "pruned sites" in shown and f"{pruned['site']} (round 2)" in shown
