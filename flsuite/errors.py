"""The exception tree of flsuite: every class flsuite raises on purpose is defined here.

    FlsuiteError                  base of everything flsuite raises on purpose
    ├── UserError                 bad input from a person: the CLI prints the message and exits 2
    │   ├── ConfigError           a config value, key, group option or key file that is not allowed
    │   │   ├── CertificateError  a certificate or key that cannot be used (missing, expired, mismatched)
    │   │   ├── KeyFileError      a key file that cannot be used or written as asked
    │   │   │   ├── InsecureKeyFile  a private key file that group or other users may access
    │   │   │   └── KeyFileExists    a key file would replace one that exists
    │   │   └── EncryptionKeyError  a missing, malformed or wrong registry encryption key
    │   ├── DataError             a dataset, CSV file or partition that cannot be used
    │   │   ├── InvalidDpEvent    a DP event (or its record) with a missing, extra or wrong field
    │   │   └── WeightsFormatError  a weights file that is not safe, well-formed safetensors
    │   ├── PlanError             a privacy or federation plan that cannot be carried out
    │   │   └── StudyOverBudget   the study would pass some sites' caps (carries the whole plan)
    │   ├── LedgerPathError       a privacy ledger path that cannot be created, read or written
    │   ├── OverwriteRefused      an existing file would be replaced (pass --force)
    │   ├── DeploymentError       a coordinator or site process that cannot be started, reached or stopped
    │   │   └── CoordinatorUnreachable  the coordinator does not answer, or not with usable TLS
    │   └── RegistryError         a registry path, version, alias or argument that cannot be used
    │       ├── ReadOnlyRegistry  a write on a registry opened without its signing key
    │       └── PromotionRefused  a version that does not meet the promotion policy
    ├── BudgetExhausted           a site refused training that would pass its privacy cap
    ├── ProtocolError             a message from another node that breaks the site-coordinator contract
    ├── SecAggError               secure aggregation could not go on
    │   ├── SecAggAborted         coordinator: the round cannot finish; nothing was unmasked
    │   └── SecAggRefused         site: the coordinator asked what an honest site must not do
    ├── SiteWorkerLost            a site's worker process ended while handling a message
    ├── StudyAborted              a study that cannot go on (too few sites left, ...): exit 3
    └── IntegrityError            something that should verify does not (terse on purpose): exit 1

Messages say what is wrong and what to do next; integrity failures name the entry and
the check that failed, nothing more.
"""

from __future__ import annotations

__all__ = [
    "BudgetExhausted",
    "CertificateError",
    "ConfigError",
    "CoordinatorUnreachable",
    "DataError",
    "DeploymentError",
    "EncryptionKeyError",
    "FlsuiteError",
    "InsecureKeyFile",
    "IntegrityError",
    "InvalidDpEvent",
    "KeyFileError",
    "KeyFileExists",
    "LedgerPathError",
    "OverwriteRefused",
    "PlanError",
    "PromotionRefused",
    "ProtocolError",
    "ReadOnlyRegistry",
    "RegistryError",
    "SECAGG_REFUSAL_REASONS",
    "SecAggAborted",
    "SecAggError",
    "SecAggRefused",
    "SiteWorkerLost",
    "StudyAborted",
    "StudyOverBudget",
    "UserError",
    "WeightsFormatError",
]


class FlsuiteError(Exception):
    """Base class of every error flsuite raises on purpose."""


class UserError(FlsuiteError):
    """Bad input from a person; the CLI prints the message without a traceback and exits 2."""

    exit_code = 2


class ConfigError(UserError):
    """A configuration value, key, group option or key file that is not allowed."""


class CertificateError(ConfigError):
    """A certificate or key that cannot be used: missing, expired, wrongly signed, mismatched."""


class KeyFileError(ConfigError):
    """A key file that cannot be used or written as asked."""


class InsecureKeyFile(KeyFileError):
    """A private key file that group or other users may read or write."""


class KeyFileExists(KeyFileError):
    """A key file would replace one that exists, and overwriting was not asked for."""


class EncryptionKeyError(ConfigError):
    """The blob encryption key is missing, malformed, or not the key the blob was sealed with."""


class DataError(UserError):
    """A dataset, CSV file or partitioning that cannot be used."""


class InvalidDpEvent(DataError):
    """A DP event (or its JSON record) with a missing, extra, mistyped or out-of-range field."""


class WeightsFormatError(DataError):
    """A weights file that is not well-formed safetensors (pickles are refused unread)."""


class PlanError(UserError):
    """A privacy or federation plan that cannot be carried out as configured."""


class StudyOverBudget(PlanError):
    """The study would pass some sites' caps; ``rows`` is the whole plan (``flsuite.privacy.PlanRow``),
    ``over_budget`` the offending rows, so a caller can still print the table."""

    def __init__(self, message: str, *, rows: list, over_budget: list) -> None:
        super().__init__(message)
        self.rows = rows
        self.over_budget = over_budget


class LedgerPathError(UserError):
    """The privacy ledger's path cannot be created, read or written."""


class OverwriteRefused(UserError):
    """A file that already exists would be replaced; pass --force to replace it."""


class DeploymentError(UserError):
    """A coordinator or site process that cannot be started, reached or stopped as asked."""


class CoordinatorUnreachable(DeploymentError):
    """The coordinator address does not answer, or answers without a usable TLS certificate."""


class RegistryError(UserError):
    """A registry path, version, alias or argument that cannot be used."""


class ReadOnlyRegistry(RegistryError):
    """A write (publish, record, promote, rollback) on a registry opened without a signing key."""


class PromotionRefused(RegistryError):
    """The version does not meet the promotion policy; ``reasons`` lists each unmet rule."""

    def __init__(self, message: str, *, reasons: list[str]) -> None:
        super().__init__(message)
        self.reasons = reasons


class BudgetExhausted(FlsuiteError):
    """A site refused a request because it would spend past the site's privacy cap."""

    def __init__(self, message: str, *, remaining_epsilon: float) -> None:
        super().__init__(message)
        self.remaining_epsilon = remaining_epsilon


class ProtocolError(FlsuiteError):
    """A message from another node that does not follow the site-coordinator contract."""


#: Stable codes carried by :class:`SecAggRefused` (and by the site's error reply).
SECAGG_REFUSAL_REASONS = frozenset(
    {
        "overlapping-lists",  # a node is both a survivor and dropped
        "below-threshold",  # too few peers/survivors for the Shamir threshold
        "unsigned-peer-key",  # a peer key not signed by a pinned site identity
        "repeated-unmask",  # a second unmask request in one round
        "model-hash-mismatch",  # the model differs from the hash announced at setup
        "non-finite-update",  # NaN or Inf in the local update
        "out-of-range",  # update values beyond the quantisation range
        "bad-request",  # malformed or inconsistent request (wrong run, stage, peers, ...)
        "stale-round",  # a setup for a round this site already took part in
        "bad-local-update",  # the local training reply cannot be masked
    }
)


class SecAggError(FlsuiteError):
    """Base class of errors raised by flsuite's secure aggregation."""


class SecAggAborted(SecAggError):
    """The coordinator could not finish a secure round; the global model must stay as it was.

    ``refusals`` maps each node that refused or sent an unusable reply to what it said;
    ``site_refusals`` holds the typed refusals (``flsuite.protocol.Refusal``) among them.
    """

    def __init__(self, message: str, *, stage: str, refusals: dict[int, str] | None = None) -> None:
        super().__init__(message)
        self.stage = stage
        self.refusals = dict(refusals or {})
        self.site_refusals: dict[int, object] = {}


class SecAggRefused(SecAggError):
    """An honest site refuses a coordinator request; ``reason`` is one of SECAGG_REFUSAL_REASONS."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in SECAGG_REFUSAL_REASONS:
            raise ValueError(f"unknown refusal reason {reason!r}")
        super().__init__(f"[{reason}] {message}")
        self.reason = reason
        self.detail = message


class SiteWorkerLost(FlsuiteError):
    """A simulated site's worker process ended (crashed, was killed) while handling a message."""


class StudyAborted(FlsuiteError):
    """A study stopped before its planned end; outputs so far are written."""

    exit_code = 3


class IntegrityError(FlsuiteError):
    """A signature, hash or chain that should verify does not."""

    exit_code = 1
