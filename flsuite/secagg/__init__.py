"""Secure aggregation (SecAgg+-style) on Flower's Message API.

The coordinator learns only sum(w * update) and sum(w) over the sites that finished a
round; each site's update travels masked by a keyed AES-256-CTR/ChaCha20 stream. The
protocol core (settings, site, coordinator) is pure Python over plain dicts; the Flower
wiring is ``secure_train_round`` (ServerApp side) and ``secagg_mod`` (ClientApp side).
"""

from typing import Any

from .coordinator import CoordinatorRound, RoundSum
from .errors import REFUSAL_REASONS, SecAggAborted, SecAggError, SecAggRefused
from .identity import generate_identity, load_identity, load_pinned_identities, public_identity, write_pinned_identities
from .settings import SecAggSettings
from .site import SiteRound

# The Flower wiring imports flwr; load it on first use so the pure core stays flwr-free.
_FLOWER = {
    "SecureRoundResult": "flower_coordinator",
    "secure_train_round": "flower_coordinator",
    "REFUSED_ERROR_CODE": "flower_site",
    "SITE_CONFIG_ERROR_CODE": "flower_site",
    "secagg_mod": "flower_site",
}


def __getattr__(name: str) -> Any:
    if name in _FLOWER:
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{_FLOWER[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "REFUSAL_REASONS",
    "REFUSED_ERROR_CODE",
    "SITE_CONFIG_ERROR_CODE",
    "CoordinatorRound",
    "RoundSum",
    "SecAggAborted",
    "SecAggError",
    "SecAggRefused",
    "SecAggSettings",
    "SecureRoundResult",
    "SiteRound",
    "generate_identity",
    "load_identity",
    "load_pinned_identities",
    "public_identity",
    "secagg_mod",
    "secure_train_round",
    "write_pinned_identities",
]
