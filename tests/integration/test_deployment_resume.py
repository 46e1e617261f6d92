"""Issue 14's resume acceptance on real processes: the coordinator's machine dies (kill -9) in
round k of a deployed DP study, its operator restarts the coordinator, and
`flsuite launch --resume OUTPUT_DIR` finishes the study.

A TLS SuperLink and 3 SuperNodes (node authentication) as real processes; the study submitted
with `flsuite launch`. In deployment the round loop runs in the SuperLink's `flwr-serverapp`
process: once round 1 is published and a site has reserved its round-2 spend, that process is
SIGKILLed by PID, then the rest of the coordinator's machine (the SuperLink, the launch
command). The sites keep running and reconnect on their own; the operator restarts the
coordinator on its configured port (`flsuite coordinator start --config`, here
`start_coordinator`) and resumes. The final registry verifies under the coordinator's pinned key
with one version per round in one lineage, metrics.csv has one row per round, and each site's
ledger charges each completed round once and the interrupted round once more than it had
before the resume (its spend before the kill stays: never replayed for free).

Marked deployment and slow (minutes: each exchange costs seconds in deployment). Every
process is stopped by PID at the end, also when the test fails: the sites and the (restarted)
coordinator by `running_federation`, the launch commands by `stop_family`.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from flsuite.audit import key_id, load_signing_key
from flsuite.coordinator.superlink import flwr_home, start_coordinator
from flsuite.deployment.network import free_port
from flsuite.deployment.processes import descendants, flower_environment, flower_executable
from flsuite.deployment.testing import (
    FederationFiles,
    kill_family,
    running_federation,
    start_launch,
    start_sites,
    stop_family,
    wait_for_app_process,
    write_federation,
    write_site_data,
)
from flsuite.privacy import DP_SGD, GAUSSIAN, PrivacyLedger
from flsuite.registry import Registry, verify_registry
from tests.conftest import (
    assert_certificate_counts_each_round_once,
    assert_each_round_charged_once,
    wait_for_published_round,
    wait_for_reservation,
)

pytestmark = [pytest.mark.deployment, pytest.mark.slow]

SITES = ("hospital-a", "hospital-b", "hospital-c")
ROUNDS, K = 3, 1  # the coordinator dies in round K + 1, after round K was published
STUDY = [f"federation.rounds={ROUNDS}", "federation.num_sites=3", "federation.min_sites=3", "secagg=none", "privacy=dp"]


def _wait_for_sites_online(files: FederationFiles, timeout: float = 300) -> None:
    """Until the restarted coordinator lists every site's node online (`flwr supernode list`)."""
    coordinator = files.coordinator()
    env = flower_environment({"FLWR_HOME": str(flwr_home(coordinator))})
    command = [flower_executable("flwr"), "supernode", "list", coordinator.federation, "--format", "json"]
    deadline, last = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        listed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)  # noqa: S603
        last = listed.stdout + listed.stderr
        try:
            nodes = json.loads(listed.stdout[listed.stdout.index("{"):])["nodes"]
        except (ValueError, KeyError):
            nodes = []
        if sum(node.get("status") == "online" for node in nodes) >= len(SITES):
            return
        time.sleep(1)
    raise AssertionError(f"the sites did not reconnect to the restarted coordinator within {timeout} s: {last[-1000:]}")


def _wait_for_sites_idle(pids: dict[str, int], timeout: float = 300) -> None:
    """Until no site runs a ClientApp process (a message pulled before the kill has been handled)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = [name for name, pid in pids.items()
                if any(b"clientapp" in _cmdline(child) for child in descendants(pid))]
        if not busy:
            return
        time.sleep(0.5)
    raise AssertionError(f"sites {busy} still run a ClientApp {timeout} s after the coordinator died")


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _charged_rounds(files: FederationFiles, mechanism: str = DP_SGD) -> dict[str, Counter]:
    """Per site, how many ledger events of ``mechanism`` (final, or an open reservation) each round of the study charged."""
    return {name: Counter(event.round for event in PrivacyLedger(files.site(name).ledger).charged()
                          if event.study_id == "default" and event.mechanism == mechanism)
            for name in SITES}


def _registry_rounds(registry: Path) -> list[tuple[int, int | None, str, int]]:
    with Registry.open(registry, create=False) as opened:
        return [(v.number, v.parent, v.run_id, v.round) for v in sorted(opened.versions(), key=lambda v: v.number)]


def test_coordinator_killed_in_round_k_of_a_deployed_dp_study_resumes_and_spends_each_completed_round_once(
        tmp_path: Path) -> None:
    files = write_federation(tmp_path / "federation", sites=SITES, coordinator_port=free_port())
    write_site_data(files)
    output = tmp_path / "study"
    first_log, resume_log = tmp_path / "launch.log", tmp_path / "resume.log"
    with running_federation(files) as coordinator:
        states = start_sites(files)
        assert {name: state.node_id for name, state in states.items()} == coordinator.nodes
        launch = start_launch(files, first_log, [*STUDY, "--output-dir", str(output)])
        resume: subprocess.Popen | None = None
        try:
            wait_for_published_round(output, launch, K, timeout=600)
            trained = wait_for_reservation(lambda: {name: files.site(name).ledger for name in SITES}, launch, K + 1, timeout=300)
            round_loop = wait_for_app_process(coordinator.pid, timeout=10, marker=b"flwr-serverapp")
            assert round_loop is not None, "the SuperLink runs no flwr-serverapp process"
            os.kill(round_loop, signal.SIGKILL)  # the process that runs the round loop dies first ...
            kill_family(coordinator.pid)  # ... and with it the coordinator's machine: the SuperLink
            kill_family(launch.pid)  # and the launch command that followed the study
            launch.wait(timeout=30)
            assert launch.returncode == -signal.SIGKILL

            published = _registry_rounds(output / "registry")
            k = published[-1][3]  # K, or K + 1 if that round was published within the last poll
            assert K <= k < ROUNDS and [row[3] for row in published] == list(range(1, k + 1))
            assert not (output / "summary.json").exists()

            restarted = start_coordinator(files.coordinator())  # the operator: `flsuite coordinator start --config`
            assert restarted.connect == coordinator.connect and restarted.pid != coordinator.pid
            _wait_for_sites_online(files)
            _wait_for_sites_idle({name: state.pid for name, state in states.items()})
            before = _charged_rounds(files)
            if k == K:
                assert before[trained][K + 1] == 1, before  # the interrupted round was charged before the kill
            plan_before, config_before = (output / "privacy_plan.csv").read_text(), (output / "config.yaml").read_text()
            kept = (output / "metrics.csv").read_text().splitlines()[: k + 1]  # the header and rounds 1..k

            resume = start_launch(files, resume_log, ["--resume", str(output)])
            code = resume.wait(timeout=1200)
        finally:
            stop_family(launch.pid)
            if resume is not None:
                stop_family(resume.pid)
    text = resume_log.read_text(errors="replace")
    assert code == 0, first_log.read_text(errors="replace")[-2000:] + text[-4000:]
    assert f"resuming in {output}" in text and f"round {ROUNDS}/{ROUNDS}:" in text, text[-4000:]

    pinned = key_id(load_signing_key(output / "coordinator-signing.key"))
    report = verify_registry(output / "registry", expected_key=pinned)
    assert report.ok, report.verdict()
    versions = _registry_rounds(output / "registry")
    assert [row[3] for row in versions] == list(range(1, ROUNDS + 1))  # one version per round
    assert [row[0] for row in versions] == list(range(1, ROUNDS + 1))  # numbering continues
    assert len({row[2] for row in versions}) == 1  # one run
    assert [row[1] for row in versions] == [None, *range(1, ROUNDS)]  # each version's parent is the one before
    with Registry.open(output / "registry", create=False) as opened:
        final = max(opened.versions(), key=lambda v: v.number).manifest
    for site, claim in final["dp_certificate"]["sites"].items():  # the final model: every round's DP phase, once
        assert_certificate_counts_each_round_once(claim, files.site(site).ledger, rounds=ROUNDS)

    metrics = list(csv.DictReader((output / "metrics.csv").open()))
    assert [int(row["round"]) for row in metrics] == list(range(1, ROUNDS + 1))
    assert (output / "metrics.csv").read_text().splitlines()[: k + 1] == kept  # appended, never rewritten
    assert (output / "privacy_plan.csv").read_text() == plan_before and (output / "config.yaml").read_text() == config_before
    summary = json.loads((output / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds_completed"] == ROUNDS, summary
    assert summary["engine"] == "deployment" and summary["registry_versions"] == list(range(1, ROUNDS + 1))

    assert_each_round_charged_once(before, _charged_rounds(files), k=k, rounds=ROUNDS)
    # The per-site evaluation release (final round only) is charged once, after the resume.
    assert all(counts == Counter({ROUNDS: 1}) for counts in _charged_rounds(files, GAUSSIAN).values())
