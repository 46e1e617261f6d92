"""The in-process Grid: the ServerApp and every site's ClientApp in this process.

Flower's simulation runs ClientApps in Ray actors; for studies on one machine that costs
seconds of start-up and a gigabyte of memory. ``InProcessGrid`` implements Flower's public
``Grid`` interface and calls each site's ClientApp (or any handler) directly. It serves the
inline engine and the tests alike; the options a test needs are part of it:

- ``wire=True``: every message and reply goes through Flower's protobuf encoding, as
  between processes;
- ``drop(message)``: the site handles the message but its reply is lost (a timeout, as the
  coordinator sees it);
- ``delay(message)``: seconds the site takes on top of its handling before its reply
  arrives; a reply that would arrive after the ``send_and_receive`` timeout is lost;
- ``tamper(message)``: a dishonest coordinator's hand on each outgoing message (return a
  replacement, or None to swallow it);
- ``workers``: how many sites handle their messages at once (threads; 1: one after another).
  The threads share the GIL; ``flsuite.flower.site_processes`` gives a handler that runs
  each site's ClientApp in a pool of worker processes instead;
  Every round closes at its timeout whatever a site does: a hung site gives no reply;
- ``sent`` and ``log`` keep every message the coordinator sent and every reply it received.

Flower stamps each new Message with a process-global task identity; the grid sets it while
it is entered (``with grid:``) and restores what was there before. Those details are
Flower-private: they live here, flwr is pinned exactly, and a test compares this engine
with Flower's Ray engine.
"""

from __future__ import annotations

import copy
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

__all__ = [
    "FIRST_NODE_ID",
    "Handler",
    "InProcessGrid",
    "Received",
    "Run",
    "error_reply",
    "new_run",
    "server_task_identity",
    "stage_of",
]

FIRST_NODE_ID = 1_000

Handler = Callable[[Message, Context], Message]


@dataclass(frozen=True)
class Received:
    """One reply as the coordinator got it."""

    node: int
    stage: str
    message: Message


def new_run(run_id: int, run_config: Mapping[str, Any] | None = None) -> Run:
    """A Flower Run record carrying ``run_config`` as its override config."""
    run = Run.create_empty(run_id)
    run.override_config = dict(run_config or {})
    return run


@contextmanager
def server_task_identity(run_id: int) -> Iterator[None]:
    """Set Flower's process-global task identity to the ServerApp's for ``run_id``; restore it after."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)  # type: ignore[attr-defined]
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, SUPERLINK_NODE_ID, 1
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved  # type: ignore[attr-defined]


def stage_of(message: Message) -> str:
    """The secure-aggregation stage a message belongs to, else its message type."""
    from flsuite.protocol import SECAGG_RECORD

    records = message.content.config_records if message.has_content() else {}  # Flower builds it at each access
    if SECAGG_RECORD in records:
        return str(records[SECAGG_RECORD].get("stage", ""))
    return message.metadata.message_type


class InProcessGrid(Grid):
    """Delivers each message to ``handlers[node](message, contexts[node])`` in this process."""

    def __init__(
        self,
        handlers: Mapping[int, Handler],
        contexts: Mapping[int, Context],
        *,
        run: Run,
        wire: bool = False,
        drop: Callable[[Message], bool] | None = None,
        delay: Callable[[Message], float] | None = None,
        tamper: Callable[[Message], Message | None] | None = None,
        workers: int = 1,
    ) -> None:
        if set(handlers) != set(contexts):
            raise ValueError("every node needs both a handler and a context")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
        self._handlers = dict(handlers)
        self._contexts = dict(contexts)
        self._run = run
        self.wire = wire
        self.drop = drop
        self.delay = delay
        self.tamper = tamper
        self.workers = workers
        self.offline: set[int] = set()
        self._lock = threading.Lock()
        self.sent: list[Message] = []
        self.log: list[Received] = []
        self._replies: dict[str, Message] = {}
        self._identity: list[Any] = []

    @classmethod
    def for_client_app(
        cls, client_app: ClientApp | Handler, *, run: Run, node_configs: list[Mapping[str, Any]], **options: Any
    ) -> InProcessGrid:
        """One node per node config (ids from FIRST_NODE_ID), each with the run's run_config."""
        contexts = {
            FIRST_NODE_ID + index: Context(
                run_id=run.run_id,
                node_id=FIRST_NODE_ID + index,
                node_config=dict(node_config),
                state=RecordDict(),
                run_config=dict(run.override_config),
            )
            for index, node_config in enumerate(node_configs)
        }
        return cls({node: client_app for node in contexts}, contexts, run=run, **options)

    # -- Flower's process-global task identity, set while the grid is entered ------------
    def __enter__(self) -> InProcessGrid:
        identity = server_task_identity(self._run.run_id)
        identity.__enter__()
        self._identity.append(identity)
        return self

    def __exit__(self, *exc: object) -> None:
        self._identity.pop().__exit__(None, None, None)

    # -- the Grid interface ----------------------------------------------------------------
    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return [node for node in self._handlers if node not in self.offline]

    def context(self, node: int) -> Context:
        """The node's Context (its node_config and state), for tests."""
        return self._contexts[node]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver each message now; its reply waits for ``pull_messages``."""
        return self._push(messages, timeout=None)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        with self._lock:
            return [self._replies.pop(message_id) for message_id in list(message_ids) if message_id in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Deliver each message; a reply that would arrive after ``timeout`` is lost.

        Up to ``workers`` sites handle their messages at once, each in its own thread. The
        round closes at ``timeout``: a site still working then (hung, or just slow) gives
        no reply, and a message no worker could start before then is never delivered. A
        reply is also timed as if every site had started at once: its own handling time
        plus its ``delay``.
        """
        return self.pull_messages(self._push(messages, timeout=timeout))

    def _push(self, messages: Iterable[Message], *, timeout: float | None) -> list[str]:
        deadline = None if timeout is None else time.monotonic() + timeout
        ids, slots, threads = [], threading.BoundedSemaphore(self.workers), []
        for message in messages:
            message_id = str(uuid4())
            message.metadata.__dict__["_message_id"] = message_id
            ids.append(message_id)
            if not slots.acquire(timeout=_remaining(deadline)):
                continue  # no worker came free before the deadline: never delivered
            if deadline is not None and time.monotonic() >= deadline:
                slots.release()
                continue

            def deliver(message_id: str = message_id, message: Message = message) -> None:
                try:
                    self._deliver(message_id, message, timeout)
                finally:
                    slots.release()

            # Daemon threads: a site that hangs forever cannot keep the study's process alive.
            thread = threading.Thread(target=deliver, name=f"site-{message.metadata.dst_node_id}", daemon=True)
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join(_remaining(deadline))
        return ids

    def _deliver(self, message_id: str, message: Message, timeout: float | None) -> None:
        if self.tamper is not None:
            tampered = self.tamper(message)
            if tampered is None:
                return
            message = tampered
        with self._lock:
            self.sent.append(message)
        node = message.metadata.dst_node_id
        if node not in self._handlers or node in self.offline:
            return
        started = time.monotonic()
        delivered = _through_the_wire(message) if self.wire else copy.deepcopy(message)
        try:
            reply = self._handlers[node](delivered, self._contexts[node])
        except Exception as exc:  # a site's failure is its reply, as in Flower's simulation
            reply = error_reply(exc, delivered)
        took = time.monotonic() - started + (float(self.delay(message)) if self.delay is not None else 0.0)
        if timeout is not None and took > timeout:
            return  # the reply comes after the deadline
        if self.drop is not None and self.drop(message):
            return  # the reply is lost on the way: the coordinator sees a timeout
        if self.wire:
            reply = _through_the_wire(reply)
        reply.metadata.__dict__["_message_id"] = str(uuid4())
        with self._lock:
            self._replies[message_id] = reply
            self.log.append(Received(node=node, stage=stage_of(message), message=reply))


def error_reply(exc: Exception, message: Message) -> Message:
    """The reply of a site whose ClientApp raised ``exc`` on ``message`` (call it inside the ``except``)."""
    reason = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"
    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message)


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _through_the_wire(message: Message) -> Message:
    """A copy of the message whose content went through protobuf, as between processes."""
    metadata = copy.deepcopy(message.metadata)
    if not message.has_content():
        return Message(error=message.error, metadata=metadata)
    return Message(content=recorddict_from_proto(recorddict_to_proto(message.content)), metadata=metadata)
