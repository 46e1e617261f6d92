"""Errors of the model registry, placed in flsuite's exception tree.

    UserError
    ├── RegistryError          a registry path, version, alias or argument that cannot be used
    │   ├── ReadOnlyRegistry   a write on a registry opened without the signing key
    │   └── PromotionRefused   a version that does not meet the promotion policy
    ├── WeightsFormatError     (DataError) a weights file that is not safe, well-formed safetensors
    └── EncryptionKeyError     (ConfigError) a missing, malformed or wrong blob encryption key
    IntegrityError             a hash, signature or chain that does not verify (from flsuite.errors)
"""

from __future__ import annotations

from flsuite.errors import ConfigError, DataError, UserError

__all__ = [
    "RegistryError",
    "ReadOnlyRegistry",
    "PromotionRefused",
    "WeightsFormatError",
    "EncryptionKeyError",
]


class RegistryError(UserError):
    """A registry path, version, alias or argument that cannot be used."""


class ReadOnlyRegistry(RegistryError):
    """A write (publish, record, promote, rollback) on a registry opened without a signing key."""


class PromotionRefused(RegistryError):
    """The version does not meet the promotion policy; `reasons` lists each unmet rule."""

    def __init__(self, message: str, *, reasons: list[str]) -> None:
        super().__init__(message)
        self.reasons = reasons


class WeightsFormatError(DataError):
    """A weights file that is not well-formed safetensors (pickles are refused unread)."""


class EncryptionKeyError(ConfigError):
    """The blob encryption key is missing, malformed, or not the key the blob was sealed with."""
