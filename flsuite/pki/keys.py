"""Key and certificate primitives on `cryptography`: the only module here that touches hazmat.

Key types: EC P-384 with ECDSA-SHA384 for the CA and the coordinator's TLS certificate
(accepted by OpenSSL, so by Flower's uvicorn server and its httpx clients); Ed25519 for a
site's identity signing key (used by secure aggregation); EC P-384 in OpenSSH format for
Flower's SuperNode authentication.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from flsuite.storage.keyfiles import read_private

CURVE = ec.SECP384R1
HASH = hashes.SHA384

# Backdate a little so that small clock differences between machines do not fail a new cert.
_CLOCK_SKEW = timedelta(minutes=5)


def new_tls_key() -> ec.EllipticCurvePrivateKey:
    """A fresh EC P-384 key for a CA or TLS certificate."""
    return ec.generate_private_key(CURVE())


def private_key_pem(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    """PKCS8 PEM, unencrypted (the file mode protects it)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def certificate_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "flsuite federation"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def self_signed_ca(
    key: ec.EllipticCurvePrivateKey, *, common_name: str, now: datetime, valid_days: int
) -> x509.Certificate:
    """A CA certificate that may sign end-entity certificates only (path length 0)."""
    name = _name(common_name)
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, HASH())
    )


def server_certificate(
    key: ec.EllipticCurvePrivateKey,
    *,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    hosts: Sequence[str],
    ips: Sequence[str],
    now: datetime,
    valid_days: int,
) -> x509.Certificate:
    """A TLS server certificate for the coordinator with DNS and IP subject alternative names."""
    alt_names: list[x509.GeneralName] = [x509.DNSName(h) for h in hosts]
    alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    public = key.public_key()
    not_after = min(now + timedelta(days=valid_days), ca_cert.not_valid_after_utc)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0] if hosts else ips[0]))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, HASH())
    )


def new_identity_key() -> ed25519.Ed25519PrivateKey:
    """A site's Ed25519 identity signing key."""
    return ed25519.Ed25519PrivateKey.generate()


def identity_public_pem(key: ed25519.Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def identity_public_b64(public: ed25519.Ed25519PublicKey) -> str:
    """Base64 of the raw 32-byte Ed25519 public key, the pinned identities format."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode("ascii")


def node_auth_key_pair() -> tuple[bytes, bytes]:
    """Flower SuperNode authentication keys: (OpenSSH private PEM, OpenSSH public line)."""
    key = ec.generate_private_key(CURVE())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, public + b"\n"


def load_certificate_pem(data: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(data)


def load_private_key_pem(data: bytes):  # noqa: ANN201 - any private key type
    return serialization.load_pem_private_key(data, password=None)


def same_public_key(a, b) -> bool:  # noqa: ANN001 - any public key type
    """True when two public keys are the same key."""
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    return a.public_bytes(serialization.Encoding.DER, fmt) == b.public_bytes(
        serialization.Encoding.DER, fmt
    )


def is_node_auth_public_key(data: bytes) -> bool:
    """True when data is an OpenSSH public key line of an EC key, as Flower node auth expects."""
    try:
        key = serialization.load_ssh_public_key(data.strip())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return isinstance(key, ec.EllipticCurvePublicKey)


def read_private_key(path: Path, *, what: str = "private key"):  # noqa: ANN201 - any private key type
    """Load an unencrypted PEM private key file, refusing one that group or others may read
    (`flsuite.storage.keyfiles.InsecureKeyFile`); ValueError/TypeError when it is not a key."""
    return load_private_key_pem(read_private(path, what=what))
