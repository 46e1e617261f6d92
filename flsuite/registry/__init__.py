"""The signed, audited model registry: versions, aliases, encryption at rest, offline audit.

No torch and no flwr: weights are `dict[str, numpy.ndarray]`, metadata plain JSON, so an
auditor's machine needs neither. Typical use:

    registry = Registry.open(path, signing_key_path=key_path)
    info = registry.publish(weights, run_id=..., study_id=..., round=..., config_hash=...,
                            code_digest=..., sites=[...], metrics={...}, dp_certificate={...})
    registry.promote(info.number, "production", PromotionPolicy(max_epsilon=8.0))
    verify_registry(path).ok

The auditor's report (`auditor_report`, `render_html`) loads on first use: it needs the
privacy accountants and matplotlib, which the registry itself does not.
"""

from typing import Any

from flsuite.audit.keys import load_or_create_signing_key
from flsuite.errors import (
    EncryptionKeyError,
    PromotionRefused,
    ReadOnlyRegistry,
    RegistryError,
    WeightsFormatError,
)
from flsuite.registry.digests import code_digest, config_hash
from flsuite.registry.encryption import create_key_file, key_from_env, key_from_file
from flsuite.registry.manifest import VersionInfo, validate_dp_certificate
from flsuite.registry.policy import PromotionPolicy
from flsuite.registry.registry import Registry
from flsuite.registry.report import privacy_report
from flsuite.registry.verify import VerifyReport, verify_registry
from flsuite.registry.weights import read_weights_file

__all__ = [
    "EncryptionKeyError",
    "PromotionPolicy",
    "PromotionRefused",
    "ReadOnlyRegistry",
    "Registry",
    "RegistryError",
    "VerifyReport",
    "VersionInfo",
    "WeightsFormatError",
    "auditor_findings",
    "auditor_report",
    "code_digest",
    "config_hash",
    "create_key_file",
    "key_from_env",
    "key_from_file",
    "load_or_create_signing_key",
    "privacy_report",
    "read_weights_file",
    "render_html",
    "validate_dp_certificate",
    "verify_registry",
]


def __getattr__(name: str) -> Any:
    if name in ("auditor_findings", "auditor_report"):
        from flsuite.registry import auditor

        return getattr(auditor, name)
    if name == "render_html":
        from flsuite.registry.html_report import render_html

        return render_html
    raise AttributeError(f"module 'flsuite.registry' has no attribute {name!r}")
