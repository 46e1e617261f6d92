"""Key files: exact modes, atomic no-overwrite writes, and private keys that other users may
read refused on load by every user (PKI, coordinator start check, audit signing keys,
secure-aggregation identities, the registry's encryption key)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from flsuite.errors import ConfigError
from flsuite.storage import keyfiles
from flsuite.storage.keyfiles import InsecureKeyFile, KeyFileExists, check_private, read_private, write_private, write_public


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o022, 0o077, 0o000], ids=["umask-022", "umask-077", "umask-000"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_private_and_public_files_get_exact_modes_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    private = write_private(tmp_path / "keys" / "site.key", b"secret")
    public = write_public(tmp_path / "keys" / "site.pub", b"public")
    assert (mode(private), mode(public)) == (0o600, 0o644)
    assert private.read_bytes() == b"secret" and public.read_bytes() == b"public"
    assert sorted(p.name for p in (tmp_path / "keys").iterdir()) == ["site.key", "site.pub"]


def test_an_existing_key_is_never_replaced_unless_asked(tmp_path: Path) -> None:
    path = write_private(tmp_path / "k", b"first")
    with pytest.raises(KeyFileExists, match="refusing to overwrite .*k: it already exists"):
        write_private(path, b"second")
    assert path.read_bytes() == b"first"
    write_private(path, b"second", overwrite=True)
    assert path.read_bytes() == b"second" and mode(path) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["k"]  # no temporary file left behind


def test_a_key_write_fsyncs_the_file_and_then_its_folder(tmp_path: Path, monkeypatch) -> None:
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", Path(f"/proc/self/fd/{fd}").resolve())), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("rename", Path(b))), real_replace(a, b))[1])
    target = tmp_path / "k"
    write_private(target, b"x", overwrite=True)
    assert [kind for kind, _ in events] == ["fsync", "rename", "fsync"]
    assert events[1][1] == target and events[2][1] == tmp_path


@pytest.mark.parametrize("bits", [0o644, 0o640, 0o604, 0o660, 0o700])
def test_a_private_key_other_users_may_access_is_refused_naming_the_fix(tmp_path: Path, bits: int) -> None:
    path = write_private(tmp_path / "k", b"secret")
    os.chmod(path, bits)
    if bits == 0o700:  # owner-only bits are fine
        assert read_private(path) == b"secret"
        return
    with pytest.raises(InsecureKeyFile) as caught:
        read_private(path, what="signing key")
    message = str(caught.value)
    assert isinstance(caught.value, ConfigError)
    assert f"signing key {path} has mode {bits:o}" in message and f"chmod 600 {path}" in message
    with pytest.raises(InsecureKeyFile):
        check_private(path)
    with pytest.raises(FileNotFoundError):
        check_private(tmp_path / "absent")


# -- attacks: each user of a private key file refuses one at 0644 -------------------------------

def _signing_key(path: Path) -> None:
    from flsuite.audit import load_or_create_signing_key, load_signing_key

    load_or_create_signing_key(path)
    os.chmod(path, 0o644)
    load_signing_key(path)


def _secagg_identity(path: Path) -> None:
    from flsuite.secagg import generate_identity, load_identity

    generate_identity(path)
    os.chmod(path, 0o644)
    load_identity(path)


def _registry_encryption_key(path: Path) -> None:
    from flsuite.registry import create_key_file, key_from_file

    create_key_file(path)
    os.chmod(path, 0o644)
    key_from_file(path)


def _ca_key(path: Path) -> None:
    from flsuite.pki import PkiLayout, init_authority, issue_coordinator

    init_authority(path)
    os.chmod(PkiLayout(path).ca_key, 0o644)
    issue_coordinator(path, hosts=["localhost"])


@pytest.mark.parametrize("load", [_signing_key, _secagg_identity, _registry_encryption_key, _ca_key],
                         ids=["audit-signing-key", "secagg-identity", "registry-encryption-key", "pki-ca-key"])
def test_a_world_readable_private_key_is_refused_on_load(tmp_path: Path, load) -> None:
    with pytest.raises(ConfigError, match=r"has mode 644.*chmod 600"):
        load(tmp_path / "key")


def test_registry_key_from_file_refusal_is_an_encryption_key_error(tmp_path: Path) -> None:
    from flsuite.registry import EncryptionKeyError, key_from_file

    path = tmp_path / "blob.key"
    path.write_bytes(os.urandom(32))
    path.chmod(0o644)
    with pytest.raises(EncryptionKeyError, match=f"encryption key file {path} has mode 644"):
        key_from_file(path)


def test_coordinator_check_refuses_a_tls_key_others_can_read(tmp_path: Path) -> None:
    from flsuite.coordinator import check_coordinator
    from flsuite.deployment.testing import write_federation

    federation = write_federation(tmp_path, sites=("hospital-a",))
    config = federation.coordinator()
    check_coordinator(config)  # the issued key is 0600 and passes
    config.tls.key.chmod(0o644)
    with pytest.raises(ConfigError, match=rf"coordinator TLS key {config.tls.key} has mode 644.*chmod 600"):
        check_coordinator(config)


def test_key_writers_use_the_key_file_module(tmp_path: Path, monkeypatch) -> None:
    """PKI, audit keys, secagg identities and the registry key all write through keyfiles."""
    from flsuite.audit import load_or_create_signing_key
    from flsuite.pki import init_authority
    from flsuite.registry import create_key_file
    from flsuite.secagg import generate_identity

    written = []
    real = keyfiles.write_key_file
    monkeypatch.setattr(keyfiles, "write_key_file",
                        lambda path, data, **kw: (written.append((Path(path).name, kw["mode"])), real(path, data, **kw))[1])
    load_or_create_signing_key(tmp_path / "audit.pem")
    generate_identity(tmp_path / "site.pem")
    create_key_file(tmp_path / "blob.key")
    init_authority(tmp_path / "pki")
    assert {name: m for name, m in written} == {
        "audit.pem": 0o600, "site.pem": 0o600, "blob.key": 0o600, "ca.key": 0o600, "ca.crt": 0o644}
