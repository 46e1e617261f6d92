"""Errors of the PKI: bad certificates and refused overwrites, both user errors."""

from __future__ import annotations

from flsuite.errors import ConfigError, UserError


class CertificateError(ConfigError):
    """A certificate or key that cannot be used: missing, expired, wrongly signed, mismatched."""


class OverwriteRefused(UserError):
    """A file that already exists would be replaced; pass --force to replace it."""
