"""Coordinator and site configs: every bad input is refused before anything starts.

No Flower process starts here (fast, part of the default run); a tiny TLS server on
127.0.0.1 stands in for a coordinator where a handshake is needed.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from flsuite.coordinator import check_coordinator
from flsuite.deployment import load_coordinator_config, load_site_config
from flsuite.deployment.network import free_port
from flsuite.deployment.processes import ProcessFiles, running_pid, start_process, stop_process
from flsuite.deployment.testing import FederationFiles, point_sites_at, write_federation
from flsuite.errors import ConfigError, CoordinatorUnreachable, DataError, InsecureKeyFile
from flsuite.pki import CertificateError, init_authority, issue_coordinator
from flsuite.site import check_site, format_node_config, site_node_config


@pytest.fixture
def federation(tmp_path: Path) -> FederationFiles:
    return write_federation(tmp_path, sites=("hospital-a", "hospital-b"))


def edit(path: Path, **changes: object) -> None:
    config = yaml.safe_load(path.read_text())
    config.update(changes)
    path.write_text(yaml.safe_dump(config))


@pytest.fixture
def tls_server(federation: FederationFiles) -> Iterator[tuple[str, Path]]:
    """A TLS server on 127.0.0.1 presenting the federation's coordinator certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(federation.pki / "coordinator/coordinator.crt", federation.pki / "coordinator/coordinator.key")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}", federation.pki
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def test_relative_paths_resolve_against_the_config_folder(federation: FederationFiles) -> None:
    site = load_site_config(federation.site_configs["hospital-a"])
    assert site.data == (federation.root / "data/hospital-a.csv").resolve()
    assert site.bundle == (federation.pki / "sites/hospital-a").resolve()
    coordinator = load_coordinator_config(federation.coordinator_config)
    assert coordinator.host == "127.0.0.1"
    assert coordinator.sites["hospital-b"] == (federation.pki / "sites/hospital-b/node-auth.pub").resolve()
    with pytest.raises(ValidationError):  # frozen
        site.data = Path("/elsewhere")  # type: ignore[misc]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"extra_key": 1}, r"extra_key: Extra inputs are not permitted"),
        ({"privacy": {"max_epsilon": -1, "delta": 1e-5}}, r"privacy\.max_epsilon"),
        ({"privacy": {"max_epsilon": 1.0, "delta": 2}}, r"privacy\.delta.*less than 1"),
        ({"privacy": {"max_epsilon": float("inf"), "delta": 1e-5}}, r"finite"),
        ({"port": 70000}, r"port"),
        ({"port": True}, r"port: .*yes/no value true"),
        ({"privacy": {"max_epsilon": True, "delta": 1e-5}}, r"privacy\.max_epsilon: .*yes/no value true"),
        ({"connect_timeout": float("inf")}, r"connect_timeout: .*finite"),
        ({"site": "../x"}, r"site"),
    ],
)
def test_bad_site_config_values_name_the_field(federation: FederationFiles, changes: dict, message: str) -> None:
    path = federation.site_configs["hospital-a"]
    edit(path, **changes)
    with pytest.raises(ConfigError, match=message) as info:
        load_site_config(path)
    assert str(path) in str(info.value)


def test_missing_or_malformed_config_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_site_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("site: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_site_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_coordinator_config(bad)
    bad.write_text("state_dir: x\n")
    with pytest.raises(ConfigError, match=r"tls: Field required"):
        load_coordinator_config(bad)


def test_missing_data_file_is_refused(federation: FederationFiles) -> None:
    path = federation.site_configs["hospital-a"]
    edit(path, data="data/missing.csv")
    with pytest.raises(DataError, match=r"data: .*missing\.csv does not exist"):
        check_site(load_site_config(path), probe=False)


def test_unwritable_ledger_path_is_refused(federation: FederationFiles) -> None:
    path = federation.site_configs["hospital-a"]
    edit(path, ledger="data/hospital-a.csv/ledger.sqlite")  # parent is a file
    with pytest.raises(DataError, match=r"ledger: cannot create .*ledger\.sqlite"):
        check_site(load_site_config(path), probe=False)
    edit(path, ledger="data")  # a folder, not a file
    with pytest.raises(DataError, match=r"ledger: .*data is not a writable file"):
        check_site(load_site_config(path), probe=False)


def test_bundle_problems_are_refused(federation: FederationFiles) -> None:
    path = federation.site_configs["hospital-a"]
    config = load_site_config(path)
    (config.bundle / "node-auth.key").chmod(0o644)
    with pytest.raises(InsecureKeyFile, match=r"chmod 600 .*node-auth\.key"):
        check_site(config, probe=False)
    (config.bundle / "node-auth.key").chmod(0o600)
    edit(path, site="hospital-z")
    with pytest.raises(CertificateError, match=r"'hospital-z' is not pinned"):
        check_site(load_site_config(path), probe=False)
    # hospital-b's bundle with hospital-a's name: the identity does not match the pin
    edit(path, site="hospital-a", bundle="pki/sites/hospital-b")
    with pytest.raises(CertificateError, match="does not match the identity pinned for 'hospital-a'"):
        check_site(load_site_config(path), probe=False)
    edit(path, bundle="pki/sites/hospital-a")
    (config.bundle / "ca.crt").unlink()
    with pytest.raises(CertificateError, match=r"ca\.crt is missing"):
        check_site(load_site_config(path), probe=False)


def test_expired_ca_in_the_bundle_is_refused(federation: FederationFiles) -> None:
    later = datetime.now(UTC) + timedelta(days=4000)
    with pytest.raises(CertificateError, match=r"ca\.crt expired"):
        check_site(load_site_config(federation.site_configs["hospital-a"]), probe=False, now=later)


def test_coordinator_address_that_does_not_answer(federation: FederationFiles) -> None:
    address = f"127.0.0.1:{free_port()}"
    point_sites_at(federation, address)
    with pytest.raises(CoordinatorUnreachable, match=rf"coordinator address {address} does not answer"):
        check_site(load_site_config(federation.site_configs["hospital-a"]))


def test_coordinator_that_answers_over_tls_passes_the_check(tls_server: tuple[str, Path], federation: FederationFiles) -> None:
    address, _ = tls_server
    point_sites_at(federation, address)
    assert check_site(load_site_config(federation.site_configs["hospital-a"])) == "TLSv1.3"


def test_coordinator_with_a_certificate_of_another_ca_is_refused(
    tls_server: tuple[str, Path], federation: FederationFiles, tmp_path: Path
) -> None:
    address, _ = tls_server
    point_sites_at(federation, address)
    other = init_authority(tmp_path / "other-ca")
    config = load_site_config(federation.site_configs["hospital-a"])
    (config.bundle / "ca.crt").write_bytes(other.ca_certificate.read_bytes())
    with pytest.raises(CoordinatorUnreachable, match=r"presented a certificate that .*ca\.crt does not accept"):
        check_site(config)


def test_coordinator_certificate_problems_are_refused(federation: FederationFiles, tmp_path: Path) -> None:
    config = load_coordinator_config(federation.coordinator_config)
    check_coordinator(config)
    with pytest.raises(CertificateError, match=r"coordinator\.crt expired"):
        check_coordinator(config, now=datetime.now(UTC) + timedelta(days=400))
    other = init_authority(tmp_path / "other")
    issue_coordinator(other.root, hosts=["localhost"])
    edit(federation.coordinator_config, tls={
        "ca_certificate": "pki/ca.crt", "certificate": "pki/coordinator/coordinator.crt", "key": str(other.coordinator_key),
    })
    with pytest.raises(CertificateError, match="does not belong to the certificate"):
        check_coordinator(load_coordinator_config(federation.coordinator_config))
    edit(federation.coordinator_config, tls={
        "ca_certificate": "pki/ca.crt", "certificate": str(other.coordinator_certificate), "key": str(other.coordinator_key),
    })
    with pytest.raises(CertificateError, match="is not signed by the CA"):
        check_coordinator(load_coordinator_config(federation.coordinator_config))


def test_coordinator_site_keys_must_be_node_auth_public_keys(federation: FederationFiles) -> None:
    edit(federation.coordinator_config, sites={"hospital-a": "pki/sites/hospital-a/identity.pub"})
    with pytest.raises(CertificateError, match=r"sites\.hospital-a: .*identity\.pub is not an OpenSSH EC public key"):
        check_coordinator(load_coordinator_config(federation.coordinator_config))
    edit(federation.coordinator_config, sites={"hospital-a": "pki/nope.pub"})
    with pytest.raises(CertificateError, match=r"nope\.pub does not exist"):
        check_coordinator(load_coordinator_config(federation.coordinator_config))


def test_label_column_travels_in_the_node_config_and_must_exist(federation: FederationFiles) -> None:
    path = federation.site_configs["hospital-a"]
    assert "label-column" not in site_node_config(load_site_config(path))  # the study's default applies
    edit(path, label_column="label")
    assert site_node_config(load_site_config(path))["label-column"] == "label"
    check_site(load_site_config(path), probe=False)
    edit(path, label_column="diagnosis")
    with pytest.raises(DataError, match=r"label_column: 'diagnosis' is not a column of .*hospital-a\.csv \(columns: x, label\)"):
        check_site(load_site_config(path), probe=False)


def test_node_config_carries_the_sites_own_settings(federation: FederationFiles) -> None:
    config = load_site_config(federation.site_configs["hospital-a"])
    values = site_node_config(config)
    assert values["site-name"] == "hospital-a"
    assert values["max-epsilon"] == 8.0 and values["delta"] == 1e-5
    assert values["identities-file"].endswith("pki/sites/hospital-a/identities.json")
    text = format_node_config(values)
    # Flower's own parser reads it back to the same values.
    from flwr.common.config import parse_config_args

    assert parse_config_args([text]) == values
    with pytest.raises(ValueError, match="quote"):
        format_node_config({"data-path": "/data/o'brien.csv"})


def test_processes_are_stopped_by_their_recorded_pid_only(tmp_path: Path) -> None:
    files = ProcessFiles(tmp_path, "sleeper")
    process = start_process(["sleep", "60"], files=files, env=os.environ, program="sleep")
    try:
        assert running_pid(files, program="sleep") == process.pid
        assert running_pid(files, program="flower-superlink") is None  # a PID running something else
        with pytest.raises(Exception, match="already running"):
            start_process(["sleep", "60"], files=files, env=os.environ, program="sleep")
        assert stop_process(files, program="sleep", timeout=5) == process.pid
        assert process.wait(timeout=5) is not None
        assert not files.pid_file.exists()
        assert stop_process(files, program="sleep") is None
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_stale_pid_file_never_stops_an_unrelated_process(tmp_path: Path) -> None:
    other = subprocess.Popen(["sleep", "60"])
    try:
        files = ProcessFiles(tmp_path, "superlink")
        files.pid_file.write_text(f'{{"pid": {other.pid}}}')
        assert stop_process(files, program="flower-superlink") is None
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_cli_sub_apps_explain_themselves_and_raise_user_errors(federation: FederationFiles) -> None:
    import typer
    from typer.testing import CliRunner

    from flsuite.cli.deployment_commands import coordinator_app, site_app
    from flsuite.cli.pki_commands import pki_app

    root = typer.Typer()
    root.add_typer(pki_app, name="pki")
    root.add_typer(coordinator_app, name="coordinator")
    root.add_typer(site_app, name="site")
    runner = CliRunner()
    assert "SuperLink with TLS" in runner.invoke(root, ["coordinator", "--help"]).output
    for command in ("check", "start", "stop"):
        assert command in runner.invoke(root, ["site", "--help"]).output
    path = federation.site_configs["hospital-a"]
    edit(path, data="data/missing.csv")
    result = runner.invoke(root, ["site", "check", "--config", str(path)])
    assert isinstance(result.exception, DataError)
    result = runner.invoke(root, ["site", "stop", "--config", str(path)])
    assert result.exit_code == 0 and "no site node was running" in result.output


def test_a_port_left_in_time_wait_by_a_crashed_coordinator_is_free_and_a_listening_one_is_not() -> None:
    """A coordinator killed with sites connected leaves its port in TIME_WAIT for a minute; its
    restart on the configured port (`flsuite coordinator start`) must not be refused as "in use"."""
    from flsuite.deployment.network import ensure_port_free
    from flsuite.errors import DeploymentError

    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds its listener
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with pytest.raises(DeploymentError, match=f"port {port} on 127.0.0.1 is in use"):
            ensure_port_free("127.0.0.1", port, field="port")
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the coordinator's side closes first (it died): TIME_WAIT stays on its port
    client.close()
    ensure_port_free("127.0.0.1", port, field="port")
