"""`flsuite site start|stop`: run a site's Flower SuperNode with its bundle and its own settings.

Start checks everything before anything runs: the bundle (CA certificate, private keys
that only this user can read and that parse as the keys they should be, pinned identity),
the data file and that the site's delta is at most 1/N for its N records, that the ledger
path is writable, and that the coordinator answers over TLS with a certificate the site's
CA accepts. The site's data path, ledger,
identity, privacy cap and declared dataset travel in the SuperNode's node_config; the ClientApp takes them
from there, so the coordinator cannot override them.
"""

from __future__ import annotations

import csv
import math
import os
import re
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

from flsuite import protocol
from flsuite.deployment.config import SiteConfig
from flsuite.deployment.network import ensure_port_free, free_port, parse_address, probe_tls
from flsuite.deployment.processes import (
    ProcessFiles,
    flower_environment,
    flower_executable,
    log_tail,
    start_process,
    stop_process,
    wait_for,
)
from flsuite.errors import CertificateError, ConfigError, DataError, DeploymentError
from flsuite.pki.authority import SiteBundle
from flsuite.pki.checks import check_certificate
from flsuite.pki.identities import read_identities
from flsuite.pki.keys import identity_public_b64, load_private_key_pem
from flsuite.privacy import check_delta
from flsuite.site.ledger_admin import ensure_site_ledger
from flsuite.site.node_config import format_node_config
from flsuite.storage.keyfiles import check_private

PROGRAM = "flower-supernode"
NODE_MODULE = "flsuite.flower.supernode"  # flower-supernode with a 0.5 s idle poll instead of 3 s
_CONNECTED = re.compile(r"SuperNode ID: (\d+)")


@dataclass(frozen=True)
class SiteState:
    """What a started site reports."""

    pid: int
    coordinator: str
    port: int
    node_id: int | None
    log_file: str
    tls_version: str
    ledger_created: bool = False  # a brand-new site: its ledger's genesis anchor was written


def site_files(config: SiteConfig) -> ProcessFiles:
    return ProcessFiles(config.state_dir, "supernode")


def site_node_config(config: SiteConfig) -> dict[str, str | float]:
    """The node_config values of this site (absolute paths)."""
    bundle = SiteBundle(config.bundle)
    values: dict[str, str | float] = {
        protocol.SITE_NAME: config.site,
        protocol.DATA_PATH: str(config.data),
        protocol.LEDGER_PATH: str(config.ledger),
        protocol.IDENTITY_KEY: str(bundle.identity_key),
        protocol.IDENTITIES_FILE: str(bundle.identities),
        protocol.MAX_EPSILON: float(config.privacy.max_epsilon),
        protocol.DELTA: float(config.privacy.delta),
        protocol.DATASET: config.budget_dataset,
    }
    if config.label_column:
        values[protocol.LABEL_COLUMN] = config.label_column
    return values


def check_site(config: SiteConfig, *, now: datetime | None = None, probe: bool = True) -> str | None:
    """Check the bundle, data, ledger and (when probe) the coordinator; return its TLS version."""
    bundle = SiteBundle(config.bundle)
    if not bundle.folder.is_dir():
        raise ConfigError(f"bundle: {bundle.folder} is not a folder. Point it at the site bundle from `flsuite pki issue-site`.")
    for path in bundle.files():
        if not path.is_file():
            raise CertificateError(f"bundle: {path} is missing. Ask the coordinator's operator for a complete site bundle.")
    check_certificate(bundle.ca_certificate, ca=bundle.ca_certificate, now=now)
    check_private(bundle.identity_key, what="the site's identity key")
    check_private(bundle.node_auth_key, what="the site's node-auth key")
    _check_node_auth_key(bundle)
    _check_pinned_identity(config, bundle)
    if not config.data.is_file():
        raise DataError(f"data: {config.data} does not exist or is not a file. Fix the path in your site config.")
    if not os.access(config.data, os.R_OK):
        raise DataError(f"data: {config.data} is not readable by this user. Fix its permissions.")
    if config.label_column:
        _check_label_column(config.data, config.label_column)
    _check_delta(config)
    _check_ledger_writable(config.ledger)
    try:
        format_node_config(site_node_config(config))
    except ValueError as err:
        raise ConfigError(f"{err}. Use paths without quotes or line breaks.") from None
    if not probe:
        return None
    return probe_tls(parse_address(config.coordinator, field="coordinator"), ca_certificate=bundle.ca_certificate,
                     timeout=config.connect_timeout)


def start_site(config: SiteConfig, *, now: datetime | None = None, connect_timeout: float = 30.0) -> SiteState:
    """Check, then start the SuperNode; wait until it reports its node id or gives up."""
    tls_version = check_site(config, now=now) or "unknown"
    # A brand-new site anchors its empty ledger; an existing one must match its anchor.
    ledger_created = ensure_site_ledger(
        config.ledger, site=config.site, dataset=config.budget_dataset, identity_key=SiteBundle(config.bundle).identity_key
    )
    coordinator = parse_address(config.coordinator, field="coordinator")
    files = site_files(config)
    port = config.port or free_port()
    ensure_port_free("127.0.0.1", port, field="port")
    home = config.state_dir / "flwr-home"
    home.mkdir(parents=True, exist_ok=True)
    bundle = SiteBundle(config.bundle)
    flower_executable(PROGRAM)  # Flower must be installed beside this Python
    command = [
        sys.executable, "-m", NODE_MODULE,
        "--superlink", str(coordinator),
        "--root-certificates", str(bundle.ca_certificate),
        "--auth-supernode-private-key", str(bundle.node_auth_key),
        "--port", str(port),
        "--node-config", format_node_config(site_node_config(config)),
    ]
    offset = files.log_file.stat().st_size if files.log_file.exists() else 0
    process = start_process(command, files=files, env=flower_environment({"FLWR_HOME": str(home)}), program=PROGRAM)
    found: list[int] = []

    def connected() -> bool:
        with files.log_file.open("rb") as log:
            log.seek(offset)
            match = _CONNECTED.search(log.read().decode(errors="replace"))
        if match:
            found.append(int(match.group(1)))
        return bool(match)

    if not wait_for(connected, process=process, timeout=connect_timeout) and process.poll() is not None:
        files.pid_file.unlink(missing_ok=True)
        raise DeploymentError(
            f"the SuperNode of {config.site} exited (code {process.returncode}); the coordinator {coordinator} "
            f"refused it or could not be reached. Log {files.log_file}:\n{log_tail(files)}"
        )
    return SiteState(pid=process.pid, coordinator=str(coordinator), port=port,
                     node_id=found[0] if found else None, log_file=str(files.log_file), tls_version=tls_version,
                     ledger_created=ledger_created)


def stop_site(config: SiteConfig, *, timeout: float = 15.0) -> int | None:
    """Stop the SuperNode recorded in the state folder; return its PID, or None if none ran."""
    return stop_process(site_files(config), program=PROGRAM, timeout=timeout)


def _check_node_auth_key(bundle: SiteBundle) -> None:
    """The SuperNode signs in with node-auth.key; the coordinator registered node-auth.pub."""
    path = bundle.node_auth_key
    try:
        key = load_ssh_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(
            f"{path} is not an unencrypted EC private key in OpenSSH format, so the SuperNode could not sign in "
            "to the coordinator. Put back the node-auth.key of the bundle `flsuite pki issue-site` wrote, or ask "
            "the coordinator's operator for a fresh bundle."
        )
    try:
        registered = load_ssh_public_key(bundle.node_auth_public.read_bytes().strip())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        registered = None
    if not isinstance(registered, ec.EllipticCurvePublicKey) or registered.public_numbers() != key.public_key().public_numbers():
        raise CertificateError(
            f"{path} does not belong to {bundle.node_auth_public}, the public key the coordinator registers for "
            "this site, so the coordinator would refuse the SuperNode. Use both files of one bundle, or ask the "
            "coordinator's operator for a fresh bundle."
        )


def count_records(data: Path) -> int:
    """The number of records in a CSV file: its non-blank lines after the header, as `load_csv` counts them."""
    try:
        with data.open(newline="", encoding="utf-8-sig", errors="replace") as handle:
            reader = csv.reader(handle)
            next(reader, None)
            return sum(1 for fields in reader if fields)
    except csv.Error as err:
        raise DataError(f"data: {data} is not a readable CSV file ({err}). Fix the file.") from None


def _check_delta(config: SiteConfig) -> None:
    """delta <= 1/N for the N records of the site's data, checked before the first study asks."""
    records = count_records(config.data)
    if records < 1:
        raise DataError(f"data: {config.data} has no records after its header. Point data at the site's training data.")
    delta = config.privacy.delta
    try:
        check_delta(delta, records, site=config.site)
    except ConfigError:
        largest = _round_down(1.0 / records)
        raise ConfigError(
            f"privacy.delta: {delta:g} is above 1/N = {1.0 / records:.6g}: {config.data} holds N = {records} records, "
            "and a delta above 1/N allows publishing a whole record with probability delta. Set privacy.delta in "
            f"the site config to at most {largest} (well below it is usual: 1/(10 N) = {_round_down(0.1 / records)} or less)."
        ) from None


def _round_down(value: float) -> str:
    """`value` to three significant digits, never above it (so the shown limit is itself allowed)."""
    scale = 10.0 ** (math.floor(math.log10(value)) - 2)
    text = f"{math.floor(value / scale) * scale:.3g}"
    while float(text) > value:  # floating-point rounding on the way
        text = f"{float(text) - scale:.3g}"
    return text


def _check_pinned_identity(config: SiteConfig, bundle: SiteBundle) -> None:
    pinned = read_identities(bundle.identities)
    if config.site not in pinned:
        raise CertificateError(
            f"site: {config.site!r} is not pinned in {bundle.identities} (pinned: {', '.join(sorted(pinned)) or 'none'}). "
            "Use the site name the bundle was issued for."
        )
    try:
        identity = load_private_key_pem(bundle.identity_key.read_bytes())
        ours = identity_public_b64(identity.public_key())
    except (ValueError, TypeError, AttributeError):
        raise CertificateError(f"{bundle.identity_key} is not an Ed25519 private key in PEM.") from None
    if ours != pinned[config.site]:
        raise CertificateError(
            f"{bundle.identity_key} does not match the identity pinned for {config.site!r} in {bundle.identities}. "
            "Use the bundle's own identities.json, or ask for a fresh bundle."
        )


def _check_ledger_writable(ledger: Path) -> None:
    if ledger.exists():
        if not ledger.is_file() or not os.access(ledger, os.R_OK | os.W_OK):
            raise DataError(f"ledger: {ledger} is not a writable file. Fix its permissions or choose another path.")
        return
    folder = ledger.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise DataError(
            f"ledger: cannot create {ledger}: {folder} is not a writable folder. Choose a path this user can write."
        )


def _check_label_column(data: Path, label_column: str) -> None:
    import csv

    with data.open(newline="", errors="replace") as handle:
        header = next(csv.reader(handle), [])
    if label_column not in header:
        shown = ", ".join(header[:8]) + (", ..." if len(header) > 8 else "")
        raise DataError(
            f"label_column: {label_column!r} is not a column of {data} (columns: {shown or 'none'}). "
            "Name the column that holds the labels."
        )
