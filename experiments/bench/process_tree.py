"""Peak memory of a process and everything it starts (Ray's GCS, raylet and workers included).

Reads /proc (Linux) every few tens of milliseconds: a process counts when it descends from
the child or shares its session (Ray's daemons may be re-parented). RSS summed over
processes counts shared libraries once per process; PSS shares them out, so both are kept.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, session id) of ``pid``, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[3])


def tree_pids(root: int) -> set[int]:
    """``root``, its descendants, and every process in its session."""
    parents, sessions = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = _stat(int(entry))
            if info:
                parents[int(entry)], sessions[int(entry)] = info
    found = {root}
    session = sessions.get(root)
    changed = True
    while changed:
        changed = False
        for pid, parent in parents.items():
            if pid not in found and (parent in found or (session is not None and sessions[pid] == session)):
                found.add(pid)
                changed = True
    return found


def _rss_pss(pid: int) -> tuple[int, int]:
    try:
        rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0, 0
    pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
                break
    except OSError:
        pss = rss
    return rss, pss


@dataclass
class TreePeak:
    """What one measured child process did."""

    returncode: int
    wall_s: float
    peak_rss_bytes: int
    peak_pss_bytes: int
    peak_processes: int
    stdout: str
    stderr: str


def run_measured(command: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None,
                 interval_s: float = 0.05, timeout_s: float = 900) -> TreePeak:
    """Run ``command`` in its own session, sampling its process tree's memory until it exits.

    Every process left in the session afterwards (Ray's daemons, if any) is stopped by PID.
    """
    peak = {"rss": 0, "pss": 0, "procs": 0}
    started = time.perf_counter()
    child = subprocess.Popen(list(command), env=dict(env) if env else None, cwd=cwd, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stop = threading.Event()
    seen: set[int] = set()

    def sample() -> None:
        while not stop.is_set():
            pids = tree_pids(child.pid)
            seen.update(pids)
            usage = [_rss_pss(pid) for pid in pids]
            peak["rss"] = max(peak["rss"], sum(u[0] for u in usage))
            peak["pss"] = max(peak["pss"], sum(u[1] for u in usage))
            peak["procs"] = max(peak["procs"], len(pids))
            stop.wait(interval_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        stdout, stderr = child.communicate(timeout=timeout_s)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        wall = time.perf_counter() - started
        stop.set()
        sampler.join()
        _stop_leftovers(child.pid, seen)
    return TreePeak(child.returncode, wall, peak["rss"], peak["pss"], peak["procs"],
                    stdout if "stdout" in locals() else "", stderr if "stderr" in locals() else "")


def _stop_leftovers(root: int, seen: set[int]) -> None:
    """Kill, by PID, processes of the child's session that outlived it."""
    for pid in sorted(seen - {root}):
        info = _stat(pid)
        if info is not None and info[1] == root:  # still in the child's session (session id = its pid)
            try:
                os.kill(pid, 9)
            except OSError:
                pass
