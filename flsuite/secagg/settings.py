"""Validated settings of one secure-aggregation round (threshold, neighbours, range, cipher).

Pure: no I/O, no Flower. The coordinator sends the settings to every site at setup; an
honest site rebuilds them with the same validation, so a coordinator cannot talk a site
into a weaker threshold than these rules allow.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

from flsuite.errors import ConfigError

__all__ = ["MASK_CIPHERS", "MAX_COHORT_SIZE", "MAX_WEIGHT_CAP", "SecAggSettings"]

MASK_CIPHERS = ("aes-256-ctr", "chacha20")
#: The most sites in one secure round: each site builds the round's neighbour graph (its size squared with
#: every other site as a neighbour), so a coordinator's setup cannot ask a site for gigabytes.
MAX_COHORT_SIZE = 1024
#: The largest weight cap (records that count towards a site's weight).
MAX_WEIGHT_CAP = 10**12
_MODULUS = 2**32


@dataclass(frozen=True, kw_only=True)
class SecAggSettings:
    """Settings of a SecAgg+-style round.

    cohort_size: sites asked to take part in a round (at least 3).
    threshold: Shamir shares needed to rebuild a site's secrets. Each site shares its
        secrets with its ``neighbours`` and itself (the "share group"); the threshold must
        be more than half of that group, so a coordinator can never collect both the
        self-mask share and the key share of one site from honest sites.
    neighbours: peers each site masks with and shares secrets to (SecAgg+ graph);
        None means every other site of the cohort (classic SecAgg).
    max_dropouts: sites that may drop out in total before the round aborts; at most
        share group - threshold (default), so every needed secret stays recoverable.
    clip_range: each coordinate of a site's update (local - global weights) must lie in
        [-clip_range, clip_range]; the quantisation step is 2*clip_range/levels.
    clip_out_of_range: clip values beyond the range (and report the count) instead of refusing.
    weight_cap: a site's weight is min(num-examples, weight_cap) / weight_cap, in [0, 1].
    mask_cipher: keystream for the masks, "aes-256-ctr" or "chacha20".
    """

    cohort_size: int
    threshold: int
    neighbours: int | None = None
    max_dropouts: int | None = None
    clip_range: float = 1.0
    clip_out_of_range: bool = False
    weight_cap: int = 10_000
    mask_cipher: str = "aes-256-ctr"
    _resolved_dropouts: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = self.cohort_size
        if not _is_int(n) or n < 3:
            raise ConfigError(
                f"secagg.cohort_size={n!r}: secure aggregation needs at least 3 sites per round "
                "(with 2, each site could subtract its own update from the sum and learn the other's)."
            )
        if n > MAX_COHORT_SIZE:  # every site builds the round's graph: a coordinator must not set its size at will
            raise ConfigError(f"secagg.cohort_size={n}: at most {MAX_COHORT_SIZE} sites per secure round; sample a "
                              "cohort of at most that many sites for each round.")
        k = self.neighbours
        if k is not None:
            if not _is_int(k) or not 2 <= k <= n - 1:
                raise ConfigError(
                    f"secagg.neighbours={k!r}: must be between 2 and cohort_size-1={n - 1} "
                    "(or empty for 'every other site')."
                )
            if k < n - 1 and k % 2:
                raise ConfigError(
                    f"secagg.neighbours={k}: must be even when smaller than cohort_size-1={n - 1} "
                    "(each site takes k/2 neighbours on either side of a ring)."
                )
        group = self.share_group
        t = self.threshold
        if not _is_int(t) or not group / 2 < t <= group:
            raise ConfigError(
                f"secagg.threshold={t!r}: must be more than half of the share group ({group} = "
                f"neighbours + the site itself) and at most {group}, i.e. between "
                f"{group // 2 + 1} and {group}. At half or below, a coordinator could ask one "
                "half of the sites for a site's self-mask shares and the other half for its key "
                "shares and unmask that site's update."
            )
        d = self.max_dropouts
        if d is None:
            d = group - t
        elif not _is_int(d) or not 0 <= d <= group - t:
            raise ConfigError(
                f"secagg.max_dropouts={d!r}: with threshold {t} of a share group of {group}, at "
                f"most {group - t} sites may drop before some site's secrets cannot be rebuilt. "
                f"Lower max_dropouts to <= {group - t} or lower the threshold."
            )
        object.__setattr__(self, "_resolved_dropouts", d)
        r = self.clip_range
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not _finite(r) or r <= 0:
            raise ConfigError(f"secagg.clip_range={r!r}: must be a finite number > 0.")
        if not isinstance(self.clip_out_of_range, bool):
            raise ConfigError(f"secagg.clip_out_of_range={self.clip_out_of_range!r}: must be true or false.")
        if not _is_int(self.weight_cap) or not 1 <= self.weight_cap <= MAX_WEIGHT_CAP:
            raise ConfigError(f"secagg.weight_cap={self.weight_cap!r}: must be an integer from 1 to {MAX_WEIGHT_CAP}.")
        if self.mask_cipher not in MASK_CIPHERS:
            raise ConfigError(f"secagg.mask_cipher={self.mask_cipher!r}: choose one of {', '.join(MASK_CIPHERS)}.")

    @property
    def neighbour_count(self) -> int:
        """Peers each site masks with (cohort_size - 1 for the full graph)."""
        return self.cohort_size - 1 if self.neighbours is None else self.neighbours

    @property
    def share_group(self) -> int:
        """Holders of a site's Shamir shares: its neighbours and itself."""
        return self.neighbour_count + 1

    @property
    def tolerated_dropouts(self) -> int:
        """Sites that may drop in a round before it aborts."""
        return self._resolved_dropouts

    @property
    def min_survivors(self) -> int:
        """Fewest sites whose masked updates must arrive for the round to finish."""
        return max(self.threshold, self.cohort_size - self.tolerated_dropouts)

    @property
    def levels(self) -> int:
        """Largest quantised value L; cohort_size * L < 2**32, so a full cohort's sum never wraps."""
        return (_MODULUS - 1) // self.cohort_size

    @property
    def resolution(self) -> float:
        """Quantisation step of an update coordinate: 2 * clip_range / levels."""
        return 2.0 * self.clip_range / self.levels

    def to_wire(self) -> str:
        """Canonical JSON sent to sites at setup."""
        data = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_wire(cls, text: str) -> SecAggSettings:
        """Rebuild (and re-validate) settings sent by the coordinator."""
        try:
            data = json.loads(text)
        except (TypeError, ValueError, RecursionError) as exc:  # RecursionError: nested past Python's limit
            raise ConfigError(f"secagg settings are not valid JSON: {type(exc).__name__}: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError("secagg settings must be a JSON object")
        allowed = {"cohort_size", "threshold", "neighbours", "max_dropouts", "clip_range",
                   "clip_out_of_range", "weight_cap", "mask_cipher"}
        unknown = set(data) - allowed
        if unknown:
            raise ConfigError(f"secagg settings carry unknown keys {sorted(unknown)}")
        missing = {"cohort_size", "threshold"} - set(data)
        if missing:
            raise ConfigError(f"secagg settings lack required keys {sorted(missing)}")
        return cls(**data)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False
