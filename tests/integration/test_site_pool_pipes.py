"""The site worker pool's pipes: they belong to the coordinator and its one worker, never to another
process either of them starts (which would hold a pipe open, so a dead worker's EOF never came), and
a worker that dies before it is ready is named, not left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from flsuite.deployment.processes import _wait_exited, is_running
from flsuite.errors import SiteWorkerLost
from flsuite.flower import InProcessGrid, SiteProcessPool, new_run

#: A process that only lives until the test stops it.
SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]


def spawning_app() -> ClientApp:
    """Starts a process that keeps every inheritable fd (close_fds=False) and reports its pid."""
    app = ClientApp()

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        child = subprocess.Popen(SLEEPER, close_fds=False, stdin=subprocess.DEVNULL)
        return Message(RecordDict({"out": ConfigRecord({"child": child.pid})}), reply_to=msg)

    return app


def _pipes(pid: int | str, *, skip_std: bool = False) -> set[str]:
    """The pipes ("pipe:[inode]") a process holds open (``skip_std``: not on fds 0-2)."""
    base = f"/proc/{pid}/fd"
    held = set()
    for fd in os.listdir(base):
        if skip_std and int(fd) <= 2:
            continue
        try:
            target = os.readlink(f"{base}/{fd}")
        except OSError:  # closed while we looked
            continue
        if target.startswith("pipe:"):
            held.add(target)
    return held


def _pool_pipes(worker: int) -> set[str]:
    """The pipes between this process and ``worker``: the ones the worker holds beyond stdio that this process holds too."""
    shared = _pipes(worker, skip_std=True) & _pipes("self")
    assert len(shared) == 2, shared  # one pipe each way
    return shared


def _stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_a_process_the_coordinator_starts_later_does_not_hold_the_pools_pipes():
    """The attack: the coordinator starts another process after the pool (a deployed SuperLink, a
    tool) and lets it keep every inheritable fd. Were the pool's pipe ends inheritable, that process
    would hold them, and a worker whose coordinator end closed would never see EOF."""
    children: list[subprocess.Popen[bytes]] = []
    pool = SiteProcessPool(f"{__name__}:spawning_app", workers=1).start()
    try:
        pool.wait_ready(120)
        (worker,) = pool.pids
        pool_pipes = _pool_pipes(worker)
        children.append(subprocess.Popen(SLEEPER, close_fds=False, stdin=subprocess.DEVNULL))
        assert not _pipes(children[0].pid) & pool_pipes
    finally:
        for child in children:
            child.kill()  # by its PID
            child.wait()
        pool.close()
    assert not any(is_running(pid) for pid in pool.pids)


def test_a_process_a_site_starts_in_its_worker_does_not_hold_the_workers_pipes():
    """The attack on the worker's side: its ClientApp starts a process that keeps every inheritable fd.
    Were the worker's pipe ends (passed to it as inheritable) left so, that process would hold them, and
    the coordinator would never see EOF when the worker died."""
    children: list[int] = []
    pool = SiteProcessPool(f"{__name__}:spawning_app", workers=1).start()
    try:
        pool.wait_ready(120)
        (worker,) = pool.pids
        pool_pipes = _pool_pipes(worker)
        context = Context(run_id=5, node_id=301, node_config={}, state=RecordDict(), run_config={})
        with InProcessGrid({301: pool}, {301: context}, run=new_run(5), workers=1) as grid:
            (reply,) = grid.send_and_receive([Message(RecordDict(), dst_node_id=301, message_type="query")], timeout=120)
        assert reply.has_content(), reply.error.reason if reply.has_error() else reply
        children.append(int(reply.content.config_records["out"]["child"]))
        assert not _pipes(children[0]) & pool_pipes
    finally:
        for pid in children:
            _stop(pid)
        pool.close()
    # a SIGKILL takes effect when the process next runs, and a grandchild is reaped by init: wait for both
    # (once, CI saw the site's child still running just after its kill)
    assert _wait_exited(pool.pids + children, timeout=10.0, sleep=time.sleep) == []


def test_wait_ready_names_a_worker_that_died_before_it_was_ready(tmp_path, monkeypatch):
    """The attack: a worker that dies while it warms up (a preload module that exits at import): the
    pipe's EOF is a SiteWorkerLost naming the worker's PID, not a bare EOFError, and nothing is left."""
    (tmp_path / "flsuite_test_dies_at_import.py").write_text("import os\nos._exit(3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # the worker imports what the parent's sys.path reaches
    pool = SiteProcessPool(f"{__name__}:spawning_app", workers=1, preload=["flsuite_test_dies_at_import"]).start()
    try:
        (pid,) = pool.pids
        with pytest.raises(SiteWorkerLost, match=rf"site worker pid {pid} ended before it loaded its ClientApp"):
            pool.wait_ready(120)
    finally:
        pool.close()
    assert pool.pids == [pid] and not is_running(pid)
