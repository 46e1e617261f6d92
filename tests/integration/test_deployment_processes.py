"""Managed processes: a recorded PID names exactly the process flsuite started, at any moment.

Real `sleep` processes stand in for SuperLink and SuperNode (fast, part of the default run).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from flsuite.deployment.processes import ProcessFiles, running_pid, start_process, stop_process, terminate
from flsuite.errors import DeploymentError


@contextmanager
def sleeper(files: ProcessFiles) -> Iterator[subprocess.Popen]:
    process = start_process(["sleep", "60"], files=files, env=os.environ, program="sleep")
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def still_inside_execve(monkeypatch: pytest.MonkeyPatch, pid: int) -> None:
    """Make /proc/PID/cmdline read empty, as Linux reports it while the child is inside execve.

    Popen returns once the child passed exec's point of no return; the new program's
    arguments show up in /proc only milliseconds later (more on a loaded machine).
    """
    read_bytes = Path.read_bytes
    cmdline = Path(f"/proc/{pid}/cmdline")
    monkeypatch.setattr(Path, "read_bytes", lambda path: b"" if path == cmdline else read_bytes(path))


def test_a_just_started_process_is_found_and_stopped_while_still_inside_execve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = ProcessFiles(tmp_path, "sleeper")
    with sleeper(files) as process:
        still_inside_execve(monkeypatch, process.pid)
        assert running_pid(files, program="sleep") == process.pid
        with pytest.raises(DeploymentError, match="already running"):  # no second copy
            start_process(["sleep", "60"], files=files, env=os.environ, program="sleep")
        assert stop_process(files, program="sleep", timeout=5) == process.pid  # not orphaned
        assert process.wait(timeout=5) is not None


def start_ticks(pid: int) -> int:
    """Clock ticks from boot to the start of pid (/proc/PID/stat field 22)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def test_a_reused_pid_running_the_same_program_is_not_ours(tmp_path: Path) -> None:
    files = ProcessFiles(tmp_path, "sleeper")
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    other = subprocess.Popen(["sleep", "60"])  # holds the PID our pid file names, but is not ours
    try:
        def record(started: str) -> None:
            files.pid_file.write_text(json.dumps({"pid": other.pid, "program": "sleep", "started": started}))

        record(f"{boot}:{start_ticks(other.pid)}")
        assert running_pid(files, program="sleep") == other.pid  # the stamp of that very process
        for stale in (f"{boot}:{start_ticks(other.pid) - 1}", f"{uuid.uuid4()}:{start_ticks(other.pid)}"):
            record(stale)  # ours started earlier in this boot, or in a boot before the last reboot
            assert running_pid(files, program="sleep") is None
            assert stop_process(files, program="sleep", timeout=5) is None
            assert other.poll() is None
    finally:
        other.kill()
        other.wait()


@pytest.mark.parametrize("pid", [0, -1])
def test_a_pid_file_naming_a_process_group_or_everyone_is_ignored(tmp_path: Path, pid: int) -> None:
    # kill(0, sig) signals our own process group, kill(-1, sig) every process we may signal.
    files = ProcessFiles(tmp_path, "sleeper")
    files.pid_file.write_text(json.dumps({"pid": pid, "program": "sleep"}))
    assert running_pid(files, program="sleep") is None


@contextmanager
def sigterm_ignored() -> Iterator[None]:
    """Children started inside ignore SIGTERM from their first instruction (dispositions survive exec)."""
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_terminate_returns_only_once_a_killed_child_is_gone_and_reaped() -> None:
    with sigterm_ignored():
        stubborn = subprocess.Popen(["sleep", "60"])
    try:
        terminate([stubborn.pid], timeout=0.2)
        # SIGKILL is asynchronous: a reap right after it finds the child still running.
        with pytest.raises(ChildProcessError):
            os.waitpid(stubborn.pid, os.WNOHANG)  # already reaped: no zombie, no running child
    finally:
        if stubborn.poll() is None:
            stubborn.kill()
            stubborn.wait()
