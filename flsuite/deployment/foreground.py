"""Keep a started SuperLink or SuperNode in the foreground: the entrypoint of a container.

`flsuite coordinator start` and `flsuite site start` check everything, start Flower's process
in the background and return; a container's main process must instead live as long as the
service. ``stay_in_foreground`` follows the started process: it copies the process's log to
standard output (so `docker logs` and `kubectl logs` show it), and on SIGTERM or SIGINT (a
container stop) it stops the process the same way `... stop` does and returns 0. When the
process exits on its own it returns 1, so the orchestrator restarts the container.
`flsuite coordinator run` and `flsuite site run` are the commands the image runs.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from flsuite.deployment.processes import _exited

__all__ = ["STOP_SIGNALS", "stay_in_foreground"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def stay_in_foreground(pid: int, log_file: Path, stop: Callable[[], object], *, poll_s: float = 0.5,
                       out: TextIO | None = None) -> int:
    """Follow ``pid`` until it exits (1) or a stop signal arrives and ``stop()`` ends it (0)."""
    out = out or sys.stdout
    stopping: list[int] = []
    previous = {sig: signal.signal(sig, lambda number, _frame: stopping.append(number)) for sig in STOP_SIGNALS}
    offset = 0
    try:
        while True:
            offset = _copy_log(log_file, offset, out)
            if stopping:
                stop()
                _copy_log(log_file, offset, out)
                out.write(f"stopped on {signal.Signals(stopping[0]).name}\n")
                out.flush()
                return 0
            if _exited(pid):
                _copy_log(log_file, offset, out)
                out.write(f"process {pid} exited on its own; see its log above\n")
                out.flush()
                return 1
            time.sleep(poll_s)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _copy_log(log_file: Path, offset: int, out: TextIO) -> int:
    """Write what the log gained since ``offset``; return the new offset."""
    try:
        with log_file.open("rb") as log:
            log.seek(offset)
            chunk = log.read()
    except FileNotFoundError:
        return offset
    if chunk:
        out.write(chunk.decode(errors="replace"))
        out.flush()
    return offset + len(chunk)
