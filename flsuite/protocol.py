"""The contract between a site and the coordinator: what every message carries, in one place.

Message kinds, the keys of the records in a message, the keys of a site's node config,
the error codes, and the typed values that cross the wire: a site's refusal, its status
for planning, and the one DP event type (``flsuite.privacy.DpEvent``). Each typed value
converts to a flat mapping of scalars and lists of scalars (what a Flower ConfigRecord
holds) and back, strictly: a reply that does not convert is refused, never guessed at.
Every other module imports these names; no record key is spelled anywhere else.

Pure: no torch, no flwr (callers wrap the mappings in ConfigRecords).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from flsuite.errors import ProtocolError
from flsuite.privacy.events import DpEvent, InvalidDpEvent
from flsuite.typed_key import TypedKey, record_of, typed_key

__all__ = [
    "ARRAYS",
    "CONFIG",
    "CORRECT",
    "DATASET",
    "DATA_PATH",
    "DELTA",
    "DP_EVENT",
    "DRIFT",
    "DRIFT_CHECK",
    "DRIFT_DISTANCE",
    "DRIFT_EVENT",
    "DRIFT_FLAGGED",
    "DRIFT_MARGIN",
    "DRIFT_PREVIOUS",
    "EMPTY_BATCHES",
    "EVALUATE",
    "EVALUATION_COUNTS",
    "IDENTITIES_FILE",
    "IDENTITY_KEY",
    "LABEL_COLUMN",
    "LEDGER_PATH",
    "MASKED_RECORD",
    "MASKED_TRAIN",
    "MASKED_VECTOR",
    "MAX_EPSILON",
    "METRICS",
    "NODE_CONFIG_KEYS",
    "NOISE_MULTIPLIER",
    "NUM_EXAMPLES",
    "NUM_PARTITIONS",
    "PARTITION_ID",
    "PROXIMAL_MU",
    "QUERY",
    "QUERY_KIND",
    "REFUSAL",
    "REFUSAL_KINDS",
    "SECAGG_RECORD",
    "SECAGG_REFUSED",
    "SECAGG_STAGES",
    "SECAGG_SITE_CONFIG",
    "SECAGG_STATE",
    "SEED",
    "SETUP",
    "SHARE_KEYS",
    "STAGE",
    "SERVER_ROUND",
    "SITE",
    "SITE_EVALUATION",
    "SITE_NAME",
    "STATUS_QUERY",
    "TOTAL",
    "TRAIN",
    "TRAIN_LOSS",
    "TRAIN_SECONDS",
    "UNKNOWN_REQUEST",
    "UNMASK",
    "DpEvent",
    "LedgerHead",
    "Refusal",
    "SiteStatus",
    "dp_event_from_record",
    "dp_event_to_record",
]

_Parsed = TypeVar("_Parsed")


def _parses(what: str) -> Callable[[Callable[..., _Parsed]], Callable[..., _Parsed]]:
    """A record from another node that does not parse is a ProtocolError, whatever inside the parse failed.

    Each parser checks what it expects; a value of a shape no check foresaw (a list where a number
    belongs, text that is no number) must still be the other node's error, not a crash of this one.
    """
    def wrap(parse: Callable[..., _Parsed]) -> Callable[..., _Parsed]:
        @functools.wraps(parse)
        def parsed(*args: Any, **kwargs: Any) -> _Parsed:
            try:
                return parse(*args, **kwargs)
            except ProtocolError:
                raise
            except Exception as exc:
                raise ProtocolError(f"{what}: a value does not parse ({type(exc).__name__}: {str(exc)[:200]})") from None
        return parsed
    return wrap


# -- message kinds (Flower message types) ----------------------------------------------------
TRAIN = "train"
EVALUATE = "evaluate"
QUERY = "query"

# -- records in a message's RecordDict --------------------------------------------------------
ARRAYS = "arrays"  # ArrayRecord: the global model (request) or the site's weights (reply)
CONFIG = "config"  # ConfigRecord: the round's settings for the site
METRICS = "metrics"  # MetricRecord: what the site reports about its training
SITE = "site"  # ConfigRecord: the site's status (SiteStatus)
DP_EVENT = "dp"  # ConfigRecord: the DP event the site recorded for this reply
REFUSAL = "refusal"  # ConfigRecord: the site's typed refusal (Refusal), instead of an update
EVALUATION_COUNTS = "evaluation"  # ConfigRecord: a site's noisy per-class held-out counts, under CORRECT and TOTAL
CORRECT = "correct"  # per class: held-out records classified correctly, plus Gaussian noise
TOTAL = "total"  # per class: held-out records, plus Gaussian noise
DRIFT = "drift"  # ConfigRecord: a site's drift comparison with its previous study (keys below)
DRIFT_EVENT = "drift-dp"  # ConfigRecord: the Gaussian DP event of the drift histograms' release
DRIFT_PREVIOUS = "previous-run"  # the run of the previous release compared with ("" for a first study)
DRIFT_DISTANCE = "distance"  # largest total-variation distance over the histograms
DRIFT_MARGIN = "margin"  # the noise margin that distance must beat
DRIFT_FLAGGED = "flagged"  # distance - margin > monitoring.drift_threshold
SECAGG_RECORD = "secagg"  # ConfigRecord: a secure-aggregation stage request or reply
MASKED_RECORD = "secagg-masked"  # ArrayRecord: the masked update vector, under "masked"
SECAGG_STATE = "flsuite.secagg"  # ConfigRecord in the site's context.state: its round state
MASKED_VECTOR = "masked"  # the array in MASKED_RECORD

# -- secure-aggregation stages: the SECAGG_RECORD's "stage", in protocol order ---------------
STAGE = "stage"
SETUP, SHARE_KEYS, MASKED_TRAIN, UNMASK = "setup", "share-keys", "train", "unmask"
SECAGG_STAGES = (SETUP, SHARE_KEYS, MASKED_TRAIN, UNMASK)

# -- keys inside the records -----------------------------------------------------------------
SERVER_ROUND = "server-round"  # set by Flower's strategies in the train config
SEED = "seed"
NOISE_MULTIPLIER = "noise-multiplier"  # the planned sigma for this site
PROXIMAL_MU = "proximal-mu"  # FedProx's mu, set by Flower's FedProx
NUM_EXAMPLES = "num-examples"  # the aggregation weight key of Flower's strategies
TRAIN_LOSS = "train-loss"
TRAIN_SECONDS = "train-seconds"
EMPTY_BATCHES = "empty-batches"  # Poisson batches that drew no record (DP-SGD still counts the step)
QUERY_KIND = "query"  # key of a query's config record
STATUS_QUERY = "status"  # the query for a site's SiteStatus
SITE_EVALUATION = "site-evaluation"  # in an evaluate request's config: release private held-out counts
DRIFT_CHECK = "drift-check"  # in an evaluate request's config: also release the drift histograms (once per study)

# -- a site's node config: its own settings, which win over the coordinator's ------------------
PARTITION_ID = "partition-id"  # set by Flower's simulation for simulated sites
NUM_PARTITIONS = "num-partitions"
SITE_NAME = "site-name"
DATA_PATH = "data-path"
LABEL_COLUMN = "label-column"
LEDGER_PATH = "ledger-path"
IDENTITY_KEY = "identity-key"
IDENTITIES_FILE = "identities-file"
MAX_EPSILON = "max-epsilon"
DELTA = "delta"
DATASET = "dataset"  # the name of the data the site's budget belongs to (its own declaration; default: the site name)
NODE_CONFIG_KEYS = (SITE_NAME, DATA_PATH, LABEL_COLUMN, LEDGER_PATH, IDENTITY_KEY, IDENTITIES_FILE, MAX_EPSILON, DELTA, DATASET)

# -- Error codes of error replies --------------------------------------------------------------
SECAGG_REFUSED = 4100  # an honest site refuses a secure-aggregation request; reason "[code] text"
SECAGG_SITE_CONFIG = 4101  # the site's own secure-aggregation files are unusable
UNKNOWN_REQUEST = 4102  # a query or stage this site does not know

REFUSAL_KINDS = ("budget-exhausted", "privacy-required")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Refusal:
    """A site declines a request, and says why: it trained nothing and spent nothing."""

    kind: str
    site: str
    message: str
    remaining_epsilon: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in REFUSAL_KINDS:
            raise ProtocolError(f"refusal kind {self.kind!r} is not one of {REFUSAL_KINDS}")
        if not isinstance(self.site, str) or not self.site or not isinstance(self.message, str):
            raise ProtocolError("a refusal names its site and carries a message")
        if self.remaining_epsilon is not None and not _number(self.remaining_epsilon):
            raise ProtocolError(f"refusal remaining_epsilon must be a finite number, got {self.remaining_epsilon!r}")

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"kind": self.kind, "site": self.site, "message": self.message}
        if self.remaining_epsilon is not None:
            record["remaining-epsilon"] = float(self.remaining_epsilon)
        return record

    @classmethod
    @_parses("refusal")
    def from_record(cls, record: Mapping[str, Any]) -> Refusal:
        _expect_keys(record, required={"kind", "site", "message"}, optional={"remaining-epsilon"}, what="refusal")
        return cls(
            kind=str(record["kind"]),
            site=str(record["site"]),
            message=str(record["message"]),
            remaining_epsilon=record.get("remaining-epsilon"),
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class LedgerHead:
    """A site's privacy-ledger head, signed with the site's Ed25519 identity key.

    ``entries`` and ``hash`` commit to every event the site's ledger holds for ``dataset``
    (the budget's key, declared by the site). The site anchors it outside the ledger and
    sends it with every reply; the coordinator checks the signature against the site's
    pinned identity and records it in the registry's DP certificate, so a ledger cut short
    or rewritten later shows up against what was signed. ``signature`` is hex.
    """

    site: str
    dataset: str
    entries: int
    hash: str
    signature: str

    def __post_init__(self) -> None:
        if not isinstance(self.site, str) or not self.site or not isinstance(self.dataset, str) or not self.dataset:
            raise ProtocolError("a ledger head names its site and dataset")
        if isinstance(self.entries, bool) or not isinstance(self.entries, int) or self.entries < 0:
            raise ProtocolError(f"ledger head entries must be an integer >= 0, got {self.entries!r}")
        for field in ("hash", "signature"):
            value = getattr(self, field)
            if not isinstance(value, str) or not value or any(c not in "0123456789abcdef" for c in value):
                raise ProtocolError(f"ledger head {field} must be lower-case hex, got {value!r}")

    def payload(self) -> bytes:
        """The bytes the site signs: domain, site, dataset, entries and hash, one per line."""
        return f"flsuite.ledger-head/1\n{self.site}\n{self.dataset}\n{self.entries}\n{self.hash}".encode()

    def to_record(self) -> dict[str, Any]:
        return {"site": self.site, "dataset": self.dataset, "entries": self.entries, "hash": self.hash, "signature": self.signature}

    @classmethod
    @_parses("ledger head")
    def from_record(cls, record: Mapping[str, Any]) -> LedgerHead:
        _expect_keys(record, required={"site", "dataset", "entries", "hash", "signature"}, optional=set(), what="ledger head")
        return cls(
            site=str(record["site"]),
            dataset=str(record["dataset"]),
            entries=_integer(record["entries"], "entries"),
            hash=str(record["hash"]),
            signature=str(record["signature"]),
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class SiteStatus:
    """What a site tells the coordinator for planning, and with each private reply.

    ``records`` is the site's training-record count (disclosed for planning). With DP, the
    site's cap, delta, epsilon spent so far and the DP events its ledger charges to its
    dataset (open reservations included), so the coordinator can plan the remaining budget
    with any accountant, and ``ledger_head``: the site's signed ledger head.
    """

    name: str
    records: int
    max_epsilon: float | None = None
    delta: float | None = None
    spent_epsilon: float | None = None
    prior_events: tuple[DpEvent, ...] = ()
    ledger_head: LedgerHead | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ProtocolError("a site status names its site")
        if self.ledger_head is not None and not isinstance(self.ledger_head, LedgerHead):
            raise ProtocolError(f"site {self.name!r}: ledger_head must be a LedgerHead, got {type(self.ledger_head).__name__}")
        if isinstance(self.records, bool) or not isinstance(self.records, int) or self.records < 0:
            raise ProtocolError(f"site {self.name!r}: record count must be an integer >= 0, got {self.records!r}")
        for field in ("max_epsilon", "delta", "spent_epsilon"):
            value = getattr(self, field)
            if value is not None and not _number(value):
                raise ProtocolError(f"site {self.name!r}: {field} must be a finite number, got {value!r}")

    @property
    def private(self) -> bool:
        return self.max_epsilon is not None

    @property
    def prior_phases(self) -> tuple[tuple[float, float, int], ...]:
        return tuple(event.phase for event in self.prior_events)

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"name": self.name, "records": self.records}
        if self.private:
            record.update({"max-epsilon": self.max_epsilon, "delta": self.delta, "spent-epsilon": self.spent_epsilon})
            # A ConfigRecord holds flat lists of scalars: one list per DP event field.
            for field in _EVENT_FIELDS:
                record[f"prior-{field}"] = [getattr(event, field) for event in self.prior_events]
        if self.ledger_head is not None:
            record.update({f"head-{key}": value for key, value in self.ledger_head.to_record().items()})
        return record

    @classmethod
    @_parses("site status")
    def from_record(cls, record: Mapping[str, Any]) -> SiteStatus:
        private = "max-epsilon" in record
        prior = {f"prior-{field}" for field in _EVENT_FIELDS}
        optional = {"max-epsilon", "delta", "spent-epsilon", *prior} if private else set()
        head_keys = {f"head-{key}" for key in _HEAD_FIELDS}
        has_head = any(key in record for key in head_keys)
        required = {"name", "records", *optional, *(head_keys if has_head else ())}
        _expect_keys(record, required=required, optional=optional | head_keys, what="site status")
        events: tuple[DpEvent, ...] = ()
        if private:
            columns = {field: list(record[f"prior-{field}"]) for field in _EVENT_FIELDS}
            lengths = {len(column) for column in columns.values()}
            if len(lengths) > 1:
                raise ProtocolError(f"site status: the prior DP event lists have different lengths {sorted(lengths)}")
            count = lengths.pop() if lengths else 0
            events = tuple(
                _event({field: columns[field][i] for field in _EVENT_FIELDS}, what="site status prior event") for i in range(count)
            )
        return cls(
            name=str(record["name"]),
            records=_integer(record["records"], "records"),
            max_epsilon=_float_or_none(record.get("max-epsilon")),
            delta=_float_or_none(record.get("delta")),
            spent_epsilon=_float_or_none(record.get("spent-epsilon")),
            prior_events=events,
            ledger_head=LedgerHead.from_record({key: record[f"head-{key}"] for key in _HEAD_FIELDS}) if has_head else None,
        )


_HEAD_FIELDS = tuple(field.name for field in dataclasses.fields(LedgerHead))
_EVENT_FIELDS = tuple(field.name for field in dataclasses.fields(DpEvent))


def dp_event_to_record(event: DpEvent) -> dict[str, Any]:
    """The DP event as a flat record (every field, by its name)."""
    return event.to_dict()


@_parses("DP event")
def dp_event_from_record(record: Mapping[str, Any]) -> DpEvent:
    """The DP event a reply carries; ProtocolError when any field is missing, extra or wrong."""
    return _event(dict(record), what="DP event")


def _event(record: dict[str, Any], *, what: str) -> DpEvent:
    for field in ("round", "steps"):
        if isinstance(record.get(field), float) and float(record[field]).is_integer():
            record[field] = int(record[field])
    # a site's status repeats its whole history in every reply: an event seen before, with the same values
    # of the same types (a float's exact bits), is the same validated event; a value that cannot be a key
    # (a list where a number belongs) is validated anew, and validation names it
    key = typed_key(record)
    try:
        return _validated_event(key) if key is not None else DpEvent.from_dict(record)
    except InvalidDpEvent as error:
        raise ProtocolError(f"{what}: {error}") from None


@functools.lru_cache(maxsize=1 << 14)
def _validated_event(key: TypedKey) -> DpEvent:
    return DpEvent.from_dict(record_of(key))


def _expect_keys(record: Mapping[str, Any], *, required: set[str], optional: set[str], what: str) -> None:
    keys = set(record)
    missing, extra = sorted(required - keys), sorted(keys - required - optional)
    if missing or extra:
        raise ProtocolError(f"{what}: missing keys {missing}, unknown keys {extra}")


def _number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _float_or_none(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


def _integer(value: object, field: str) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"site status: {field} must be an integer, got {value!r}")
    return value
