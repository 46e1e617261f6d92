"""DP events: the immutable records a site's privacy ledger keeps, one per release.

A release is a local DP-SGD run (``mechanism="dp-sgd"``) or a Gaussian-mechanism release of
counts (``mechanism="gaussian"``: a site's private evaluation, see flsuite/site/evaluation.py),
which is the subsampled Gaussian at q = 1: its ``noise_multiplier`` is sigma relative to the
L2 sensitivity stored in ``max_grad_norm``, ``steps`` the number of releases.

An event stores the mechanism (sample rate q, noise multiplier sigma, steps, clip C),
never an epsilon, so that any accountant can recompute the spend later. Its ``dataset`` is
the budget's key: the name the site DECLARES for its data (its site config), never a
fingerprint of bytes, so that every event a site records for that dataset composes into
every later check, whatever rows, columns or dtypes a study uses. Pure: standard library only.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from flsuite.errors import InvalidDpEvent

__all__ = [
    "ACCOUNTANTS",
    "DATASET_NAME",
    "DP_SGD",
    "GAUSSIAN",
    "MECHANISMS",
    "DpEvent",
    "InvalidDpEvent",
    "utc_now_iso",
    "valid_dataset_name",
]

#: Accountants whose epsilon flsuite reports; see accounting.py for why GDP is not one.
ACCOUNTANTS = ("prv", "rdp")

#: The mechanisms an event records: DP-SGD (Poisson-subsampled Gaussian) or the plain Gaussian mechanism.
DP_SGD = "dp-sgd"
GAUSSIAN = "gaussian"
MECHANISMS = (DP_SGD, GAUSSIAN)


def utc_now_iso(clock: Callable[[], datetime] | None = None) -> str:
    """The current time as ISO 8601 in UTC; ``clock`` (returning an aware datetime) is for tests."""
    now = clock() if clock is not None else datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("clock must return a timezone-aware datetime")
    return now.astimezone(UTC).isoformat(timespec="microseconds")


#: A dataset name: what a site declares for the data its budget belongs to (like a site name).
DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def valid_dataset_name(name: object) -> bool:
    """True for a name of 1-64 letters, digits, '.', '_' or '-' that starts with a letter or digit."""
    return isinstance(name, str) and DATASET_NAME.fullmatch(name) is not None


_TEXT = ("study_id", "run_id", "site", "dataset", "accountant", "rng", "recorded_at")
_INT = ("round", "steps")
_FLOAT = ("sample_rate", "noise_multiplier", "max_grad_norm", "delta")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DpEvent:
    """One release at one site: Poisson rate q, sigma, steps, clip C (sensitivity), and who/when.

    A DP-SGD event is one local training run; a Gaussian event (``mechanism="gaussian"``,
    q = 1, ``steps`` releases, ``max_grad_norm`` the L2 sensitivity) is a release of noisy counts.

    ``dataset`` is the name the site declared for its data: the key of its budget.
    ``rng`` names the generator that made the noise (never its seed: whoever holds the seed
    can subtract the noise). ``recorded_at`` is ISO 8601 UTC.
    """

    study_id: str
    run_id: str
    round: int
    site: str
    dataset: str
    sample_rate: float
    noise_multiplier: float
    steps: int
    max_grad_norm: float
    delta: float
    accountant: str
    rng: str
    recorded_at: str
    mechanism: str = DP_SGD

    def __post_init__(self) -> None:
        if self.mechanism not in MECHANISMS:
            raise InvalidDpEvent(f"DP event field 'mechanism': one of {MECHANISMS}, got {self.mechanism!r}")
        for name in _TEXT:
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise InvalidDpEvent(f"DP event field {name!r}: expected a non-empty string, got {value!r}")
        if not valid_dataset_name(self.dataset):
            raise InvalidDpEvent(
                f"DP event field 'dataset': expected a dataset name (1-64 of A-Z a-z 0-9 . _ -, starting "
                f"with a letter or digit), got {self.dataset!r}"
            )
        for name in _INT:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidDpEvent(f"DP event field {name!r}: expected an integer >= 0, got {value!r}")
        for name in _FLOAT:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InvalidDpEvent(f"DP event field {name!r}: expected a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if not 0.0 < self.sample_rate <= 1.0:
            raise InvalidDpEvent(f"DP event field 'sample_rate': must be in (0, 1], got {self.sample_rate}")
        if self.mechanism == GAUSSIAN and self.sample_rate != 1.0:
            raise InvalidDpEvent(f"DP event of the Gaussian mechanism: sample_rate must be 1 (no subsampling), got {self.sample_rate}")
        if self.noise_multiplier <= 0.0:
            raise InvalidDpEvent(f"DP event field 'noise_multiplier': must be > 0, got {self.noise_multiplier}")
        if self.max_grad_norm <= 0.0:
            raise InvalidDpEvent(f"DP event field 'max_grad_norm': must be > 0, got {self.max_grad_norm}")
        if not 0.0 < self.delta < 1.0:
            raise InvalidDpEvent(f"DP event field 'delta': must be in (0, 1), got {self.delta}")
        if self.accountant not in ACCOUNTANTS:
            raise InvalidDpEvent(f"DP event field 'accountant': one of {ACCOUNTANTS}, got {self.accountant!r}")
        try:
            when = datetime.fromisoformat(self.recorded_at)
        except ValueError:
            when = None
        if when is None or when.utcoffset() is None or when.utcoffset().total_seconds() != 0:
            raise InvalidDpEvent(
                f"DP event field 'recorded_at': expected ISO 8601 time in UTC, got {self.recorded_at!r}"
            )

    @property
    def phase(self) -> tuple[float, float, int]:
        """The mechanism as the accountant sees it: (q, sigma, steps)."""
        return (self.sample_rate, self.noise_multiplier, self.steps)

    def to_dict(self) -> dict[str, Any]:
        """Every field; ``mechanism`` only when it is not DP-SGD (so training events keep the form
        ledgers written before the field existed have, and their hashes). A new dict each call."""
        # every field is a str, int or float (__post_init__): a shallow dict is what dataclasses.asdict's deep copy gives
        record = {name: getattr(self, name) for name in _FIELD_NAMES}
        if self.mechanism == DP_SGD:
            del record["mechanism"]
        return record

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces): equal events give equal text.

        Kept with the event once made: the event is frozen and its fields immutable, and the
        coordinator compares a site's whole history by this text every round."""
        text = self.__dict__.get("_json")
        if text is None:
            text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)
            object.__setattr__(self, "_json", text)  # not a field: equality, hashing and to_dict ignore it
        return text

    @classmethod
    def from_dict(cls, record: Any) -> DpEvent:
        """Strict: refuses a record with a missing, extra or mistyped field."""
        if not isinstance(record, dict):
            raise InvalidDpEvent(f"DP event record: expected a JSON object, got {type(record).__name__}")
        expected = {field.name for field in dataclasses.fields(cls)}
        missing, extra = sorted(expected - record.keys() - {"mechanism"}), sorted(record.keys() - expected)
        if missing or extra:
            raise InvalidDpEvent(f"DP event record: missing fields {missing}, unknown fields {extra}")
        return cls(**record)

    @classmethod
    def from_json(cls, text: str | bytes) -> DpEvent:
        try:
            record = json.loads(text)
        except (ValueError, UnicodeDecodeError) as error:
            raise InvalidDpEvent(f"DP event record: not valid JSON ({error})") from None
        return cls.from_dict(record)


_FIELD_NAMES = tuple(field.name for field in dataclasses.fields(DpEvent))
