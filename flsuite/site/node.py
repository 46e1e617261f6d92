"""`flsuite site start|stop`: run a site's Flower SuperNode with its bundle and its own settings.

Start checks everything before anything runs: the bundle (CA certificate, keys, pinned
identity), the data file, that the ledger path is writable, and that the coordinator
answers over TLS with a certificate the site's CA accepts. The site's data path, ledger,
identity, privacy cap and declared dataset travel in the SuperNode's node_config; the ClientApp takes them
from there, so the coordinator cannot override them.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

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
from flsuite.site.ledger_admin import ensure_site_ledger
from flsuite.site.node_config import format_node_config

PROGRAM = "flower-supernode"
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
    for secret in (bundle.identity_key, bundle.node_auth_key):
        if stat.S_IMODE(secret.stat().st_mode) & 0o077:
            raise CertificateError(f"{secret} can be read by other users. Run `chmod 600 {secret}`.")
    _check_pinned_identity(config, bundle)
    if not config.data.is_file():
        raise DataError(f"data: {config.data} does not exist or is not a file. Fix the path in your site config.")
    if not os.access(config.data, os.R_OK):
        raise DataError(f"data: {config.data} is not readable by this user. Fix its permissions.")
    if config.label_column:
        _check_label_column(config.data, config.label_column)
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
    command = [
        flower_executable(PROGRAM),
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
