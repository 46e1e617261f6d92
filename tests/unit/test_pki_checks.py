"""check_certificate refuses every kind of bad certificate with a message naming the file."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flsuite.errors import ConfigError, UserError
from flsuite.pki import (
    CertificateError,
    PkiLayout,
    check_certificate,
    init_authority,
    issue_coordinator,
    list_certificates,
    parse_identities,
)
from flsuite.pki.files import write_atomic

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def pki(tmp_path: Path) -> PkiLayout:
    layout = init_authority(tmp_path / "pki", now=NOW)
    issue_coordinator(layout.root, hosts=["localhost"], ips=["127.0.0.1"], valid_days=90, now=NOW)
    return layout


@pytest.fixture
def other_pki(tmp_path: Path) -> PkiLayout:
    layout = init_authority(tmp_path / "other", common_name="another federation", now=NOW)
    issue_coordinator(layout.root, hosts=["localhost"], now=NOW)
    return layout


def test_a_good_certificate_passes_and_is_returned(pki: PkiLayout) -> None:
    cert = check_certificate(pki.coordinator_certificate, ca=pki.ca_certificate, now=NOW, key=pki.coordinator_key)
    assert "localhost" in cert.subject.rfc4514_string()
    assert issubclass(CertificateError, UserError)


def test_expired_certificate_is_refused(pki: PkiLayout) -> None:
    with pytest.raises(CertificateError, match=r"coordinator\.crt expired on .*--force"):
        check_certificate(pki.coordinator_certificate, ca=pki.ca_certificate, now=NOW + timedelta(days=91))


def test_not_yet_valid_certificate_is_refused(pki: PkiLayout) -> None:
    issue_coordinator(pki.root, hosts=["localhost"], force=True, now=NOW + timedelta(days=1))
    with pytest.raises(CertificateError, match=r"coordinator\.crt is not valid yet.*clock"):
        check_certificate(pki.coordinator_certificate, ca=pki.ca_certificate, now=NOW)


def test_not_yet_valid_ca_is_refused(pki: PkiLayout) -> None:
    with pytest.raises(CertificateError, match=r"ca\.crt is not valid yet"):
        check_certificate(pki.coordinator_certificate, ca=pki.ca_certificate, now=NOW - timedelta(hours=1))


def test_expired_ca_is_refused_by_name(pki: PkiLayout) -> None:
    with pytest.raises(CertificateError, match=r"ca\.crt expired"):
        check_certificate(pki.coordinator_certificate, ca=pki.ca_certificate, now=NOW + timedelta(days=3651))


def test_certificate_of_another_ca_is_refused(pki: PkiLayout, other_pki: PkiLayout) -> None:
    with pytest.raises(CertificateError, match=rf"{other_pki.coordinator_certificate} is not signed by the CA in {pki.ca_certificate}"):
        check_certificate(other_pki.coordinator_certificate, ca=pki.ca_certificate, now=NOW)


def test_same_name_but_different_ca_key_is_refused(tmp_path: Path, pki: PkiLayout) -> None:
    # An impostor CA with the same subject name: only the signature can tell them apart.
    impostor = init_authority(tmp_path / "impostor", now=NOW)
    issue_coordinator(impostor.root, hosts=["localhost"], now=NOW)
    with pytest.raises(CertificateError, match="not signed by"):
        check_certificate(impostor.coordinator_certificate, ca=pki.ca_certificate, now=NOW)


def test_key_that_does_not_match_is_refused(pki: PkiLayout, other_pki: PkiLayout) -> None:
    with pytest.raises(CertificateError, match=rf"the key {other_pki.coordinator_key} does not belong to the certificate"):
        check_certificate(pki.coordinator_certificate, ca=pki.ca_certificate, now=NOW, key=other_pki.coordinator_key)


def test_missing_and_malformed_files_are_named(pki: PkiLayout, tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match=r"nope\.crt does not exist"):
        check_certificate(tmp_path / "nope.crt", ca=pki.ca_certificate, now=NOW)
    garbage = tmp_path / "garbage.crt"
    garbage.write_text("hello")
    with pytest.raises(CertificateError, match=r"garbage\.crt is not a PEM certificate"):
        check_certificate(garbage, ca=pki.ca_certificate, now=NOW)
    with pytest.raises(CertificateError, match=r"missing\.key does not exist"):
        check_certificate(pki.coordinator_certificate, ca=pki.ca_certificate, now=NOW, key=tmp_path / "missing.key")
    with pytest.raises(CertificateError, match=r"garbage\.crt is not an unencrypted PEM private key"):
        check_certificate(pki.coordinator_certificate, ca=pki.ca_certificate, now=NOW, key=garbage)


def test_list_shows_expiry_and_flags_certificates_under_30_days(pki: PkiLayout) -> None:
    by_name = {i.path.name: i for i in list_certificates(pki.root, now=NOW)}
    assert set(by_name) == {"ca.crt", "coordinator.crt"}
    assert not by_name["coordinator.crt"].expires_soon
    assert by_name["coordinator.crt"].names == ("localhost", "127.0.0.1")
    later = {i.path.name: i for i in list_certificates(pki.root, now=NOW + timedelta(days=75))}
    assert later["coordinator.crt"].expires_soon and not later["coordinator.crt"].expired
    assert not later["ca.crt"].expires_soon
    gone = {i.path.name: i for i in list_certificates(pki.root, now=NOW + timedelta(days=100))}
    assert gone["coordinator.crt"].expired


def test_write_atomic_never_replaces_a_file_that_appeared(tmp_path: Path) -> None:
    target = tmp_path / "key"
    target.write_bytes(b"original")
    from flsuite.pki import OverwriteRefused

    with pytest.raises(OverwriteRefused):
        write_atomic(target, b"new", mode=0o600)
    assert target.read_bytes() == b"original"
    assert [p.name for p in tmp_path.iterdir()] == ["key"]


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (b"not json", "not valid JSON"),
        (b'{"nodes": {}}', '"sites"'),
        (b'{"sites": {"a": "AAAA"}}', "32-byte"),
        (b'{"sites": {"a": 5}}', "32-byte"),
        (b'{"sites": {"../a": "' + b"A" * 43 + b'="}}', "site name"),
    ],
)
def test_bad_identities_files_are_refused(document: bytes, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_identities(document, source="identities.json")
