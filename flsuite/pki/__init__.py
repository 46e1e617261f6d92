"""Certificates and keys for a real federation: CA, coordinator TLS certificate, site bundles."""

from flsuite.errors import CertificateError, OverwriteRefused
from flsuite.pki.authority import (
    PkiLayout,
    SiteBundle,
    init_authority,
    issue_coordinator,
    issue_site,
)
from flsuite.pki.checks import (
    EXPIRY_WARNING_DAYS,
    CertificateInfo,
    check_certificate,
    list_certificates,
)
from flsuite.pki.identities import parse_identities, read_identities, validate_site_name
from flsuite.pki.keys import identity_public_b64, is_node_auth_public_key, load_private_key_pem

__all__ = [
    "EXPIRY_WARNING_DAYS",
    "CertificateError",
    "CertificateInfo",
    "OverwriteRefused",
    "PkiLayout",
    "SiteBundle",
    "check_certificate",
    "identity_public_b64",
    "init_authority",
    "is_node_auth_public_key",
    "issue_coordinator",
    "issue_site",
    "list_certificates",
    "load_private_key_pem",
    "parse_identities",
    "read_identities",
    "validate_site_name",
]
