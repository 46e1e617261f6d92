"""Secure aggregation (SecAgg+-style): the pure protocol core.

The coordinator learns only sum(w * update) and sum(w) over the sites that finished a
round; each site's update travels masked by a keyed AES-256-CTR/ChaCha20 stream. This
package is pure Python over plain dicts and numpy (no flwr, no torch). Its Flower wiring
lives with each role: ``flsuite.coordinator.secure_round`` wraps a round on the
coordinator, ``flsuite.site.secure_aggregation`` is the site's ClientApp mod.
"""

from flsuite.errors import SECAGG_REFUSAL_REASONS, SecAggAborted, SecAggError, SecAggRefused
from flsuite.secagg.coordinator import CoordinatorRound, RoundSum
from flsuite.secagg.graph import default_neighbours
from flsuite.secagg.identity import (
    generate_identity,
    load_identity,
    load_pinned_identities,
    public_identity,
    write_pinned_identities,
)
from flsuite.secagg.primitives import model_hash
from flsuite.secagg.settings import SecAggSettings
from flsuite.secagg.site import SiteRound

__all__ = [
    "SECAGG_REFUSAL_REASONS",
    "CoordinatorRound",
    "RoundSum",
    "SecAggAborted",
    "SecAggError",
    "SecAggRefused",
    "SecAggSettings",
    "SiteRound",
    "default_neighbours",
    "generate_identity",
    "load_identity",
    "load_pinned_identities",
    "model_hash",
    "public_identity",
    "write_pinned_identities",
]
