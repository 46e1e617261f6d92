"""A real SuperLink with TLS and node authentication on 127.0.0.1, and the sites it lets in.

Starts real Flower processes (marked `deployment`; run with `-m deployment`). Every process
is stopped by PID in the fixtures' finally blocks, also when a test fails.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from flsuite.coordinator import CoordinatorState
from flsuite.coordinator.superlink import flwr_home, start_coordinator, stop_coordinator
from flsuite.deployment.processes import descendants, flower_environment, flower_executable, terminate
from flsuite.deployment.testing import FederationFiles, running_federation, write_federation
from flsuite.errors import DeploymentError
from flsuite.site import start_site, stop_site

pytestmark = pytest.mark.deployment


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FederationFiles, CoordinatorState]]:
    files = write_federation(
        tmp_path_factory.mktemp("federation"),
        sites=("hospital-a", "hospital-b", "hospital-c"),
        registered=("hospital-a", "hospital-b"),
    )
    with running_federation(files) as state:
        yield files, state


def flwr_json(files: FederationFiles, *args: str) -> dict:
    env = flower_environment({"FLWR_HOME": str(flwr_home(files.coordinator()))})
    out = subprocess.run([flower_executable("flwr"), *args, "--format", "json"], env=env,
                         capture_output=True, text=True, timeout=60, check=False).stdout
    return json.loads(out[out.index("{"):])


def run_supernode(args: list[str], log: Path, timeout: float) -> tuple[int | None, str]:
    """Run flower-supernode directly; return (exit code or None if still running, its log)."""
    with log.open("wb") as out:
        process = subprocess.Popen([flower_executable("flower-supernode"), *args], stdout=out,
                                   stderr=subprocess.STDOUT, env=flower_environment(), start_new_session=True)
    try:
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
    finally:
        terminate([process.pid, *descendants(process.pid)], timeout=10)
    return code, log.read_text(errors="replace")


def test_coordinator_listens_over_tls_13_and_registers_the_sites(federation: tuple[FederationFiles, CoordinatorState]) -> None:
    files, state = federation
    assert state.listen.startswith("127.0.0.1:")
    assert state.tls_version == "TLSv1.3"
    assert set(state.nodes) == {"hospital-a", "hospital-b"}
    config_toml = (Path(state.flwr_home) / "config.toml").read_text()
    assert f'[superlink.{state.federation}]' in config_toml and state.connect in config_toml
    listed = flwr_json(files, "supernode", "list", state.federation)
    assert listed["success"] and len(listed["nodes"]) == 2


def test_registered_site_joins_and_stops_cleanly(federation: tuple[FederationFiles, CoordinatorState]) -> None:
    files, state = federation
    config = files.site("hospital-a")
    try:
        site = start_site(config, connect_timeout=60)
        assert site.node_id == state.nodes["hospital-a"]
        assert site.tls_version == "TLSv1.3"
        recorded = json.loads((config.state_dir / "supernode.pid").read_text())["command"]
        node_config = recorded[recorded.index("--node-config") + 1]
        assert "site-name='hospital-a'" in node_config and "max-epsilon=8.0" in node_config
        nodes = {n["node-id"]: n["status"] for n in flwr_json(files, "supernode", "list", state.federation)["nodes"]}
        assert nodes[str(site.node_id)] == "online"
        family = [site.pid, *descendants(site.pid)]
    finally:
        stopped = stop_site(config, timeout=10)
    assert stopped == site.pid
    assert not any(Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in family)


def test_site_with_an_unregistered_key_is_refused(federation: tuple[FederationFiles, CoordinatorState]) -> None:
    files, _ = federation
    config = files.site("hospital-c")
    try:
        with pytest.raises(DeploymentError, match="refused it or could not be reached") as info:
            start_site(config, connect_timeout=60)
        assert "Failed to activate SuperNode" in str(info.value)
        assert not (config.state_dir / "supernode.pid").exists()
    finally:
        stop_site(config, timeout=10)


@pytest.mark.slow
def test_site_without_the_ca_certificate_cannot_connect(
    federation: tuple[FederationFiles, CoordinatorState], tmp_path: Path
) -> None:
    files, state = federation
    bundle = files.site("hospital-b").bundle
    code, log = run_supernode(
        ["--superlink", state.connect, "--auth-supernode-private-key", str(bundle / "node-auth.key"),
         "--port", str(_free_port()), "--max-wait-time", "10"],
        tmp_path / "no-ca.log", timeout=90,
    )
    assert code not in (None, 0)
    assert "CERTIFICATE_VERIFY_FAILED" in log


@pytest.mark.slow
def test_plaintext_connections_are_refused(federation: tuple[FederationFiles, CoordinatorState], tmp_path: Path) -> None:
    files, state = federation
    host, port = state.connect.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            reply = sock.recv(100)
        except ConnectionResetError:
            reply = b""
    assert not reply.startswith(b"HTTP/")
    code, log = run_supernode(
        ["--superlink", state.connect, "--insecure", "--port", str(_free_port()), "--max-wait-time", "8"],
        tmp_path / "plain.log", timeout=90,
    )
    assert code not in (None, 0)
    assert "Failed to initialize the connection to the SuperLink" in log


@pytest.mark.slow
def test_restart_on_the_same_database_keeps_the_registrations(tmp_path: Path) -> None:
    files = write_federation(tmp_path, sites=("hospital-a",))
    coordinator = files.coordinator()
    try:
        first = start_coordinator(coordinator)
        assert first.nodes["hospital-a"] is not None
        assert stop_coordinator(coordinator, timeout=10) == first.pid
        second = start_coordinator(coordinator)
        assert second.nodes == {"hospital-a": None}  # already registered in the database
    finally:
        stop_coordinator(coordinator, timeout=10)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
