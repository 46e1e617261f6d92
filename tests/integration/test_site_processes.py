"""Sites in worker processes (engine.site_workers=processes, issue 15.2): the same metrics as
sequential runs, failures that stay a site's, and no worker left behind, by PID."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

import flsuite.flower
from flsuite import protocol
from flsuite.config import compose_study
from flsuite.deployment.processes import is_running
from flsuite.errors import ConfigError
from flsuite.flower import InProcessGrid, SiteProcessPool, new_run
from flsuite.simulation import run_local_study

NODES = (101, 102, 103)
HUNG = 102


def hanging_echo_app() -> ClientApp:
    """Doubles the model, except at node HUNG, which never answers."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        if context.node_id == HUNG:
            time.sleep(3600)
        arrays = msg.content.array_records["model"]
        return Message(RecordDict({"model": ArrayRecord({k: Array(arrays[k].numpy() * 2) for k in arrays})}), reply_to=msg)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        os._exit(7)  # a worker that dies under the site (a segfault, the OOM killer)

    return app


def crashing_site_app() -> ClientApp:
    """flsuite's site, except that partition 0 raises on every train request."""
    from flsuite.site import handle_evaluate, handle_query, handle_train, secagg_mod, simulated_site_mod

    def crash(msg, context, call_next):
        if msg.metadata.message_type.startswith("train") and int(context.node_config.get(protocol.PARTITION_ID, -1)) == 0:
            raise RuntimeError("disk on fire")
        return call_next(msg, context)

    app = ClientApp(mods=[crash, simulated_site_mod, secagg_mod])
    app.train()(handle_train)
    app.evaluate()(handle_evaluate)
    app.query()(handle_query)
    return app


def _request(node: int, kind: str = "train") -> Message:
    return Message(RecordDict({"model": ArrayRecord({"w": Array(np.ones(4, dtype=np.float32))})}), dst_node_id=node,
                   message_type=kind)


def _grid(pool: SiteProcessPool) -> InProcessGrid:
    contexts = {n: Context(run_id=5, node_id=n, node_config={}, state=RecordDict(), run_config={}) for n in NODES}
    return InProcessGrid({n: pool for n in NODES}, contexts, run=new_run(5), workers=pool.size)


@pytest.mark.slow  # worker processes and kill loops: 4-7 s on a slow host
def test_a_hung_site_worker_does_not_hold_the_round_and_is_killed_at_the_end():
    """The attack: a site whose ClientApp never returns. The round closes at its timeout with the
    others' replies; closing the pool kills the hung worker by PID."""
    pool = SiteProcessPool(f"{__name__}:hanging_echo_app", workers=3).start()
    try:
        pool.wait_ready(120)
        with _grid(pool) as grid:
            started = time.monotonic()
            replies = list(grid.send_and_receive([_request(n) for n in NODES], timeout=5))
            assert time.monotonic() - started < 60  # not the hour the hung site sleeps
        assert sorted(r.metadata.src_node_id for r in replies) == [NODES[0], NODES[2]]
        assert all(r.has_content() for r in replies)
        assert all(is_running(pid) for pid in pool.pids)  # the hung worker is still hanging ...
    finally:
        pool.close()
    assert pool.pids and not any(is_running(pid) for pid in pool.pids)  # ... until the pool is closed


def test_a_worker_that_dies_gives_an_error_reply_and_is_replaced():
    pool = SiteProcessPool(f"{__name__}:hanging_echo_app", workers=1).start()
    try:
        pool.wait_ready(120)
        with _grid(pool) as grid:
            (died,) = grid.send_and_receive([_request(NODES[0], "query")], timeout=120)
            (after,) = grid.send_and_receive([_request(NODES[2])], timeout=120)
        assert died.has_error() and "SiteWorkerLost" in died.error.reason and "exit code 7" in died.error.reason
        assert after.has_content()  # a fresh worker took the dead one's place
        first, second = pool.pids
        assert not is_running(first) and is_running(second)
    finally:
        pool.close()
    assert not any(is_running(pid) for pid in pool.pids)


def test_a_bad_client_app_reference_is_a_config_error_before_any_worker_starts():
    with pytest.raises(ConfigError, match="cannot be imported"):
        SiteProcessPool("flsuite.site.app:no_such_factory", workers=2)
    with pytest.raises(ConfigError, match="not a flwr ClientApp"):
        SiteProcessPool("flsuite.site.app:__doc__", workers=2)


def test_a_custom_client_app_object_cannot_go_to_worker_processes(tmp_path):
    study = compose_study(["experiment=smoke", f"sites_dir={tmp_path / 'sites'}", "engine.parallel_sites=2"])
    with pytest.raises(ConfigError, match="engine.site_workers=threads"):
        run_local_study(study, tmp_path / "out", client_app=crashing_site_app())
    assert not (tmp_path / "out").exists() and not (tmp_path / "sites").exists()  # refused before anything was written


@pytest.fixture
def recorded_pools(monkeypatch):
    """Every SiteProcessPool a study starts, to check its workers by PID afterwards."""
    pools: list[SiteProcessPool] = []

    class Recording(SiteProcessPool):
        def start(self) -> SiteProcessPool:
            pools.append(self)
            return super().start()

    monkeypatch.setattr(flsuite.flower, "SiteProcessPool", Recording)
    return pools


@pytest.mark.slow  # worker processes and kill loops: 4-7 s on a slow host
def test_no_worker_is_left_when_the_study_fails(tmp_path, recorded_pools):
    """The attack: a coordinator that fails mid-study, after the site workers answered it."""

    def failing_server(grid, context):
        nodes = list(grid.get_node_ids())
        messages = [grid.create_message(RecordDict(), protocol.QUERY, n, "1")
                    for n in nodes]
        replies = list(grid.send_and_receive(messages, timeout=120))
        assert replies  # the workers did run
        raise RuntimeError("the coordinator broke")

    study = compose_study(["experiment=smoke", f"sites_dir={tmp_path / 'sites'}", "privacy=none", "engine.parallel_sites=2"])
    if (os.cpu_count() or 1) < 2:
        pytest.skip("worker processes are capped at one per core")
    with pytest.raises(RuntimeError, match="the coordinator broke"):
        run_local_study(study, tmp_path / "out", server_app=failing_server)
    (pool,) = recorded_pools
    assert len(pool.pids) == 2 and not any(is_running(pid) for pid in pool.pids)


def _metrics(study_overrides: list[str], tmp_path: Path, tag: str) -> tuple[dict, list[dict]]:
    study = compose_study([*study_overrides, f"sites_dir={tmp_path / ('sites-' + tag)}"])
    summary = run_local_study(study, tmp_path / tag)
    rows = json.loads((tmp_path / tag / "metrics.json").read_text())
    return summary, [{k: v for k, v in row.items() if k != "wall_s"} for row in rows]


@pytest.mark.slow  # two 3-round studies, one with worker start-up: 65 s on a busy machine
def test_same_seeded_non_private_study_gives_bit_identical_metrics_with_processes_and_sequentially(tmp_path, recorded_pools):
    if (os.cpu_count() or 1) < 2:
        pytest.skip("worker processes are capped at one per core")
    plain = ["experiment=smoke", "federation.rounds=3", "privacy=none"]
    sequential, sequential_rows = _metrics(plain, tmp_path, "sequential")
    parallel, parallel_rows = _metrics([*plain, "engine.parallel_sites=2"], tmp_path, "processes")
    assert len(recorded_pools) == 1 and len(recorded_pools[0].pids) == 2  # the second study did run in processes
    assert parallel_rows == sequential_rows  # exactly: every metric of every round
    assert parallel["final_accuracy"] == sequential["final_accuracy"]
    assert not any(is_running(pid) for pid in recorded_pools[0].pids)


@pytest.mark.slow  # the default study's privacy and secure aggregation, 2 rounds: 100 s on a busy machine
def test_a_dp_and_secure_aggregation_study_completes_with_processes(tmp_path, recorded_pools):
    if (os.cpu_count() or 1) < 2:
        pytest.skip("worker processes are capped at one per core")
    summary, rows = _metrics(["experiment=smoke", "engine.parallel_sites=2"], tmp_path, "dp")
    assert summary["status"] == "completed" and len(rows) == 2, summary.get("reasons")
    assert summary["final_accuracy"] > 0.8
    assert not any(is_running(pid) for pid in recorded_pools[0].pids)


@pytest.mark.slow
def test_a_site_that_raises_in_its_worker_is_reported_and_the_study_goes_on(tmp_path, recorded_pools):
    if (os.cpu_count() or 1) < 2:
        pytest.skip("worker processes are capped at one per core")
    study = compose_study(["experiment=smoke", f"sites_dir={tmp_path / 'sites'}", "privacy=none", "secagg=none",
                           "engine.parallel_sites=2", "federation.min_sites=3"])
    summary = run_local_study(study, tmp_path / "out", client_app=f"{__name__}:crashing_site_app")
    assert summary["status"] == "completed", summary.get("reasons")
    rows = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert [row["failures"] for row in rows] == [1, 1] and [row["sites"] for row in rows] == [4, 4]
    assert not any(is_running(pid) for pid in recorded_pools[0].pids)


ORPHAN = """
import os, sys, threading, time
import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from flsuite.flower import SiteProcessPool, server_task_identity
pool = SiteProcessPool("tests.integration.test_site_processes:hanging_echo_app", workers=1).start()
pool.wait_ready(120)
with server_task_identity(5):
    msg = Message(RecordDict({"model": ArrayRecord({"w": Array(np.ones(4, dtype=np.float32))})}), dst_node_id=HUNG,
                  message_type="train")
context = Context(run_id=5, node_id=HUNG, node_config={}, state=RecordDict(), run_config={})
threading.Thread(target=pool, args=(msg, context), daemon=True).start()
time.sleep(1)
print(pool.pids[0], flush=True)
os._exit(0)  # killed: no close(), no finally
"""


@pytest.mark.slow  # worker processes and kill loops: 4-7 s on a slow host
def test_a_hung_worker_ends_when_the_study_process_is_killed(tmp_path):
    """The attack: the study's process dies (SIGKILL, OOM) while a site hangs; its worker must not stay forever."""
    import subprocess
    import sys

    out = tmp_path / "stdout"
    with out.open("w") as stdout:  # a file, not a pipe: the worker inherits it, and must not hold this test
        subprocess.run([sys.executable, "-c", ORPHAN.replace("HUNG", str(HUNG))], stdout=stdout, timeout=300, check=True,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    pid = int(out.read_text().split()[-1])
    try:
        for _ in range(60):
            if not is_running(pid):
                break
            time.sleep(0.5)
        assert not is_running(pid)
    finally:
        if is_running(pid):
            os.kill(pid, 9)


def fails_in_workers() -> ClientApp:
    """A factory that works in the parent (the pool checks the reference there) and raises in a worker."""
    import sys

    if sys.argv[0] == "-c":
        raise RuntimeError("no GPU here")
    return hanging_echo_app()


def test_an_app_that_cannot_load_in_its_worker_answers_every_message_with_why():
    pool = SiteProcessPool(f"{__name__}:fails_in_workers", workers=1).start()
    try:
        with _grid(pool) as grid:
            for _ in range(2):  # the first message and the next: no message waits for a worker that will never come
                (reply,) = grid.send_and_receive([_request(NODES[0])], timeout=120)
                assert reply.has_error() and "could not load its ClientApp: RuntimeError: no GPU here" in reply.error.reason
    finally:
        pool.close()
    assert not any(is_running(pid) for pid in pool.pids)
