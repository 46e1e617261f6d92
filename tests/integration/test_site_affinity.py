"""Site affinity in the worker-process pool (issue 15.2): each site stays on one worker, sites are
balanced by their records, a worker's copy of one site's state never reaches another site, and a
dead or stuck worker's sites are served again by a fresh worker with their state intact."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from flsuite.deployment.processes import is_running
from flsuite.errors import ConfigError
from flsuite.flower import InProcessGrid, SiteProcessPool, new_run

NODES = (201, 202, 203, 204)
STUCK = 203


def stateful_app() -> ClientApp:
    """Counts its messages in its Context, remembers what it was told, and reports its pid and what it saw."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        if context.node_id == STUCK and "stick" in msg.content.config_records:
            time.sleep(3600)
        if "slow" in msg.content.config_records:
            time.sleep(float(msg.content.config_records["slow"]["s"]))
        state = context.state.config_records.get("site", ConfigRecord({"count": 0}))
        seen = sorted(str(k) for k in state)  # every key this site's state holds
        state["count"] = int(state["count"]) + 1
        if "secret" in msg.content.config_records:
            state["secret"] = str(msg.content.config_records["secret"]["value"])
        context.state.config_records["site"] = state
        return Message(RecordDict({"out": ConfigRecord({"pid": os.getpid(), "count": int(state["count"]), "seen": ",".join(seen),
                                                        "secret": str(state.get("secret", ""))}),
                                   "model": ArrayRecord({"w": Array(np.zeros(2, dtype=np.float32))})}), reply_to=msg)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        os._exit(7)  # the worker dies under the site

    return app


def forgetful_app() -> ClientApp:
    """Counts its messages in its Context; told to forget, it leaves the Context's state empty. In a
    worker, a Context with an empty state encodes to no bytes at all (see ``_encode_forgotten_as_nothing``)."""
    import sys

    import flsuite.flower.site_processes as site_processes

    if sys.argv[0] == "-c":  # in a worker process, not in the parent that checks the reference
        site_processes.context_to_proto = _encode_forgotten_as_nothing
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        count = int(context.state.config_records.get("site", ConfigRecord({"count": 0}))["count"]) + 1
        context.state = RecordDict() if "forget" in msg.content.config_records else RecordDict({"site": ConfigRecord({"count": count})})
        return Message(RecordDict({"out": ConfigRecord({"count": count})}), reply_to=msg)

    return app


def _encode_forgotten_as_nothing(context: Context):
    """Flower's Context encoding, except that a Context whose state is empty encodes to b"" (Flower's own
    always writes the state field, but nothing in the pipe protocol may depend on that)."""
    from flwr.common.serde import context_to_proto
    from flwr.proto.message_pb2 import Context as ProtoContext

    return ProtoContext() if not context.state else context_to_proto(context)


def warm_marker(path: str) -> None:
    """A warm-up that leaves a mark (the worker ran it before its first message)."""
    Path(path).write_text(str(os.getpid()))


def warm_measure(study_json: str) -> None:
    """A warm-up that writes where it was told how much of the study's JSON it got."""
    study = json.loads(study_json)
    Path(study["mark"]).write_text(str(len(study_json)))


def warm_slowly(seconds: str) -> None:
    """A slow warm-up (a big CSV on a cold disk): it takes ``seconds``."""
    time.sleep(float(seconds))


def warm_broken(study_json: str) -> None:
    raise RuntimeError("the data share is unreachable")


def _contexts() -> dict[int, Context]:
    return {n: Context(run_id=5, node_id=n, node_config={}, state=RecordDict(), run_config={}) for n in NODES}


def _train(node: int, **configs: dict) -> Message:
    return Message(RecordDict({k: ConfigRecord(v) for k, v in configs.items()}), dst_node_id=node, message_type="train")


def _ask(grid: InProcessGrid, messages: list[Message], timeout: float = 120) -> dict[int, Message]:
    return {r.metadata.src_node_id: r for r in grid.send_and_receive(messages, timeout=timeout)}


def _out(reply: Message) -> ConfigRecord:
    assert reply.has_content(), reply.error.reason if reply.has_error() else reply
    return reply.content.config_records["out"]


@pytest.fixture
def pool():
    pool = SiteProcessPool(f"{__name__}:stateful_app", workers=2)
    pool.assign({201: 40.0, 202: 30.0, 203: 20.0, 204: 10.0})
    pool.start()
    try:
        pool.wait_ready(120)
        yield pool
    finally:
        pool.close()
    assert not any(is_running(pid) for pid in pool.pids)


def test_sites_are_placed_longest_processing_time_first():
    pool = SiteProcessPool(f"{__name__}:stateful_app", workers=2)  # never started: placement only
    pool.assign({1: 10.0, 2: 70.0, 3: 40.0, 4: 30.0, 5: 20.0})
    # 70 -> slot 0; 40 -> 1; 30 -> 1 (70); 20 -> 0 (90); 10 -> 1 (80): loads 90 / 80
    assert [pool.slot_of(n) for n in (1, 2, 3, 4, 5)] == [1, 0, 1, 1, 0]
    assert pool.slot_of(6) == 1  # a node never assigned goes to the least loaded slot
    pool.assign({2: 1.0})
    assert pool.slot_of(2) == 0  # placed nodes keep their slot


def test_each_site_is_served_by_one_worker_and_its_state_never_reaches_another(pool):
    """The attack: sites that share a worker, one told a secret. The worker keeps each site's Context
    apart, so the other sites never see the secret (nor any key of another site's state)."""
    assert pool.slot_of(201) != pool.slot_of(202) and pool.slot_of(201) == pool.slot_of(204)
    contexts = _contexts()
    with InProcessGrid({n: pool for n in NODES}, contexts, run=new_run(5), workers=len(NODES)) as grid:
        first = _ask(grid, [_train(201, secret={"value": "s201"}), *(_train(n) for n in NODES[1:])])
        second = _ask(grid, [_train(n) for n in NODES])
        third = _ask(grid, [_train(n) for n in NODES])
    for node in NODES:
        assert _out(first[node])["pid"] == _out(second[node])["pid"] == _out(third[node])["pid"]  # one worker per site
        assert [_out(r[node])["count"] for r in (first, second, third)] == [1, 2, 3]
    assert _out(first[201])["pid"] == _out(first[204])["pid"] != _out(first[202])["pid"]
    assert _out(third[201])["secret"] == "s201" and _out(third[201])["seen"] == "count,secret"
    for node in NODES[1:]:
        assert _out(second[node])["secret"] == _out(third[node])["secret"] == ""
        assert _out(third[node])["seen"] == "count"
    # The parent's Contexts mirror what the sites left, as in process.
    assert contexts[201].state.config_records["site"]["secret"] == "s201"
    assert "secret" not in contexts[204].state.config_records["site"]


def test_a_context_changed_by_the_parent_reaches_the_worker(pool):
    """The attack on "send only what changed": the parent's Context of a site changes between messages
    (a new grid reusing the pool, a reset). The worker must not keep serving its stale copy."""
    contexts = _contexts()
    with InProcessGrid({n: pool for n in NODES}, contexts, run=new_run(5), workers=len(NODES)) as grid:
        _ask(grid, [_train(n) for n in NODES])
        _ask(grid, [_train(n) for n in NODES])
        contexts[202].state = RecordDict()  # the parent resets site 202
        replies = _ask(grid, [_train(n) for n in NODES])
    assert _out(replies[202])["count"] == 1 and _out(replies[201])["count"] == 3
    with InProcessGrid({n: pool for n in NODES}, _contexts(), run=new_run(5), workers=len(NODES)) as grid:
        fresh = _ask(grid, [_train(n) for n in NODES])  # fresh Contexts: every count starts again
    assert all(_out(fresh[n])["count"] == 1 for n in NODES)


def test_a_context_that_encodes_to_no_bytes_goes_both_ways(monkeypatch):
    """The attack on "an empty frame means unchanged": a Context that encodes to b"". Sent to a
    worker that holds none for the site, it killed the worker (KeyError); left so by the site, the
    parent kept its stale copy."""
    import flsuite.flower.site_processes as site_processes

    monkeypatch.setattr(site_processes, "context_to_proto", _encode_forgotten_as_nothing)
    context = Context(run_id=5, node_id=201, node_config={}, state=RecordDict(), run_config={})
    assert _encode_forgotten_as_nothing(context).SerializeToString() == b""
    with SiteProcessPool(f"{__name__}:forgetful_app", workers=1) as pool:
        pool.wait_ready(120)
        with InProcessGrid({201: pool}, {201: context}, run=new_run(5), workers=1) as grid:
            assert _out(_ask(grid, [_train(201)])[201])["count"] == 1  # not an Error reply: the worker took b""
            assert context.state.config_records["site"]["count"] == 1
            assert _out(_ask(grid, [_train(201, forget={"x": 1})])[201])["count"] == 2
            assert not context.state  # the parent's Context is as the site left it: forgotten
            assert _out(_ask(grid, [_train(201)])[201])["count"] == 1
        (pid,) = pool.pids
        assert is_running(pid)  # the same worker all along


def test_a_dead_workers_sites_are_served_again_with_their_state(pool):
    contexts = _contexts()
    with InProcessGrid({n: pool for n in NODES}, contexts, run=new_run(5), workers=len(NODES)) as grid:
        before = _ask(grid, [_train(n) for n in NODES])
        (died,) = grid.send_and_receive([Message(RecordDict(), dst_node_id=201, message_type="query")], timeout=120)
        after = _ask(grid, [_train(n) for n in NODES])
    assert died.has_error() and "SiteWorkerLost" in died.error.reason and "exit code 7" in died.error.reason
    dead = _out(before[201])["pid"]
    assert not is_running(dead)
    for node in (201, 204):  # the dead worker's sites: a fresh worker, their counts carried on
        assert _out(after[node])["pid"] != dead and _out(after[node])["count"] == 2
    assert _out(after[202])["pid"] == _out(before[202])["pid"] and _out(after[202])["count"] == 2


def test_a_worker_that_died_while_idle_is_replaced_before_the_next_message_reaches_it(pool):
    """A worker killed between messages (as stuck just after its last reply, or by the system) stayed
    in its slot: the next healthy message to its sites was answered SiteWorkerLost."""
    import os
    import signal

    contexts = _contexts()
    with InProcessGrid({n: pool for n in NODES}, contexts, run=new_run(5), workers=len(NODES)) as grid:
        before = _ask(grid, [_train(n) for n in NODES])
        idle = _out(before[201])["pid"]
        os.kill(idle, signal.SIGKILL)
        deadline = time.monotonic() + 30
        # Until it can be reaped, as the pool sees it: /proc shows a killed worker's main thread as a zombie
        # while its other threads still exit, and until then the pool cannot know that it ended.
        while not _ended(idle) and time.monotonic() < deadline:
            time.sleep(0.05)
        after = _ask(grid, [_train(n) for n in NODES])
    for node in (201, 204):  # served by a fresh worker, with their state, and no error
        assert _out(after[node])["pid"] != idle and _out(after[node])["count"] == 2


def _ended(pid: int) -> bool:
    """Whether our child ``pid`` has ended and can be reaped (it is not reaped here)."""
    import os

    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # reaped already
        return True


@pytest.mark.slow  # worker processes and kill loops: 5 s each on a slow host
def test_a_stuck_worker_is_replaced_once_one_message_ran_past_its_deadline():
    """The attack: a site that hangs forever. Without stuck_after_s its worker's other sites would wait
    for it in every later round; with it, once that one message has run stuck_after_s the stuck worker
    is killed by PID and a fresh one serves them."""
    pool = SiteProcessPool(f"{__name__}:stateful_app", workers=2, stuck_after_s=3)
    pool.assign({201: 40.0, 202: 30.0, 203: 20.0, 204: 10.0})  # 203 shares slot 1 with 202
    pool.start()
    try:
        pool.wait_ready(120)
        contexts = _contexts()
        with InProcessGrid({n: pool for n in NODES}, contexts, run=new_run(5), workers=len(NODES)) as grid:
            before = _ask(grid, [_train(n) for n in NODES])
            stuck_pid = _out(before[STUCK])["pid"]
            hung = _ask(grid, [_train(STUCK, stick={"x": 1})], timeout=1)
            after = _ask(grid, [_train(n) for n in NODES], timeout=120)
        assert hung == {}
        assert not is_running(stuck_pid)
        assert set(after) == set(NODES)
        assert _out(after[202])["pid"] not in (stuck_pid, _out(before[201])["pid"]) and _out(after[202])["count"] == 2
        assert _out(after[STUCK])["count"] == 2  # its state as it was before the message that hung
    finally:
        pool.close()
    assert not any(is_running(pid) for pid in pool.pids)


def test_a_warm_up_longer_than_stuck_after_s_is_not_stuck():
    """The attack on "the stuck clock starts when the message goes in": a fresh worker whose warm-up
    (2.5 s) takes longer than stuck_after_s (1 s), and two sites on its slot whose first messages come
    at once. Timed from the first message's entry, the waiting one killed the healthy worker while it
    was still warming up (an Error reply, and a fresh worker that warms up again); timed from when the
    worker was ready, both get real replies from the one worker."""
    pool = SiteProcessPool(f"{__name__}:stateful_app", workers=1, stuck_after_s=1.0, warm=(f"{__name__}:warm_slowly", "2.5"))
    pool.start()  # no wait_ready: the messages come while the worker warms up
    try:
        with InProcessGrid({n: pool for n in NODES}, _contexts(), run=new_run(5), workers=2) as grid:
            replies = _ask(grid, [_train(201), _train(202)])
        assert set(replies) == {201, 202}
        (pid,) = pool.pids  # one worker per slot: none was killed and replaced
        assert _out(replies[201])["pid"] == _out(replies[202])["pid"] == pid and is_running(pid)
    finally:
        pool.close()
    assert not any(is_running(pid) for pid in pool.pids)


def test_a_worker_hung_in_its_warm_up_is_replaced_once_a_message_waited_ready_within_s():
    """The attack on "a warm-up is never stuck": a warm-up that never ends (a dead network share) would hold
    its slot, and every site on it would miss every round; after ready_within_s the waiting message gets an
    Error reply naming why, and a fresh worker takes the slot (here it hangs too, until the pool closes)."""
    pool = SiteProcessPool(f"{__name__}:stateful_app", workers=1, stuck_after_s=1.0, ready_within_s=1.5,
                           warm=(f"{__name__}:warm_slowly", "3600"))
    pool.start()
    try:
        (hung,) = pool.pids
        with InProcessGrid({n: pool for n in NODES}, _contexts(), run=new_run(5), workers=1) as grid:
            replies = _ask(grid, [_train(201)], timeout=60)
        assert replies[201].has_error() and "did not load its ClientApp within 1.5 s" in replies[201].error.reason
        assert not is_running(hung)
        assert len(pool.pids) == 2 and is_running(pool.pids[1])  # its replacement, warming up
    finally:
        pool.close()
    assert not any(is_running(pid) for pid in pool.pids)


@pytest.mark.slow  # worker processes and kill loops: 5 s each on a slow host
def test_a_slow_but_healthy_worker_is_never_killed_however_long_its_queue():
    """The attack on "stuck = a message waited stuck_after_s": four sites share one worker, each message
    takes 1 s (well under stuck_after_s), so the last waits 3 s or more behind healthy messages. Timed
    from when it began waiting, the worker would be killed mid-message (mid DP training: the site's
    reservation burnt); timed from the running message's start, it never is."""
    pool = SiteProcessPool(f"{__name__}:stateful_app", workers=1, stuck_after_s=2.5)
    pool.start()
    try:
        pool.wait_ready(120)
        with InProcessGrid({n: pool for n in NODES}, _contexts(), run=new_run(5), workers=len(NODES)) as grid:
            replies = _ask(grid, [_train(n, slow={"s": 1.0}) for n in NODES])
        assert set(replies) == set(NODES)
        pids = {_out(replies[n])["pid"] for n in NODES}  # every message answered, none an Error reply
        assert pids == set(pool.pids) and len(pids) == 1 and all(is_running(pid) for pid in pids)  # never replaced
    finally:
        pool.close()
    assert not any(is_running(pid) for pid in pool.pids)


def test_a_worker_warms_up_before_its_first_message(tmp_path):
    mark = tmp_path / "warm"
    with SiteProcessPool(f"{__name__}:stateful_app", workers=1, warm=(f"{__name__}:warm_marker", str(mark))) as pool:
        pool.wait_ready(120)
        assert mark.read_text() == str(pool.pids[0])
    with pytest.raises(ConfigError, match="warm-up reference"):
        SiteProcessPool(f"{__name__}:stateful_app", workers=1, warm=(f"{__name__}:no_such_function", ""))


def test_a_study_json_larger_than_one_command_line_argument_warms_a_worker(tmp_path):
    """The attack: a study with many feature ranges, its JSON past Linux's 128 KiB limit on one
    argument (E2BIG when it went on the worker's command line, where `ps` also showed it)."""
    mark = tmp_path / "warm"
    study_json = json.dumps({"mark": str(mark), "feature_ranges": {f"feature_{i}": [0.0, float(i)] for i in range(8000)}})
    assert len(study_json) > 200 * 1024
    with SiteProcessPool(f"{__name__}:stateful_app", workers=1, warm=(f"{__name__}:warm_measure", study_json)) as pool:
        pool.wait_ready(120)
        assert mark.read_text() == str(len(study_json))
        with open(f"/proc/{pool.pids[0]}/cmdline", "rb") as cmdline:
            assert b"feature_" not in cmdline.read()


def test_a_failed_warm_up_is_logged_and_the_worker_still_serves(capfd):
    with SiteProcessPool(f"{__name__}:stateful_app", workers=1, warm=(f"{__name__}:warm_broken", "{}")) as pool:
        pool.wait_ready(120)
        with InProcessGrid({n: pool for n in NODES}, _contexts(), run=new_run(5), workers=1) as grid:
            assert _out(_ask(grid, [_train(201)])[201])["count"] == 1
    logged = capfd.readouterr().err  # the worker writes to the stderr it inherited
    assert "warm_broken failed" in logged and "the data share is unreachable" in logged


def blas_threads_app() -> ClientApp:
    """Reports how many threads numpy's BLAS runs on in its process."""
    app = ClientApp()

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        from threadpoolctl import threadpool_info

        threads = max(info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas")
        return Message(RecordDict({"out": ConfigRecord({"threads": threads})}), reply_to=msg)

    return app


@pytest.mark.slow  # worker processes and kill loops: 5 s each on a slow host
def test_numpy_blas_runs_on_one_thread_in_the_coordinator_and_in_the_site_workers(tmp_path):
    """The cost: OpenBLAS spins a thread per core for each dot product the coordinator takes (an
    update's norm), 5x the CPU of one thread, on the cores the sites train on."""
    from threadpoolctl import threadpool_info

    from flsuite import protocol
    from flsuite.config import compose_study
    from flsuite.simulation import run_local_study

    if (os.cpu_count() or 1) < 2:
        pytest.skip("worker processes are capped at one per core")
    seen: dict[str, int] = {}

    def server(grid, context):
        seen["coordinator"] = max(info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas")
        replies = list(grid.send_and_receive([grid.create_message(RecordDict(), protocol.QUERY, n, "1") for n in grid.get_node_ids()],
                                             timeout=120))
        seen["sites"] = max(int(_out(r)["threads"]) for r in replies)
        raise RuntimeError("done")

    study = compose_study(["experiment=smoke", f"sites_dir={tmp_path / 'sites'}", "privacy=none", "engine.parallel_sites=2"])
    with pytest.raises(RuntimeError, match="done"):
        run_local_study(study, tmp_path / "out", server_app=server, client_app=f"{__name__}:blas_threads_app")
    assert seen == {"coordinator": 1, "sites": 1}
