"""Issue 14.3: the opt-in timing trace of a deployed exchange (flsuite.timing, FLSUITE_TRACE_TIMING).

Off by default (nothing written); on, the coordinator's Grid, the site's ClientApp and the
breakdown in experiments/deployed_round.py agree on one format.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

from flsuite import protocol, timing
from flsuite.coordinator.polling import PromptGrid
from flsuite.site import app as site_app


def test_tracing_is_off_unless_an_absolute_file_is_named(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(timing.TRACE_ENV, raising=False)
    timing.mark("nothing")
    monkeypatch.setenv(timing.TRACE_ENV, "relative.jsonl")  # would land wherever Flower started the process
    timing.mark("nothing")
    assert list(tmp_path.iterdir()) == []
    assert timing.trace_file() is None


def test_marks_from_several_processes_line_up_on_one_clock(monkeypatch, tmp_path):
    trace = tmp_path / "trace.jsonl"
    monkeypatch.setenv(timing.TRACE_ENV, str(trace))
    timing.mark("first", exchange=1)
    subprocess.run([sys.executable, "-c", "from flsuite import timing; timing.mark('child', pid_seen=1)"],  # noqa: S603
                   check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    timing.mark("last")
    trace.write_text(trace.read_text() + '{"t": 1, "pid"')  # a line cut short by a killed process
    events = timing.read_trace(trace)
    assert [event["event"] for event in events] == ["first", "child", "last"]
    assert events[0]["exchange"] == 1 and events[0]["pid"] == os.getpid() != events[1]["pid"]


def test_a_process_start_is_read_on_the_monotonic_clock():
    before = time.monotonic()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])  # noqa: S603
    try:
        started = timing.process_started_at(child.pid)
    finally:
        child.kill()
        child.wait()
    tick = 1 / os.sysconf("SC_CLK_TCK")
    assert started is not None and before - 2 * tick <= started <= time.monotonic() + tick
    assert timing.process_started_at() <= before


class _Grid:
    """A deployment Grid stand-in whose replies are in at the first pull."""

    def push_messages(self, messages):
        return ["m1", "m2"]

    def pull_messages(self, ids):
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i)) for i in sorted(ids)]


def test_the_coordinator_traces_push_and_each_reply_of_an_exchange(monkeypatch, tmp_path):
    trace = tmp_path / "trace.jsonl"
    monkeypatch.setenv(timing.TRACE_ENV, str(trace))
    message = SimpleNamespace(metadata=SimpleNamespace(message_type="train"))
    PromptGrid(_Grid()).send_and_receive([message, message])  # type: ignore[arg-type]
    events = timing.read_trace(trace)
    assert [event["event"] for event in events] == ["coordinator-push", "coordinator-pushed", "coordinator-reply",
                                                    "coordinator-reply"]
    assert events[1]["message_ids"] == ["m1", "m2"] and {event["exchange"] for event in events} == {1}
    assert [event["reply_to"] for event in events[2:]] == ["m1", "m2"]


def _message(stage: str | None) -> SimpleNamespace:
    records = {protocol.SECAGG_RECORD: {protocol.STAGE: stage}} if stage else {}
    return SimpleNamespace(metadata=SimpleNamespace(message_id="abc", message_type="query"), has_content=lambda: True,
                           content=SimpleNamespace(config_records=records))


def test_the_clientapp_traces_each_handler_call_with_its_stage_only_when_tracing(monkeypatch, tmp_path):
    monkeypatch.delenv(timing.TRACE_ENV, raising=False)
    assert site_app._timing_mod not in site_app.build_client_app()._mods
    trace = tmp_path / "trace.jsonl"
    monkeypatch.setenv(timing.TRACE_ENV, str(trace))
    assert site_app.build_client_app()._mods[0] is site_app._timing_mod
    assert site_app._timing_mod(_message(protocol.SETUP), None, lambda msg, context: "reply") == "reply"  # type: ignore[arg-type]
    site_app._timing_mod(_message(None), None, lambda msg, context: "reply")  # type: ignore[arg-type]
    events = timing.read_trace(trace)
    assert [(event["event"], event["kind"], event["message_id"]) for event in events] == [
        ("handler-start", protocol.SETUP, "abc"), ("handler-end", protocol.SETUP, "abc"),
        ("handler-start", "query", "abc"), ("handler-end", "query", "abc")]


def test_the_handler_profile_goes_to_its_folder(monkeypatch, tmp_path):
    monkeypatch.setenv(timing.TRACE_ENV, str(tmp_path / "trace.jsonl"))
    monkeypatch.setenv(timing.PROFILE_ENV, str(tmp_path / "profiles"))
    site_app._timing_mod(_message(protocol.UNMASK), None, lambda msg, context: "reply")  # type: ignore[arg-type]
    assert [path.name for path in (tmp_path / "profiles").iterdir()] == [f"{os.getpid()}-{protocol.UNMASK}.prof"]


def test_the_site_node_traces_message_in_reply_stored_and_reply_sent(monkeypatch, tmp_path):
    from flwr.supernode.nodestate.in_memory_nodestate import InMemoryNodeState

    from flsuite.flower import supernode as node_entry

    trace = tmp_path / "trace.jsonl"
    monkeypatch.setenv(timing.TRACE_ENV, str(trace))
    for name in ("store_message", "delete_messages"):  # restored after the test
        monkeypatch.setattr(InMemoryNodeState, name, getattr(InMemoryNodeState, name))
    node_entry.trace_node_state()
    state = InMemoryNodeState.__new__(InMemoryNodeState)  # the store's own state is not under test
    monkeypatch.setattr(state, "lock_msg_store", threading.Lock(), raising=False)
    state.msg_store = {}
    inbound = SimpleNamespace(metadata=SimpleNamespace(message_id="in", reply_to_message_id="", message_type="train"))
    reply = SimpleNamespace(metadata=SimpleNamespace(message_id="out", reply_to_message_id="in", message_type="train"))
    state.store_message(inbound)
    state.store_message(reply)
    state.delete_messages(message_ids=["out", "in"])
    events = timing.read_trace(trace)
    assert [(event["event"], event.get("message_id") or event.get("reply_to") or event.get("message_ids"))
            for event in events] == [("node-received", "in"), ("node-reply-stored", "in"), ("node-deleted", ["out", "in"])]
    assert state.msg_store == {}
