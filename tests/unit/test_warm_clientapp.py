"""Issue 14.3: a site's ClientApp processes are forked from a warm launcher (flsuite.flower.superexec).

Each message still runs in its own process, with the arguments Flower gave it, and with
random state of its own; a launcher that is gone falls back to Flower's own start; the
SuperNode starts its SuperExec through this entry point. Every process a test starts is
stopped by PID, also when the test fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flsuite.flower import superexec
from flsuite.flower import supernode as node_entry


def _record() -> None:
    """A stand-in for `flwr-clientapp`: write pid, argv and a draw of NumPy's global generator."""
    import numpy as np

    out = Path(sys.argv[-1])
    out.write_text(json.dumps({"pid": os.getpid(), "ppid": os.getppid(), "argv": sys.argv,
                               "comm": Path("/proc/self/comm").read_text().strip(),
                               "cmdline": Path("/proc/self/cmdline").read_bytes().rstrip(b"\0").decode(), "draw": float(np.random.random())}))


def _wait_for(paths: list[Path], timeout: float = 60.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(path.exists() and path.read_text() for path in paths):
        time.sleep(0.02)
    return [json.loads(path.read_text()) for path in paths]


def _gone(pid: int, timeout: float = 30.0) -> bool:
    """Wait until our child pid has exited (reaped); True if it did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:  # reaped already
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def launcher():
    started = superexec.Launcher(("numpy.random",), entry=_record)
    try:
        yield started
    finally:
        started.close()
        if not _gone(started.pid, timeout=10):
            os.kill(started.pid, signal.SIGKILL)
            _gone(started.pid)


def test_each_message_runs_in_its_own_forked_process_with_flowers_arguments(launcher, tmp_path):
    outs = [tmp_path / "a.json", tmp_path / "b.json"]
    for out in outs:
        assert launcher.launch(["flwr-clientapp", "--runtime-api-address", "127.0.0.1:1", "--token", "t", str(out)],
                               quiet=False)
    first, second = _wait_for(outs)
    assert first["pid"] != second["pid"]
    assert {first["pid"], second["pid"]}.isdisjoint({os.getpid(), launcher.pid})
    assert first["ppid"] == second["ppid"] == launcher.pid  # forked by the launcher, not started cold
    assert first["comm"] == "flwr-clientapp"  # what ps and top show, as if Flower had started it
    assert first["cmdline"].split("\0")[:3] == ["flwr-clientapp", "--runtime-api-address", "127.0.0.1:1"]
    assert first["argv"] == ["flwr-clientapp", "--runtime-api-address", "127.0.0.1:1", "--token", "t", str(outs[0])]


def test_forked_clientapps_do_not_share_random_state(launcher, tmp_path):
    # Attack: the launcher imported NumPy once, so without a reseed every forked process would
    # draw the same "random" numbers, e.g. the same noise or mask in every round.
    outs = [tmp_path / f"{i}.json" for i in range(3)]
    for out in outs:
        launcher.launch(["flwr-clientapp", str(out)], quiet=True)
    draws = [record["draw"] for record in _wait_for(outs)]
    assert len(set(draws)) == 3


def test_the_launcher_exits_when_the_superexec_closes_its_pipe(launcher):
    launcher.close()
    assert _gone(launcher.pid)
    assert launcher.launch(["flwr-clientapp"], quiet=True) is False


def test_a_launcher_that_is_gone_falls_back_to_flowers_own_start(monkeypatch):
    from flwr.supercore.superexec.executor import subprocess_executor as module

    started: list[list[str]] = []
    monkeypatch.setattr(subprocess, "Popen", lambda args, *a, **k: started.append(list(args)) or "process")
    monkeypatch.setattr(module, "subprocess", module.subprocess)  # restored after the test

    class Gone:
        def launch(self, args, *, quiet):
            return False

    class Alive:
        def __init__(self):
            self.requests = []

        def launch(self, args, *, quiet):
            self.requests.append((list(args), quiet))
            return True

    alive = Alive()
    superexec.patch(alive)  # type: ignore[arg-type]
    assert module.subprocess.Popen(["flwr-clientapp", "--token", "x"], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL) is None
    assert alive.requests == [(["flwr-clientapp", "--token", "x"], True)] and started == []
    module.subprocess.Popen(["flwr-serverapp", "--token", "y"])  # anything else starts as before
    assert started == [["flwr-serverapp", "--token", "y"]]
    superexec.patch(Gone())  # type: ignore[arg-type]
    assert module.subprocess.Popen(["flwr-clientapp", "--token", "z"]) == "process"
    assert started[-1] == ["flwr-clientapp", "--token", "z"]


def test_the_installed_flower_starts_clientapps_the_way_the_patch_expects():
    superexec.check_patch()
    node_entry.check_patch()


def test_the_supernode_starts_its_superexec_through_the_warm_entry_point(monkeypatch):
    from flwr.supernode import start_client_internal as module

    started: list[list[str]] = []
    monkeypatch.setattr(subprocess, "Popen", lambda command, *a, **k: started.append(list(command)))
    monkeypatch.setattr(module, "time", module.time)  # both restored after the test
    monkeypatch.setattr(module, "subprocess", module.subprocess)
    node_entry.patch(0.5)
    module.subprocess.Popen(["flower-superexec", "--runtime-api-address", "127.0.0.1:9094", "--parent-pid", "1"])
    assert started == [[sys.executable, "-m", "flsuite.flower.superexec", "--runtime-api-address", "127.0.0.1:9094",
                        "--parent-pid", "1"]]
    assert node_entry.superexec_command(["other", "x"]) == ["other", "x"]


@pytest.mark.parametrize(("raw", "enabled"), [(None, True), ("1", True), ("0", False), ("off", False), ("False", False)])
def test_forking_can_be_turned_off(raw, enabled):
    assert superexec.forking_enabled({} if raw is None else {superexec.FORK_ENV: raw}) is enabled


def test_the_preload_list_comes_from_the_environment():
    assert superexec.preload_modules({}) == superexec.DEFAULT_PRELOAD
    assert superexec.preload_modules({superexec.PRELOAD_ENV: " torch, ,numpy "}) == ("torch", "numpy")
    assert superexec.preload_modules({superexec.PRELOAD_ENV: ""}) == ()
