"""The federation's pinned site identities file.

Format (shared with secure aggregation): JSON
``{"sites": {"<site-name>": "<base64 of the raw 32-byte Ed25519 public key>"}}``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from pathlib import Path

from flsuite.errors import ConfigError

SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def validate_site_name(name: str) -> str:
    """Return name if it is usable as a site name and folder name, else raise ConfigError."""
    if not SITE_NAME.match(name) or ".." in name:
        raise ConfigError(
            f"site name {name!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit."
        )
    return name


def encode_identities(sites: Mapping[str, str]) -> bytes:
    """Serialise the pinned identities (sorted, so equal content gives equal bytes)."""
    return (json.dumps({"sites": dict(sorted(sites.items()))}, indent=2) + "\n").encode()


def parse_identities(data: bytes, *, source: str) -> dict[str, str]:
    """Parse and validate a pinned identities document; `source` names it in errors."""
    try:
        document = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"{source} is not valid JSON. Copy it again from the coordinator's PKI.") from None
    sites = document.get("sites") if isinstance(document, dict) else None
    if not isinstance(sites, dict):
        raise ConfigError(f'{source} has no "sites" object. Expected {{"sites": {{"name": "base64 key"}}}}.')
    for name, value in sites.items():
        validate_site_name(name)
        try:
            raw = base64.b64decode(value, validate=True) if isinstance(value, str) else b""
        except binascii.Error:
            raw = b""
        if len(raw) != 32:
            raise ConfigError(
                f"{source}: the key of site {name!r} is not base64 of a 32-byte Ed25519 public key."
            )
    return dict(sites)


def read_identities(path: Path | str) -> dict[str, str]:
    """Read a pinned identities file; a missing file is an empty federation."""
    path = Path(path)
    if not path.exists():
        return {}
    return parse_identities(path.read_bytes(), source=str(path))
