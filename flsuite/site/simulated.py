"""Simulated sites get what a real site brings: a name, an identity key, a site config, a ledger.

In a real federation each site's node config names its identity key, its pinned list of
peer identities, its privacy ledger, its cap and delta and the dataset its budget belongs
to. A simulated site (Flower gives it only a ``partition-id``) gets the same from a
per-site folder under the study's ``sites_dir``, which outlives studies so privacy spend
carries over, as it would at a real hospital. The folder's ``site.json`` (name, dataset,
max_epsilon, delta) is written ONCE, when the folder is created, from the study's privacy
settings, with the genesis anchor of the site's ledger; from then on the site reads it and
no study changes it: a study asking another delta is refused, and a study's max_epsilon
never raises an existing site's cap. The ServerApp prepares the folders (``flsuite run`` does
it before, ``flwr run .`` leaves it to the ServerApp).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

from flsuite.config import anchored_paths, flsuite_home, from_run_config
from flsuite.config.schema import StudyConfig
from flsuite.errors import ConfigError, PlanError
from flsuite.privacy import LedgerAnchor, anchor_path, valid_dataset_name
from flsuite.protocol import (
    DATASET,
    DELTA,
    IDENTITIES_FILE,
    IDENTITY_KEY,
    LEDGER_PATH,
    MAX_EPSILON,
    PARTITION_ID,
    SITE_NAME,
)
from flsuite.secagg.identity import (
    generate_identity,
    load_identity,
    load_pinned_identities,
    public_identity,
    write_pinned_identities,
)
from flsuite.storage import write_atomic

PINNED_FILE = "identities.json"
SITE_CONFIG_FILE = "site.json"
LEDGER_FILE = "ledger.jsonl"
IDENTITY_FILE = "identity.key"
_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SimulatedSiteConfig:
    """A simulated site's own settings, fixed in its folder when the folder is created."""

    name: str
    dataset: str
    max_epsilon: float
    delta: float

    def __post_init__(self) -> None:
        if not valid_dataset_name(self.name) or not valid_dataset_name(self.dataset):
            raise ConfigError(f"simulated site config: name {self.name!r} and dataset {self.dataset!r} must be names")
        for field, value in (("max_epsilon", self.max_epsilon), ("delta", self.delta)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"simulated site {self.name!r}: {field} must be a finite number > 0, got {value!r}")
        if not self.delta < 1:
            raise ConfigError(f"simulated site {self.name!r}: delta must be < 1, got {self.delta!r}")


def simulated_site_name(partition_id: int) -> str:
    return f"site-{partition_id}"


def site_folder(sites_dir: Path, name: str) -> Path:
    return sites_dir / name


def read_site_config(folder: Path) -> SimulatedSiteConfig:
    """The site config of a simulated site's folder; ConfigError when it is missing or malformed."""
    path = folder / SITE_CONFIG_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(record, dict) or set(record) != {f.name for f in dataclasses.fields(SimulatedSiteConfig)}:
            raise ValueError("expected the keys name, dataset, max_epsilon, delta")
        return SimulatedSiteConfig(**record)
    except FileNotFoundError:
        raise ConfigError(
            f"simulated site folder {folder} has no {SITE_CONFIG_FILE}: run the study with flsuite "
            "(`flsuite run`), which prepares the site folders under sites_dir"
        ) from None
    except (OSError, ValueError, TypeError) as error:
        raise ConfigError(f"simulated site config {path} is unusable: {error}") from None


def new_site_config(study: StudyConfig, index: int) -> SimulatedSiteConfig:
    """The site config a new simulated site gets: the study's privacy settings as defaults."""
    name = simulated_site_name(index)
    delta = study.privacy.delta
    if delta is None:
        from flsuite.data.study_data import split_study
        from flsuite.site.privacy_guard import DEFAULT_DELTA

        records = len(split_study(study.data, study.federation.num_sites).sites[index])
        delta = min(DEFAULT_DELTA, 1.0 / (10 * records))
    return SimulatedSiteConfig(name=name, dataset=name, max_epsilon=float(study.privacy.max_epsilon), delta=float(delta))


def check_study_privacy(site: SimulatedSiteConfig, study: StudyConfig, folder: Path) -> None:
    """Refuse a study that asks an existing site for another delta; its max_epsilon raises no cap."""
    asked = study.privacy.delta
    if asked is not None and asked != site.delta:
        raise PlanError(
            f"simulated site {site.name!r} has delta {site.delta:g}, fixed in {folder / SITE_CONFIG_FILE} when "
            f"its folder was created; this study asks privacy.delta={asked:g}. A site's delta cannot change: "
            f"set privacy.delta={site.delta:g} (or null), or use a new sites_dir."
        )
    if study.privacy.max_epsilon != site.max_epsilon:
        _log.warning(
            "simulated site %s keeps its cap max_epsilon=%g (from %s); privacy.max_epsilon=%g applies only to "
            "site folders created by this study", site.name, site.max_epsilon, folder / SITE_CONFIG_FILE,
            study.privacy.max_epsilon,
        )


def prepare_simulated_sites(sites_dir: Path, study: StudyConfig) -> None:
    """Give sites 0..n-1 an identity key each, pin them all in one identities file, and give a
    new site folder its site config and its ledger's genesis anchor; check the study against
    the existing ones (PlanError before anything runs)."""
    names = [simulated_site_name(index) for index in range(study.federation.num_sites)]
    pinned_path = sites_dir / PINNED_FILE
    pinned = load_pinned_identities(pinned_path) if pinned_path.exists() else {}
    for name in names:  # every existing site, before anything is written
        folder = site_folder(sites_dir, name)
        if name in pinned and not ((folder / IDENTITY_FILE).exists() and (folder / SITE_CONFIG_FILE).exists()):
            # A site that lost its folder must not come back from 0 spent unnoticed.
            raise PlanError(
                f"simulated site {name!r} is pinned in {pinned_path} but its folder {folder} lost its identity key or "
                "site config, so what it already spent is unknown. Only the operator can start it over: "
                f"`flsuite site reset-ledger --sites-dir {sites_dir} --site {name} --yes` (logged)."
            )
        if study.privacy.enabled and (folder / SITE_CONFIG_FILE).exists():
            check_study_privacy(read_site_config(folder), study, folder)
    sites_dir.mkdir(parents=True, exist_ok=True)
    changed = False
    for index in range(study.federation.num_sites):
        name = simulated_site_name(index)
        folder = site_folder(sites_dir, name)
        key_path = folder / IDENTITY_FILE
        config_path = folder / SITE_CONFIG_FILE
        folder.mkdir(parents=True, exist_ok=True)
        public = public_identity(load_identity(key_path)) if key_path.exists() else generate_identity(key_path)
        if pinned.get(name) != public:
            pinned[name] = public
            changed = True
        if config_path.exists():
            continue
        site = new_site_config(study, index)
        ledger = folder / LEDGER_FILE
        if not ledger.exists() and not anchor_path(ledger).exists():  # a brand-new site
            LedgerAnchor(ledger, site=name, dataset=site.dataset, key=load_identity(key_path)).write_genesis()
        write_atomic(config_path, (json.dumps(dataclasses.asdict(site), indent=2, sort_keys=True) + "\n").encode(), mode=0o600)
    if changed or not pinned_path.exists():
        write_pinned_identities(pinned_path, pinned)


def reset_simulated_ledger(sites_dir: Path, name: str):  # noqa: ANN201 (a LedgerReset)
    """The operator's reset of a simulated site's ledger (see ``ledger_admin.reset_ledger``)."""
    from flsuite.site.ledger_admin import reset_ledger

    folder = site_folder(Path(sites_dir), name)
    if not ((folder / IDENTITY_FILE).exists() and (folder / SITE_CONFIG_FILE).exists()):
        return _forget_lost_site(Path(sites_dir), name)
    site = read_site_config(folder)
    if site.name != name:
        raise ConfigError(f"{folder / SITE_CONFIG_FILE} names site {site.name!r}, not {name!r}")
    return reset_ledger(folder / LEDGER_FILE, site=site.name, dataset=site.dataset, identity_key=folder / IDENTITY_FILE)


def _forget_lost_site(sites_dir: Path, name: str):  # noqa: ANN202 (a LedgerReset)
    """A simulated site whose folder was lost: archive what is left, drop its pin, log it; the
    next study gives it a new folder (new identity, genesis ledger)."""
    from flsuite.site.ledger_admin import LedgerReset, log_reset

    folder = site_folder(sites_dir, name)
    pinned_path = sites_dir / PINNED_FILE
    pinned = load_pinned_identities(pinned_path) if pinned_path.exists() else {}
    if name not in pinned and not folder.exists():
        raise ConfigError(f"there is no simulated site {name!r} under {sites_dir}")
    archived: tuple[Path, ...] = ()
    if folder.exists():
        target = folder.with_name(f"{folder.name}.archived-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}")
        folder.rename(target)
        archived = (target,)
    if name in pinned:
        del pinned[name]
        write_pinned_identities(pinned_path, pinned)
    ledger = folder / LEDGER_FILE
    log_file = log_reset(sites_dir / "reset.log", {"action": "forget-lost-site", "site": name, "archived": [str(p) for p in archived]})
    return LedgerReset(ledger=ledger, archived=archived, old_state="lost with its folder (unknown spend)", log_file=log_file)


def simulated_site_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Fill a simulated site's node config from its folder; a real site's config is left alone.

    Relative paths of the run_config (`flwr run .` sends pyproject's) are anchored where the
    ServerApp anchors them (``flsuite.config.app_paths``) while the site handles the message;
    the run_config is put back afterwards, since Flower's simulation refuses a ClientApp that
    changed it.
    """
    changes = anchored_paths(context.run_config, root=flsuite_home())
    original = {key: context.run_config[key] for key in changes}
    context.run_config.update(changes)
    try:
        node = context.node_config
        if PARTITION_ID in node and SITE_NAME not in node and context.run_config.get("sites_dir"):
            study = from_run_config(context.run_config)
            node.update(simulated_node_config(Path(str(context.run_config["sites_dir"])), int(node[PARTITION_ID]), study=study))
        return call_next(msg, context)
    finally:
        context.run_config.update(original)


def simulated_node_config(sites_dir: Path, partition_id: int, *, study: StudyConfig | None = None) -> dict[str, Any]:
    """The node config a simulated site would carry if it were a real one.

    With a DP study the site's own cap, delta and dataset come from its site config (and a
    study asking another delta is refused); a study without DP gets no cap, so the simulated
    site plays along with non-private simulations, as before.
    """
    name = simulated_site_name(partition_id)
    folder = site_folder(sites_dir, name)
    values: dict[str, Any] = {
        PARTITION_ID: partition_id,
        SITE_NAME: name,
        IDENTITY_KEY: str(folder / IDENTITY_FILE),
        IDENTITIES_FILE: str(sites_dir / PINNED_FILE),
        LEDGER_PATH: str(folder / LEDGER_FILE),
        DATASET: name,
    }
    if study is not None and study.privacy.enabled:
        site = read_site_config(folder)
        check_study_privacy(site, study, folder)
        values.update({DATASET: site.dataset, MAX_EPSILON: site.max_epsilon, DELTA: site.delta})
    return values
