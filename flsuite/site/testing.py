"""Test sites for secure aggregation: a ClientApp with ``secagg_mod`` per node and real identity files.

They ship with the package so that tests and benchmarks play real sites on the in-process
Grid (``flsuite.flower.InProcessGrid``) without a study around them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp

from flsuite import protocol
from flsuite.secagg.identity import generate_identity, write_pinned_identities
from flsuite.site.secure_aggregation import secagg_mod

__all__ = ["build_sites"]

Handler = Callable[[Message, Context], Message]


def build_sites(directory: str | Path, node_ids: Iterable[int], train: Handler, *,
                run_id: int = 7) -> tuple[dict[int, ClientApp], dict[int, Context]]:
    """A ClientApp with ``secagg_mod`` for each node, each with its own identity key file,
    one shared pinned-identities file, and a Context whose node_config points at them."""
    directory = Path(directory)
    nodes = list(node_ids)
    names = {node: f"site-{i}" for i, node in enumerate(nodes)}
    pinned = {names[n]: generate_identity(directory / f"{names[n]}.pem", overwrite=True) for n in nodes}
    write_pinned_identities(directory / "identities.json", pinned)
    app = ClientApp(mods=[secagg_mod])
    app.train()(train)

    @app.query()
    def unknown_query(message: Message, context: Context) -> Message:
        return Message(Error(code=protocol.UNKNOWN_REQUEST, reason="no such query"), reply_to=message)

    contexts = {
        node: Context(run_id=run_id, node_id=node, state=RecordDict(), run_config={},
                      node_config={protocol.IDENTITY_KEY: str(directory / f"{names[node]}.pem"),
                                   protocol.SITE_NAME: names[node],
                                   protocol.IDENTITIES_FILE: str(directory / "identities.json")})
        for node in nodes
    }
    return {node: app for node in nodes}, contexts
