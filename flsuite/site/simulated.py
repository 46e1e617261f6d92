"""Simulated sites get what a real site brings: a name, an identity key, a ledger folder.

In a real federation each site's node config names its identity key, its pinned list of
peer identities and its privacy ledger. A simulated site (Flower gives it only a
``partition-id``) gets the same from a per-site folder under the study's ``sites_dir``,
which outlives studies so privacy spend carries over, as it would at a real hospital.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

from flsuite.protocol import IDENTITIES_FILE, IDENTITY_KEY, LEDGER_PATH, PARTITION_ID, SITE_NAME
from flsuite.secagg.identity import (
    generate_identity,
    load_identity,
    load_pinned_identities,
    public_identity,
    write_pinned_identities,
)

PINNED_FILE = "identities.json"


def simulated_site_name(partition_id: int) -> str:
    return f"site-{partition_id}"


def site_folder(sites_dir: Path, name: str) -> Path:
    return sites_dir / name


def prepare_simulated_sites(sites_dir: Path, count: int) -> None:
    """Give sites 0..count-1 an identity key each and pin them all in one identities file."""
    sites_dir.mkdir(parents=True, exist_ok=True)
    pinned_path = sites_dir / PINNED_FILE
    pinned = load_pinned_identities(pinned_path) if pinned_path.exists() else {}
    changed = False
    for index in range(count):
        name = simulated_site_name(index)
        key_path = site_folder(sites_dir, name) / "identity.key"
        key_path.parent.mkdir(parents=True, exist_ok=True)
        public = public_identity(load_identity(key_path)) if key_path.exists() else generate_identity(key_path)
        if pinned.get(name) != public:
            pinned[name] = public
            changed = True
    if changed or not pinned_path.exists():
        write_pinned_identities(pinned_path, pinned)


def simulated_site_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Fill a simulated site's node config from its folder; a real site's config is left alone."""
    node = context.node_config
    if PARTITION_ID in node and SITE_NAME not in node and context.run_config.get("sites_dir"):
        node.update(simulated_node_config(Path(str(context.run_config["sites_dir"])), int(node[PARTITION_ID])))
    return call_next(msg, context)


def simulated_node_config(sites_dir: Path, partition_id: int) -> dict[str, str | int]:
    """The node config a simulated site would carry if it were a real one."""
    name = simulated_site_name(partition_id)
    folder = site_folder(sites_dir, name)
    return {
        PARTITION_ID: partition_id,
        SITE_NAME: name,
        IDENTITY_KEY: str(folder / "identity.key"),
        IDENTITIES_FILE: str(sites_dir / PINNED_FILE),
        LEDGER_PATH: str(folder / "ledger.jsonl"),
    }
