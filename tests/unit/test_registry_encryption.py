"""Encryption at rest: AES-256-GCM blobs, keys from files or the environment, clear key errors."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from flsuite.errors import IntegrityError
from flsuite.registry import (
    EncryptionKeyError,
    Registry,
    create_key_file,
    key_from_env,
    key_from_file,
    verify_registry,
)
from flsuite.registry.testing import publish_sample, sample_weights


@pytest.fixture()
def sealed(tmp_path: Path):
    key = create_key_file(tmp_path / "blob.key")
    path = tmp_path / "registry"
    with Registry.open(path, signing_key_path=tmp_path / "k.pem", encryption_key=key) as reg:
        info = publish_sample(reg, round=3)
    return path, key, info


def test_blob_is_encrypted_and_addressed_by_its_plaintext(sealed) -> None:
    path, key, info = sealed
    stored = (path / "blobs" / "sha256" / info.blob_sha256).read_bytes()
    assert info.encrypted and info.manifest["blob"]["encryption"]["algorithm"] == "AES-256-GCM"
    assert np.float32(3.0).tobytes() * 4 not in stored  # no plaintext run of the weights
    assert info.manifest["blob"]["stored_sha256"] != info.blob_sha256
    with Registry.open(path, encryption_key=key) as reg:
        np.testing.assert_array_equal(reg.load_weights(1)["layer.bias"], sample_weights(3.0)["layer.bias"])


def test_missing_and_wrong_key_are_named(sealed) -> None:
    path, _, _ = sealed
    with Registry.open(path) as reg, pytest.raises(EncryptionKeyError, match="encrypted.*key id"):
        reg.load_weights(1)
    with Registry.open(path, encryption_key=os.urandom(32)) as reg, \
            pytest.raises(EncryptionKeyError, match="wrong encryption key"):
        reg.load_weights(1)


def test_catalogue_and_log_verify_without_the_key(sealed) -> None:
    path, key, _ = sealed
    report = verify_registry(path)
    assert report.ok and report.blobs_decrypted == 0
    assert verify_registry(path, encryption_key=key).blobs_decrypted == 1
    assert not any(key.hex().encode() in f.read_bytes() for f in path.rglob("*") if f.is_file())


def test_ciphertext_moved_to_another_address_does_not_open(sealed, tmp_path: Path) -> None:
    path, key, info = sealed
    with Registry.open(path, signing_key_path=tmp_path / "k.pem", encryption_key=key) as reg:
        other = publish_sample(reg, round=4)
    blobs = path / "blobs" / "sha256"
    first, second = blobs / info.blob_sha256, blobs / other.blob_sha256
    os.chmod(second, 0o644)
    second.write_bytes(first.read_bytes())
    report = verify_registry(path, encryption_key=key)
    assert report.problems[0].where.startswith("version 2") and report.problems[0].check == "blob"
    with Registry.open(path, encryption_key=key) as reg, pytest.raises(IntegrityError):
        reg.load_weights(2)


def test_key_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = create_key_file(tmp_path / "k")
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600
    assert key_from_file(tmp_path / "k") == key
    (tmp_path / "raw").write_bytes(key)
    os.chmod(tmp_path / "raw", 0o600)
    assert key_from_file(tmp_path / "raw") == key
    monkeypatch.setenv("BLOB_KEY", key.hex())
    assert key_from_env("BLOB_KEY") == key
    import base64

    monkeypatch.setenv("BLOB_KEY", base64.b64encode(key).decode())
    assert key_from_env("BLOB_KEY") == key
    with pytest.raises(EncryptionKeyError, match="exists already"):
        create_key_file(tmp_path / "k")


def test_bad_keys_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    with pytest.raises(EncryptionKeyError, match="NO_SUCH_KEY is not set"):
        key_from_env("NO_SUCH_KEY")
    monkeypatch.setenv("SHORT_KEY", "abcd")
    with pytest.raises(EncryptionKeyError, match="SHORT_KEY: not a 32-byte key"):
        key_from_env("SHORT_KEY")
    with pytest.raises(EncryptionKeyError, match="cannot be read"):
        key_from_file(tmp_path / "absent")
    with pytest.raises(EncryptionKeyError, match="32 bytes"):
        Registry.open(tmp_path / "r", signing_key_path=tmp_path / "s.pem", encryption_key=b"short")
