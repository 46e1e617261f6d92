"""`flsuite launch`, part 2: submit a planned study with `flwr run ... --stream` and follow it.

The Flower App is built from a staged copy of the project (Flower never touches the source
folder), the run_config travels as a TOML file, and Flower's output is streamed: every line
with --verbose, otherwise only the run id, errors and one progress line per round, read
from the metrics.json the ServerApp rewrites after each round. The study's own summary.json
decides the outcome; a run that leaves none ends with StudyAborted naming the run and the
federation. Ctrl-C stops the run on the federation too (`flwr stop`).
"""

from __future__ import annotations

import hashlib
import json
import queue
import re
import subprocess
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from flsuite.coordinator.launch import RUN_CONFIG_FILE, LaunchPlan, check_coordinator_answers, run_config_toml, stage_app
from flsuite.deployment.processes import descendants, flower_environment, flower_executable, terminate
from flsuite.errors import CoordinatorUnreachable, DeploymentError, StudyAborted

Echo = Callable[[str], None]
_STARTED = re.compile(r"Successfully started run (\d+)")
_ERROR = re.compile(r"\bERROR\b")
_EXCEPTION = re.compile(r"^(?:[A-Za-z_]\w*\.)*([A-Za-z_]\w*(?:Error|Exception|Aborted|Exhausted)): (.+)$")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
TAIL_LINES = 40


def flwr_run_command(plan: LaunchPlan, app: Path, run_config_file: Path) -> list[str]:
    """The `flwr run` command line that submits the staged app to the plan's federation."""
    return [flower_executable("flwr"), "run", str(app), plan.connection.federation,
            "--run-config", str(run_config_file), "--stream"]


def flwr_environment(plan: LaunchPlan) -> dict[str, str]:
    """Flower's CLI environment: the coordinator's FLWR_HOME, telemetry and update checks off."""
    return flower_environment({"FLWR_HOME": str(plan.connection.flwr_home)})


def submit_study(plan: LaunchPlan, *, echo: Echo = print, verbose: bool = False, poll_interval: float = 2.0) -> dict[str, Any]:
    """Run the planned study on its federation, stream its progress, return its summary.

    Raises CoordinatorUnreachable or DeploymentError when the study could not be submitted,
    StudyAborted when it ran but wrote no summary (or was interrupted).
    """
    with tempfile.TemporaryDirectory(prefix="flsuite-launch-") as tmp:
        workdir = Path(tmp)
        app = stage_app(plan.app_dir, workdir / "app")
        run_config = workdir / RUN_CONFIG_FILE
        run_config.write_text(run_config_toml(plan.run_config()))
        follower = _Follower(plan, echo=echo, verbose=verbose)
        process = subprocess.Popen(  # noqa: S603 - fixed executable, no shell
            flwr_run_command(plan, app, run_config), cwd=workdir, env=flwr_environment(plan),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, errors="replace", bufsize=1, start_new_session=True,
        )
        try:
            _follow(process, follower, poll_interval)
        except KeyboardInterrupt:
            _interrupt(plan, process, follower.run_id)
            raise StudyAborted(
                f"interrupted: run {follower.run_id or '(not started)'} on federation {plan.connection.federation} "
                f"was stopped. Outputs so far are in {plan.output_dir}."
            ) from None
        finally:
            if process.poll() is None:
                terminate([process.pid, *descendants(process.pid)], timeout=10)
    follower.poll_rounds()
    return _outcome(plan, process.returncode, follower)


class _Follower:
    """Filters Flower's output and turns new rows of metrics.json into progress lines."""

    def __init__(self, plan: LaunchPlan, *, echo: Echo, verbose: bool) -> None:
        self.plan = plan
        self.echo = echo
        self.verbose = verbose
        self.run_id: int | None = None
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.shown: set[Any] = set()  # rounds (or row positions) already shown
        # A resumed study's metrics.json already holds rows: its earlier rounds (the launch command
        # shows them, marked as earlier) and any round it ran but never published (redone now). Until
        # this run rewrites the file, every row in it is old; afterwards its rows past the earlier
        # rounds are this run's, however alike they are to the old ones.
        self.old_version = _version(plan.output_dir / "metrics.json") if plan.study.resume else None

    def on_line(self, raw: str) -> None:
        line = _ANSI.sub("", raw.rstrip("\n"))
        self.tail.append(line)
        started = _STARTED.search(line)
        if started and self.run_id is None:
            self.run_id = int(started.group(1))
            connection = self.plan.connection
            self.echo(f"submitted run {self.run_id} to federation {connection.federation} at {connection.address}")
            if not self.verbose:
                return
        if self.verbose or _ERROR.search(line) or _EXCEPTION.match(line.strip()):
            self.echo(line)

    def poll_rounds(self) -> None:
        path = self.plan.output_dir / "metrics.json"
        if self.old_version is not None:
            if _version(path) == self.old_version:
                return  # still the file as it was before this run
            self.old_version = None
        rows = _read_json(path)
        if not isinstance(rows, list):
            return
        planned = self.plan.study.federation.rounds
        for index, row in enumerate(rows):
            key = row.get("round") if isinstance(row, dict) and isinstance(row.get("round"), int) else f"row {index}"
            earlier = isinstance(key, int) and key <= self.plan.resumed_after  # shown by the launch command
            if earlier or key in self.shown:
                continue
            self.shown.add(key)
            self.echo(progress_line(row, planned))


def progress_line(row: dict[str, Any], planned: int) -> str:
    """One line per finished round, e.g. 'round 1/2: accuracy 0.912, loss 0.310, 3 sites (41 s)'."""
    parts = [f"{name} {row[name]:.3f}" for name in ("accuracy", "loss") if isinstance(row.get(name), (int, float))]
    sites = f"{row.get('sites', '?')} sites" + (f", {row['failures']} failed" if row.get("failures") else "")
    wall = f" ({row['wall_s']:.0f} s)" if isinstance(row.get("wall_s"), (int, float)) else ""
    return f"round {row.get('round', '?')}/{planned}: " + ", ".join([*parts, sites]) + wall


def failure_reason(lines: Iterable[str]) -> str | None:
    """The last exception line of a log ('PlanError: site node 1 could not ...'), if any."""
    reason = None
    for line in lines:
        match = _EXCEPTION.match(line.strip())
        if match:
            reason = f"{match.group(1)}: {match.group(2)}"
    return reason


def _follow(process: subprocess.Popen, follower: _Follower, poll_interval: float) -> None:
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, name="flwr-run-output", daemon=True).start()
    done = False
    while not done:
        try:
            line = lines.get(timeout=poll_interval)
        except queue.Empty:
            follower.poll_rounds()
            continue
        if line is None:
            done = True
        else:
            follower.on_line(line)
            follower.poll_rounds()
    process.wait()


def _outcome(plan: LaunchPlan, returncode: int, follower: _Follower) -> dict[str, Any]:
    summary_file = plan.output_dir / "summary.json"
    summary = _read_json(summary_file)
    if isinstance(summary, dict):
        return summary
    connection = plan.connection
    tail = "\n".join(follower.tail)
    if follower.run_id is None:
        check_coordinator_answers(connection)  # raises CoordinatorUnreachable when that is the cause
        raise DeploymentError(
            f"`flwr run` could not submit the study to federation {connection.federation} at {connection.address} "
            f"(exit {returncode}). Its output:\n{tail}"
        )
    try:
        check_coordinator_answers(connection)
        where = ""
    except CoordinatorUnreachable as err:
        where = f" {err}"
    reason = failure_reason(follower.tail)
    raise StudyAborted(
        f"run {follower.run_id} on federation {connection.federation} ended without writing {summary_file}"
        f"{f': the ServerApp failed with {reason}' if reason else ''}.{where}\n"
        f"Last lines of its log:\n{tail}\nFull log: FLWR_HOME={connection.flwr_home} flwr log {follower.run_id} "
        f"{connection.federation} --show"
    )


def _interrupt(plan: LaunchPlan, process: subprocess.Popen, run_id: int | None) -> None:
    terminate([process.pid, *descendants(process.pid)], timeout=10)
    if run_id is None:
        return
    try:
        subprocess.run(  # noqa: S603 - fixed executable, no shell
            [flower_executable("flwr"), "stop", str(run_id), plan.connection.federation],
            env=flwr_environment(plan), capture_output=True, timeout=60, check=False,
        )
    except subprocess.TimeoutExpired:
        pass


def _version(path: Path) -> tuple[int, int, int, str] | None:
    """Which version of a file this is: inode, modification time, size and content digest (None: no file)."""
    try:
        stat, data = path.stat(), path.read_bytes()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size, hashlib.sha256(data).hexdigest()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
