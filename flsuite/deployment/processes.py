"""Background processes that flsuite starts and later stops by the PID it recorded.

A started process gets its own session, a log file and a pid file in its state folder.
The pid file records when the process started (boot id and start time, fixed at fork);
stopping signals the PID only while it is still that process, since a PID can be reused
(after a reboot even by another copy of the same program). The command line cannot tell:
Linux shows it empty until the child has finished execve, after Popen has returned.
Stopping sends SIGTERM, waits, SIGKILLs what is left and returns once all have exited.
Child processes Flower spawns in their own sessions (SuperExec, app processes) are found
through /proc before the signal and stopped the same way.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from flsuite.errors import DeploymentError

FLWR_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
# Flower's SuperExec (it starts each ServerApp and ClientApp process) polls for work every 1 s
# by default; 0.2 s keeps a message's wait for its app process short. A value the operator set wins.
POLL_DEFAULTS = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2"}


@dataclass(frozen=True)
class ProcessFiles:
    """The pid file and log file of one managed process in a state folder."""

    state_dir: Path
    name: str

    @property
    def pid_file(self) -> Path:
        return self.state_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / f"{self.name}.log"


def flower_executable(name: str) -> str:
    """Path of a Flower console script installed beside this Python (e.g. flower-superlink)."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise DeploymentError(
            f"{name} was not found next to {sys.executable}. Install flwr into this environment "
            "(`pip install flsuite`)."
        )
    return str(path)


def flower_environment(extra: Mapping[str, str] = ()) -> dict[str, str]:
    """The environment for Flower processes: telemetry and update checks off, our bin on PATH,
    SuperExec's task poll at 0.2 s unless set.

    SuperLink and SuperNode spawn `flower-superexec` by name, so this Python's bin folder
    must come first on PATH.
    """
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(FLWR_ENV)
    for name, value in POLL_DEFAULTS.items():
        env.setdefault(name, value)
    env.update(dict(extra))
    return env


def running_pid(files: ProcessFiles, *, program: str) -> int | None:
    """The PID in the pid file if that process is alive and is the `program` we started, else None.

    A pid file without a start stamp (written before flsuite recorded one, or where /proc is
    missing) falls back to the command line: the PID must run `program`.
    """
    try:
        record = json.loads(files.pid_file.read_text())
        pid = int(record["pid"])
        recorded_program = record.get("program", program)
        started = record.get("started")
    except (FileNotFoundError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if pid <= 0 or recorded_program != program:  # kill(0) and kill(-1) reach whole groups
        return None
    if started is not None:
        return pid if is_running(pid) and _start_stamp(pid) == started else None
    return pid if _runs(pid, program) else None


def start_process(
    command: Sequence[str], *, files: ProcessFiles, env: Mapping[str, str], program: str
) -> subprocess.Popen:
    """Start command detached in its own session, logging to the log file; write the pid file."""
    pid = running_pid(files, program=program)
    if pid is not None:
        raise DeploymentError(
            f"{program} is already running from {files.state_dir} (PID {pid}). Stop it first."
        )
    files.state_dir.mkdir(parents=True, exist_ok=True)
    with files.log_file.open("ab") as log:
        process = subprocess.Popen(  # noqa: S603 - fixed executable, no shell
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,
            cwd=files.state_dir,
        )
    # Our unreaped child keeps its PID, so this is its stamp even if it already exited.
    record = {"pid": process.pid, "program": program, "started": _start_stamp(process.pid), "command": list(command)}
    tmp = files.pid_file.with_suffix(".pid.tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, files.pid_file)
    return process


def stop_process(files: ProcessFiles, *, program: str, timeout: float = 15.0) -> int | None:
    """Stop the process recorded in the pid file and its descendants; return its PID or None."""
    pid = running_pid(files, program=program)
    if pid is None:
        files.pid_file.unlink(missing_ok=True)
        return None
    family = [pid, *descendants(pid)]
    terminate(family, timeout=timeout)
    files.pid_file.unlink(missing_ok=True)
    return pid


KILL_GRACE = 5.0  # seconds a SIGKILLed process may take to exit: it has to be scheduled once more


def terminate(pids: Sequence[int], *, timeout: float = 15.0, sleep: Callable[[float], None] = time.sleep) -> None:
    """SIGTERM each PID, wait up to timeout for all to exit, then SIGKILL what is left.

    Returns once every PID has exited and our own children are reaped, or KILL_GRACE seconds
    after the SIGKILL if one is stuck in the kernel (it exits when it leaves, SIGKILL pending).
    """
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    left = _wait_exited(pids, timeout=timeout, sleep=sleep)
    for pid in left:
        _signal(pid, signal.SIGKILL)
    # SIGKILL is only queued: the process exits when it next runs, so a reap right away misses it.
    _wait_exited(left, timeout=KILL_GRACE, sleep=sleep)


def _wait_exited(pids: Sequence[int], *, timeout: float, sleep: Callable[[float], None]) -> list[int]:
    """Wait up to timeout until every PID has exited; return those still running.

    A PID seen exiting is never looked at again: once reaped it may belong to another process.
    Polls at 1 ms, doubling up to 100 ms: most processes exit within milliseconds of the signal.
    """
    deadline = time.monotonic() + timeout
    left, interval = list(pids), 0.001
    while True:
        left = [pid for pid in left if not _exited(pid)]
        remaining = deadline - time.monotonic()
        if not left or remaining <= 0:
            return left
        sleep(min(interval, remaining))
        interval = min(2 * interval, 0.1)


def descendants(pid: int) -> list[int]:
    """All live descendants of pid (Linux /proc; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def wait_for(
    ready: Callable[[], bool], *, process: subprocess.Popen, timeout: float, interval: float = 0.25
) -> bool:
    """Poll ready() until it is true (True), the process exits or the timeout passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return True
        if process.poll() is not None:
            return False
        time.sleep(interval)
    return False


def log_tail(files: ProcessFiles, lines: int = 15) -> str:
    try:
        return "\n".join(files.log_file.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def _start_stamp(pid: int) -> str | None:
    """When pid started, as "<boot id>:<start time in clock ticks since boot>"; None without /proc.

    Set at fork and kept across exec, so it names one process of one boot from the moment
    Popen returns, unlike the command line, which is empty until execve has finished.
    """
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        started = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None
    return f"{boot}:{started}"


def _runs(pid: int, program: str) -> bool:
    if not is_running(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc: trust the pid file
    return any(Path(part.decode(errors="replace")).name == program for part in cmdline[:3])


def is_running(pid: int) -> bool:
    """Whether a process with this PID runs (a zombie has exited: not running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _exited(pid: int) -> bool:
    """Whether pid has exited; reaps it if it is our child.

    waitpid reaps a child only once its whole thread group is gone, while /proc already shows
    a multithreaded leader as a zombie when the leader's own thread is done.
    """
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child: its parent reaps its zombie
        return not is_running(pid)
    return reaped == pid
