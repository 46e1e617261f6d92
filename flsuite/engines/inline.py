"""The inline engine: the ServerApp and every ClientApp in this process, through our own Grid.

Flower's simulation runs ClientApps in Ray actors; for studies on one machine that
costs seconds of start-up and a gigabyte of memory. ``InlineGrid`` implements Flower's
public ``Grid`` interface and calls each site's ClientApp directly. It must set a few
Flower-private details, as Flower's own in-memory grid and simulation workers do: the
process-global task identity and message ids. They are all here, in this one module,
and flwr is pinned exactly; a test compares this engine with Flower's Ray engine.
"""

from __future__ import annotations

import copy
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

FIRST_NODE_ID = 1_000


class InlineGrid(Grid):
    """A Grid whose nodes are ClientApps called in this process, one message at a time."""

    def __init__(
        self,
        client_app: ClientApp,
        *,
        run: Run,
        node_configs: list[Mapping[str, Any]],
        drop: Callable[[Message], bool] | None = None,
    ) -> None:
        self._client_app = client_app
        self._run = run
        # Flower stamps every new Message with the process-global task identity.
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = run.run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        self._contexts = {
            FIRST_NODE_ID + index: Context(
                run_id=run.run_id,
                node_id=FIRST_NODE_ID + index,
                node_config=dict(node_config),
                state=RecordDict(),
                run_config=dict(run.override_config),
            )
            for index, node_config in enumerate(node_configs)
        }
        self._pending: dict[str, Message] = {}
        self._replies: dict[str, Message] = {}
        self.offline: set[int] = set()
        self.drop = drop  # for tests: a message for which drop() is true is lost on the way

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return [node_id for node_id in self._contexts if node_id not in self.offline]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message_id = str(uuid4())
            message.metadata.__dict__["_message_id"] = message_id
            self._pending[message_id] = message
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(message_id) for message_id in message_ids if message_id in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Deliver each message in turn; messages not started before ``timeout`` get no reply."""
        message_ids = list(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        for message_id in message_ids:
            message = self._pending.pop(message_id)
            if deadline is not None and time.monotonic() > deadline:
                continue
            if message.metadata.dst_node_id in self.offline or (self.drop and self.drop(message)):
                continue
            self._replies[message_id] = self._deliver(message)
        return self.pull_messages(message_ids)

    def _deliver(self, message: Message) -> Message:
        context = self._contexts[message.metadata.dst_node_id]
        delivered = copy.deepcopy(message)
        try:
            reply = self._client_app(delivered, context)
        except Exception as exc:  # a site's failure is its reply, as in Flower's simulation
            reason = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=delivered)
        reply.metadata.__dict__["_message_id"] = str(uuid4())
        return reply


def run_inline(
    server_app: ServerApp,
    client_app: ClientApp,
    *,
    run_config: Mapping[str, Any],
    node_configs: list[Mapping[str, Any]],
    run_id: int = 1,
    drop: Callable[[Message], bool] | None = None,
) -> InlineGrid:
    """Run a ServerApp to completion against in-process ClientApps; returns the grid."""
    run = Run.create_empty(run_id)
    run.override_config = dict(run_config)
    grid = InlineGrid(client_app, run=run, node_configs=node_configs, drop=drop)
    context = Context(run_id=run_id, node_id=SUPERLINK_NODE_ID, node_config={}, state=RecordDict(), run_config=dict(run_config))
    server_app(grid, context)
    return grid
