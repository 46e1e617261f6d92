"""Validation of certificates and keys before anything uses them.

`check_certificate` refuses expired, not-yet-valid and wrongly signed certificates and a
key that does not belong to its certificate, naming the file and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from flsuite.errors import CertificateError
from flsuite.pki.keys import load_certificate_pem, load_private_key_pem, same_public_key

EXPIRY_WARNING_DAYS = 30


def utc_now() -> datetime:
    return datetime.now(UTC)


def read_certificate(path: Path) -> x509.Certificate:
    """Load a PEM certificate, with a clear error for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise CertificateError(
            f"certificate file {path} does not exist. Issue it with `flsuite pki ...` "
            "or fix the path in your config."
        )
    try:
        return load_certificate_pem(path.read_bytes())
    except ValueError:
        raise CertificateError(
            f"{path} is not a PEM certificate. Point the config at the .crt file "
            "that `flsuite pki` wrote."
        ) from None


def check_certificate(
    path: Path | str,
    *,
    ca: Path | str,
    now: datetime | None = None,
    key: Path | str | None = None,
) -> x509.Certificate:
    """Return the certificate at path if it is valid at `now`, signed by `ca`, and matches `key`.

    `ca` is the CA certificate file; it is itself checked for validity at `now`. A CA
    certificate checked against itself passes when it is self-signed. `key` (optional)
    is the private key file that must belong to the certificate.
    """
    now = now or utc_now()
    path, ca = Path(path), Path(ca)
    ca_cert = read_certificate(ca)
    _check_validity(ca_cert, ca, now)
    cert = read_certificate(path)
    _check_validity(cert, path, now)
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise CertificateError(
            f"{path} is not signed by the CA in {ca}. Use the CA certificate of the "
            "federation that issued it, or issue a new certificate with that CA."
        ) from None
    if key is not None:
        _check_key_matches(cert, path, Path(key))
    return cert


def _check_validity(cert: x509.Certificate, path: Path, now: datetime) -> None:
    if now < cert.not_valid_before_utc:
        raise CertificateError(
            f"{path} is not valid yet (valid from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC). "
            "Check this machine's clock, or re-issue the certificate."
        )
    if now > cert.not_valid_after_utc:
        raise CertificateError(
            f"{path} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC. "
            "Re-issue it with `flsuite pki issue-coordinator ... --force` (or `pki init --force` for the CA)."
        )


def _check_key_matches(cert: x509.Certificate, cert_path: Path, key_path: Path) -> None:
    if not key_path.is_file():
        raise CertificateError(f"key file {key_path} does not exist. Fix the path in your config.")
    try:
        key = load_private_key_pem(key_path.read_bytes())
    except (ValueError, TypeError):
        raise CertificateError(
            f"{key_path} is not an unencrypted PEM private key. Point the config at the "
            ".key file that `flsuite pki` wrote."
        ) from None
    if not same_public_key(key.public_key(), cert.public_key()):
        raise CertificateError(
            f"the key {key_path} does not belong to the certificate {cert_path}. "
            "Use the key issued together with that certificate."
        )


@dataclass(frozen=True)
class CertificateInfo:
    """One certificate as `flsuite pki list` shows it."""

    path: Path
    subject: str
    not_after: datetime
    days_left: int
    names: tuple[str, ...]

    @property
    def expired(self) -> bool:
        return self.days_left < 0

    @property
    def expires_soon(self) -> bool:
        return 0 <= self.days_left < EXPIRY_WARNING_DAYS


def describe_certificate(path: Path, *, now: datetime | None = None) -> CertificateInfo:
    now = now or utc_now()
    cert = read_certificate(path)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(str(v) for v in san.get_values_for_type(x509.DNSName)) + tuple(
            str(v) for v in san.get_values_for_type(x509.IPAddress)
        )
    except x509.ExtensionNotFound:
        names = ()
    left = cert.not_valid_after_utc - now
    return CertificateInfo(
        path=Path(path),
        subject=cert.subject.rfc4514_string(),
        not_after=cert.not_valid_after_utc,
        days_left=left.days,
        names=names,
    )


def list_certificates(pki_dir: Path | str, *, now: datetime | None = None) -> list[CertificateInfo]:
    """Every certificate under pki_dir (CA, coordinator, copies in site bundles), sorted by path."""
    root = Path(pki_dir)
    return [describe_certificate(p, now=now) for p in sorted(root.rglob("*.crt"))]
