"""The site's Flower ClientApp: train, evaluate and status requests behind the site's mods."""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable

__all__ = ["build_client_app"]


def build_client_app() -> ClientApp:
    """A ClientApp that answers the coordinator as a flsuite site.

    ``simulated_site_mod`` runs first: it gives a simulated site the identity files that
    ``secagg_mod`` reads. The handlers load torch on their first call only.
    """
    from flsuite.site.secure_aggregation import secagg_mod
    from flsuite.site.simulated import simulated_site_mod
    from flsuite.timing import trace_file

    mods = [simulated_site_mod, secagg_mod]
    app = ClientApp(mods=[_timing_mod, *mods] if trace_file() is not None else mods)

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


def _timing_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Trace the handling of one message (flsuite.timing); profile it under FLSUITE_TRACE_PROFILE."""
    from flsuite.timing import mark, profile_dir

    kind = _stage(msg)
    mark("handler-start", message_id=msg.metadata.message_id, kind=kind)
    folder = profile_dir()
    if folder is None:
        reply = call_next(msg, context)
    else:
        import cProfile
        import os

        folder.mkdir(parents=True, exist_ok=True)
        profiler = cProfile.Profile()
        reply = profiler.runcall(call_next, msg, context)
        profiler.dump_stats(folder / f"{os.getpid()}-{kind}.prof")
    mark("handler-end", message_id=msg.metadata.message_id, kind=kind)
    return reply


def _stage(msg: Message) -> str:
    """The message type, or the secure-aggregation stage it carries."""
    from flsuite import protocol

    if msg.has_content() and protocol.SECAGG_RECORD in msg.content.config_records:
        return str(msg.content.config_records[protocol.SECAGG_RECORD].get(protocol.STAGE, msg.metadata.message_type))
    return msg.metadata.message_type
