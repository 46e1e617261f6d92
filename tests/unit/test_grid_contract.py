"""The contract every Grid flsuite drives must keep (the pattern of dp_accounting's shared
accountant tests): one test suite, run against each implementation.

Implementations: the in-process Grid (in memory, through Flower's wire encoding, and handing
its messages to a pool of site worker processes) and the coordinator's cohort view of it. Flower's Ray and deployment grids are checked end to end
by the engine-equivalence and deployment tests.
"""

from __future__ import annotations

from contextlib import ExitStack

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from flsuite.coordinator.cohort import CohortGrid
from flsuite.flower import InProcessGrid, SiteProcessPool, new_run

NODES = (101, 102, 103)


def echo(msg: Message, context: Context) -> Message:
    """Reply with the arrays doubled and the sender's node id."""
    if "boom" in msg.content.config_records:
        raise ValueError("the site broke")
    arrays = msg.content.array_records["model"]
    return Message(
        RecordDict(
            {
                "model": ArrayRecord({k: Array(arrays[k].numpy() * 2) for k in arrays}),
                "who": MetricRecord({"node": context.node_id}),
            }
        ),
        reply_to=msg,
    )


def make_in_process(handler=echo, **options) -> InProcessGrid:
    contexts = {n: Context(run_id=5, node_id=n, node_config={}, state=RecordDict(), run_config={}) for n in NODES}
    return InProcessGrid({n: handler for n in NODES}, contexts, run=new_run(5), **options)


#: "worker-processes" is the shared pool of two site worker processes (the ``site_pool`` fixture).
IMPLEMENTATIONS = {
    "in-process": lambda pool, **o: make_in_process(**o),
    "in-process-wire": lambda pool, **o: make_in_process(wire=True, **o),
    "cohort-view": lambda pool, **o: CohortGrid(make_in_process(**o), NODES),
    "worker-processes": lambda pool, **o: make_in_process(pool, workers=pool.size, **o),
}


@pytest.fixture(scope="module")
def site_pool():
    """Two worker processes running ``echo_app``, shared by this module's tests; stopped by PID at the end."""
    with SiteProcessPool(f"{__name__}:echo_app", workers=2) as pool:
        pool.wait_ready(120)  # start-up (torch's import) must not count against a test's round timeout
        yield pool


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def make_grid(request):
    """Builds the implementation under test, entered (Flower's task identity set) until the test ends."""
    pool = request.getfixturevalue("site_pool") if request.param == "worker-processes" else None
    with ExitStack() as stack:

        def make(**options):
            grid = IMPLEMENTATIONS[request.param](pool, **options)
            stack.enter_context(grid._grid if isinstance(grid, CohortGrid) else grid)
            return grid

        yield make


def request(node: int, value: float = 1.0, **extra) -> Message:
    content = RecordDict({"model": ArrayRecord({"w": Array(np.full(4, value, dtype=np.float32))}), **extra})
    return Message(content, dst_node_id=node, message_type="train")


def test_it_lists_each_node_once(make_grid):
    grid = make_grid()
    assert sorted(grid.get_node_ids()) == sorted(NODES)


def test_each_message_gets_one_reply_from_its_node_with_its_content(make_grid):
    grid = make_grid()
    messages = [request(node, value=node) for node in NODES]
    replies = list(grid.send_and_receive(messages, timeout=10))
    assert len(replies) == len(NODES)
    by_id = {m.metadata.message_id: m for m in messages}
    for reply in replies:
        sent = by_id[reply.metadata.reply_to_message_id]
        assert reply.metadata.src_node_id == sent.metadata.dst_node_id == int(reply.content["who"]["node"])
        np.testing.assert_array_equal(reply.content["model"]["w"].numpy(), np.full(4, 2.0 * sent.metadata.dst_node_id))
    assert len({m.metadata.message_id for m in messages}) == len(messages)


def test_the_coordinator_keeps_its_own_message_unchanged(make_grid):
    grid = make_grid()
    message = request(NODES[0], value=3.0)
    list(grid.send_and_receive([message], timeout=10))
    np.testing.assert_array_equal(message.content["model"]["w"].numpy(), np.full(4, 3.0))


def test_a_site_that_raises_answers_with_an_error_reply(make_grid):
    grid = make_grid()
    (reply,) = grid.send_and_receive([request(NODES[0], boom=ConfigRecord({"x": 1}))], timeout=10)
    assert reply.has_error() and "the site broke" in reply.error.reason


def test_a_message_to_an_unknown_node_gets_no_reply(make_grid):
    grid = make_grid()
    replies = list(grid.send_and_receive([request(999), request(NODES[1])], timeout=10))
    assert [r.metadata.src_node_id for r in replies] == [NODES[1]]


def test_a_reply_later_than_the_timeout_is_lost(make_grid):
    grid = make_grid(delay=lambda m: 60.0 if m.metadata.dst_node_id == NODES[0] else 0.0)
    replies = list(grid.send_and_receive([request(NODES[0]), request(NODES[1])], timeout=30))
    assert [r.metadata.src_node_id for r in replies] == [NODES[1]]


def test_push_then_pull_returns_each_reply_once(make_grid):
    grid = make_grid()
    ids = list(grid.push_messages([request(n) for n in NODES]))
    first = list(grid.pull_messages(ids))
    again = list(grid.pull_messages(ids))
    assert len(first) == len(NODES) and again == []


def test_entering_the_grid_restores_flowers_task_identity_afterwards():
    from flsuite.flower.grid import TaskIdentity

    before = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    with make_in_process():
        assert TaskIdentity._run_id == 5
    assert (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id) == before


@pytest.mark.parametrize("workers", [1, 2])
def test_a_hung_site_does_not_hold_the_round_past_its_timeout(workers):
    """The attack of issue 12.3: a site that never answers. The round closes at its timeout."""
    import threading

    release = threading.Event()

    def hang(msg: Message, context: Context) -> Message:
        release.wait(60)  # stands for a site that hangs; released when the test ends
        return echo(msg, context)

    contexts = {n: Context(run_id=5, node_id=n, node_config={}, state=RecordDict(), run_config={}) for n in NODES}
    handlers = {NODES[0]: echo, NODES[1]: hang, NODES[2]: echo}
    grid = InProcessGrid(handlers, contexts, run=new_run(5), workers=workers)
    try:
        with grid:
            replies = list(grid.send_and_receive([request(n) for n in NODES], timeout=0.5))
        assert not release.is_set()  # we got here while the hung site was still hanging
        answered = sorted(r.metadata.src_node_id for r in replies)
        # In parallel every other site answers; one after another, the site queued behind the hung one is never started.
        assert answered == ([NODES[0], NODES[2]] if workers == 2 else [NODES[0]])
    finally:
        release.set()


def echo_app():
    """``echo`` as a ClientApp, for the worker processes (they import it by reference)."""
    from flwr.clientapp import ClientApp

    app = ClientApp()
    app.train()(echo)
    return app
