"""An opt-in trace of where a deployed exchange spends its time (``FLSUITE_TRACE_TIMING``).

Set ``FLSUITE_TRACE_TIMING`` to an absolute file path and every flsuite process that sees it
(coordinator, SuperNode, ClientApp processes) appends one JSON line per step to that file:
``{"t": <time.monotonic()>, "pid": ..., "event": ..., ...}``. CLOCK_MONOTONIC is one clock for
the whole machine on Linux, so lines from different processes of a local federation line up.
``experiments/deployed_round.py`` reads the file back into its per-exchange breakdown. Unset
(the default) every call here returns at once and writes nothing. Standard library only.

``FLSUITE_TRACE_PROFILE`` (a folder) additionally makes the ClientApp profile each handler
call with cProfile, one ``<pid>-<kind>.prof`` file per call.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

__all__ = ["PROFILE_ENV", "TRACE_ENV", "mark", "process_started_at", "profile_dir", "read_trace", "trace_file"]

TRACE_ENV = "FLSUITE_TRACE_TIMING"
PROFILE_ENV = "FLSUITE_TRACE_PROFILE"


def trace_file() -> Path | None:
    """The trace file named by FLSUITE_TRACE_TIMING, or None (tracing off).

    Only an absolute path turns tracing on: a relative one would land in whatever folder
    Flower started the process in.
    """
    raw = os.environ.get(TRACE_ENV, "")
    return Path(raw) if raw and os.path.isabs(raw) else None


def profile_dir() -> Path | None:
    """The folder named by FLSUITE_TRACE_PROFILE (absolute), or None."""
    raw = os.environ.get(PROFILE_ENV, "")
    return Path(raw) if raw and os.path.isabs(raw) else None


def mark(event: str, **fields: Any) -> None:
    """Append one line for `event` (now, this PID, fields) to the trace file, if tracing is on.

    One write of one line to a file opened for appending: lines of concurrent processes do not
    interleave. A trace that cannot be written is skipped: timing must never fail a study.
    """
    path = trace_file()
    if path is None:
        return
    line = json.dumps({"t": time.monotonic(), "pid": os.getpid(), "event": event, **fields}, default=str) + "\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    except OSError:
        pass


def process_started_at(pid: int | None = None) -> float | None:
    """When process `pid` (default this one) started, on the time.monotonic() clock; None without /proc.

    /proc gives the start in clock ticks since boot; CLOCK_BOOTTIME is the clock it counts on.
    Resolution: one clock tick (10 ms).
    """
    try:
        stat = Path(f"/proc/{pid or os.getpid()}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])
        since_boot = ticks / os.sysconf("SC_CLK_TCK")
        now_boot, now = time.clock_gettime(time.CLOCK_BOOTTIME), time.monotonic()
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return now - (now_boot - since_boot)


def read_trace(path: Path) -> list[dict[str, Any]]:
    """The trace's lines in time order (a line cut short by a killed process is skipped)."""
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return sorted(events, key=lambda event: event["t"])
