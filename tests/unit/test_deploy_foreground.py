"""A container's main process follows the service it started (issue 14.5): `flsuite coordinator
run` / `flsuite site run` copy the service's log to standard output, stop it on SIGTERM (a
container stop) and return 0, and return 1 when the service dies on its own, so that the
orchestrator restarts it. Played with a stand-in process; every process is stopped by PID."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from flsuite.deployment import stay_in_foreground, terminate


def start(log: Path, code: str) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=subprocess.STDOUT)  # noqa: S603


def test_a_service_that_dies_on_its_own_ends_the_container_with_its_log(tmp_path: Path):
    log = tmp_path / "service.log"
    process = start(log, "print('listening on 9093', flush=True); raise SystemExit(7)")
    out = io.StringIO()
    try:
        code = stay_in_foreground(process.pid, log, stop=lambda: None, poll_s=0.05, out=out)
    finally:
        terminate([process.pid], timeout=5)
    assert code == 1
    assert "listening on 9093" in out.getvalue() and f"process {process.pid} exited on its own" in out.getvalue()


def test_sigterm_stops_the_service_and_ends_the_container_cleanly(tmp_path: Path):
    log = tmp_path / "service.log"
    process = start(log, "import time; print('serving', flush=True); time.sleep(600)")
    stopped: list[int] = []

    def stop() -> None:
        stopped.append(process.pid)
        process.terminate()
        process.wait(timeout=10)

    out = io.StringIO()
    done = threading.Event()
    before = signal.getsignal(signal.SIGTERM)

    def container_stop() -> None:  # the runtime's stop: SIGTERM to the main process, once the service is up
        while not done.is_set() and ("serving" not in log.read_text() or signal.getsignal(signal.SIGTERM) == before):
            done.wait(0.05)
        if not done.is_set():
            os.kill(os.getpid(), signal.SIGTERM)

    runtime = threading.Thread(target=container_stop, daemon=True)
    runtime.start()
    try:
        code = stay_in_foreground(process.pid, log, stop=stop, poll_s=0.05, out=out)
    finally:
        done.set()
        runtime.join(5)
        terminate([process.pid], timeout=5)
    assert code == 0 and stopped == [process.pid] and process.poll() is not None
    assert "serving" in out.getvalue() and "stopped on SIGTERM" in out.getvalue()
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is put back
