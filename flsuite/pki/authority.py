"""The federation's certificate authority and the files `flsuite pki` writes.

Layout of a PKI folder::

    ca.crt, ca.key                       the CA (key 0600; keep it offline when you can)
    coordinator/coordinator.crt, .key    the coordinator's TLS server certificate
    identities.json                      pinned Ed25519 identities of every site
    sites/<name>/                        one bundle per site, to hand to that site:
        identity.key, identity.pub       the site's Ed25519 identity signing key pair
        node-auth.key, node-auth.pub     Flower SuperNode authentication keys (OpenSSH, P-384)
        ca.crt, identities.json          copies of the CA certificate and the pinned identities
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from flsuite.errors import CertificateError, ConfigError
from flsuite.pki import keys
from flsuite.pki.checks import check_certificate, read_certificate, utc_now
from flsuite.pki.files import refuse_existing, write_private, write_public
from flsuite.pki.identities import encode_identities, read_identities, validate_site_name


@dataclass(frozen=True)
class PkiLayout:
    """Where each file of a PKI folder lives."""

    root: Path

    @property
    def ca_certificate(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def coordinator_certificate(self) -> Path:
        return self.root / "coordinator" / "coordinator.crt"

    @property
    def coordinator_key(self) -> Path:
        return self.root / "coordinator" / "coordinator.key"

    @property
    def identities(self) -> Path:
        return self.root / "identities.json"

    def site_bundle(self, name: str) -> SiteBundle:
        return SiteBundle(self.root / "sites" / validate_site_name(name))

    def site_bundles(self) -> list[SiteBundle]:
        folder = self.root / "sites"
        return [SiteBundle(p) for p in sorted(folder.iterdir()) if p.is_dir()] if folder.is_dir() else []


@dataclass(frozen=True)
class SiteBundle:
    """The files of one site bundle folder (what the site's IT receives)."""

    folder: Path

    @property
    def name(self) -> str:
        return self.folder.name

    identity_key = property(lambda self: self.folder / "identity.key")
    identity_public = property(lambda self: self.folder / "identity.pub")
    node_auth_key = property(lambda self: self.folder / "node-auth.key")
    node_auth_public = property(lambda self: self.folder / "node-auth.pub")
    ca_certificate = property(lambda self: self.folder / "ca.crt")
    identities = property(lambda self: self.folder / "identities.json")

    def files(self) -> list[Path]:
        return [
            self.identity_key, self.identity_public, self.node_auth_key,
            self.node_auth_public, self.ca_certificate, self.identities,
        ]


def init_authority(
    pki_dir: Path | str,
    *,
    common_name: str = "flsuite federation CA",
    valid_days: int = 3650,
    force: bool = False,
    now: datetime | None = None,
) -> PkiLayout:
    """Create the CA key and its self-signed certificate in pki_dir."""
    layout = PkiLayout(Path(pki_dir))
    _positive_days(valid_days)
    refuse_existing([layout.ca_key, layout.ca_certificate], force=force)
    key = keys.new_tls_key()
    cert = keys.self_signed_ca(key, common_name=common_name, now=now or utc_now(), valid_days=valid_days)
    write_private(layout.ca_key, keys.private_key_pem(key), force=force)
    write_public(layout.ca_certificate, keys.certificate_pem(cert), force=force)
    return layout


def issue_coordinator(
    pki_dir: Path | str,
    *,
    hosts: Sequence[str],
    ips: Sequence[str] = (),
    valid_days: int = 397,
    force: bool = False,
    now: datetime | None = None,
) -> PkiLayout:
    """Issue the coordinator's TLS certificate and key with the given DNS names and IPs."""
    layout = PkiLayout(Path(pki_dir))
    _positive_days(valid_days)
    if not hosts and not ips:
        raise ConfigError("issue-coordinator needs at least one --host NAME or --ip ADDR.")
    for ip in ips:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise ConfigError(f"--ip {ip!r} is not an IP address (e.g. 127.0.0.1 or 10.0.0.5).") from None
    now = now or utc_now()
    ca_key, ca_cert = _load_authority(layout, now)
    refuse_existing([layout.coordinator_key, layout.coordinator_certificate], force=force)
    key = keys.new_tls_key()
    cert = keys.server_certificate(
        key, ca_key=ca_key, ca_cert=ca_cert, hosts=list(hosts), ips=list(ips),
        now=now, valid_days=valid_days,
    )
    write_private(layout.coordinator_key, keys.private_key_pem(key), force=force)
    write_public(layout.coordinator_certificate, keys.certificate_pem(cert), force=force)
    return layout


def issue_site(
    pki_dir: Path | str, name: str, *, force: bool = False, now: datetime | None = None
) -> SiteBundle:
    """Create a site bundle and pin the site's identity in the federation's identities file.

    The updated identities file is copied into every existing bundle too; bundles that were
    already handed out need the new copy to know about the new site.
    """
    layout = PkiLayout(Path(pki_dir))
    bundle = layout.site_bundle(name)
    now = now or utc_now()
    _load_authority(layout, now)  # the CA must exist and be valid before we write anything
    pinned = read_identities(layout.identities)
    refuse_existing(
        [bundle.identity_key, bundle.identity_public, bundle.node_auth_key, bundle.node_auth_public],
        force=force,
    )
    if name in pinned and not force:
        raise CertificateError(
            f"site {name!r} is already pinned in {layout.identities}. Pass --force to give it new keys."
        )
    identity = keys.new_identity_key()
    auth_private, auth_public = keys.node_auth_key_pair()
    write_private(bundle.identity_key, keys.private_key_pem(identity), force=force)
    write_public(bundle.identity_public, keys.identity_public_pem(identity), force=force)
    write_private(bundle.node_auth_key, auth_private, force=force)
    write_public(bundle.node_auth_public, auth_public, force=force)
    write_public(bundle.ca_certificate, layout.ca_certificate.read_bytes(), force=True)
    pinned[name] = keys.identity_public_b64(identity.public_key())
    document = encode_identities(pinned)
    write_public(layout.identities, document, force=True)
    for other in layout.site_bundles():
        write_public(other.identities, document, force=True)
    return bundle


def _load_authority(layout: PkiLayout, now: datetime) -> tuple[ec.EllipticCurvePrivateKey, object]:
    if not layout.ca_certificate.exists() or not layout.ca_key.exists():
        raise CertificateError(
            f"no CA in {layout.root} (expected ca.crt and ca.key). Run `flsuite pki init --dir {layout.root}` first."
        )
    check_certificate(layout.ca_certificate, ca=layout.ca_certificate, now=now, key=layout.ca_key)
    ca_key = keys.read_private_key(layout.ca_key, what="CA key")
    return ca_key, read_certificate(layout.ca_certificate)


def _positive_days(valid_days: int) -> None:
    if valid_days < 1:
        raise ConfigError(f"--days {valid_days} must be at least 1.")
