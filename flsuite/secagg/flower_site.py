"""The site side on Flower: a client mod that answers the secure-aggregation stages.

Add it to the ClientApp (``ClientApp(mods=[secagg_mod])``) and register a ``@app.query()``
function too: Flower only runs app mods around registered functions, and the protocol's
key-exchange and unmask stages arrive as "query" messages (the mod answers them before
the query function is reached). The mod reads node_config "identity-key", "site-name" and
"identities-file", keeps its per-round state in ``context.state["flsuite.secagg"]`` (bytes
in a ConfigRecord, so it works when every message runs in a fresh process), and passes
train messages on as plain train messages ("arrays" + "config"). From the training reply
it sends back only the masked vector and the metric/config records, minus "num-examples".
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from flsuite.errors import ConfigError

from .errors import SecAggRefused
from .flower_model import ModelLayout, model_digest
from .identity import load_identity, load_pinned_identities
from .site import SiteRound

__all__ = ["MASKED_RECORD", "REFUSED_ERROR_CODE", "SECAGG_RECORD", "SITE_CONFIG_ERROR_CODE", "STATE_RECORD", "secagg_mod"]

SECAGG_RECORD = "secagg"  # ConfigRecord carrying a stage request or reply
MASKED_RECORD = "secagg-masked"  # ArrayRecord with the masked vector under "masked"
STATE_RECORD = "flsuite.secagg"  # ConfigRecord in context.state
REFUSED_ERROR_CODE = 4100  # Error.code of a refusal; Error.reason starts with "[reason-code]"
SITE_CONFIG_ERROR_CODE = 4101  # the site's own secagg configuration (key files) is unusable


def secagg_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Answer secure-aggregation stages; pass every other message on unchanged."""
    if not msg.has_content() or SECAGG_RECORD not in msg.content.config_records:
        return call_next(msg, context)
    request: dict[str, Any] = dict(msg.content.config_records[SECAGG_RECORD])
    try:
        site = _load_site(context)
    except ConfigError as exc:
        return Message(Error(code=SITE_CONFIG_ERROR_CODE, reason=str(exc)), reply_to=msg)
    try:
        stage = request.get("stage")
        if stage == "setup":
            return _reply(msg, site.setup(request))
        if stage == "share-keys":
            return _reply(msg, site.share_keys(request))
        if stage == "unmask":
            return _reply(msg, site.unmask(request))
        if stage == "train":
            return _train(msg, context, call_next, site, request)
        site.refuse("bad-request", f"unknown secure-aggregation stage {stage!r}")
    except SecAggRefused as refusal:
        return Message(Error(code=REFUSED_ERROR_CODE, reason=str(refusal)), reply_to=msg)
    finally:
        context.state[STATE_RECORD] = ConfigRecord(site.state)


def _load_site(context: Context) -> SiteRound:
    config = context.node_config
    missing = [k for k in ("identity-key", "site-name", "identities-file") if not config.get(k)]
    if missing:
        raise ConfigError(f"node-config lacks {missing}; secure aggregation needs the site's identity key, "
                          "site name and pinned identities file.")
    stored = context.state.config_records.get(STATE_RECORD)
    return SiteRound(node_id=context.node_id, run_id=context.run_id, site_name=str(config["site-name"]),
                     identity=load_identity(str(config["identity-key"])),
                     pinned=load_pinned_identities(str(config["identities-file"])),
                     state=dict(stored) if stored is not None else None)


def _reply(msg: Message, reply: dict[str, Any]) -> Message:
    return Message(RecordDict({SECAGG_RECORD: ConfigRecord(reply)}), reply_to=msg)


def _train(msg: Message, context: Context, call_next: ClientAppCallable, site: SiteRound,
           request: dict[str, Any]) -> Message:
    records = msg.content.array_records
    if "arrays" not in records:
        site.refuse("bad-request", "the train stage carries no ArrayRecord 'arrays'")
    global_arrays = records["arrays"]
    site.begin_train(request, model_hash=model_digest(global_arrays))  # refuses before any training
    config = msg.content.config_records.get("config", ConfigRecord())
    msg.content = RecordDict({"arrays": global_arrays, "config": config})
    trained = call_next(msg, context)
    if trained.has_error():
        return trained  # e.g. a budget refusal: nothing to mask, the coordinator drops this site
    local = list(trained.content.array_records.values())
    if len(local) != 1:
        site.refuse("bad-local-update", f"the training reply has {len(local)} ArrayRecords, expected 1")
    layout = ModelLayout.of(global_arrays)
    try:
        update = layout.flatten(local[0]) - layout.flatten(global_arrays)
    except ValueError as exc:
        site.refuse("bad-local-update", f"the trained weights do not fit the global model: {exc}")
    try:
        num_examples = _num_examples(trained.content.metric_records)
    except SecAggRefused as refusal:
        site.refuse(refusal.reason, refusal.detail)
    masked = site.mask_update(update=update, num_examples=num_examples)
    content = RecordDict()
    content[SECAGG_RECORD] = ConfigRecord({k: v for k, v in masked.items() if k != "masked"})
    content[MASKED_RECORD] = ArrayRecord({"masked": Array(masked["masked"])})
    for name, record in trained.content.metric_records.items():
        content[name] = MetricRecord({k: v for k, v in record.items() if k != "num-examples"})
    for name, record in trained.content.config_records.items():
        if name != SECAGG_RECORD:
            content[name] = record
    return Message(content, reply_to=msg)


def _num_examples(metric_records: Any) -> int:
    for record in metric_records.values():
        if "num-examples" in record:
            value = record["num-examples"]
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
                return int(value)
            raise SecAggRefused("bad-local-update", f"num-examples={value!r} is not a whole number")
    raise SecAggRefused("bad-local-update", "the training reply's MetricRecord carries no 'num-examples'")
