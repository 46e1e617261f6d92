"""The PKI writes a usable CA, coordinator certificate and site bundles, with safe files."""

from __future__ import annotations

import base64
import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID

from flsuite.errors import ConfigError, UserError
from flsuite.pki import (
    CertificateError,
    OverwriteRefused,
    PkiLayout,
    check_certificate,
    init_authority,
    issue_coordinator,
    issue_site,
    read_identities,
)

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def pki(tmp_path: Path) -> PkiLayout:
    layout = init_authority(tmp_path / "pki", now=NOW)
    issue_coordinator(layout.root, hosts=["coordinator.example.org", "localhost"], ips=["127.0.0.1", "::1"], now=NOW)
    return layout


def test_ca_is_a_self_signed_p384_ca_with_private_key_0600(pki: PkiLayout) -> None:
    cert = x509.load_pem_x509_certificate(pki.ca_certificate.read_bytes())
    assert cert.issuer == cert.subject
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp384r1"
    assert mode(pki.ca_key) == 0o600
    assert mode(pki.ca_certificate) == 0o644
    check_certificate(pki.ca_certificate, ca=pki.ca_certificate, now=NOW, key=pki.ca_key)


def test_coordinator_certificate_carries_the_requested_names(pki: PkiLayout) -> None:
    cert = check_certificate(pki.coordinator_certificate, ca=pki.ca_certificate, now=NOW, key=pki.coordinator_key)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["coordinator.example.org", "localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert mode(pki.coordinator_key) == 0o600


def test_coordinator_certificate_never_outlives_its_ca(tmp_path: Path) -> None:
    layout = init_authority(tmp_path, valid_days=10, now=NOW)
    issue_coordinator(layout.root, hosts=["localhost"], valid_days=397, now=NOW)
    ca = x509.load_pem_x509_certificate(layout.ca_certificate.read_bytes())
    cert = x509.load_pem_x509_certificate(layout.coordinator_certificate.read_bytes())
    assert cert.not_valid_after_utc <= ca.not_valid_after_utc


def test_site_bundle_holds_identity_node_auth_and_ca(pki: PkiLayout) -> None:
    bundle = issue_site(pki.root, "hospital-a", now=NOW)
    assert {p.name for p in bundle.folder.iterdir()} == {
        "identity.key", "identity.pub", "node-auth.key", "node-auth.pub", "ca.crt", "identities.json",
    }
    assert mode(bundle.identity_key) == 0o600 and mode(bundle.node_auth_key) == 0o600
    assert mode(bundle.identity_public) == 0o644 and mode(bundle.node_auth_public) == 0o644

    identity = serialization.load_pem_private_key(bundle.identity_key.read_bytes(), password=None)
    assert isinstance(identity, ed25519.Ed25519PrivateKey)
    assert b"BEGIN PRIVATE KEY" in bundle.identity_key.read_bytes()  # PKCS8
    public = serialization.load_pem_public_key(bundle.identity_public.read_bytes())
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert json.loads(bundle.identities.read_text()) == {"sites": {"hospital-a": base64.b64encode(raw).decode()}}

    auth_pem = bundle.node_auth_key.read_bytes()
    assert auth_pem.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    auth = serialization.load_ssh_private_key(auth_pem, password=None)
    assert isinstance(auth, ec.EllipticCurvePrivateKey) and auth.curve.name == "secp384r1"
    line = bundle.node_auth_public.read_bytes()
    assert line.startswith(b"ecdsa-sha2-nistp384 ")
    assert serialization.load_ssh_public_key(line.strip()).public_numbers() == auth.public_key().public_numbers()
    assert bundle.ca_certificate.read_bytes() == pki.ca_certificate.read_bytes()


def test_every_bundle_gets_the_updated_identities_file(pki: PkiLayout) -> None:
    first = issue_site(pki.root, "hospital-a", now=NOW)
    second = issue_site(pki.root, "hospital-b", now=NOW)
    pinned = read_identities(pki.identities)
    assert sorted(pinned) == ["hospital-a", "hospital-b"]
    assert read_identities(first.identities) == pinned == read_identities(second.identities)
    assert all(len(base64.b64decode(v)) == 32 for v in pinned.values())
    assert pinned["hospital-a"] != pinned["hospital-b"]


@pytest.mark.parametrize(
    "action",
    [
        lambda root: init_authority(root, now=NOW),
        lambda root: issue_coordinator(root, hosts=["localhost"], now=NOW),
        lambda root: issue_site(root, "hospital-a", now=NOW),
    ],
    ids=["init", "issue-coordinator", "issue-site"],
)
def test_nothing_is_overwritten_without_force(pki: PkiLayout, action) -> None:  # noqa: ANN001
    issue_site(pki.root, "hospital-a", now=NOW)
    before = {p: p.read_bytes() for p in pki.root.rglob("*") if p.is_file()}
    with pytest.raises(OverwriteRefused, match="--force"):
        action(pki.root)
    after = {p: p.read_bytes() for p in pki.root.rglob("*") if p.is_file()}
    assert after == before
    assert not [p for p in pki.root.rglob("*.tmp")]


def test_force_replaces_keys(pki: PkiLayout) -> None:
    old = issue_site(pki.root, "hospital-a", now=NOW).identity_key.read_bytes()
    old_pin = read_identities(pki.identities)["hospital-a"]
    bundle = issue_site(pki.root, "hospital-a", force=True, now=NOW)
    assert bundle.identity_key.read_bytes() != old
    assert read_identities(pki.identities)["hospital-a"] != old_pin
    assert mode(bundle.identity_key) == 0o600
    old_key = pki.coordinator_key.read_bytes()
    issue_coordinator(pki.root, hosts=["localhost"], force=True, now=NOW)
    assert pki.coordinator_key.read_bytes() != old_key
    check_certificate(pki.coordinator_certificate, ca=pki.ca_certificate, now=NOW, key=pki.coordinator_key)


def test_issuing_without_a_ca_says_to_run_init(tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match="flsuite pki init"):
        issue_site(tmp_path, "hospital-a", now=NOW)
    with pytest.raises(CertificateError, match="flsuite pki init"):
        issue_coordinator(tmp_path, hosts=["localhost"], now=NOW)
    assert not list(tmp_path.rglob("*"))


def test_issuing_with_an_expired_ca_is_refused(tmp_path: Path) -> None:
    init_authority(tmp_path, valid_days=1, now=NOW)
    with pytest.raises(CertificateError, match="expired"):
        issue_site(tmp_path, "hospital-a", now=NOW + timedelta(days=2))


@pytest.mark.parametrize("name", ["../evil", "a b", "", "-x", "a/b", "x" * 65])
def test_bad_site_names_are_refused(pki: PkiLayout, name: str) -> None:
    with pytest.raises(ConfigError, match="site name"):
        issue_site(pki.root, name, now=NOW)
    assert not (pki.root / "sites").exists()


def test_bad_coordinator_requests_are_user_errors(pki: PkiLayout) -> None:
    with pytest.raises(ConfigError, match="not an IP address"):
        issue_coordinator(pki.root, hosts=["localhost"], ips=["300.1.1.1"], force=True, now=NOW)
    with pytest.raises(ConfigError, match="--host"):
        issue_coordinator(pki.root, hosts=[], force=True, now=NOW)
    with pytest.raises(UserError, match="--days"):
        init_authority(pki.root / "other", valid_days=0, now=NOW)
