"""Sites in worker processes: a pool that runs the ClientApp outside the coordinator's GIL.

The in-process Grid's threads share one interpreter, and DP-SGD on small models is
Python-bound, so threads barely help. ``SiteProcessPool`` starts N worker processes
(fresh interpreters, as multiprocessing's "spawn" but without re-running the parent's
``__main__``: never a fork of a process that has threads), each of which imports the ClientApp
from an importable reference ("package.module:factory" or "package.module:app") and runs
torch with ``threads`` threads (OMP_NUM_THREADS, and torch.set_num_threads once the app and
the ``preload`` modules are imported). A worker then runs the ``warm`` function once (e.g. to
load the study's data), while the coordinator plans, so that the first round does not pay it.

The pool is a handler for ``InProcessGrid``. **Site affinity**: each node is served by one
worker slot, so the site's caches in that worker stay warm and are built once, never once per
worker. ``assign(weights)`` places the nodes on the slots longest-processing-time first (the
heaviest site on the least loaded slot); a node never assigned goes to the least loaded slot
when its first message comes. A slot handles one message at a time, in the order they came
(so a late message of a round that timed out cannot overtake the next round's); the grid may
call the pool for every node at once (its ``workers`` then only bounds the threads).

A worker's setup (the ClientApp reference, threads, preload modules, and the warm-up function
and its argument, e.g. the study's JSON) is its first frame over the pipe, never on its command
line. For each message the parent sends the message and the node's Context as Flower protobuf
bytes (never pickled data); each Context frame starts with a one-byte tag: the Context's bytes
follow, or the worker already holds exactly these bytes for that node. The worker keeps one
Context per node it serves, runs the ClientApp on it under the same Flower task identity as the
grid sets in process, and answers with the reply and the Context, again tagged. The parent
writes the returned node config and state into the node's Context (as a ClientApp in process
would have left them), so a fresh worker can take over a node at any time.

Failures: a ClientApp that raises gives the same Error reply the grid makes in process; a
worker that dies is replaced in its slot (the new one gets each node's Context from the
parent) and its message answered with an Error reply; a worker that hangs keeps its slot (the
grid's round timeout cuts the round) until, while another message waits for the slot, the one
message it is running has run ``stuck_after_s`` seconds (timed from that message's own start
on a ready worker: never from when the waiting one began to wait, so a slow worker with a long
queue is not stuck, and never counting a fresh worker's warm-up, so a slow warm-up is not
stuck): it is then killed by PID, its message answered with an Error reply and a fresh worker
takes its slot (without ``stuck_after_s``, it hangs until the pool is closed). A worker still
warming up is never killed as stuck: one that dies warming up is a dead worker (above), one that
hangs warming up is killed by PID and replaced once a message has waited ``ready_within_s``
(default READY_WITHIN_S, 10 minutes) for it; a warm-up that raises is logged, and the worker serves without it;
a worker that cannot load the ClientApp answers every message with an Error reply saying why.
``close()`` (and leaving ``with pool:``) stops every worker by PID: SIGTERM, then SIGKILL; a
worker whose parent died without closing the pool (SIGKILL) ends by itself within a second.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.common.serde import context_from_proto, context_to_proto, message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Context as ProtoContext
from flwr.proto.message_pb2 import Message as ProtoMessage

from flsuite.errors import ConfigError, SiteWorkerLost
from flsuite.flower.grid import error_reply, server_task_identity
from flsuite.heap import freeze_for_good

__all__ = ["SiteProcessPool", "load_client_app"]

#: A worker's first frame once its ClientApp is loaded (else the reason it could not be).
READY = b"ready"

#: The one-byte tag in front of each Context frame: the Context's bytes follow, or the receiver's copy is current.
#: (A tag, not an empty frame, marks "unchanged": a Context can encode to no bytes at all.)
CHANGED, UNCHANGED = b"C", b"="

#: The site workers log to the ServerApp's log (Flower's), which a worker writes to its stderr.
log = logging.getLogger("flwr")

#: Seconds a worker gets to leave after SIGTERM before SIGKILL.
STOP_GRACE_S = 2.0

#: Seconds a message waits for its worker's warm-up (imports, the study's data) before the worker counts as
#: hung in it and is replaced: far beyond any honest warm-up (a 10^6-record CSV loads in about 9 s here),
#: yet a warm-up stuck on a dead network share does not hold its slot for the rest of the study.
READY_WITHIN_S = 600.0


def load_client_app(reference: str) -> ClientApp:
    """The ClientApp named by ``"module:attribute"``: a ClientApp, or a function without arguments returning one."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"client app reference {reference!r} is not 'package.module:name'; name an importable ClientApp factory")
    try:
        target = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"client app reference {reference!r} cannot be imported ({exc}); name an importable ClientApp factory") from exc
    app = target if isinstance(target, ClientApp) else target() if callable(target) else None
    if not isinstance(app, ClientApp):
        raise ConfigError(f"client app reference {reference!r} gives {type(app).__name__}, not a flwr ClientApp")
    return app


@dataclass
class _Worker:
    process: subprocess.Popen[bytes]
    conn: _Duplex
    busy_with: str = field(default="")
    ready: bool = False
    failure: str = ""
    #: The Context bytes this worker holds for each node it served (what it last received or sent).
    held: dict[int, bytes] = field(default_factory=dict)
    #: The thread writing the worker's setup frame (it blocks until the worker has started and reads it).
    sender: threading.Thread | None = None

    def await_ready(self, timeout: float | None = None) -> None:
        """Read the worker's first frame: it has loaded the ClientApp (or raise why it could not, every time)."""
        if not self.ready and not self.failure:
            if timeout is not None and not self.conn.reader.poll(timeout):
                raise SiteWorkerLost(f"site worker pid {self.pid} did not load its ClientApp within {timeout:g} s")
            frame = self.conn.recv_bytes()
            self.ready, self.failure = frame == READY, "" if frame == READY else frame.decode(errors="replace")
        if self.failure:
            raise SiteWorkerLost(f"site worker pid {self.pid} could not load its ClientApp: {self.failure}")

    @property
    def pid(self) -> int:
        return self.process.pid

    def close(self) -> None:
        """Close the pipes of a worker that ended (its setup sender fails at once then, and is awaited)."""
        if self.sender is not None:
            self.sender.join()
        self.conn.close()


@dataclass
class _Slot:
    """One place in the pool: the worker serving it now, and its queue (one message at a time, first come first served).

    Every field is read and written under ``turn``.
    """

    worker: _Worker
    turn: threading.Condition = field(default_factory=threading.Condition)
    #: The waiting threads' tokens in arrival order: the first goes in once the slot is idle.
    queue: deque[object] = field(default_factory=deque)
    #: The number of the exchange running now (or last), and the worker it runs on (None: the slot is idle).
    exchange: int = 0
    running: _Worker | None = None
    #: When the running exchange's stuck clock started: once its worker was ready (None: idle, or still warming up).
    busy_since: float | None = None
    #: The last exchange whose worker was killed as stuck (killed once, however many threads wait).
    killed: int = 0


class SiteProcessPool:
    """N worker processes that each run the ClientApp named by ``app_reference``; call it as a grid handler."""

    def __init__(self, app_reference: str, *, workers: int, threads: int = 1, preload: Iterable[str] = (),
                 warm: tuple[str, str] | None = None, stuck_after_s: float | None = None,
                 ready_within_s: float = READY_WITHIN_S) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
        if stuck_after_s is not None and not stuck_after_s > 0:
            raise ValueError(f"stuck_after_s must be > 0 seconds or None, got {stuck_after_s!r}")
        if not ready_within_s > 0:
            raise ValueError(f"ready_within_s must be > 0 seconds, got {ready_within_s!r}")
        load_client_app(app_reference)  # a bad reference fails here, in the parent, with a clear error
        if warm is not None:
            _function(warm[0])  # so does a bad warm-up reference
        self.app_reference = app_reference
        self.size = workers
        self.threads = threads
        self.preload = tuple(preload)
        self.warm = warm
        self.stuck_after_s = stuck_after_s
        self.ready_within_s = ready_within_s
        self._slots: list[_Slot] = []
        self._slot_of: dict[int, int] = {}
        self._loads = [0.0] * workers  # the weights of the nodes placed on each slot
        self._all: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False

    # -- lifetime ----------------------------------------------------------------------------
    def start(self) -> SiteProcessPool:
        """Start the workers; returns at once (they import and warm up in the background)."""
        for _ in range(self.size):
            self._slots.append(_Slot(self._spawn()))
        return self

    def __enter__(self) -> SiteProcessPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_ready(self, timeout: float) -> None:
        """Block until every worker has loaded its ClientApp (tests; the engine just starts sending)."""
        deadline = time.monotonic() + timeout
        for slot in self._slots:
            worker = self._enter(slot, deadline)
            if worker is None:
                raise SiteWorkerLost(f"site worker pid {slot.worker.pid} stayed busy for {timeout:g} s")
            try:
                worker.await_ready(max(0.0, deadline - time.monotonic()))
            except (EOFError, OSError) as exc:
                raise SiteWorkerLost(f"site worker pid {worker.pid} ended before it loaded its ClientApp") from exc
            finally:
                self._leave(slot)

    @property
    def pids(self) -> list[int]:
        """Every worker process this pool started (the dead and replaced ones too)."""
        with self._lock:
            return [worker.pid for worker in self._all if worker.pid is not None]

    def close(self) -> None:
        """Stop every worker by PID (SIGTERM, then SIGKILL) and reap it; safe to call twice."""
        with self._lock:
            self._closed = True
            workers = list(self._all)
        for worker in workers:
            if worker.process.poll() is None:
                worker.process.terminate()
        for worker in workers:
            _reap(worker.process)
            worker.close()

    def _spawn(self) -> _Worker:
        """A fresh interpreter (no fork, no re-import of the parent's __main__) talking over a pipe pair."""
        to_worker_r, to_worker_w = os.pipe()
        from_worker_r, from_worker_w = os.pipe()
        # Only the pipes on the command line: the setup (a study's JSON can pass Linux's 128 KiB limit on
        # one argument, and would show in `ps`) is the first frame over the pipe.
        code = f"from flsuite.flower.site_processes import _worker_main; _worker_main({to_worker_r}, {from_worker_w})"
        setup = json.dumps({"app": self.app_reference, "threads": self.threads, "preload": list(self.preload),
                            "warm": None if self.warm is None else list(self.warm)}).encode()
        # The worker imports what the parent can: its sys.path, as multiprocessing's spawn passes it.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if isinstance(p, str) and p),
               "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        try:
            with self._lock:
                if self._closed:
                    raise SiteWorkerLost("the site worker pool is closed")
                process = subprocess.Popen([sys.executable, "-c", code], pass_fds=(to_worker_r, from_worker_w), env=env,
                                           stdin=subprocess.DEVNULL)
                worker = _Worker(process, _Pipe(from_worker_r, to_worker_w))
                self._all.append(worker)
        except BaseException:
            os.close(from_worker_r)
            os.close(to_worker_w)
            raise
        finally:
            os.close(to_worker_r)
            os.close(from_worker_w)
        # Written from a thread: a frame larger than the pipe's buffer waits for the worker to start reading,
        # and start() returns at once. Nothing else writes to the worker before it answers READY.
        worker.sender = threading.Thread(target=_send_setup, args=(worker.conn, setup), name=f"site-worker-{worker.pid}-setup",
                                         daemon=True)
        worker.sender.start()
        return worker

    # -- affinity ------------------------------------------------------------------------------
    def assign(self, weights: dict[int, float]) -> None:
        """Place nodes on slots, longest-processing-time first: each (heaviest first) on the least loaded slot.

        ``weights``: a node's expected work per message (its record count). Call before the first message
        (before or after ``start``); nodes already placed keep their slot.
        """
        with self._lock:
            for node, weight in sorted(weights.items(), key=lambda item: (-item[1], item[0])):
                if node not in self._slot_of:
                    self._place(node, float(weight))

    def slot_of(self, node: int) -> int:
        """The slot (0..size-1) that serves ``node`` (placing it now if it has none)."""
        with self._lock:
            return self._slot_of[node] if node in self._slot_of else self._place(node, 1.0)

    def _place(self, node: int, weight: float) -> int:
        index = min(range(self.size), key=lambda i: (self._loads[i], i))
        self._loads[index] += weight
        self._slot_of[node] = index
        return index

    # -- the grid handler ----------------------------------------------------------------------
    def __call__(self, message: Message, context: Context) -> Message:
        """Run the ClientApp on ``message`` in the node's worker; updates ``context`` as the ClientApp left it."""
        node = message.metadata.dst_node_id
        slot = self._slots[self.slot_of(node)]
        worker = self._enter(slot)
        assert worker is not None  # no deadline: it waits for its turn
        try:
            return self._exchange(slot, worker, node, message, context)
        finally:
            self._leave(slot)

    def _enter(self, slot: _Slot, deadline: float | None = None) -> _Worker | None:
        """Wait for the slot's turn, first come first served; its worker, or None once ``deadline`` passed.

        While waiting, the exchange running in the slot is timed from its own start on a ready worker
        (``_start_clock``: never from when this message began to wait, nor while a fresh worker warms
        up): once that same exchange has run ``stuck_after_s``, its worker is stuck and is killed by PID
        (its thread then sees the pipe close, answers an Error reply and puts a fresh worker in the
        slot). Healthy messages queued ahead of this one, and warm-ups, never count.
        """
        token = object()
        with slot.turn:
            slot.queue.append(token)
            try:
                admitted = self._await_turn(slot, token, deadline)
            finally:
                slot.queue.remove(token)
                slot.turn.notify_all()  # the next in line looks again
            if not admitted:
                return None
            slot.exchange += 1
            slot.running, slot.busy_since = slot.worker, None  # busy; the stuck clock starts once the worker is ready
            return slot.worker

    def _await_turn(self, slot: _Slot, token: object, deadline: float | None) -> bool:
        """Under ``slot.turn``: wait until ``token`` is first in line and the slot idle (False: ``deadline`` passed)."""
        while slot.running is not None or slot.queue[0] is not token:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False
            wake = deadline
            if self.stuck_after_s is not None and slot.busy_since is not None and slot.killed != slot.exchange:
                stuck_at = slot.busy_since + self.stuck_after_s
                if now >= stuck_at:  # this very exchange has run stuck_after_s: decided under the lock, so no race
                    slot.killed = slot.exchange
                    if slot.running is not None:
                        slot.running.process.kill()
                    continue
                wake = stuck_at if wake is None else min(wake, stuck_at)
            slot.turn.wait(None if wake is None else wake - now)
        return True

    def _start_clock(self, slot: _Slot) -> None:
        """The running exchange's worker is ready (or dead): from now on it counts toward ``stuck_after_s``."""
        with slot.turn:
            slot.busy_since = time.monotonic()
            slot.turn.notify_all()  # a waiting message times this exchange from now

    def _leave(self, slot: _Slot) -> None:
        with slot.turn:
            slot.running, slot.busy_since = None, None
            slot.turn.notify_all()

    def _exchange(self, slot: _Slot, worker: _Worker, node: int, message: Message, context: Context) -> Message:
        if worker.process.poll() is not None:
            # It ended while idle (killed as stuck just after its last reply, or by the system): this
            # message never reached it, so a fresh worker takes the slot and the message.
            self._replace(slot, worker)
            with slot.turn:
                worker = slot.running = slot.worker
        worker.busy_with = f"node {node}'s {message.metadata.message_type} message"
        try:
            worker.await_ready(self.ready_within_s)
        except SiteWorkerLost:
            if not worker.failure:  # not ready in time: hung in its warm-up, so a fresh worker takes the slot
                worker.process.kill()
                self._replace(slot, worker)
            raise  # this message gets an Error reply saying why (a worker that cannot load the app: every message)
        except (EOFError, OSError):
            pass  # died before it was ready: handled as any dead worker below
        # Only now is this message running: a warm-up however slow (a big CSV, a cold disk) is not stuck.
        self._start_clock(slot)
        context_bytes = context_to_proto(context).SerializeToString()
        try:
            worker.conn.send_bytes(message_to_proto(message).SerializeToString())
            worker.conn.send_bytes(_context_frame(context_bytes, worker.held.get(node)))
            reply_bytes = worker.conn.recv_bytes()
            returned = _context_of(worker.conn.recv_bytes())
        except (EOFError, OSError) as exc:
            _reap(worker.process, grace=0.5)
            lost = SiteWorkerLost(
                f"site worker pid {worker.pid} ended (exit code {worker.process.returncode}) while handling {worker.busy_with}; "
                "a new worker takes its place"
            )
            self._replace(slot, worker)
            raise lost from exc
        worker.busy_with = ""
        if returned is not None:
            updated = context_from_proto(ProtoContext.FromString(returned))
            context.node_config, context.state = updated.node_config, updated.state  # as a ClientApp in process leaves them
            context_bytes = returned
        worker.held[node] = context_bytes
        return message_from_proto(ProtoMessage.FromString(reply_bytes))

    def _replace(self, slot: _Slot, worker: _Worker) -> None:
        """Put a fresh worker in the slot of ``worker``, which ended (called by the thread whose turn it is)."""
        _reap(worker.process)
        worker.close()
        try:
            fresh = self._spawn()
        except SiteWorkerLost:
            return  # closing: no new worker
        with slot.turn:
            slot.worker = fresh


def _context_frame(encoded: bytes, held: bytes | None) -> bytes:
    """The frame that brings the receiver's copy of a Context (``held``: what it has, None: nothing) to ``encoded``."""
    return UNCHANGED if encoded == held else CHANGED + encoded


def _context_of(frame: bytes) -> bytes | None:
    """A Context frame's bytes (None: unchanged)."""
    tag, encoded = frame[:1], frame[1:]
    if tag == CHANGED:
        return encoded
    if tag == UNCHANGED and not encoded:
        return None
    raise OSError(f"a site worker's Context frame starts with {tag!r}, not {CHANGED!r} or {UNCHANGED!r}")


def _reap(process: subprocess.Popen[bytes], grace: float = STOP_GRACE_S) -> None:
    """Wait for a worker to end; SIGKILL it by PID after ``grace`` seconds."""
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _Pipe(read_fd: int, write_fd: int) -> _Duplex:  # noqa: N802 - a constructor
    return _Duplex(Connection(read_fd, writable=False), Connection(write_fd, readable=False))


@dataclass
class _Duplex:
    """Two one-way pipes as one connection: frames are ``send_bytes`` / ``recv_bytes``."""

    reader: Connection
    writer: Connection

    def send_bytes(self, data: bytes) -> None:
        self.writer.send_bytes(data)

    def recv_bytes(self) -> bytes:
        return self.reader.recv_bytes()

    def close(self) -> None:
        self.reader.close()
        self.writer.close()


def _function(reference: str) -> Callable[[str], object]:
    """The function named by ``"module:name"`` (a worker's warm-up: it takes one string)."""
    module_name, _, attribute = reference.partition(":")
    try:
        target = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"warm-up reference {reference!r} cannot be imported ({exc}); name an importable function") from exc
    if not callable(target):
        raise ConfigError(f"warm-up reference {reference!r} is a {type(target).__name__}, not a function")
    return target


def _send_setup(conn: _Duplex, setup: bytes) -> None:
    try:
        conn.send_bytes(setup)
    except OSError:
        pass  # the worker ended before reading it: the first message to it finds out, and says so


def _worker_main(read_fd: int, write_fd: int) -> None:
    """A worker's life: read its setup, load the app and warm up, then answer (message, context) frames until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops the workers
    # Our pipe ends are for this process alone: a child the ClientApp starts must not hold them open,
    # or the parent would never see the pipe close when this worker dies.
    os.set_inheritable(read_fd, False)
    os.set_inheritable(write_fd, False)
    _leave_with_parent(os.getppid())
    conn = _Pipe(read_fd, write_fd)
    try:
        setup = json.loads(conn.recv_bytes())
    except (EOFError, OSError):
        return  # the pool was closed before this worker started
    warm = setup["warm"]
    try:
        for module in setup["preload"]:
            importlib.import_module(module)
        app = load_client_app(setup["app"])
    except Exception as exc:
        conn.send_bytes(f"{type(exc).__name__}: {exc}".encode())
        return
    if "torch" in sys.modules:  # else OMP_NUM_THREADS, set by the pool, holds when the app imports torch
        sys.modules["torch"].set_num_threads(int(setup["threads"]))
    if warm is not None:
        try:
            _function(warm[0])(warm[1])
        except Exception:  # only a head start: the worker still serves, and a real problem shows again on the first message
            log.warning("site worker pid %d: warm-up %s failed; it goes on without it", os.getpid(), warm[0], exc_info=True)
    freeze_for_good()  # the imports and data now loaded live as long as the worker: out of the collector's full passes
    conn.send_bytes(READY)
    contexts: dict[int, tuple[Context, bytes]] = {}  # each node's Context, kept apart, and its bytes as last synced
    for message, context_bytes in _requests(conn):
        node = message.metadata.dst_node_id
        if context_bytes is not None:
            contexts[node] = (context_from_proto(ProtoContext.FromString(context_bytes)), context_bytes)
        context, held = contexts[node]
        try:
            with server_task_identity(context.run_id):
                reply = app(message, context)
        except Exception as exc:  # a site's failure is its reply, as in the grid
            reply = error_reply(exc, message)
        after = context_to_proto(context).SerializeToString()
        conn.send_bytes(message_to_proto(reply).SerializeToString())
        conn.send_bytes(_context_frame(after, held))
        contexts[node] = (context, after)


def _leave_with_parent(parent: int) -> None:
    """A watchdog: a worker whose parent died without stopping it (SIGKILL) ends too, even if its app hangs."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _requests(conn: _Duplex) -> Iterator[tuple[Message, bytes | None]]:
    """Each (message, Context bytes or None when the worker's copy is current) the parent sends."""
    while True:
        try:
            message_bytes = conn.recv_bytes()
            context_bytes = _context_of(conn.recv_bytes())
        except (EOFError, OSError):
            return  # the parent closed the pipe: the study is over
        yield message_from_proto(ProtoMessage.FromString(message_bytes)), context_bytes
