"""Test helpers: a complete federation on disk (PKI, coordinator and site configs) in a folder.

Shipped with the package so that other test suites (end-to-end studies) can build the same
federation. Processes: `running_federation` stops the coordinator and every site by PID when
its context ends; `start_sites` starts the sites inside it; `start_launch` runs `flsuite launch`
(stop it with `stop_family`); `kill_family` and `wait_for_app_process` play a machine that dies
while a SuperNode (or the SuperLink) runs a given app process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from flsuite.coordinator.superlink import CoordinatorState, start_coordinator, stop_coordinator
from flsuite.deployment.config import CoordinatorConfig, SiteConfig, load_coordinator_config, load_site_config
from flsuite.deployment.processes import descendants, flower_executable, is_running, terminate
from flsuite.pki.authority import init_authority, issue_coordinator, issue_site
from flsuite.site.node import SiteState, start_site, stop_site


@dataclass(frozen=True)
class FederationFiles:
    """Paths of a federation written by `write_federation`."""

    root: Path
    pki: Path
    coordinator_config: Path
    site_configs: dict[str, Path]

    def coordinator(self) -> CoordinatorConfig:
        return load_coordinator_config(self.coordinator_config)

    def site(self, name: str) -> SiteConfig:
        return load_site_config(self.site_configs[name])


def write_federation(
    root: Path,
    *,
    sites: Sequence[str] = ("hospital-a", "hospital-b", "hospital-c"),
    registered: Sequence[str] | None = None,
    coordinator_port: int | None = None,
    max_epsilon: float = 8.0,
    delta: float = 1e-5,
) -> FederationFiles:
    """Write a PKI, a coordinator config registering `registered` (default: all) and one config per site.

    The site configs name the coordinator at 127.0.0.1:PORT; with coordinator_port None, call
    `point_sites_at` once the coordinator has picked its port.
    """
    root = Path(root)
    pki = root / "pki"
    init_authority(pki)
    issue_coordinator(pki, hosts=["localhost"], ips=["127.0.0.1"])
    for name in sites:
        issue_site(pki, name)
    registered = list(sites if registered is None else registered)
    coordinator = {
        "federation": "flsuite-test",
        "state_dir": "coordinator-state",
        "host": "127.0.0.1",
        "port": coordinator_port,
        "tls": {
            "ca_certificate": "pki/ca.crt",
            "certificate": "pki/coordinator/coordinator.crt",
            "key": "pki/coordinator/coordinator.key",
        },
        "sites": {name: f"pki/sites/{name}/node-auth.pub" for name in registered},
    }
    coordinator_path = root / "coordinator.yaml"
    coordinator_path.write_text(yaml.safe_dump(coordinator, sort_keys=False))
    site_paths = {}
    for name in sites:
        data = root / "data" / f"{name}.csv"
        data.parent.mkdir(parents=True, exist_ok=True)
        data.write_text("x,label\n0.0,0\n1.0,1\n")
        config = {
            "site": name,
            "coordinator": f"127.0.0.1:{coordinator_port or 1}",
            "bundle": f"pki/sites/{name}",
            "data": f"data/{name}.csv",
            "ledger": f"{name}-state/ledger.sqlite",
            "state_dir": f"{name}-state",
            "privacy": {"max_epsilon": max_epsilon, "delta": delta},
        }
        site_paths[name] = root / f"{name}.yaml"
        site_paths[name].write_text(yaml.safe_dump(config, sort_keys=False))
    return FederationFiles(root, pki, coordinator_path, site_paths)


def point_sites_at(files: FederationFiles, address: str) -> None:
    """Rewrite every site config's coordinator address (after the coordinator picked a port)."""
    for path in files.site_configs.values():
        config = yaml.safe_load(path.read_text())
        config["coordinator"] = address
        path.write_text(yaml.safe_dump(config, sort_keys=False))


@contextmanager
def running_federation(files: FederationFiles) -> Iterator[CoordinatorState]:
    """Start the coordinator; on exit stop every site and the coordinator by their PIDs."""
    coordinator = files.coordinator()
    try:
        state = start_coordinator(coordinator)
        point_sites_at(files, state.connect)
        yield state
    finally:
        for name in files.site_configs:
            stop_site(files.site(name), timeout=10)
        stop_coordinator(coordinator, timeout=10)


def write_site_data(files: FederationFiles, *, dataset: str = "breast_cancer") -> None:
    """Give each site's CSV its own partition of a built-in dataset (the study's default split)."""
    import csv

    from flsuite.config.schema import DataConfig
    from flsuite.data.study_data import split_study

    sites = list(files.site_configs)
    split = split_study(DataConfig(dataset=dataset), len(sites))
    for name, data in zip(sites, split.sites):
        with (files.root / "data" / f"{name}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow([f"f{i}" for i in range(data.num_features)] + ["label"])
            for features, label in zip(data.features.tolist(), data.labels.tolist()):
                writer.writerow([*features, label])


def start_sites(files: FederationFiles, *, connect_timeout: float = 90) -> dict[str, SiteState]:
    """Start every site's SuperNode (stopped by `running_federation` on exit); their states by name."""
    return {name: start_site(files.site(name), connect_timeout=connect_timeout) for name in files.site_configs}


def start_launch(files: FederationFiles, log: Path, args: Sequence[str]) -> subprocess.Popen:
    """Run `flsuite launch ARGS --config COORDINATOR` in its own session, its output in ``log``.

    Stop it with `stop_family(process.pid)`, also when the test fails.
    """
    command = [flower_executable("flsuite"), "launch", *args, "--config", str(files.coordinator_config)]
    with log.open("ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=files.root,  # noqa: S603
                                env={**os.environ, "COLUMNS": "160"}, start_new_session=True)


def stop_family(pid: int, *, timeout: float = 10) -> None:
    """SIGTERM a process and its descendants, SIGKILL what is left after ``timeout``."""
    terminate([pid, *descendants(pid)], timeout=timeout)


def kill_family(pid: int, *, timeout: float = 30.0) -> list[int]:
    """SIGKILL a process and all its descendants at once (its machine dies: no goodbye); their PIDs.

    Returns once every one of them is dead (gone or a zombie), so that what they held, such as
    a listening port, is free; a loaded machine can take a moment to deliver SIGKILL."""
    family = [pid, *descendants(pid)]
    for member in family:
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while any(is_running(member) for member in family) and time.monotonic() < deadline:
        time.sleep(0.05)
    return family


def wait_for_app_process(pid: int, *, timeout: float, nth: int = 1, marker: bytes = b"clientapp") -> int | None:
    """The PID of the nth descendant of ``pid`` whose command line holds ``marker`` (a SuperNode runs one
    ClientApp process per message; a SuperLink one ``flwr-serverapp`` per run), or None after ``timeout``."""
    deadline = time.monotonic() + timeout
    seen: list[int] = []
    while time.monotonic() < deadline:
        for child in descendants(pid):
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if marker in cmdline and child not in seen:
                seen.append(child)
                if len(seen) >= nth:
                    return child
        time.sleep(0.1)
    return None
