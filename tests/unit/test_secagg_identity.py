"""Identity key files and the pinned identities file: formats and clear errors."""

from __future__ import annotations

import base64
import json
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.ec import SECP384R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, Encoding, PrivateFormat

from flsuite.errors import ConfigError
from flsuite.secagg import (
    generate_identity,
    load_identity,
    load_pinned_identities,
    public_identity,
    write_pinned_identities,
)


def test_generated_identity_is_pkcs8_pem_mode_0600_and_loads(tmp_path):
    path = tmp_path / "keys" / "site-a.pem"
    public = generate_identity(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public_identity(load_identity(path)) == public and len(public) == 32
    with pytest.raises(ConfigError, match="already exists"):
        generate_identity(path)


def test_pinned_identities_round_trip_in_the_shared_format(tmp_path):
    keys = {"site-a": public_identity(Ed25519PrivateKey.generate()), "site-b": public_identity(Ed25519PrivateKey.generate())}
    path = tmp_path / "identities.json"
    write_pinned_identities(path, keys)
    data = json.loads(path.read_text())
    assert data == {"sites": {name: base64.b64encode(pk).decode() for name, pk in keys.items()}}
    assert load_pinned_identities(path) == keys


def test_unusable_identity_key_files_are_named_in_the_error(tmp_path):
    with pytest.raises(ConfigError, match="missing.pem does not exist"):
        load_identity(tmp_path / "missing.pem")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    garbage.chmod(0o600)
    with pytest.raises(ConfigError, match="garbage.pem is not a PEM"):
        load_identity(garbage)
    ec = tmp_path / "ec.pem"
    ec.touch(mode=0o600)
    ec.write_bytes(generate_private_key(SECP384R1()).private_bytes(Encoding.PEM, PrivateFormat.PKCS8,
                                                                   BestAvailableEncryption(b"pw")))
    with pytest.raises(ConfigError, match="encrypted"):
        load_identity(ec)
    ec.write_bytes(generate_private_key(SECP384R1()).private_bytes(Encoding.PEM, PrivateFormat.PKCS8,
                                                                   __import__("cryptography.hazmat.primitives.serialization",
                                                                              fromlist=["NoEncryption"]).NoEncryption()))
    with pytest.raises(ConfigError, match="not an Ed25519"):
        load_identity(ec)


@pytest.mark.parametrize("content, words", [
    (None, "does not exist"),
    ("{", "not valid JSON"),
    ('{"site-a": "x"}', '"sites"'),
    ('{"sites": {}}', '"sites"'),
    ('{"sites": {"site-a": "!!!"}}', "site 'site-a' is not base64"),
    ('{"sites": {"site-a": "' + base64.b64encode(b"short").decode() + '"}}', "raw 32-byte"),
    ('{"sites": {"": "' + base64.b64encode(bytes(32)).decode() + '"}}', "site name ''"),
    ('{"sites": {"\\ud800": "' + base64.b64encode(bytes(32)).decode() + '"}}', "site name '\\ud800'"),  # no UTF-8
    ('{"sites": {"' + "a" * 256 + '": "' + base64.b64encode(bytes(32)).decode() + '"}}', "at most 255 bytes"),
])
def test_unusable_pinned_identities_are_refused(tmp_path, content, words):
    path = tmp_path / "identities.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_pinned_identities(path)
    assert words in str(info.value) and "identities.json" in str(info.value)
