"""Certificates and keys for a real federation: CA, coordinator TLS certificate, site bundles."""

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
from flsuite.pki.errors import CertificateError, OverwriteRefused
from flsuite.pki.identities import parse_identities, read_identities

__all__ = [
    "EXPIRY_WARNING_DAYS",
    "CertificateError",
    "CertificateInfo",
    "OverwriteRefused",
    "PkiLayout",
    "SiteBundle",
    "check_certificate",
    "init_authority",
    "issue_coordinator",
    "issue_site",
    "list_certificates",
    "parse_identities",
    "read_identities",
]
