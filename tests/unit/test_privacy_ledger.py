"""The site's privacy ledger: durable appends, torn-write recovery, tamper detection, concurrency."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flsuite.errors import IntegrityError, UserError
from flsuite.privacy import LedgerPathError, PrivacyLedger, SiteBudget
from flsuite.privacy.ledger import GENESIS_HASH
from tests.unit.test_privacy_events import make_event

REPO = Path(__file__).resolve().parents[2]
FP_A, FP_B = "site-0", "other-data"


def filled(path: Path, n: int = 3, dataset: str = FP_A) -> PrivacyLedger:
    ledger = PrivacyLedger(path)
    for i in range(n):
        ledger.append(make_event(round=i + 1, dataset=dataset))
    return ledger


def test_appended_events_read_back_in_order_and_filter_by_dataset(tmp_path):
    ledger = PrivacyLedger(tmp_path / "site" / "ledger.jsonl")  # the folder is created
    assert ledger.events() == () and ledger.head().hash == GENESIS_HASH
    first = make_event(round=1)
    other = make_event(round=2, dataset=FP_B, noise_multiplier=2.0)
    head = ledger.append(first)
    ledger.append(other)
    assert head.entries == 1
    assert PrivacyLedger(ledger.path).events() == (first, other)
    assert ledger.events(FP_A) == (first,) and ledger.events(FP_B) == (other,)
    assert ledger.head().entries == 2
    assert len(ledger.path.read_text().splitlines()) == 2


def test_append_writes_once_and_fsyncs_file_and_new_folder(tmp_path, monkeypatch):
    synced, writes = [], []
    real_fsync, real_write = os.fsync, os.write
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(Path(f"/proc/self/fd/{fd}").resolve()), real_fsync(fd)))
    monkeypatch.setattr(os, "write", lambda fd, data: (writes.append(len(data)), real_write(fd, data))[1])
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl")
    ledger.append(make_event())
    assert set(synced) == {tmp_path, ledger.path}
    assert len(writes) == 1
    synced.clear()
    ledger.append(make_event(round=2))
    assert synced == [ledger.path]


def test_a_torn_last_line_is_ignored_then_set_aside_by_the_next_append(tmp_path):
    ledger = filled(tmp_path / "ledger.jsonl", 2)
    whole = ledger.path.read_bytes()
    torn = make_event(round=3).to_json()[:57].encode()
    ledger.path.write_bytes(whole + torn)  # a crash in the middle of the third append
    assert [e.round for e in PrivacyLedger(ledger.path).events()] == [1, 2]
    with pytest.raises(IntegrityError, match="line 3: incomplete"):
        PrivacyLedger(ledger.path, on_torn_tail="refuse").events()
    ledger.append(make_event(round=4))
    assert [e.round for e in PrivacyLedger(ledger.path).events()] == [1, 2, 4]
    assert ledger.path.read_bytes().startswith(whole) and ledger.path.read_bytes().endswith(b"\n")
    assert (tmp_path / "ledger.jsonl.torn").read_bytes() == torn + b"\n"


def test_a_complete_entry_without_its_newline_counts_as_not_written(tmp_path):
    ledger = filled(tmp_path / "ledger.jsonl", 2)
    ledger.path.write_bytes(ledger.path.read_bytes()[:-1])
    assert [e.round for e in ledger.events()] == [1]


def _rewrite_line(path: Path, number: int, edit) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[number - 1] = edit(lines[number - 1])
    path.write_text("".join(lines))


def test_an_edited_entry_fails_closed_naming_the_line(tmp_path):
    ledger = filled(tmp_path / "ledger.jsonl", 3)
    _rewrite_line(ledger.path, 2, lambda line: line.replace('"noise_multiplier":1.5', '"noise_multiplier":15.0'))
    with pytest.raises(IntegrityError, match="line 2: checksum mismatch"):
        ledger.events()
    with pytest.raises(IntegrityError, match="line 2"):
        ledger.append(make_event(round=9))  # never appends to, or resets, a broken ledger
    with pytest.raises(IntegrityError):
        SiteBudget(max_epsilon=10, delta=1e-5, accountant="rdp").require(ledger, FP_A, (0.1, 1.0, 1))


def test_a_rehashed_edit_still_breaks_the_chain(tmp_path):
    """An editor who recomputes the edited line's own hash still breaks the next line's link."""
    from flsuite.privacy.ledger import LEDGER_DOMAIN
    from flsuite.storage import entry_hash

    ledger = filled(tmp_path / "ledger.jsonl", 3)

    def forge(line: str) -> str:
        record = json.loads(line)
        record["event"]["steps"] = 1
        record["hash"] = entry_hash(LEDGER_DOMAIN, record["prev"], {"event": record["event"]})
        return json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n"

    _rewrite_line(ledger.path, 2, forge)
    with pytest.raises(IntegrityError, match="line 3: hash chain broken"):
        ledger.events()


def test_a_removed_or_garbled_middle_entry_fails_closed(tmp_path):
    ledger = filled(tmp_path / "ledger.jsonl", 3)
    lines = ledger.path.read_text().splitlines(keepends=True)
    ledger.path.write_text(lines[0] + lines[2])
    with pytest.raises(IntegrityError, match="line 2: hash chain broken"):
        ledger.events()
    ledger.path.write_text(lines[0] + "}{ not json\n" + lines[2])
    with pytest.raises(IntegrityError, match="line 2: not a valid entry"):
        ledger.events()
    ledger.path.write_text(lines[0] + "\n" + lines[1])
    with pytest.raises(IntegrityError, match="line 2"):
        ledger.events()


def test_an_unusable_path_is_a_user_error_naming_it(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with pytest.raises(LedgerPathError, match="not-a-folder") as caught:
        PrivacyLedger(blocker / "ledger.jsonl").append(make_event())
    assert isinstance(caught.value, UserError)
    with pytest.raises(LedgerPathError, match=str(tmp_path)):
        PrivacyLedger(tmp_path).events()
    with pytest.raises(TypeError):
        PrivacyLedger(tmp_path / "l.jsonl").append({"round": 1})  # type: ignore[arg-type]


def test_two_studies_on_the_same_data_compose(tmp_path):
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl")
    for r in range(1, 4):
        ledger.append(make_event(study_id="first", round=r, sample_rate=0.1, noise_multiplier=1.2, steps=10))
    budget = SiteBudget(max_epsilon=50, delta=1e-5, accountant="rdp")
    after_first = budget.project(ledger, FP_A, (0.1, 1.2, 0)).spent
    for r in range(1, 4):
        ledger.append(make_event(study_id="second", round=r, sample_rate=0.05, noise_multiplier=1.0, steps=20))
    ledger.append(make_event(study_id="other-data", dataset=FP_B, steps=10_000))
    reopened = PrivacyLedger(ledger.path)
    both = budget.project(reopened, FP_A, (0.1, 1.2, 0)).spent
    second_alone = budget.project_phases([(0.05, 1.0, 60)], (0.1, 1.0, 0)).spent
    assert both > after_first and both > second_alone
    assert {e.study_id for e in reopened.events(FP_A)} == {"first", "second"}


APPENDER = textwrap.dedent(
    """
    import sys
    from flsuite.privacy import PrivacyLedger
    from tests.unit.test_privacy_events import make_event
    path, site, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ledger = PrivacyLedger(path)
    print("ready", flush=True)
    i = 0
    while count < 0 or i < count:
        i += 1
        ledger.append(make_event(site=site, round=i, study_id="x" * 300))
    """
)


def _spawn(tmp_path: Path, path: Path, site: str, count: int) -> subprocess.Popen:
    script = tmp_path / "appender.py"
    script.write_text(APPENDER)
    return subprocess.Popen(
        [sys.executable, str(script), str(path), site, str(count)],
        cwd=REPO, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def test_two_processes_appending_at_once_never_interleave(tmp_path):
    path = tmp_path / "ledger.jsonl"
    procs = [_spawn(tmp_path, path, site, 60) for site in ("left", "right")]
    try:
        for proc in procs:
            assert proc.wait(timeout=120) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    events = PrivacyLedger(path).events()  # verifies every line and the whole chain
    for site in ("left", "right"):
        assert [e.round for e in events if e.site == site] == list(range(1, 61))


def test_a_site_killed_while_appending_keeps_a_valid_ledger_and_continues(tmp_path):
    path = tmp_path / "ledger.jsonl"
    proc = _spawn(tmp_path, path, "site-0", -1)
    try:
        assert proc.stdout.readline() == b"ready\n"
        deadline = time.monotonic() + 60
        while (not path.exists() or path.stat().st_size < 20_000) and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    ledger = PrivacyLedger(path)
    before = ledger.events()
    assert len(before) >= 10 and [e.round for e in before] == list(range(1, len(before) + 1))
    ledger.append(make_event(site="site-0", round=len(before) + 1))
    assert [e.round for e in PrivacyLedger(path).events()] == list(range(1, len(before) + 2))


def count_decodes(monkeypatch) -> list[int]:
    """How many ledger entries are decoded into DP events from now on (``folds[0]``)."""
    from flsuite.privacy.events import DpEvent

    folds = [0]
    real = DpEvent.from_dict.__func__

    def counting(cls, record):
        folds[0] += 1
        return real(cls, record)

    monkeypatch.setattr(DpEvent, "from_dict", classmethod(counting))
    return folds


def test_a_ledger_is_folded_into_events_once_per_head(tmp_path, monkeypatch):
    """A site reads its ledger several times per training: a head it has folded before (the head's
    hash commits to every entry) is not folded again, and a new entry is folded in at once."""
    ledger = filled(tmp_path / "ledger.jsonl", n=4)
    first = ledger.state()
    folds = count_decodes(monkeypatch)
    assert PrivacyLedger(ledger.path).state() == first and folds[0] == 0
    added = make_event(round=5)
    ledger.append(added)
    assert ledger.events()[-1] == added and len(ledger.events()) == 5


def count_line_decodes(monkeypatch) -> list[int]:
    """How many ledger lines are decoded from JSON from now on (``decodes[0]``)."""
    import flsuite.storage.chain as chain

    decodes = [0]
    real = chain._json_object

    def counting(line: bytes):
        decodes[0] += 1
        return real(line)

    monkeypatch.setattr(chain, "_json_object", counting)
    return decodes


def test_a_read_after_an_append_decodes_the_new_line_alone(tmp_path, monkeypatch):
    """A site reads its ledger three or four times a round (status, reserve, spend, head), and each
    read after a write decoded every line: a study's ledger work grew with its length. Now the lines
    up to the kept head are compared with the bytes verified before, and only the new one is decoded."""
    ledger = filled(tmp_path / "ledger.jsonl", n=30)
    ledger.state()
    decodes = count_line_decodes(monkeypatch)
    reservation = ledger.reserve(make_event(round=31))
    assert ledger.head().entries == 31 and ledger.state().open[0].id == reservation.id
    ledger.spend(reservation, make_event(round=31))
    assert len(ledger.state().events) == 31
    # each new line decoded to verify it, the reservation's once more to fold it after head() verified it;
    # before, every read after a write decoded all the lines (65 here)
    assert decodes[0] <= 3


def test_a_ledger_rewritten_or_edited_after_a_read_is_read_anew(tmp_path):
    """Attack on the kept state: the bytes up to the kept head are compared, so a ledger whose earlier
    lines changed after a read is never continued from that read. An edited line fails closed, and a
    wholly rewritten (re-chained) ledger reads as what it now holds, for the anchor to refuse."""
    ledger = filled(tmp_path / "ledger.jsonl", n=5)
    ledger.state()
    other = filled(tmp_path / "other" / "ledger.jsonl", n=4)
    other.append(make_event(round=9))
    ledger.path.write_bytes(other.path.read_bytes())  # a valid chain of five entries, not these
    state = ledger.state()
    assert [e.round for e in state.events] == [1, 2, 3, 4, 9] and state.head == other.head()
    _rewrite_line(ledger.path, 2, lambda line: line.replace('"noise_multiplier":1.5', '"noise_multiplier":15.0'))
    with pytest.raises(IntegrityError, match="line 2: checksum mismatch"):
        ledger.state()
    with pytest.raises(IntegrityError, match="line 2"):
        ledger.append(make_event(round=10))


def test_a_replaced_ledger_seen_first_by_a_head_read_is_not_continued_from_the_old_state(tmp_path):
    """Attack on ``read_after``: the ledger is replaced by another valid chain, and a ``head()`` read
    verifies the new bytes before any ``state()`` does. The verified bytes are then the new chain's,
    while the kept state is the old chain's; the new chain's later lines must not be folded onto it
    (its line after the kept depth does not link to the kept head), so the state is read in full."""
    ledger = filled(tmp_path / "ledger.jsonl", n=3)
    ledger.state()
    other = PrivacyLedger(tmp_path / "other" / "ledger.jsonl")
    for number in (11, 12, 13, 14):
        other.append(make_event(round=number))
    ledger.path.write_bytes(other.path.read_bytes())  # a valid chain of four other events
    assert ledger.head() == other.head()
    state = ledger.state()
    assert state.head == other.head() and state.hashes == other.state().hashes
    assert [e.round for e in state.events] == [11, 12, 13, 14]


def test_a_ledger_deleted_after_a_read_is_reported_missing(tmp_path):
    """The folded state is shared, but whether the file exists is looked up on every read."""
    ledger = filled(tmp_path / "ledger.jsonl", n=2)
    assert ledger.state().exists
    ledger.path.unlink()
    state = ledger.state()
    assert not state.exists and state.head.entries == 0


def test_a_process_keeps_one_folded_state_per_ledger_within_its_budget(tmp_path, monkeypatch):
    """Attack on memory: a ledger read after every append (a site's long history) must not leave a
    folded copy of itself per head; the states kept stay within the count and entry budgets."""
    import flsuite.privacy.ledger as module

    monkeypatch.setattr(module, "_FOLDED", module.OrderedDict())
    ledger = filled(tmp_path / "a" / "ledger.jsonl", n=1)
    for n in range(2, 30):
        ledger.append(make_event(round=n))
        assert len(ledger.state().events) == n
    assert list(module._FOLDED) == [str(ledger.path)]
    monkeypatch.setattr(module, "_FOLDED_ENTRIES", 40)
    others = [filled(tmp_path / f"site-{i}" / "ledger.jsonl", n=8) for i in range(6)]
    for other in others:
        other.state()
    assert sum(head.entries for head, _ in module._FOLDED.values()) <= 40
    assert str(others[-1].path) in module._FOLDED  # the most recent are kept, the oldest go first
    long_one = filled(tmp_path / "long" / "ledger.jsonl", n=11)  # over a quarter of the budget: never kept
    assert len(long_one.state().events) == 11 and str(long_one.path) not in module._FOLDED


def test_a_grown_ledger_folds_only_its_new_entries_into_the_same_state(tmp_path, monkeypatch):
    """After an append, the kept state is continued with the new entries only, and the result is the
    state a fold of every entry gives (events, open and closed reservations, in ledger order)."""
    ledger = filled(tmp_path / "ledger.jsonl", n=6)
    first = ledger.reserve(make_event(round=7))
    second = ledger.reserve(make_event(round=8))
    ledger.spend(first, make_event(round=7))
    ledger.state()
    folds = count_decodes(monkeypatch)
    ledger.cancel(second, "the training failed")
    ledger.append(make_event(round=9))
    folds[0] = 0
    state = ledger.state()
    assert folds[0] <= 2  # the chain's check of the new line, then the fold of it; not all eleven entries
    monkeypatch.undo()
    read = ledger._read()
    assert state == dataclasses.replace(ledger._fold(read.entries, read.head, since=None), exists=True)
    assert [e.round for e in state.events] == [1, 2, 3, 4, 5, 6, 7, 9] and state.open == ()


def test_a_ledger_named_through_a_symlink_cannot_race_the_cap(tmp_path):
    """Attack on the cap: two processes (here threads) whose configs name one ledger by different
    paths, the file and a symlink to it, each check that a reservation fits and then append. The
    lock was ``<given path>.lock``, so the two checks ran at once and both reservations passed a cap
    that only one fits. The lock now lies beside the file the path leads to: the second check waits,
    sees the first reservation, and refuses."""
    import threading

    real = tmp_path / "ledger.jsonl"
    alias = tmp_path / "alias.jsonl"
    alias.symlink_to(real)
    checking = [threading.Event(), threading.Event()]

    def admit_one(me: int):
        def admit(state) -> None:
            if state.charged():
                raise UserError("the cap fits one reservation")
            checking[me].set()
            checking[1 - me].wait(timeout=1.0)  # without the shared lock, both are checking now
        return admit

    outcomes: list[str] = []

    def reserve(me: int, path: Path) -> None:
        try:
            PrivacyLedger(path).reserve(make_event(round=me + 1), admit=admit_one(me))
            outcomes.append("reserved")
        except UserError:
            outcomes.append("refused")

    threads = [threading.Thread(target=reserve, args=(me, path)) for me, path in enumerate((real, alias))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(outcomes) == ["refused", "reserved"]
    assert len(PrivacyLedger(real).state().open) == 1
    assert PrivacyLedger(alias).lock_path == PrivacyLedger(real).lock_path == tmp_path / "ledger.jsonl.lock"
