"""Addresses, free ports and the TLS probe used before starting anything.

`probe_tls` does a real TLS handshake against the coordinator with the federation's CA
and hostname checking on, so a site learns before it starts whether the address answers
and presents a certificate it can trust.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from flsuite.errors import CoordinatorUnreachable, DeploymentError


@dataclass(frozen=True)
class Address:
    """A host and port, as in `--superlink HOST:PORT`."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_address(text: str, *, field: str) -> Address:
    """Parse HOST:PORT (or [V6]:PORT); `field` names the config field in errors."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DeploymentError(f"{field}: {text!r} is not HOST:PORT, e.g. 127.0.0.1:9093 or coordinator.example.org:9093.")
    return Address(host, int(port))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on host right now (the OS picks it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def ensure_port_free(host: str, port: int, *, field: str) -> None:
    """Raise DeploymentError when something already listens on host:port.

    SO_REUSEADDR, as the SuperLink's own listener binds: a port whose last owner died with
    connections open (TIME_WAIT for a minute) is free for a restart; a listener is not.
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            raise DeploymentError(
                f"{field}: port {port} on {host} is in use ({err.strerror}). "
                "Stop what uses it, pick another port, or set it to null to pick a free one."
            ) from None


def tls_client_context(ca_certificate: Path) -> ssl.SSLContext:
    """A client context that trusts only the federation's CA and checks the host name."""
    try:
        context = ssl.create_default_context(cafile=str(ca_certificate))
    except (OSError, ssl.SSLError) as err:
        reason = getattr(err, "strerror", None) or getattr(err, "reason", None) or str(err)
        raise DeploymentError(
            f"CA certificate {ca_certificate} cannot be used ({reason}). Point at the federation's ca.crt "
            "(pki/ca.crt, or ca.crt in a site bundle)."
        ) from None
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def probe_tls(
    address: Address,
    *,
    ca_certificate: Path,
    timeout: float = 5.0,
    context: ssl.SSLContext | None = None,
) -> str:
    """Handshake with address using the CA; return the negotiated TLS version (e.g. 'TLSv1.3')."""
    context = context or tls_client_context(ca_certificate)
    try:
        with socket.create_connection((address.host, address.port), timeout=timeout) as sock:
            with context.wrap_socket(sock, server_hostname=address.host) as tls:
                return tls.version() or "unknown"
    except ssl.SSLCertVerificationError as err:
        raise CoordinatorUnreachable(
            f"the coordinator at {address} presented a certificate that {ca_certificate} does not "
            f"accept ({err.verify_message}). Check that the site bundle's ca.crt is the federation's "
            "CA and that the coordinator certificate names this host (issue-coordinator --host/--ip)."
        ) from None
    except ssl.SSLError as err:
        raise CoordinatorUnreachable(
            f"TLS handshake with {address} failed ({err.reason or err}). Is it a flsuite coordinator "
            "started with TLS?"
        ) from None
    except (ConnectionRefusedError, TimeoutError, socket.gaierror, OSError) as err:
        reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
        raise CoordinatorUnreachable(
            f"the coordinator address {address} does not answer ({reason}). Check the address and "
            "port in your config, that the coordinator is running, and that a firewall lets you through."
        ) from None
