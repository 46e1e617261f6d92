"""`flsuite site check` as an attacker or a careless operator would try it (issue 12 item 8).

A garbage, wrong-kind or foreign node-auth key, a private key other users may read, and a
delta above 1/N for the site's own records are each refused by `check_site`, naming the
file or the numbers and what to do, before any SuperNode starts.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flsuite.deployment import load_site_config
from flsuite.deployment.testing import FederationFiles, write_federation
from flsuite.errors import CertificateError, ConfigError, DataError, InsecureKeyFile
from flsuite.site import check_site


@pytest.fixture
def federation(tmp_path: Path) -> FederationFiles:
    return write_federation(tmp_path, sites=("hospital-a", "hospital-b"))


def _check(federation: FederationFiles, site: str = "hospital-a") -> None:
    check_site(load_site_config(federation.site_configs[site]), probe=False)


def _replace_key(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


def _set_delta(federation: FederationFiles, delta: float, site: str = "hospital-a") -> None:
    path = federation.site_configs[site]
    config = yaml.safe_load(path.read_text())
    config["privacy"]["delta"] = delta
    path.write_text(yaml.safe_dump(config))


def _write_records(federation: FederationFiles, count: int, *, blank_lines: int = 0, site: str = "hospital-a") -> Path:
    data = federation.site(site).data
    data.write_text("x,label\n" + "".join(f"{i}.0,{i % 2}\n" for i in range(count)) + "\n" * blank_lines)
    return data


def test_the_written_federation_passes(federation: FederationFiles) -> None:
    _check(federation)


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"not a key at all\n",
        b"-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA garbage\n-----END OPENSSH PRIVATE KEY-----\n",
        bytes(range(256)),
    ],
    ids=["empty", "text", "broken-pem", "binary"],
)
def test_a_garbage_node_auth_key_is_refused(federation: FederationFiles, garbage: bytes) -> None:
    key = federation.site("hospital-a").bundle / "node-auth.key"
    _replace_key(key, garbage)
    with pytest.raises(CertificateError, match=r"node-auth\.key is not an unencrypted EC private key") as info:
        _check(federation)
    assert str(key) in str(info.value)
    assert "fresh bundle" in str(info.value)


def test_a_node_auth_key_of_the_wrong_kind_is_refused(federation: FederationFiles) -> None:
    # The bundle's Ed25519 identity key is a valid private key, but not the EC key Flower signs in with.
    bundle = federation.site("hospital-a").bundle
    ed25519_openssh = _ed25519_openssh_private()
    _replace_key(bundle / "node-auth.key", ed25519_openssh)
    with pytest.raises(CertificateError, match=r"not an unencrypted EC private key in OpenSSH format"):
        _check(federation)
    _replace_key(bundle / "node-auth.key", (bundle / "identity.key").read_bytes())  # PEM PKCS8, not OpenSSH
    with pytest.raises(CertificateError, match=r"not an unencrypted EC private key"):
        _check(federation)


def test_another_sites_node_auth_key_is_refused(federation: FederationFiles) -> None:
    ours = federation.site("hospital-a").bundle
    theirs = federation.site("hospital-b").bundle
    _replace_key(ours / "node-auth.key", (theirs / "node-auth.key").read_bytes())
    with pytest.raises(CertificateError, match=r"node-auth\.key does not belong to .*node-auth\.pub") as info:
        _check(federation)
    assert "coordinator would refuse" in str(info.value)


@pytest.mark.parametrize("name", ["node-auth.key", "identity.key"])
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_private_keys_other_users_may_read_are_refused(federation: FederationFiles, name: str, mode: int) -> None:
    key = federation.site("hospital-a").bundle / name
    key.chmod(mode)
    with pytest.raises(InsecureKeyFile, match=rf"has mode {mode:o}.*chmod 600 {key}"):
        _check(federation)


def test_a_delta_above_one_over_n_is_refused(federation: FederationFiles) -> None:
    data = _write_records(federation, 1000)
    _set_delta(federation, 0.01)
    with pytest.raises(ConfigError, match=r"privacy\.delta: 0\.01 is above 1/N = 0\.001") as info:
        _check(federation)
    message = str(info.value)
    assert f"{data} holds N = 1000 records" in message
    assert "at most 0.001 " in message


def test_delta_against_a_small_site_names_the_largest_allowed(federation: FederationFiles) -> None:
    _write_records(federation, 6, blank_lines=3)  # blank lines are not records
    _set_delta(federation, 0.2)
    with pytest.raises(ConfigError, match=r"N = 6 records.*at most 0\.166 ") as info:
        _check(federation)
    assert 0.166 <= 1 / 6  # the shown limit is itself allowed
    assert "0.2" in str(info.value)
    _set_delta(federation, 0.166)
    _check(federation)


def test_delta_of_exactly_one_over_n_passes(federation: FederationFiles) -> None:
    _write_records(federation, 4)
    _set_delta(federation, 0.25)
    _check(federation)
    _write_records(federation, 5)  # one record more: 1/N = 0.2 < 0.25
    with pytest.raises(ConfigError, match=r"N = 5 records"):
        _check(federation)


def test_a_data_file_without_records_is_refused(federation: FederationFiles) -> None:
    data = federation.site("hospital-a").data
    data.write_text("x,label\n\n")
    with pytest.raises(DataError, match=rf"{data} has no records after its header"):
        _check(federation)


def _ed25519_openssh_private() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
