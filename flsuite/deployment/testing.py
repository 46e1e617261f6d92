"""Test helpers: a complete federation on disk (PKI, coordinator and site configs) in a folder.

Shipped with the package so that other test suites (end-to-end studies) can build the same
federation; every process a helper starts is stopped by PID when its context ends.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from flsuite.coordinator.superlink import CoordinatorState, start_coordinator, stop_coordinator
from flsuite.deployment.config import CoordinatorConfig, SiteConfig, load_coordinator_config, load_site_config
from flsuite.pki.authority import init_authority, issue_coordinator, issue_site
from flsuite.site.node import stop_site


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
