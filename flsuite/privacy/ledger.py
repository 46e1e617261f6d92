"""The site's privacy ledger: the DP events of one site, in the shared hash-chained log.

Each line is one entry of `flsuite.storage.HashChainLog` under the domain LEDGER_DOMAIN,
which gives the ledger its rules: the genesis hash, one write + fsync per entry, and the
torn-tail rule (an unterminated last line was never acknowledged: reading ignores it, the
next append moves it to ``<ledger>.torn``). An edited, reordered or removed entry fails
closed with an IntegrityError naming the line. Pass ``on_torn_tail="refuse"`` to fail
closed on a torn tail too. An entry's body is one of:

- ``{"event": E}``: a DP event recorded as it is (after the training it describes);
- ``{"reserve": {"id": R, "event": E}}``: a durable reservation of the projected event E,
  appended BEFORE training, under the ledger's exclusive lock, by the same operation that
  checked the budget (``reserve(event, admit=...)``), so two concurrent requests cannot
  both pass a check that only one of them fits;
- ``{"spend": {"reservation": R, "event": E}}``: the final event E, which replaces the
  reservation R; refused when E would charge more than R's recorded event (another dataset,
  mechanism or delta, a higher q, more steps, a lower sigma): the cap admitted R, not more;
- ``{"cancel": {"reservation": R, "reason": text}}``: reservation R released because the
  training failed before anything left the site.

A reservation that is never closed (the site crashed) counts as spent: ``charged`` returns
every final event and every open reservation's event, which is what the budget composes.

Writers hold an exclusive flock on ``<ledger>.lock`` across read, check and append (and the
caller's anchoring of the new head); readers who need a view consistent with the anchor
hold it shared (``locked(shared=True)``). The lock file lies beside the file the ledger's path
leads to, so a ledger named through a symlink takes the same lock. POSIX only (fcntl).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from flsuite.errors import IntegrityError, LedgerPathError
from flsuite.privacy.events import DpEvent, InvalidDpEvent
from flsuite.storage import GENESIS, ChainEntry, ChainHead, ChainRead, ChainTail, HashChainLog

__all__ = [
    "GENESIS_HASH",
    "LEDGER_DOMAIN",
    "LedgerHead",
    "LedgerPathError",
    "LedgerState",
    "PrivacyLedger",
    "Reservation",
]

LEDGER_DOMAIN = "flsuite.privacy.ledger/2"
GENESIS_HASH = GENESIS
LedgerHead = ChainHead  # (entries, hash of the last one): what a site anchors, signs and reports
_KINDS = ("event", "reserve", "spend", "cancel")
# path -> (head, the state its entries fold to; frozen: DpEvents, Reservations, tuples): the latest
# head of each ledger a process reads, for at most _FOLDED_PATHS ledgers and _FOLDED_ENTRIES entries
_FOLDED: OrderedDict[str, tuple[ChainHead, LedgerState]] = OrderedDict()
_FOLDED_PATHS = 64
_FOLDED_ENTRIES = 200_000
_FOLDED_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class Reservation:
    """An open reservation: the projected event of a training run that has not replied yet."""

    id: str
    event: DpEvent
    entry: int  # its line number

    def overspent_by(self, event: DpEvent) -> str | None:
        """Why spending ``event`` on this reservation would charge more than was reserved under the
        cap (None: it charges at most that). Epsilon only grows with q and steps and falls with
        sigma, so a final event within these bounds costs at most the reserved one."""
        reserved = self.event
        for name in ("dataset", "mechanism", "delta"):
            if getattr(event, name) != getattr(reserved, name):
                return f"its {name} {getattr(event, name)!r} is not the reserved {getattr(reserved, name)!r}"
        if event.sample_rate > reserved.sample_rate or event.steps > reserved.steps or event.noise_multiplier < reserved.noise_multiplier:
            return f"(q, sigma, steps) {event.phase} costs more than the reserved {reserved.phase}"
        return None


@dataclasses.dataclass(frozen=True)
class LedgerState:
    """A verified read of the ledger: head, entry hashes, final events and open reservations."""

    exists: bool
    head: LedgerHead
    hashes: tuple[str, ...]  # hashes[n - 1] is the hash of entry n
    final: tuple[tuple[int, DpEvent], ...]  # (line number, event) of every final event
    open: tuple[Reservation, ...]
    closed: tuple[tuple[Reservation, int], ...] = ()  # (reservation, line number of its spend or cancel)

    @property
    def events(self) -> tuple[DpEvent, ...]:
        return tuple(event for _, event in self.final)

    def hash_at(self, entries: int) -> str:
        """The head hash after the first ``entries`` entries (GENESIS for 0)."""
        return GENESIS if entries == 0 else self.hashes[entries - 1]

    def charged(self, dataset: str | None = None) -> tuple[DpEvent, ...]:
        """What counts against the cap, in ledger order: final events and open reservations."""
        rows = [*self.final, *((r.entry, r.event) for r in self.open)]
        return tuple(event for _, event in sorted(rows, key=lambda row: row[0]) if dataset is None or event.dataset == dataset)

    def up_to(self, entries: int) -> LedgerState:
        """The ledger as it stood after its first ``entries`` entries (a signed head's depth), from this
        one verified read: a reservation closed by a later entry is open at that depth."""
        if not 0 <= entries <= self.head.entries:
            raise ValueError(f"the ledger holds {self.head.entries} entries, not {entries}")
        reopened = [reservation for reservation, closed_at in self.closed if reservation.entry <= entries < closed_at]
        return LedgerState(
            exists=self.exists,
            head=LedgerHead(entries, self.hash_at(entries)),
            hashes=self.hashes[:entries],
            final=tuple(row for row in self.final if row[0] <= entries),
            open=tuple(sorted([*(r for r in self.open if r.entry <= entries), *reopened], key=lambda r: r.entry)),
            closed=tuple(row for row in self.closed if row[1] <= entries),
        )


class PrivacyLedger:
    """Append-only DP events and reservations of one site, on the site's own disk."""

    def __init__(self, path: str | os.PathLike[str], *, on_torn_tail: str = "recover") -> None:
        if on_torn_tail not in ("recover", "refuse"):
            raise ValueError(f"on_torn_tail must be 'recover' or 'refuse', got {on_torn_tail!r}")
        self.path = Path(path)
        self.on_torn_tail = on_torn_tail
        self._log = HashChainLog(self.path, domain=LEDGER_DOMAIN, name="privacy ledger", check_body=_check_body)
        self._held = threading.local()

    def __repr__(self) -> str:
        return f"PrivacyLedger({str(self.path)!r})"

    @property
    def lock_path(self) -> Path:
        """``<ledger>.lock`` beside the file the path leads to, found when the lock is taken: two
        ledgers that name one file by different paths (a symlink) take the same lock."""
        real = Path(os.path.realpath(self.path))
        return real.with_name(real.name + ".lock")

    # -- reading ---------------------------------------------------------------------------
    def state(self) -> LedgerState:
        """The verified ledger: IntegrityError when an entry is bad or a spend/cancel names no
        open reservation. The state of each ledger's latest head is kept (``_keep_folded``): the
        head's hash commits to every entry, so a ledger with the same head folds to the same
        state. When the ledger's lines up to the kept head are exactly the bytes verified
        before (``HashChainLog.read_after``), only the entries after it are decoded and folded;
        otherwise the whole ledger is read, and folded from the kept state if it extends it."""
        path = str(self.path)
        with _FOLDED_LOCK:
            kept = _FOLDED.get(path)
            if kept is not None:
                _FOLDED.move_to_end(path)
        tail = self._read_after(kept[0]) if kept is not None else None
        if tail is not None and kept is not None:
            folded = self._fold(tail.entries, tail.head, since=kept[1]) if tail.entries else kept[1]
        else:
            read = self._read()
            since = kept[1] if kept is not None and _extends(read, kept[0]) else None
            folded = self._fold(read.entries[since.head.entries if since is not None else 0 :], read.head, since=since)
        if tail is None or tail.entries:
            _keep_folded(path, folded.head, folded)
        return dataclasses.replace(folded, exists=self.path.exists())

    def _fold(self, entries: Sequence[ChainEntry], head: ChainHead, since: LedgerState | None) -> LedgerState:
        """``since`` followed by ``entries`` (the ledger's entries after since's head, to ``head``),
        as events and reservations; every entry from the first when ``since`` is None."""
        final: list[tuple[int, DpEvent]] = list(since.final) if since is not None else []
        open_: dict[str, Reservation] = {r.id: r for r in since.open} if since is not None else {}
        closed: list[tuple[Reservation, int]] = list(since.closed) if since is not None else []
        for entry in entries:
            kind, value = next(iter(entry.body.items()))
            if kind == "event":
                final.append((entry.number, DpEvent.from_dict(value)))
            elif kind == "reserve":
                if value["id"] in open_:
                    raise IntegrityError(f"privacy ledger {self.path} line {entry.number}: reservation id used twice")
                open_[value["id"]] = Reservation(value["id"], DpEvent.from_dict(value["event"]), entry.number)
            else:
                reservation = open_.pop(value["reservation"], None)
                if reservation is None:
                    raise IntegrityError(f"privacy ledger {self.path} line {entry.number}: {kind} of no open reservation")
                closed.append((reservation, entry.number))
                if kind == "spend":
                    final.append((entry.number, DpEvent.from_dict(value["event"])))
        return LedgerState(
            exists=True,
            head=head,
            hashes=(*(since.hashes if since is not None else ()), *(entry.hash for entry in entries)),
            final=tuple(final),
            open=tuple(open_.values()),
            closed=tuple(closed),
        )

    def events(self, dataset: str | None = None) -> tuple[DpEvent, ...]:
        """Every final event, oldest first; only those of one dataset if given."""
        return tuple(e for e in self.state().events if dataset is None or e.dataset == dataset)

    def charged(self, dataset: str | None = None) -> tuple[DpEvent, ...]:
        """Final events and open reservations (a crash never closed them): what the cap composes."""
        return self.state().charged(dataset)

    def head(self) -> LedgerHead:
        """The verified head (``HashChainLog.peek``: only lines not verified before are decoded)."""
        try:
            head, torn = self._log.peek()
        except OSError as error:
            raise self._path_error("read", error) from None
        self._check_torn(torn, head)
        return head

    # -- locking ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self, *, shared: bool = False) -> Iterator[None]:
        """Hold the ledger's lock (``<ledger>.lock``); re-entrant within one thread."""
        depth = getattr(self._held, "depth", 0)
        if depth:
            if not shared and self._held.shared:
                raise RuntimeError("cannot take the ledger's exclusive lock while holding it shared")
            self._held.depth = depth + 1
            try:
                yield
            finally:
                self._held.depth -= 1
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as error:
            raise self._path_error("lock", error) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            self._held.depth, self._held.shared = 1, shared
            try:
                yield
            finally:
                self._held.depth = 0
        finally:
            os.close(fd)

    # -- writing ---------------------------------------------------------------------------
    def append(self, event: DpEvent) -> LedgerHead:
        """Durably append one final event; returns the new head. Refuses (IntegrityError) to
        append to a ledger that does not verify."""
        _require_event(event)
        with self.locked():
            self.state()
            return self._write({"event": event.to_dict()})

    def reserve(self, event: DpEvent, *, admit: Callable[[LedgerState], None] | None = None) -> Reservation:
        """Under the exclusive lock: read the ledger, let ``admit`` refuse (by raising), then
        durably append a reservation of ``event``. Check and append are one operation."""
        _require_event(event)
        with self.locked():
            state = self.state()
            if admit is not None:
                admit(state)
            reservation_id = secrets.token_hex(16)
            head = self._write({"reserve": {"id": reservation_id, "event": event.to_dict()}})
            return Reservation(reservation_id, event, head.entries)

    def spend(self, reservation: Reservation, event: DpEvent) -> LedgerHead:
        """Replace an open reservation by the final event of the release it reserved; IntegrityError
        when the event would charge more than the reservation as the ledger recorded it."""
        _require_event(event)
        with self.locked():
            recorded = self._require_open(reservation)  # the ledger's own record, not the caller's copy
            problem = recorded.overspent_by(event)
            if problem:
                raise IntegrityError(f"privacy ledger {self.path}: reservation {reservation.id} cannot be spent by this event: {problem}")
            return self._write({"spend": {"reservation": reservation.id, "event": event.to_dict()}})

    def cancel(self, reservation: Reservation, reason: str) -> LedgerHead:
        """Release an open reservation whose release failed before anything left the site."""
        if not isinstance(reason, str) or not reason:
            raise ValueError("a cancelled reservation needs a reason")
        with self.locked():
            self._require_open(reservation)
            return self._write({"cancel": {"reservation": reservation.id, "reason": reason}})

    def _require_open(self, reservation: Reservation) -> Reservation:
        """The open reservation with ``reservation``'s id, as the ledger recorded it."""
        for recorded in self.state().open:
            if recorded.id == reservation.id:
                return recorded
        raise IntegrityError(f"privacy ledger {self.path}: reservation {reservation.id} is not open")

    def _write(self, body: dict[str, Any]) -> LedgerHead:
        try:
            entry = self._log.append(body)
        except OSError as error:
            raise self._path_error("write", error) from None
        return LedgerHead(entry.number, entry.hash)

    def _read(self) -> ChainRead:
        try:
            read = self._log.read()
        except OSError as error:
            raise self._path_error("read", error) from None
        self._check_torn(read.torn, read.head)
        return read

    def _read_after(self, known: ChainHead) -> ChainTail | None:
        try:
            tail = self._log.read_after(known)
        except OSError as error:
            raise self._path_error("read", error) from None
        if tail is not None:
            self._check_torn(tail.torn, tail.head)
        return tail

    def _check_torn(self, torn: bytes, head: ChainHead) -> None:
        if torn and self.on_torn_tail == "refuse":
            raise IntegrityError(f"privacy ledger {self.path} line {head.entries + 1}: incomplete last entry")

    def _path_error(self, action: str, error: OSError) -> LedgerPathError:
        return LedgerPathError(
            f"cannot {action} the privacy ledger at {self.path}: {error.strerror or error}. "
            "Point the site's ledger path to a file in a folder this process can write."
        )


def _extends(read: ChainRead, head: ChainHead) -> bool:
    """Whether ``read``'s first ``head.entries`` entries are the ones ``head`` commits to."""
    return 0 < head.entries <= read.head.entries and read.entries[head.entries - 1].hash == head.hash


def _keep_folded(path: str, head: ChainHead, state: LedgerState) -> None:
    """Keep ``state`` as ``path``'s latest folded state, within the count and entry budgets."""
    with _FOLDED_LOCK:
        _FOLDED.pop(path, None)
        if head.entries > _FOLDED_ENTRIES // 4:  # a ledger this long is folded on every read
            return
        _FOLDED[path] = (head, state)
        while len(_FOLDED) > _FOLDED_PATHS or sum(h.entries for h, _ in _FOLDED.values()) > _FOLDED_ENTRIES:
            _FOLDED.popitem(last=False)


def _require_event(event: object) -> None:
    if not isinstance(event, DpEvent):
        raise TypeError(f"the ledger records DpEvents, got {type(event).__name__}")


def _check_body(body: dict[str, Any]) -> None:
    """ValueError unless the body is one of the four entry kinds, well formed."""
    if len(body) != 1 or next(iter(body)) not in _KINDS:
        raise ValueError("not a ledger entry")
    kind, value = next(iter(body.items()))
    try:
        if kind == "event":
            DpEvent.from_dict(value)
            return
        if not isinstance(value, dict):
            raise ValueError("not a ledger entry")
        keys = {"reserve": {"id", "event"}, "spend": {"reservation", "event"}, "cancel": {"reservation", "reason"}}[kind]
        if set(value) != keys:
            raise ValueError("not a ledger entry")
        reference = value.get("id", value.get("reservation"))
        if not isinstance(reference, str) or not reference:
            raise ValueError("not a ledger entry")
        if "event" in value:
            DpEvent.from_dict(value["event"])
        elif not isinstance(value["reason"], str):
            raise ValueError("not a ledger entry")
    except InvalidDpEvent as exc:
        raise ValueError(str(exc)) from None
