"""The audit chain on its own: sealing, appending, torn tails, the signed head, and the
property that any change to a committed byte is caught."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flsuite.audit import (
    AuditLog,
    continuation_problem,
    key_id,
    read_head,
    read_saved_head,
    save_head,
    verify_chain,
    write_head,
)
from flsuite.errors import ConfigError, IntegrityError

KEY = Ed25519PrivateKey.generate()
KEYS = {key_id(KEY): KEY.public_key()}


def _log(path: Path, entries: int = 5) -> AuditLog:
    log = AuditLog(path / "audit.jsonl")
    log.append(kind="registry.created", payload={"keys": [key_id(KEY)], "registry_id": "r"},
               time="2025-01-01T00:00:00.000000Z", signing_key=KEY)
    for i in range(entries - 1):
        log.append(kind="study.note", payload={"i": i, "delta": 1e-05, "text": "héllo"},
                   time=f"2025-01-01T00:00:0{i + 1}.000000Z", signing_key=KEY)
    return log


def test_appended_entries_link_and_verify(tmp_path: Path) -> None:
    log = _log(tmp_path)
    lines, torn = log.read_lines()
    assert len(lines) == 5 and torn == b""
    result = verify_chain(lines, public_keys=KEYS)
    assert result.problems == [] and result.trusted_keys == {key_id(KEY)}
    assert [e.seq for e in result.entries] == [1, 2, 3, 4, 5]
    assert all(b.prev == a.hash for a, b in zip(result.entries, result.entries[1:]))
    assert log.last().seq == 5


def test_torn_tail_is_ignored_then_repaired(tmp_path: Path) -> None:
    log = _log(tmp_path, 3)
    with open(log.path, "ab") as handle:
        handle.write(b'{"hash":"abc","key"')  # a write cut short by a crash
    lines, torn = log.read_lines()
    assert len(lines) == 3 and torn.startswith(b'{"hash"')
    assert log.last().seq == 3
    entry = log.append(kind="study.note", payload={}, time="t", signing_key=KEY)
    assert entry.seq == 4
    assert verify_chain(log.read_lines()[0], public_keys=KEYS).problems == []


def test_repairing_a_torn_tail_cuts_only_an_unterminated_last_line(tmp_path: Path) -> None:
    """The registry repairs before every write: a log ending in a whole line is left as it is
    (found from its last byte), a torn last line is set aside and cut, an empty log is no error."""
    log = _log(tmp_path, 2)
    whole = log.path.read_bytes()
    assert log.repair_torn_tail() == 0 and log.path.read_bytes() == whole
    with open(log.path, "ab") as handle:
        handle.write(b'{"hash":"abc"')  # a write cut short by a crash
    assert log.repair_torn_tail() == len(b'{"hash":"abc"')
    assert log.path.read_bytes() == whole
    assert (tmp_path / "audit.jsonl.torn").read_bytes() == b'{"hash":"abc"\n'
    empty = tmp_path / "empty" / "audit.jsonl"
    empty.parent.mkdir()
    empty.write_bytes(b"")
    assert AuditLog(empty).repair_torn_tail() == 0


def test_unreadable_last_entry_stops_writers(tmp_path: Path) -> None:
    log = _log(tmp_path, 2)
    with open(log.path, "ab") as handle:
        handle.write(b"garbage\n")
    with pytest.raises(IntegrityError, match="audit log .* line 3: not a valid entry"):
        log.append(kind="study.note", payload={}, time="t", signing_key=KEY)


def test_entries_of_an_unknown_key_fail(tmp_path: Path) -> None:
    log = _log(tmp_path, 2)
    log.append(kind="study.note", payload={}, time="t", signing_key=Ed25519PrivateKey.generate())
    problems = verify_chain(log.read_lines()[0], public_keys=KEYS).problems
    assert [(p.where, p.check) for p in problems] == [("audit entry 3", "signature")]


def test_signed_head_round_trip_and_tamper(tmp_path: Path) -> None:
    log = _log(tmp_path, 2)
    head = write_head(tmp_path / "head.json", log.last(), registry_id="r", time="t", signing_key=KEY)
    loaded = read_head(tmp_path / "head.json")
    assert loaded == head and loaded.signature_valid(KEY.public_key())
    assert not loaded.signature_valid(Ed25519PrivateKey.generate().public_key())
    (tmp_path / "head.json").write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        read_head(tmp_path / "head.json")
    assert read_head(tmp_path / "absent.json") is None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_changed_byte_of_a_committed_line_is_caught(tmp_path_factory, data) -> None:
    path = tmp_path_factory.mktemp("chain")
    log = _log(path, 4)
    raw = bytearray(log.path.read_bytes())
    position = data.draw(st.integers(0, len(raw) - 2))  # keep the final newline
    value = data.draw(st.integers(0, 255).filter(lambda b: b != raw[position]))
    raw[position] = value
    lines = bytes(raw).rpartition(b"\n")[0].split(b"\n")
    assert verify_chain(lines, public_keys=KEYS).problems, f"byte {position} -> {value} unnoticed"


def test_a_pin_accepts_no_entry_of_another_key_the_genesis_lists(tmp_path: Path) -> None:
    """The genesis lists two keys; only entries of the pinned one pass under the pin."""
    other = Ed25519PrivateKey.generate()
    log = AuditLog(tmp_path / "audit.jsonl")
    log.append(kind="registry.created", payload={"keys": [key_id(KEY), key_id(other)], "registry_id": "r"},
               time="t", signing_key=KEY)
    log.append(kind="study.note", payload={}, time="t", signing_key=KEY)
    log.append(kind="study.note", payload={}, time="t", signing_key=other)
    keys = {**KEYS, key_id(other): other.public_key()}
    lines = log.read_lines()[0]
    assert verify_chain(lines, public_keys=keys).problems == []  # without a pin both keys count
    pinned = verify_chain(lines, public_keys=keys, expected_key=key_id(KEY)[:16].upper())
    assert [(p.where, p.check) for p in pinned.problems] == [("audit entry 3", "pin")]
    assert pinned.trusted_keys == {key_id(KEY)}
    with pytest.raises(ConfigError, match="--expect-key"):
        verify_chain(lines, public_keys=keys, expected_key=key_id(KEY)[:8])


def test_continuation_of_a_saved_head(tmp_path: Path) -> None:
    log = _log(tmp_path, 3)
    head = write_head(tmp_path / "head.json", log.last(), registry_id="r", time="t", signing_key=KEY)
    save_head(tmp_path / "kept.json", head)
    saved = read_saved_head(tmp_path / "kept.json")
    entries = verify_chain(log.read_lines()[0], public_keys=KEYS).entries
    assert saved == head and continuation_problem(saved, entries, "r") is None
    assert continuation_problem(saved, entries[:2], "r")[0] == "audit entry 3"  # older
    log.append(kind="study.note", payload={}, time="t", signing_key=KEY)
    longer = verify_chain(log.read_lines()[0], public_keys=KEYS).entries
    assert continuation_problem(saved, longer, "r") is None  # a continuation
    fork = _log(tmp_path / "fork", 2)  # same first two entries, then another third one
    fork.append(kind="study.note", payload={"forked": True}, time="t", signing_key=KEY)
    fork.append(kind="study.note", payload={}, time="t", signing_key=KEY)
    other = verify_chain(fork.read_lines()[0], public_keys=KEYS).entries
    assert other[1].hash == entries[1].hash
    assert "differs" in continuation_problem(saved, other, "r")[1]  # diverging
    assert "names registry" in continuation_problem(saved, entries, "s")[1]
    (tmp_path / "kept.json").write_text('{"seq": 1}')
    with pytest.raises(ConfigError, match="malformed"):
        read_saved_head(tmp_path / "kept.json")
