"""The one hash-chained log and its two users (privacy ledger, audit log): one genesis rule,
one torn-tail rule, domain separation, fail-closed verification, and the import rule."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import flsuite.storage
from flsuite.audit import AuditLog
from flsuite.errors import IntegrityError
from flsuite.privacy import PrivacyLedger
from flsuite.storage import GENESIS, HashChainLog, entry_hash
from tests.unit.test_privacy_events import make_event

REPO = Path(__file__).resolve().parents[2]
KEY = Ed25519PrivateKey.generate()


@dataclass
class User:
    """One user of the shared log, driven through its own public API."""

    path: Path
    append: Callable[[int], None]  # append entry number n
    count: Callable[[], int]  # committed entries as the user reads them


def _ledger(folder: Path) -> User:
    ledger = PrivacyLedger(folder / "ledger.jsonl")
    return User(ledger.path, lambda n: ledger.append(make_event(round=n)), lambda: len(ledger.events()))


def _audit(folder: Path) -> User:
    log = AuditLog(folder / "audit.jsonl")

    def append(n: int) -> None:
        log.append(kind="study.note", payload={"n": n}, time=f"t{n}", signing_key=KEY)

    def count() -> int:
        last = log.last()
        return 0 if last is None else last.seq

    return User(log.path, append, count)


USERS = pytest.mark.parametrize("make_user", [_ledger, _audit], ids=["privacy-ledger", "audit-log"])


@USERS
def test_both_users_start_from_the_one_genesis_constant(tmp_path: Path, make_user) -> None:
    user = make_user(tmp_path)
    user.append(1)
    user.append(2)
    first, second = (json.loads(line) for line in user.path.read_bytes().splitlines())
    assert first["prev"] == GENESIS == flsuite.storage.GENESIS == "0" * 64
    assert second["prev"] == first["hash"]


def test_the_users_share_the_genesis_object_and_not_the_domain() -> None:
    from flsuite.audit.log import GENESIS_PREV, LOG_DOMAIN
    from flsuite.privacy.ledger import GENESIS_HASH, LEDGER_DOMAIN

    assert GENESIS_HASH is GENESIS and GENESIS_PREV is GENESIS
    assert LEDGER_DOMAIN != LOG_DOMAIN


@USERS
def test_a_torn_tail_is_ignored_by_readers_then_set_aside_by_the_next_append(tmp_path: Path, make_user) -> None:
    user = make_user(tmp_path)
    user.append(1)
    user.append(2)
    committed = user.path.read_bytes()
    torn = committed.splitlines(keepends=True)[-1][:40]  # a third write cut short by a crash
    user.path.write_bytes(committed + torn)
    assert user.count() == 2
    lines, tail = HashChainLog(user.path, domain="any", name="log").read_lines()
    assert len(lines) == 2 and tail == torn
    user.append(3)
    assert user.count() == 3
    assert user.path.read_bytes().startswith(committed)
    assert user.path.with_name(user.path.name + ".torn").read_bytes() == torn + b"\n"


@USERS
def test_an_edited_middle_entry_stops_both_readers_and_writers(tmp_path: Path, make_user) -> None:
    user = make_user(tmp_path)
    for n in (1, 2, 3):
        user.append(n)
    lines = user.path.read_bytes().splitlines(keepends=True)
    record = json.loads(lines[1])
    record["prev"] = "f" * 64
    lines[1] = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
    user.path.write_bytes(b"".join(lines))
    with pytest.raises(IntegrityError, match="line 2: hash chain broken"):
        user.append(4)
    assert len(user.path.read_bytes().splitlines()) == 3


def _log(path: Path, domain: str = "test.log/1", **kwargs) -> HashChainLog:
    return HashChainLog(path, domain=domain, name="test log", **kwargs)


def test_hash_is_domain_separated_and_covers_prev_and_body(tmp_path: Path) -> None:
    log = _log(tmp_path / "a.jsonl")
    entry = log.append({"x": 1})
    assert entry.hash == entry_hash("test.log/1", GENESIS, {"x": 1})
    assert entry_hash("other/1", GENESIS, {"x": 1}) != entry.hash
    assert entry_hash("test.log/1", "1" * 64, {"x": 1}) != entry.hash
    with pytest.raises(IntegrityError, match="line 1: checksum mismatch"):
        _log(log.path, domain="other/1").read()  # an entry of one log is no entry of another


def test_unhashed_fields_are_required_and_outside_the_hash(tmp_path: Path) -> None:
    log = _log(tmp_path / "s.jsonl", unhashed=("sig",))
    first = log.append(lambda head: {"n": head.entries + 1}, unhashed=lambda digest: {"sig": digest[:8]})
    second = log.append(lambda head: {"n": head.entries + 1}, unhashed=lambda digest: {"sig": "x"})
    assert (first.number, first.body, first.unhashed) == (1, {"n": 1}, {"sig": first.hash[:8]})
    assert second.body == {"n": 2} and second.prev == first.hash
    assert [e.body for e in log.read().entries] == [{"n": 1}, {"n": 2}]
    assert log.head() == flsuite.storage.ChainHead(2, second.hash)
    with pytest.raises(ValueError, match="unhashed fields"):
        log.append({"n": 3})
    with pytest.raises(ValueError, match="reserved"):
        log.append({"prev": "x"}, unhashed=lambda d: {"sig": ""})
    lines = log.path.read_bytes().splitlines()
    record = json.loads(lines[1])
    del record["sig"]
    log.path.write_bytes(lines[0] + b"\n" + json.dumps(record, sort_keys=True, separators=(",", ":")).encode() + b"\n")
    with pytest.raises(IntegrityError, match="line 2: not a valid entry"):
        log.read()


def test_a_line_not_in_canonical_form_is_refused(tmp_path: Path) -> None:
    log = _log(tmp_path / "c.jsonl")
    log.append({"x": 1})
    log.path.write_bytes(log.path.read_bytes().replace(b'"x":1', b'"x": 1'))
    with pytest.raises(IntegrityError, match="line 1: not in canonical form"):
        log.read()


def test_empty_or_absent_log_has_the_genesis_head_and_repair_is_a_no_op(tmp_path: Path) -> None:
    log = _log(tmp_path / "none.jsonl")
    assert log.head() == flsuite.storage.ChainHead(0, GENESIS)
    assert log.read_lines() == ([], b"") and log.repair_torn_tail() == 0
    log.path.write_bytes(b"")
    assert log.read().entries == () and log.repair_torn_tail() == 0


def test_repair_sets_aside_a_torn_tail_under_the_lock(tmp_path: Path) -> None:
    log = _log(tmp_path / "r.jsonl")
    log.append({"x": 1})
    whole = log.path.read_bytes()
    log.path.write_bytes(whole + b'{"x":')
    assert log.read().torn == b'{"x":'
    assert log.repair_torn_tail() == 5
    assert log.path.read_bytes() == whole
    assert (tmp_path / "r.jsonl.torn").read_bytes() == b'{"x":\n'


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_changed_byte_of_a_committed_line_is_caught(tmp_path_factory, data) -> None:
    log = _log(tmp_path_factory.mktemp("chain") / "p.jsonl")
    for n in range(3):
        log.append({"n": n, "text": "héllo", "delta": 1e-05})
    raw = bytearray(log.path.read_bytes())
    position = data.draw(st.integers(0, len(raw) - 2))  # keep the final newline
    raw[position] = data.draw(st.integers(0, 255).filter(lambda b: b != raw[position]))
    log.path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError):
        log.read()


def test_storage_imports_neither_torch_nor_flwr_and_exports_what_it_lists() -> None:
    code = ("import sys, flsuite.storage, flsuite.storage.keyfiles, flsuite.storage.chain, "
            "flsuite.privacy.ledger, flsuite.audit.log; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'flwr')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
    assert all(hasattr(flsuite.storage, name) for name in flsuite.storage.__all__)
    public = {name for name in vars(flsuite.storage) if not name.startswith("_")}
    modules = {"canonical", "chain", "durable", "keyfiles"}
    assert public - modules == set(flsuite.storage.__all__)


# --- reads verify only what they have not verified before --------------------------------

def _count_hashes(monkeypatch) -> list[int]:
    import flsuite.storage.chain as chain

    calls = [0]
    real = chain.entry_hash

    def counting(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(chain, "entry_hash", counting)
    return calls


@USERS
def test_a_grown_log_verifies_only_its_new_lines(tmp_path: Path, make_user, monkeypatch) -> None:
    user = make_user(tmp_path)
    for n in range(1, 6):
        user.append(n)
    assert user.count() == 5
    hashes = _count_hashes(monkeypatch)
    user.append(6)
    assert user.count() == 6
    assert hashes[0] <= 2  # the new entry sealed once and checked once; the first five not again


@USERS
def test_an_edited_earlier_line_is_found_after_the_log_was_read(tmp_path: Path, make_user) -> None:
    """Attack: read the log (its bytes are remembered), then edit an early entry in place, keeping
    the file's size and its modification time. Verification is on the bytes, so it is caught."""
    import os

    user = make_user(tmp_path)
    for n in range(1, 5):
        user.append(n)
    assert user.count() == 4
    stat = user.path.stat()
    lines = user.path.read_bytes().split(b"\n")
    record = json.loads(lines[1])
    key = "ledger" if "event" in record or "reserve" in record else "payload"
    edited = lines[1].replace(b'"round":2', b'"round":7') if key == "ledger" else lines[1].replace(b'"n":2', b'"n":7')
    assert edited != lines[1] and len(edited) == len(lines[1])
    user.path.write_bytes(b"\n".join([lines[0], edited, *lines[2:]]))
    os.utime(user.path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(IntegrityError, match="line 2"):
        user.count()


def test_a_rewritten_log_is_read_as_it_is_now_not_as_it_was(tmp_path: Path) -> None:
    """A log replaced by another valid chain (what an anchor or a signed head then catches) is
    reported as the new chain: a remembered read never stands in for bytes that changed."""
    log = HashChainLog(tmp_path / "log.jsonl", domain="test/1", name="test log")
    for n in range(3):
        log.append({"n": n})
    first = log.read()
    (tmp_path / "log.jsonl").unlink()
    for n in range(3):
        log.append({"n": 10 + n})
    again = log.read()
    assert [e.body for e in again.entries] == [{"n": 10}, {"n": 11}, {"n": 12}]
    assert again.head != first.head


def test_entries_of_a_remembered_read_are_new_objects(tmp_path: Path) -> None:
    """A caller that changes an entry it was given cannot change what the next read returns."""
    log = HashChainLog(tmp_path / "log.jsonl", domain="test/1", name="test log")
    log.append({"n": {"deep": 1}})
    log.read().entries[0].body["n"]["deep"] = 99
    assert log.read().entries[0].body == {"n": {"deep": 1}}


def test_the_remembered_bytes_stay_within_their_budget() -> None:
    from flsuite.storage.chain import ChainHead, VerifiedPrefixes

    prefixes = VerifiedPrefixes(most_bytes=100)
    head = ChainHead(1, "a" * 64)
    for n in range(10):
        prefixes.remember(("log", n), b"x" * 20 + b"\n", head)
    assert prefixes.prefix(("log", 9), b"x" * 20 + b"\nmore") == (21, head)
    assert prefixes.prefix(("log", 9), b"x" * 20 + b"\n") == (21, head)
    assert prefixes.prefix(("log", 9), b"x" * 19 + b"y\n") is None
    assert prefixes.prefix(("log", 0), b"x" * 20 + b"\n") is None  # evicted: at most 100 bytes held
    assert prefixes._held <= 100 and all(prefixes.prefix(("log", n), b"x" * 20 + b"\n") == (21, head) for n in range(6, 10))
    prefixes.remember(("big", 0), b"y" * 60 + b"\n", head)  # over a quarter of the budget: its digest is kept
    assert prefixes._held <= 100
    assert prefixes.prefix(("big", 0), b"y" * 60 + b"\nmore") == (61, head)
    assert prefixes.prefix(("big", 0), b"y" * 60 + b"\n") == (61, head)
    assert prefixes.prefix(("big", 0), b"y" * 30 + b"z" + b"y" * 29 + b"\nmore") is None  # one byte changed
    assert prefixes.prefix(("big", 0), b"y" * 60) is None  # shorter


def test_a_log_too_large_to_hold_verifies_only_its_new_lines_and_still_finds_an_edit(tmp_path: Path, monkeypatch) -> None:
    """A log over the budget (a registry's audit log after many studies) was verified in full on
    every append. Now it is remembered by digest: an append checks one new line, and an edited
    earlier line (same size, same time stamps) is still found."""
    import os

    import flsuite.storage.chain as chain

    monkeypatch.setattr(chain, "_VERIFIED", chain.VerifiedPrefixes(most_bytes=400))
    path = tmp_path / "log.jsonl"
    log = HashChainLog(path, domain="test/1", name="test log")
    for n in range(20):
        log.append({"n": n, "pad": "p" * 40})
    assert path.stat().st_size > 400
    hashes = _count_hashes(monkeypatch)
    log.append({"n": 20, "pad": "p" * 40})
    assert log.head().entries == 21
    assert hashes[0] <= 3  # line 20 (appended last) checked, line 21 sealed and checked; none of the rest
    stat = path.stat()
    path.write_bytes(path.read_bytes().replace(b'"n":3,', b'"n":8,'))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(IntegrityError, match="line 4: checksum mismatch"):
        log.append({"n": 21, "pad": "p" * 40})


def test_a_bad_line_after_a_remembered_prefix_is_named_by_its_own_number(tmp_path: Path) -> None:
    """Lines after the bytes verified before are checked as a full read checks them, with the
    same line numbers in the error."""
    path = tmp_path / "log.jsonl"
    log = HashChainLog(path, domain="test/1", name="test log")
    for n in range(5):
        log.append({"n": n})
    log.read()  # remembers 5 verified lines
    log.append({"n": 5})
    lines = path.read_bytes().split(b"\n")
    lines[5] = lines[5].replace(b'"n":5', b'"n":6')  # the sixth entry's body no longer matches its hash
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(IntegrityError, match="line 6: checksum mismatch"):
        log.read()


def _count_decodes(monkeypatch) -> list[int]:
    import flsuite.storage.chain as chain

    calls = [0]
    real = chain._json_object

    def counting(line):
        calls[0] += 1
        return real(line)

    monkeypatch.setattr(chain, "_json_object", counting)
    return calls


def test_an_append_and_the_last_entry_decode_no_line_verified_before(tmp_path: Path, monkeypatch) -> None:
    """A writer (the registry appends to its audit log every round) pays for the new lines, not for
    the whole log: its appends and its look at the last entry decode no line a read verified."""
    log = HashChainLog(tmp_path / "log.jsonl", domain="test/1", name="test log")
    for n in range(30):
        log.append({"n": n})
    log.read()
    decodes = _count_decodes(monkeypatch)
    log.append({"n": 30})
    assert decodes[0] == 0
    assert log.last().body == {"n": 30} and decodes[0] == 1  # the new line, verified once
    assert log.last().body == {"n": 30} and decodes[0] == 2  # then only the last line, to return it
    assert log.head().entries == 31 and decodes[0] == 2


@USERS
def test_an_append_after_an_earlier_line_was_edited_is_refused_and_writes_nothing(tmp_path: Path, make_user) -> None:
    """Attack: after a writer's appends (its bytes are remembered), edit an early entry in place,
    keeping the file's size and modification time. The next append compares the bytes, finds the
    edit, names the line and appends nothing."""
    import os

    user = make_user(tmp_path)
    for n in range(1, 5):
        user.append(n)
    stat = user.path.stat()
    lines = user.path.read_bytes().split(b"\n")
    edited = lines[1].replace(b'"round":2', b'"round":7') if b'"round":2' in lines[1] else lines[1].replace(b'"n":2', b'"n":7')
    assert edited != lines[1] and len(edited) == len(lines[1])
    tampered = b"\n".join([lines[0], edited, *lines[2:]])
    user.path.write_bytes(tampered)
    os.utime(user.path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(IntegrityError, match="line 2"):
        user.append(5)
    assert user.path.read_bytes() == tampered


def test_the_last_entry_of_an_edited_last_line_is_refused(tmp_path: Path) -> None:
    """Attack: after a read, change the last line (the one ``last`` decodes without verifying it
    again when its bytes are remembered). The bytes differ from the verified ones, so it is checked."""
    path = tmp_path / "log.jsonl"
    log = HashChainLog(path, domain="test/1", name="test log")
    for n in range(3):
        log.append({"n": n})
    assert log.last().body == {"n": 2}
    data = path.read_bytes()
    path.write_bytes(data.replace(b'"n":2', b'"n":9'))
    with pytest.raises(IntegrityError, match="line 3: checksum mismatch"):
        log.last()
