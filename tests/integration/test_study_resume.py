"""Issue 14's acceptance for resume: kill -9 the coordinator of a DP study in round k, then
``flsuite run --resume``. The final registry verifies, has one version per round in one lineage,
metrics.csv has one row per round, and each site's ledger charges each round it trained in once,
plus once more for the round that was interrupted if it trained in it before the kill."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from flsuite.privacy.ledger import PrivacyLedger
from flsuite.registry import Registry, verify_registry
from tests.conftest import REPO, run_cli

ROUNDS = 4
SITES = 3
STUDY = ["federation.rounds=4", "federation.num_sites=3", "secagg=none"]


def _wait_for_round(out: Path, process: subprocess.Popen, k: int, timeout: float = 400) -> None:
    """Until resume.json says round k was published (the study's coordinator writes it after each version)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the study ended (exit {process.returncode}) before round {k} was published")
        try:
            if json.loads((out / "resume.json").read_text())["round"] >= k:
                return
        except (FileNotFoundError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"round {k} was not published within {timeout} s")


def _charged_rounds(sites: Path) -> dict[str, Counter]:
    """Per site, how many ledger events (final or an open reservation) each round of the study charged."""
    return {folder.name: Counter(event.round for event in PrivacyLedger(folder / "ledger.jsonl").charged() if event.study_id == "default")
            for folder in sorted(sites.iterdir()) if folder.is_dir()}


def _registry_rounds(registry: Path) -> list[tuple[int, int | None, str, int]]:
    with Registry.open(registry, create=False) as opened:
        return [(v.number, v.parent, v.run_id, v.round) for v in sorted(opened.versions(), key=lambda v: v.number)]


@pytest.mark.slow
def test_kill_9_in_round_k_then_resume_spends_each_completed_round_once(tmp_path):
    out, sites = tmp_path / "out", tmp_path / "sites"
    command = [sys.executable, "-m", "flsuite.cli.main", "run", *STUDY, f"sites_dir={sites}", "--output-dir", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with (tmp_path / "first.log").open("w") as log:
        process = subprocess.Popen(command, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=env,  # noqa: S603
                                   start_new_session=True)
    try:
        _wait_for_round(out, process, 2)
        os.kill(process.pid, signal.SIGKILL)  # the coordinator (and, inline, its simulated sites) dies mid-study
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    published = _registry_rounds(out / "registry")
    k = published[-1][3]  # the last round published before the kill (2, or 3 if it got that far)
    assert 2 <= k < ROUNDS and [row[3] for row in published] == list(range(1, k + 1))
    before = _charged_rounds(sites)
    assert set(before) == {f"site-{i}" for i in range(SITES)}

    resumed = run_cli("run", "--resume", str(out), cwd=tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming study default" in resumed.stdout

    report = verify_registry(out / "registry")
    assert report.ok, report.verdict()
    versions = _registry_rounds(out / "registry")
    assert [row[3] for row in versions] == list(range(1, ROUNDS + 1))  # one version per round
    assert [row[0] for row in versions] == list(range(1, ROUNDS + 1))  # numbering continues
    assert len({row[2] for row in versions}) == 1  # one run
    assert [row[1] for row in versions] == [None, *range(1, ROUNDS)]  # each version's parent is the one before
    metrics = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(row["round"]) for row in metrics] == list(range(1, ROUNDS + 1))
    site_rows = Counter(int(row["round"]) for row in csv.DictReader((out / "site_metrics.csv").open()))
    assert site_rows == {r: SITES for r in range(1, ROUNDS + 1)}
    privacy_rows = Counter(int(row["round"]) for row in csv.DictReader((out / "privacy.csv").open()))
    assert privacy_rows == {r: SITES for r in range(1, ROUNDS + 1)}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == ROUNDS
    assert summary["registry_versions"] == list(range(1, ROUNDS + 1))

    after = _charged_rounds(sites)
    for site, counts in after.items():
        for r in range(1, ROUNDS + 1):
            if r <= k:  # completed before the kill: charged once, never again
                assert before[site][r] == counts[r] == 1, (site, r, before[site], counts)
            elif r == k + 1:  # interrupted: what it spent before the kill stays, and the re-run is charged too
                assert before[site][r] in (0, 1) and counts[r] == before[site][r] + 1, (site, r, before[site], counts)
            else:  # run only after the resume
                assert before[site][r] == 0 and counts[r] == 1, (site, r, before[site], counts)

    again = run_cli("run", "--resume", str(out), cwd=tmp_path)
    assert again.returncode == 2 and "nothing to resume" in again.stderr and "Traceback" not in again.stderr
