"""The Flower ClientApp of flsuite: thin wiring around ``flsuite.federation.site``."""

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from flsuite.federation.site import handle_evaluate, handle_train

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    return handle_train(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return handle_evaluate(msg, context)
