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
from collections import Counter
from pathlib import Path

import pytest

from flsuite.privacy import DP_SGD, GAUSSIAN
from flsuite.privacy.ledger import PrivacyLedger
from flsuite.registry import Registry, verify_registry
from tests.conftest import (
    REPO,
    assert_certificate_counts_each_round_once,
    assert_each_round_charged_once,
    run_cli,
    wait_for_published_round,
    wait_for_reservation,
)

ROUNDS = 4
SITES = 3
STUDY = ["federation.rounds=4", "federation.num_sites=3", "secagg=none"]


def _charged_rounds(sites: Path, mechanism: str = DP_SGD) -> dict[str, Counter]:
    """Per site, how many ledger events of ``mechanism`` (final or an open reservation) each round of the study charged."""
    return {folder.name: Counter(event.round for event in PrivacyLedger(folder / "ledger.jsonl").charged()
                                 if event.study_id == "default" and event.mechanism == mechanism)
            for folder in sorted(sites.iterdir()) if folder.is_dir()}


def _registry_rounds(registry: Path) -> list[tuple[int, int | None, str, int]]:
    with Registry.open(registry, create=False) as opened:
        return [(v.number, v.parent, v.run_id, v.round) for v in sorted(opened.versions(), key=lambda v: v.number)]


@pytest.mark.slow
@pytest.mark.parametrize("kill_when", ["published", "sites-training"])
def test_kill_9_in_round_k_then_resume_spends_each_completed_round_once(tmp_path, kill_when):
    """``published``: right after version 2 appears; ``sites-training``: once a site has reserved its
    round-3 spend, so the interrupted round is certainly charged before the kill."""
    out, sites = tmp_path / "out", tmp_path / "sites"
    command = [sys.executable, "-m", "flsuite.cli.main", "run", *STUDY, f"sites_dir={sites}", "--output-dir", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with (tmp_path / "first.log").open("w") as log:
        process = subprocess.Popen(command, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=env,  # noqa: S603
                                   start_new_session=True)
    try:
        wait_for_published_round(out, process, 2, timeout=400)
        if kill_when == "sites-training":
            wait_for_reservation(lambda: {path.parent.name: path for path in sites.glob("*/ledger.jsonl")}, process, 3, timeout=120)
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
    if kill_when == "sites-training" and k == 2:  # (k is 3 only if round 3 was published within the last poll)
        assert any(counts[3] == 1 for counts in before.values()), before

    plan_before, config_before = (out / "privacy_plan.csv").read_text(), (out / "config.yaml").read_text()
    kept = {name: (out / name).read_text().splitlines()[: k + 1] for name in ("metrics.csv",)}  # header and rounds 1..k

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
    with Registry.open(out / "registry", create=False) as opened:
        manifests = [v.manifest for v in opened.versions()]
    assert len({m["config_hash"] for m in manifests}) == 1  # the same study before and after the resume
    for site, claim in manifests[-1]["dp_certificate"]["sites"].items():  # the final model: every round's DP phase, once
        assert_certificate_counts_each_round_once(claim, sites / site / "ledger.jsonl", rounds=ROUNDS)
    metrics = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(row["round"]) for row in metrics] == list(range(1, ROUNDS + 1))
    site_rows = Counter(int(row["round"]) for row in csv.DictReader((out / "site_metrics.csv").open()))
    assert site_rows == {r: SITES for r in range(1, ROUNDS + 1)}
    privacy_rows = Counter(int(row["round"]) for row in csv.DictReader((out / "privacy.csv").open()))
    assert privacy_rows == {r: SITES for r in range(1, ROUNDS + 1)}
    # The same plan (not re-planned from the ledgers as they are now), the same config, the rows kept as written.
    assert (out / "privacy_plan.csv").read_text() == plan_before and (out / "config.yaml").read_text() == config_before
    for name, lines in kept.items():
        assert (out / name).read_text().splitlines()[: k + 1] == lines
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == ROUNDS
    assert summary["registry_versions"] == list(range(1, ROUNDS + 1))

    assert_each_round_charged_once(before, _charged_rounds(sites), k=k, rounds=ROUNDS)

    # The per-site evaluation release (monitoring, final round only) is charged once, after the resume.
    assert all(counts == Counter({ROUNDS: 1}) for counts in _charged_rounds(sites, GAUSSIAN).values())

    again = run_cli("run", "--resume", str(out), cwd=tmp_path)
    assert again.returncode == 2 and "nothing to resume" in again.stderr and "Traceback" not in again.stderr


def test_resume_of_a_random_folder_exits_2_without_a_traceback(tmp_path):
    (tmp_path / "photos").mkdir()
    result = run_cli("run", "--resume", str(tmp_path / "photos"), cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "not a study folder" in result.stderr and "Traceback" not in result.stderr + result.stdout


def test_resume_of_a_tampered_registry_exits_1_and_trains_nothing(tmp_path):
    from tests.unit.test_study_resume import publish, study_folder

    folder = study_folder(tmp_path)
    publish(folder, 2)
    blob = next(path for path in (folder / "registry" / "blobs").rglob("*") if path.is_file())
    blob.write_bytes(blob.read_bytes()[:-1] + bytes([blob.read_bytes()[-1] ^ 1]))
    result = run_cli("run", "--resume", str(folder), cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr  # an integrity failure, as `audit verify` reports it
    assert "does not verify, so the study is not resumed" in result.stderr and "Traceback" not in result.stderr
    assert not (folder / "metrics.csv").exists() and not (tmp_path / ".flsuite").exists()
