"""What TLS Flower 1.42's SuperLink negotiates (it offers no way to set a minimum version).

Measured on a real SuperLink started by `flsuite coordinator start`: a default client gets
TLS 1.3; TLS 1.2 is still accepted (ECDHE + AES-GCM, forward secret); anything older is
refused. If Flower starts enforcing 1.3 the 1.2 test fails: update the README then.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator

import pytest

from flsuite.deployment import Address, probe_tls
from flsuite.deployment.network import tls_client_context
from flsuite.deployment.testing import FederationFiles, running_federation, write_federation

pytestmark = pytest.mark.deployment


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FederationFiles, Address]]:
    files = write_federation(tmp_path_factory.mktemp("tls"), sites=("hospital-a",))
    with running_federation(files) as state:
        host, port = state.connect.rsplit(":", 1)
        yield files, Address(host, int(port))


def capped(files: FederationFiles, *, maximum: ssl.TLSVersion, minimum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = tls_client_context(files.pki / "ca.crt")
    if minimum is not None:
        context.minimum_version = minimum
    context.maximum_version = maximum
    return context


def test_default_client_negotiates_tls_13(coordinator: tuple[FederationFiles, Address]) -> None:
    files, address = coordinator
    assert probe_tls(address, ca_certificate=files.pki / "ca.crt") == "TLSv1.3"


def test_tls_12_is_still_accepted_with_a_forward_secret_aead_cipher(coordinator: tuple[FederationFiles, Address]) -> None:
    files, address = coordinator
    context = capped(files, maximum=ssl.TLSVersion.TLSv1_2)
    with socket.create_connection((address.host, address.port), timeout=10) as sock:
        with context.wrap_socket(sock, server_hostname=address.host) as tls:
            assert tls.version() == "TLSv1.2"
            cipher = tls.cipher()[0]
    assert cipher.startswith("ECDHE-ECDSA-")
    assert "GCM" in cipher or "CHACHA20" in cipher


def test_tls_11_and_older_are_refused(coordinator: tuple[FederationFiles, Address]) -> None:
    files, address = coordinator
    try:
        context = capped(files, minimum=ssl.TLSVersion.TLSv1, maximum=ssl.TLSVersion.TLSv1_1)
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    except (ssl.SSLError, ValueError):
        pytest.skip("this OpenSSL cannot even offer TLS 1.1")
    with pytest.raises(Exception, match="TLS handshake with .* failed|does not answer"):
        probe_tls(address, ca_certificate=files.pki / "ca.crt", context=context)
