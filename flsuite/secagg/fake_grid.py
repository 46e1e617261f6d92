"""An in-process fake Grid for tests: delivers Messages to ClientApp-like handlers.

Each message's content goes through Flower's protobuf encoding both ways (as it would
between processes), a ``drop(stage, node)`` rule loses replies as a timeout would, a
``tamper(message)`` hook lets a test play a misbehaving coordinator, and ``log`` keeps
everything the coordinator received. Use it as a context manager: it sets Flower's
process-global TaskIdentity that Message() needs on the ServerApp side, and restores it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from .flower_site import secagg_mod
from .identity import generate_identity, write_pinned_identities

__all__ = ["FakeGrid", "Handler", "Received", "build_sites"]

Handler = Callable[[Message, Context], Message]
SERVER_NODE_ID = 1


@dataclass(frozen=True)
class Received:
    """One reply as the coordinator got it."""

    node: int
    stage: str
    message: Message


class FakeGrid(Grid):
    """Delivers each message synchronously to ``handlers[node](message, contexts[node])``."""

    def __init__(self, handlers: Mapping[int, Handler], contexts: Mapping[int, Context], *, run_id: int = 7,
                 drop: Callable[[str, int], bool] | None = None,
                 tamper: Callable[[Message], Message | None] | None = None) -> None:
        self._handlers = dict(handlers)
        self._contexts = dict(contexts)
        self._run = Run.create_empty(run_id)
        self._drop = drop or (lambda stage, node: False)
        self._tamper = tamper
        self._replies: dict[str, Message] = {}
        self.log: list[Received] = []
        self.sent: list[Message] = []
        self._saved: tuple[object, object, object] | None = None

    def __enter__(self) -> FakeGrid:
        self._saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)  # type: ignore[attr-defined]
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = self._run.run_id, SERVER_NODE_ID, 1
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._saved is not None
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = self._saved  # type: ignore[attr-defined]

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._handlers)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())
            ids.append(message.metadata.message_id)
            if self._tamper is not None:
                tampered = self._tamper(message)
                if tampered is None:
                    continue
                message = tampered
            self.sent.append(message)
            node = message.metadata.dst_node_id
            if node not in self._handlers:
                continue
            stage = _stage(message)
            delivered = _through_the_wire(message)
            try:
                reply = self._handlers[node](delivered, self._contexts[node])
            except Exception as exc:  # Flower turns a crashing ClientApp into an error reply
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"{type(exc).__name__}: {exc}"),
                                reply_to=delivered)
            if self._drop(stage, node):
                continue  # the reply is lost: the coordinator sees a timeout
            reply = _through_the_wire(reply)
            self._replies[message.metadata.message_id] = reply
            self.log.append(Received(node=node, stage=stage, message=reply))
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return list(self.pull_messages(self.push_messages(messages)))


def _stage(message: Message) -> str:
    if message.has_content() and "secagg" in message.content.config_records:
        return str(message.content.config_records["secagg"].get("stage", ""))
    return message.metadata.message_type


def _through_the_wire(message: Message) -> Message:
    """A copy of the message whose content went through protobuf, as between processes."""
    metadata = deepcopy(message.metadata)
    if not message.has_content():
        return Message(error=message.error, metadata=metadata)
    return Message(content=recorddict_from_proto(recorddict_to_proto(message.content)), metadata=metadata)


def build_sites(directory: str | Path, node_ids: Iterable[int], train: Handler, *,
                run_id: int = 7) -> tuple[dict[int, Handler], dict[int, Context]]:
    """A ClientApp with ``secagg_mod`` for each node, each with its own identity key file,
    one shared pinned-identities file, and a Context whose node_config points at them."""
    directory = Path(directory)
    nodes = list(node_ids)
    names = {node: f"site-{i}" for i, node in enumerate(nodes)}
    pinned = {names[n]: generate_identity(directory / f"{names[n]}.pem", overwrite=True) for n in nodes}
    write_pinned_identities(directory / "identities.json", pinned)
    app = ClientApp(mods=[secagg_mod])
    app.train()(train)

    @app.query()
    def unknown_query(message: Message, context: Context) -> Message:
        return Message(Error(code=ErrorCode.UNKNOWN, reason="no such query"), reply_to=message)

    contexts = {
        node: Context(run_id=run_id, node_id=node, state=RecordDict(), run_config={},
                      node_config={"identity-key": str(directory / f"{names[node]}.pem"), "site-name": names[node],
                                   "identities-file": str(directory / "identities.json")})
        for node in nodes
    }
    return {node: app for node in nodes}, contexts
