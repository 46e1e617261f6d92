"""The site's Flower ClientApp: train, evaluate and status requests behind the site's mods."""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

__all__ = ["build_client_app"]


def build_client_app() -> ClientApp:
    """A ClientApp that answers the coordinator as a flsuite site.

    ``simulated_site_mod`` runs first: it gives a simulated site the identity files that
    ``secagg_mod`` reads. The handlers load torch on their first call only.
    """
    from flsuite.site.secure_aggregation import secagg_mod
    from flsuite.site.simulated import simulated_site_mod

    app = ClientApp(mods=[simulated_site_mod, secagg_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        from flsuite.site.handlers import handle_train

        return handle_train(msg, context)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        from flsuite.site.handlers import handle_evaluate

        return handle_evaluate(msg, context)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        from flsuite.site.handlers import handle_query

        return handle_query(msg, context)

    return app
