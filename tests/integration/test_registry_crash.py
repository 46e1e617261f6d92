"""Crash safety and concurrency of publishing, with real processes killed by SIGKILL.

After every kill the registry must verify and hold each version whole or not at all:
every version in the catalogue loads with the weights it was published with.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from flsuite.registry import Registry, verify_registry

PUBLISHER = r'''
import os, signal, sys
from flsuite.registry import Registry
from flsuite.registry.testing import publish_sample, sample_weights

path, key, mode, arg, count = sys.argv[1:6]
registry = Registry.open(path, signing_key_path=key)
if mode == "crash-at":
    registry._fault_hook = lambda step: os.kill(os.getpid(), signal.SIGKILL) if step == arg else None
print("ready", flush=True)
for _ in range(int(count)):
    latest = registry.latest(arg if mode == "run" else None)
    round_ = 1 if latest is None else latest.round + 1
    publish_sample(registry, round=round_, run_id=arg if mode == "run" else "run-1",
                   weights=sample_weights(float(round_), size=48))
registry.close()
'''


@pytest.fixture()
def workspace(tmp_path: Path) -> tuple[Path, Path, Path]:
    script = tmp_path / "publisher.py"
    script.write_text(PUBLISHER)
    return tmp_path / "registry", tmp_path / "coordinator.pem", script


def _start(workspace, mode: str, arg: str, count: int) -> subprocess.Popen:
    path, key, script = workspace
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2])}
    child = subprocess.Popen([sys.executable, str(script), str(path), str(key), mode, arg, str(count)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    return child


def _wait_ready(child: subprocess.Popen) -> None:
    line = child.stdout.readline()
    assert line == b"ready\n", child.stderr.read().decode()


def _stop(child: subprocess.Popen) -> None:
    if child.poll() is None:
        child.kill()
    child.wait(timeout=30)
    child.stdout.close()
    child.stderr.close()


def _assert_whole(path: Path, key: Path) -> int:
    """Verify as an auditor, then as a writer (replaying), then load every version."""
    report = verify_registry(path)
    assert report.ok, report.problems
    with Registry.open(path, signing_key_path=key) as registry:
        versions = registry.versions()
        assert len(versions) == report.versions
        for info in versions:
            weights = registry.load_weights(info.number)
            assert np.all(weights["layer.weight"] == float(info.round)), info.number
    report = verify_registry(path)
    assert report.ok and not any("temporary file" in note for note in report.notes)
    assert not list(path.rglob(".tmp-*"))  # the writer cleared leftovers of the killed one
    return len(versions)


def _kill_loop(workspace, kills: int, seed: int) -> None:
    path, key, _ = workspace
    rng = random.Random(seed)
    published = 0
    for _ in range(kills):
        child = _start(workspace, "loop", "run-1", 10**6)
        try:
            _wait_ready(child)
            time.sleep(rng.uniform(0.0, 0.25))
            child.send_signal(signal.SIGKILL)
        finally:
            _stop(child)
        now = _assert_whole(path, key)
        assert now >= published
        published = now
    assert published > 0


def test_kill_during_publish_a_few_times(workspace) -> None:
    _kill_loop(workspace, kills=5, seed=5)


@pytest.mark.slow
def test_kill_during_publish_fifty_times(workspace) -> None:
    _kill_loop(workspace, kills=50, seed=50)


@pytest.mark.parametrize(("step", "committed"), [
    ("blob-written", False), ("log-appended", True), ("catalogue-applied", True), ("head-written", True),
])
def test_crash_at_each_step_leaves_all_or_nothing(workspace, step: str, committed: bool) -> None:
    path, key, _ = workspace
    first = _start(workspace, "loop", "run-1", 1)
    try:
        assert first.wait(timeout=60) == 0, first.stderr.read().decode()
    finally:
        _stop(first)
    child = _start(workspace, "crash-at", step, 1)
    try:
        assert child.wait(timeout=60) == -signal.SIGKILL
    finally:
        _stop(child)
    report = verify_registry(path)
    assert report.ok, report.problems
    assert report.versions == (2 if committed else 1)
    if step == "blob-written":
        assert any("no version names this blob" in note for note in report.notes)
    if step == "log-appended":
        assert any("not yet in the catalogue" in note for note in report.notes)
        with Registry.open(path) as reader:  # readers see the catalogue, which lags until a writer runs
            assert len(reader.versions()) == 1
    assert _assert_whole(path, key) == report.versions


def test_two_processes_publishing_at_once(workspace) -> None:
    path, key, _ = workspace
    Registry.open(path, signing_key_path=key).close()
    children = [_start(workspace, "run", run, 6) for run in ("run-a", "run-b")]
    try:
        for child in children:
            assert child.wait(timeout=120) == 0, child.stderr.read().decode()
    finally:
        for child in children:
            _stop(child)
    assert _assert_whole(path, key) == 12
    with Registry.open(path) as registry:
        assert [v.number for v in registry.versions()] == list(range(1, 13))
        for run in ("run-a", "run-b"):
            chain = registry.versions(run)
            assert [v.round for v in chain] == list(range(1, 7))
            assert [v.parent for v in chain[1:]] == [v.number for v in chain[:-1]]
