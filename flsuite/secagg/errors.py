"""Errors of the secure-aggregation protocol.

    FlsuiteError
    └── SecAggError              base of everything flsuite.secagg raises on purpose
        ├── SecAggAborted        coordinator: the round cannot finish; nothing was unmasked,
        │                        keep the global model as it was
        └── SecAggRefused        site: the coordinator asked for something an honest site
                                 must not do; ``reason`` is a short stable code

Settings and key files that cannot be used raise :class:`flsuite.errors.ConfigError`.
"""

from __future__ import annotations

from flsuite.errors import FlsuiteError

__all__ = ["REFUSAL_REASONS", "SecAggAborted", "SecAggError", "SecAggRefused"]

#: Stable codes carried by :class:`SecAggRefused` (and by the site's error reply).
REFUSAL_REASONS = frozenset(
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
        "bad-share",  # an encrypted share that does not decrypt/authenticate
        "bad-local-update",  # the local training reply cannot be masked
    }
)


class SecAggError(FlsuiteError):
    """Base class of errors raised by flsuite's secure aggregation."""


class SecAggAborted(SecAggError):
    """The coordinator could not finish a secure round; the global model must stay as it was.

    ``refusals`` maps each node that refused or sent an unusable reply to what it said.
    """

    def __init__(self, message: str, *, stage: str, refusals: dict[int, str] | None = None) -> None:
        super().__init__(message)
        self.stage = stage
        self.refusals = dict(refusals or {})


class SecAggRefused(SecAggError):
    """An honest site refuses a coordinator request; ``reason`` is one of REFUSAL_REASONS."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in REFUSAL_REASONS:
            raise ValueError(f"unknown refusal reason {reason!r}")
        super().__init__(f"[{reason}] {message}")
        self.reason = reason
        self.detail = message
