"""The Flower ClientApp of flsuite: thin wiring around ``flsuite.federation.site``."""

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from flsuite.federation.simulated_sites import simulated_site_mod
from flsuite.federation.site import handle_evaluate, handle_query, handle_train
from flsuite.secagg import secagg_mod

# simulated_site_mod first: it gives a simulated site the identity files secagg_mod reads.
app = ClientApp(mods=[simulated_site_mod, secagg_mod])


@app.train()
def train(msg: Message, context: Context) -> Message:
    return handle_train(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return handle_evaluate(msg, context)


@app.query()
def query(msg: Message, context: Context) -> Message:
    return handle_query(msg, context)
