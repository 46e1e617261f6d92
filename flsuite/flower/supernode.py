"""Flower's SuperNode with a shorter idle poll: `python -m flsuite.flower.supernode ARGS`.

Flower 1.42's SuperNode sleeps a hard-coded 3 s whenever a pull finds no message
(``flwr.supernode.start_client_internal``, ``time.sleep(3)``), so every message of a round
waits 1.5 s on average, up to 3 s, before the site sees it; and once the ClientApp has
answered, the node looks for the reply every 0.5 s (``time.sleep(0.5)``). This entry point
runs the same ``flower-supernode`` command line (every argument is Flower's) after replacing
that module's ``time`` with a view whose ``sleep(3)`` sleeps ``FLSUITE_NODE_POLL_S`` seconds
(default 0.5; at most 3) and whose ``sleep(0.5)`` (a look at the node's own local state)
sleeps 0.1 s. One pull is a small HTTPS request to the coordinator, so a site polls about
twice a second while idle.

The node starts its SuperExec as ``python -m flsuite.flower.superexec`` (the same arguments),
which forks each message's ClientApp process from a warm launcher instead of starting
``flwr-clientapp`` cold (see that module; ``FLSUITE_CLIENTAPP_FORK=0`` keeps Flower's start).

With ``FLSUITE_TRACE_TIMING`` set (``flsuite.timing``), the node also traces when it stored a
message from the coordinator, when it stored the ClientApp's reply and when it sent it on.

Private API: it depends on the module's global name ``time`` and on the literal 3, checked
by ``check_patch`` on start (and by a test) so that a Flower upgrade fails loudly here.
"""

from __future__ import annotations

import inspect
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence

from flsuite.flower.module_view import module_view

__all__ = ["DEFAULT_NODE_POLL_S", "FLOWER_IDLE_POLL_S", "FLOWER_LOCAL_WAIT_S", "LOCAL_WAIT_S", "NODE_POLL_ENV", "check_patch",
           "idle_poll_s", "main", "patch", "superexec_command", "trace_node_state"]

FLOWER_IDLE_POLL_S = 3  # Flower 1.42's hard-coded idle sleep in the SuperNode's pull loop
FLOWER_LOCAL_WAIT_S = 0.5  # its wait for a reply in the node's own state (in memory, local)
LOCAL_WAIT_S = 0.1
DEFAULT_NODE_POLL_S = 0.5
NODE_POLL_ENV = "FLSUITE_NODE_POLL_S"
SUPEREXEC_PROGRAM = "flower-superexec"  # what Flower's SuperNode starts to launch ClientApp processes
SUPEREXEC_MODULE = "flsuite.flower.superexec"


def idle_poll_s(environ: dict[str, str] | os._Environ = os.environ) -> float:
    """The idle poll from FLSUITE_NODE_POLL_S (seconds, 0.05 to 3), default 0.5."""
    raw = environ.get(NODE_POLL_ENV)
    if raw is None or raw == "":
        return DEFAULT_NODE_POLL_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0.05 <= value <= FLOWER_IDLE_POLL_S):
        raise SystemExit(f"{NODE_POLL_ENV}={raw!r}: set it to a number of seconds from 0.05 to {FLOWER_IDLE_POLL_S}.")
    return value


def check_patch() -> None:
    """Raise RuntimeError unless the installed Flower has the idle sleep this module shortens."""
    from flwr.supernode import start_client_internal as module

    source = inspect.getsource(module)
    expected = (f"time.sleep({FLOWER_IDLE_POLL_S})", f"time.sleep({FLOWER_LOCAL_WAIT_S})")
    if not all(text in source for text in expected) or not hasattr(module, "time") or not hasattr(module, "subprocess") \
            or 'command = ["flower-superexec"]' not in source:
        raise RuntimeError(
            "flwr.supernode.start_client_internal no longer has `time.sleep(3)`: flsuite.flower.supernode "
            "was written for flwr 1.42; update it for the installed Flower."
        )


def patch(poll_s: float) -> None:
    """Make the SuperNode's idle sleep last poll_s seconds and its local waits 0.1 s."""
    from flwr.supernode import start_client_internal as module

    check_patch()
    real = time.sleep

    def sleep(seconds: float) -> None:
        if seconds == FLOWER_IDLE_POLL_S:
            seconds = poll_s
        elif seconds == FLOWER_LOCAL_WAIT_S:
            seconds = LOCAL_WAIT_S
        real(seconds)

    module.time = module_view(time, sleep=sleep)
    popen = subprocess.Popen

    def start(command: Sequence[str], *args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - subprocess.Popen's
        return popen(superexec_command(command), *args, **kwargs)

    module.subprocess = module_view(subprocess, Popen=start)


def superexec_command(command: Sequence[str]) -> list[str]:
    """`flower-superexec ARGS` as `python -m flsuite.flower.superexec ARGS`; any other command unchanged."""
    command = list(command)
    if command[:1] == [SUPEREXEC_PROGRAM]:
        return [sys.executable, "-m", SUPEREXEC_MODULE, *command[1:]]
    return command


def trace_node_state() -> None:
    """Trace the node's message store (flsuite.timing): inbound stored, reply stored, reply sent.

    The node deletes a reply and the message it answers right after pushing the reply on.
    """
    from flwr.supernode.nodestate.in_memory_nodestate import InMemoryNodeState

    from flsuite.timing import mark

    store, delete = InMemoryNodeState.store_message, InMemoryNodeState.delete_messages

    def store_message(self, message):  # noqa: ANN001, ANN202 - Flower's signature
        meta = message.metadata
        if meta.reply_to_message_id:
            mark("node-reply-stored", reply_to=meta.reply_to_message_id)
        else:
            mark("node-received", message_id=meta.message_id, kind=meta.message_type)
        return store(self, message)

    def delete_messages(self, *, message_ids=None):  # noqa: ANN001, ANN202
        if message_ids:
            mark("node-deleted", message_ids=list(message_ids))
        return delete(self, message_ids=message_ids)

    InMemoryNodeState.store_message = store_message
    InMemoryNodeState.delete_messages = delete_messages


def main(argv: list[str] | None = None) -> None:
    """Run `flower-supernode` with argv (default sys.argv[1:]) and the shorter idle poll."""
    patch(idle_poll_s())
    from flsuite.timing import trace_file

    if trace_file() is not None:
        trace_node_state()
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *(sys.argv[1:] if argv is None else argv)]
    flower_supernode()


if __name__ == "__main__":
    main()
