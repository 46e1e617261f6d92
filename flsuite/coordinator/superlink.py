"""`flsuite coordinator start|stop`: run Flower's SuperLink with TLS and node authentication.

Start checks everything first (certificates, site keys, state folder, port), then runs
`flower-superlink` bound to the configured host, waits until it answers over TLS, writes the
`[superlink.NAME]` connection into FLWR_HOME/config.toml (FLWR_HOME is in the state folder)
so `flwr run . NAME` works, and registers each site's node-authentication public key.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from flsuite.deployment.config import CoordinatorConfig
from flsuite.deployment.network import Address, ensure_port_free, free_port, probe_tls
from flsuite.deployment.processes import (
    ProcessFiles,
    descendants,
    flower_environment,
    flower_executable,
    log_tail,
    start_process,
    stop_process,
    terminate,
    wait_for,
)
from flsuite.errors import CertificateError, CoordinatorUnreachable, DeploymentError
from flsuite.pki.checks import check_certificate
from flsuite.pki.keys import is_node_auth_public_key
from flsuite.storage.keyfiles import check_private

PROGRAM = "flower-superlink"
WILDCARD_HOSTS = {"0.0.0.0", "::", ""}


@dataclass(frozen=True)
class CoordinatorState:
    """What a started coordinator reports and records in its state folder."""

    pid: int
    listen: str
    connect: str
    federation: str
    flwr_home: str
    log_file: str
    tls_version: str
    nodes: dict[str, int | None]


def coordinator_files(config: CoordinatorConfig) -> ProcessFiles:
    return ProcessFiles(config.state_dir, "superlink")


def state_file(config: CoordinatorConfig) -> Path:
    return config.state_dir / "coordinator.json"


def flwr_home(config: CoordinatorConfig) -> Path:
    return config.state_dir / "flwr-home"


def read_state(config: CoordinatorConfig) -> CoordinatorState | None:
    try:
        return CoordinatorState(**json.loads(state_file(config).read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def check_coordinator(config: CoordinatorConfig, *, now: datetime | None = None) -> None:
    """Check certificates, site keys and the state folder; raise a UserError naming the problem."""
    tls = config.tls
    check_certificate(tls.ca_certificate, ca=tls.ca_certificate, now=now)
    check_certificate(tls.certificate, ca=tls.ca_certificate, now=now, key=tls.key)
    check_private(tls.key, what="coordinator TLS key")
    for site, public_key in config.sites.items():
        if not public_key.is_file():
            raise CertificateError(
                f"sites.{site}: {public_key} does not exist. Point it at the node-auth.pub of the "
                f"bundle `flsuite pki issue-site {site}` wrote."
            )
        if not is_node_auth_public_key(public_key.read_bytes()):
            raise CertificateError(
                f"sites.{site}: {public_key} is not an OpenSSH EC public key (node-auth.pub). "
                "Use the node-auth.pub from the site bundle."
            )
    _ensure_writable_dir(config.state_dir, field="state_dir")


def start_coordinator(config: CoordinatorConfig, *, now: datetime | None = None) -> CoordinatorState:
    """Start the SuperLink, register the sites and return where it listens."""
    check_coordinator(config, now=now)
    files = coordinator_files(config)
    port = config.port or free_port(config.host or "127.0.0.1")
    ensure_port_free(config.host, port, field="port")
    listen = Address(config.host, port)
    connect = Address(_connect_host(config), port)
    home = flwr_home(config)
    home.mkdir(parents=True, exist_ok=True)
    env = flower_environment({"FLWR_HOME": str(home)})
    command = [
        flower_executable(PROGRAM),
        "--ssl-ca-certfile", str(config.tls.ca_certificate),
        "--ssl-certfile", str(config.tls.certificate),
        "--ssl-keyfile", str(config.tls.key),
        "--host", config.host,
        "--port", str(port),
        "--database", str(config.state_dir / "superlink.db"),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
    ]
    process = start_process(command, files=files, env=env, program=PROGRAM)
    try:
        tls_version = _wait_until_answering(config, process, connect, files)
        write_flower_connection(home, name=config.federation, address=connect, ca_certificate=config.tls.ca_certificate)
        nodes = {site: register_site(home, config.federation, key, env=env) for site, key in config.sites.items()}
    except BaseException:
        terminate([process.pid, *descendants(process.pid)])
        files.pid_file.unlink(missing_ok=True)
        raise
    state = CoordinatorState(
        pid=process.pid, listen=str(listen), connect=str(connect), federation=config.federation,
        flwr_home=str(home), log_file=str(files.log_file), tls_version=tls_version, nodes=nodes,
    )
    state_file(config).write_text(json.dumps(asdict(state), indent=2) + "\n")
    return state


def stop_coordinator(config: CoordinatorConfig, *, timeout: float = 15.0) -> int | None:
    """Stop the SuperLink recorded in the state folder; return its PID, or None if none ran."""
    return stop_process(coordinator_files(config), program=PROGRAM, timeout=timeout)


def write_flower_connection(home: Path, *, name: str, address: Address, ca_certificate: Path) -> Path:
    """Write FLWR_HOME/config.toml with one TLS connection NAME, made the default."""
    path = home / "config.toml"
    text = (
        "# Written by `flsuite coordinator start`; rewritten on every start.\n"
        f"[superlink]\ndefault = {json.dumps(name)}\n\n"
        f"[superlink.{name}]\naddress = {json.dumps(str(address))}\n"
        f"root-certificates = {json.dumps(str(ca_certificate))}\n"
    )
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def register_site(home: Path, federation: str, public_key: Path, *, env: dict[str, str]) -> int | None:
    """Register one node-auth public key with `flwr supernode register`; return its node id.

    A key that is already registered (a restart on the same database) is fine; its node id
    is looked up with `flwr supernode list`.
    """
    result = _flwr(["supernode", "register", str(public_key), federation, "--format", "json"], env=env)
    if result.get("success"):
        return int(result["node-id"])
    message = str(result.get("error-message", result))
    if "already in use" not in message:
        raise DeploymentError(f"registering {public_key} with the coordinator failed: {message.strip()}")
    return None  # registered before; Flower does not say which node id it has


def _flwr(args: list[str], *, env: dict[str, str]) -> dict:
    completed = subprocess.run(  # noqa: S603 - fixed executable, no shell
        [flower_executable("flwr"), *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    out = completed.stdout
    try:
        return json.loads(out[out.index("{"):])
    except ValueError:
        raise DeploymentError(
            f"`flwr {' '.join(args)}` gave no JSON (exit {completed.returncode}): {(out + completed.stderr)[-500:]}"
        ) from None


def _wait_until_answering(
    config: CoordinatorConfig, process: subprocess.Popen, connect: Address, files: ProcessFiles
) -> str:
    versions: list[str] = []
    last_error: list[Exception] = []

    def answers() -> bool:
        try:
            versions.append(probe_tls(connect, ca_certificate=config.tls.ca_certificate, timeout=2.0))
            return True
        except CoordinatorUnreachable as err:
            last_error[:] = [err]
            return False

    if wait_for(answers, process=process, timeout=config.startup_timeout):
        return versions[-1]
    reason = "exited" if process.poll() is not None else f"did not answer within {config.startup_timeout:g} s"
    detail = f" Last check: {last_error[0]}" if last_error else ""
    raise DeploymentError(
        f"the SuperLink {reason} (log {files.log_file}).{detail}\n--- last log lines ---\n{log_tail(files)}"
    )


def _connect_host(config: CoordinatorConfig) -> str:
    if config.connect_host:
        return config.connect_host
    return "127.0.0.1" if config.host in WILDCARD_HOSTS else config.host


def _ensure_writable_dir(folder: Path, *, field: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DeploymentError(f"{field}: cannot create {folder} ({err.strerror}). Choose a folder you can write.") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise DeploymentError(f"{field}: {folder} is not writable. Choose a folder you can write, or fix its permissions.")
