"""Shared test set-up: one torch thread, quiet Flower, and a helper to run the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``flsuite ARGS`` as a user would, in a subprocess (by default in a fresh folder)."""
    return subprocess.run(
        [sys.executable, "-m", "flsuite.cli.main", *args],
        cwd=cwd or tempfile.mkdtemp(prefix="flsuite-cli-"),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def wait_for_published_round(output: Path, process: subprocess.Popen, k: int, timeout: float) -> None:
    """Until resume.json in ``output`` says round k was published (the study's coordinator rewrites it
    after each version); fails if ``process`` ends first or the round does not come within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the study ended (exit {process.returncode}) before round {k} was published")
        try:
            if json.loads((output / "resume.json").read_text())["round"] >= k:
                return
        except (FileNotFoundError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"round {k} was not published within {timeout} s")


def assert_each_round_charged_once(before: dict, after: dict, *, k: int, rounds: int) -> None:
    """The resume rule for a study killed after round k was published, per site (round -> events, read
    before the resume and after it): a completed round is charged once and never again; the interrupted
    round k + 1 keeps what it spent before the kill and its re-run is charged too; later rounds once."""
    for site, counts in after.items():
        for r in range(1, rounds + 1):
            if r <= k:
                assert before[site][r] == counts[r] == 1, (site, r, before[site], counts)
            elif r == k + 1:
                assert before[site][r] in (0, 1) and counts[r] == before[site][r] + 1, (site, r, before[site], counts)
            else:
                assert before[site][r] == 0 and counts[r] == 1, (site, r, before[site], counts)


def assert_certificate_counts_each_round_once(claim: Mapping, ledger: Path, *, rounds: int) -> None:
    """A resumed study's final DP certificate at one site holds each round's training once, even where the
    site's ledger charged a round twice (the interrupted round and its re-run), and the final round's
    evaluation release (q = 1). Its phases are compacted (equal settings as one, steps summed), so
    "once" is a sum: the steps of one training event per round."""
    from flsuite.privacy import DP_SGD
    from flsuite.privacy.ledger import PrivacyLedger

    trained: dict[int, set[int]] = {}  # round -> the steps of its training events (a re-run trains the same steps)
    for event in PrivacyLedger(ledger).charged():
        if event.study_id == "default" and event.mechanism == DP_SGD:
            trained.setdefault(event.round, set()).add(event.steps)
    assert sorted(trained) == list(range(1, rounds + 1)) and all(len(steps) == 1 for steps in trained.values()), trained
    training = sum(phase["steps"] for phase in claim["phases"] if phase["q"] < 1)
    releases = sum(phase["steps"] for phase in claim["phases"] if phase["q"] == 1)
    assert (training, releases) == (sum(min(steps) for steps in trained.values()), 1), (claim["phases"], trained)


def wait_for_reservation(ledgers: Callable[[], Mapping[str, Path]], process: subprocess.Popen, server_round: int,
                         timeout: float) -> str:
    """Until some site's ledger holds a reservation for ``server_round``; that site's name. ``ledgers`` gives
    each site's ledger file, asked anew each time (a site creates it when it first trains); ledgers are read
    raw, never repaired. Fails if ``process`` ends first or no reservation comes within ``timeout``."""
    needle = f'"round":{server_round},'
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the study ended (exit {process.returncode}) before a site trained in round {server_round}")
        for name, ledger in ledgers().items():
            if ledger.is_file() and any('"reserve"' in line and needle in line for line in ledger.read_text().splitlines()):
                return name
        time.sleep(0.05)
    raise AssertionError(f"no site reserved a spend for round {server_round} within {timeout} s")
