"""The site side on Flower: a client mod that answers the secure-aggregation stages.

Add it to the ClientApp (``ClientApp(mods=[secagg_mod])``) and register a ``@app.query()``
function too: Flower only runs app mods around registered functions, and the protocol's
key-exchange and unmask stages arrive as "query" messages (the mod answers them before
the query function is reached). The mod reads the site's identity key, name and pinned
identities file from its node config (parsed once per process while the files stay as they
are), keeps its per-round state in ``context.state`` (bytes
in a ConfigRecord, so it works when every message runs in a fresh process), and passes
train messages on as plain train messages (the model and the train config). From the
training reply it sends back only the masked vector and the metric/config records, minus
the example count; a site's typed refusal passes through unchanged. Record names are
``flsuite.protocol``'s.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from flsuite import protocol
from flsuite.errors import ConfigError, SecAggRefused
from flsuite.models import ModelLayout, decoded, record_of
from flsuite.secagg import load_identity, load_pinned_identities, model_hash
from flsuite.secagg.site import SiteRound

if TYPE_CHECKING:  # a type hint only: cryptography is used through flsuite.secagg
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = ["secagg_mod"]

SECAGG_RECORD, MASKED_RECORD, STATE_RECORD = protocol.SECAGG_RECORD, protocol.MASKED_RECORD, protocol.SECAGG_STATE


def secagg_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Answer secure-aggregation stages; pass every other message on unchanged."""
    config_records = msg.content.config_records if msg.has_content() else {}  # Flower builds it at each access
    if SECAGG_RECORD not in config_records:
        return call_next(msg, context)
    request: dict[str, Any] = dict(config_records[SECAGG_RECORD])
    try:
        site = _load_site(context)
    except ConfigError as exc:
        return Message(Error(code=protocol.SECAGG_SITE_CONFIG, reason=str(exc)), reply_to=msg)
    try:
        stage = request.get(protocol.STAGE)
        if stage == protocol.SETUP:
            return _reply(msg, site.setup(request))
        if stage == protocol.SHARE_KEYS:
            return _reply(msg, site.share_keys(request))
        if stage == protocol.UNMASK:
            return _reply(msg, site.unmask(request))
        if stage == protocol.MASKED_TRAIN:
            return _train(msg, context, call_next, site, request)
        site.refuse("bad-request", f"unknown secure-aggregation stage {stage!r}")
    except SecAggRefused as refusal:
        return Message(Error(code=protocol.SECAGG_REFUSED, reason=str(refusal)), reply_to=msg)
    except Exception:
        site.end("bad-local-update")  # e.g. the local training failed: the round's secrets go, the error is the reply
        raise
    finally:
        context.state[STATE_RECORD] = ConfigRecord(site.state)


def _load_site(context: Context) -> SiteRound:
    config = context.node_config
    missing = [k for k in (protocol.IDENTITY_KEY, protocol.SITE_NAME, protocol.IDENTITIES_FILE) if not config.get(k)]
    if missing:
        raise ConfigError(f"node-config lacks {missing}; secure aggregation needs the site's identity key, "
                          "site name and pinned identities file.")
    stored = context.state.config_records.get(STATE_RECORD)
    identity, pinned = _identity_files(str(config[protocol.IDENTITY_KEY]), str(config[protocol.IDENTITIES_FILE]))
    return SiteRound(node_id=context.node_id, run_id=context.run_id, site_name=str(config[protocol.SITE_NAME]),
                     identity=identity, pinned=pinned, state=dict(stored) if stored is not None else None)


# (key path, identities path) -> (both files' stamps, parsed key, pinned identities): one entry
# per pair, so a changed file replaces its entry and the old private key is not kept around
_LOADED: OrderedDict[tuple[str, str], tuple[tuple[int, ...], Ed25519PrivateKey, dict[str, bytes]]] = OrderedDict()
_LOADED_MAX = 256  # one entry per site of this process (simulated sites share the process)
_LOADED_LOCK = threading.Lock()


def _identity_files(key_path: str, identities_path: str) -> tuple[Ed25519PrivateKey, dict[str, bytes]]:
    """The identity key and pinned identities, parsed again only when either file changed.

    Every message needs them (a stage may run in a fresh process); within one process the
    parsed pair is reused while both files keep their device, inode, size, mode, mtime and
    ctime (a chmod or any rewrite changes ctime), so the identity key's permission check and
    the pinned file's validation run again on any change. A changed or unreadable file drops
    the pair's cached entry before the files are read again (a refused file leaves nothing
    cached); a file that cannot be stat'ed goes through the loaders, which name the problem.
    """
    pair = (key_path, identities_path)
    try:
        stamp = _stamp(key_path) + _stamp(identities_path)
    except OSError:
        with _LOADED_LOCK:
            _LOADED.pop(pair, None)
        return load_identity(key_path), load_pinned_identities(identities_path)
    with _LOADED_LOCK:
        hit = _LOADED.get(pair)
        if hit is not None and hit[0] == stamp:
            _LOADED.move_to_end(pair)
            return hit[1], dict(hit[2])
        _LOADED.pop(pair, None)
    identity, pinned = load_identity(key_path), load_pinned_identities(identities_path)
    with _LOADED_LOCK:
        _LOADED[pair] = (stamp, identity, pinned)
        while len(_LOADED) > _LOADED_MAX:
            _LOADED.popitem(last=False)
    return identity, dict(pinned)


def _stamp(path: str) -> tuple[int, ...]:
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mode, st.st_mtime_ns, st.st_ctime_ns


def _reply(msg: Message, reply: dict[str, Any]) -> Message:
    return Message(RecordDict({SECAGG_RECORD: ConfigRecord(reply)}), reply_to=msg)


def _train(msg: Message, context: Context, call_next: ClientAppCallable, site: SiteRound,
           request: dict[str, Any]) -> Message:
    records = msg.content.array_records
    if protocol.ARRAYS not in records:
        site.refuse("bad-request", f"the train stage carries no ArrayRecord {protocol.ARRAYS!r}")
    global_arrays = records[protocol.ARRAYS]
    try:
        global_values = decoded(global_arrays)  # decoded once for hash and update
    except Exception as exc:  # another party's bytes (array_values' contract: the caller catches)
        site.refuse("bad-request", f"the global model cannot be read ({type(exc).__name__}: {exc})")
    site.begin_train(request, model_hash=model_hash(global_values))  # refuses before any training
    context.state[STATE_RECORD] = ConfigRecord(site.state)  # the share keys it dropped leave the Context before training
    config = msg.content.config_records.get(protocol.CONFIG, ConfigRecord())
    msg.content = RecordDict({protocol.ARRAYS: global_arrays, protocol.CONFIG: config})
    trained = call_next(msg, context)
    if trained.has_error() or protocol.REFUSAL in trained.content.config_records:
        return trained  # e.g. a budget refusal: nothing to mask, the coordinator drops this site
    local = list(trained.content.array_records.values())
    if len(local) != 1:
        site.refuse("bad-local-update", f"the training reply has {len(local)} ArrayRecords, expected 1")
    try:
        update = ModelLayout.of_values(global_values).difference(global_values, local[0])
    except (ValueError, TypeError) as exc:  # TypeError: a dtype numpy cannot subtract (complex, datetime)
        site.refuse("bad-local-update", f"the trained weights do not fit the global model: {exc}")
    try:
        num_examples = _num_examples(trained.content.metric_records)
    except SecAggRefused as refusal:
        site.refuse(refusal.reason, refusal.detail)
    masked = site.mask_update(update=update, num_examples=num_examples)
    content = RecordDict()
    content[SECAGG_RECORD] = ConfigRecord({k: v for k, v in masked.items() if k != protocol.MASKED_VECTOR})
    content[MASKED_RECORD] = record_of({protocol.MASKED_VECTOR: masked[protocol.MASKED_VECTOR]})
    for name, record in trained.content.metric_records.items():
        content[name] = MetricRecord({k: v for k, v in record.items() if k != protocol.NUM_EXAMPLES})
    for name, record in trained.content.config_records.items():
        if name != SECAGG_RECORD:
            content[name] = record
    return Message(content, reply_to=msg)


def _num_examples(metric_records: Any) -> int:
    for record in metric_records.values():
        if protocol.NUM_EXAMPLES in record:
            value = record[protocol.NUM_EXAMPLES]
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
                return int(value)
            raise SecAggRefused("bad-local-update", f"num-examples={value!r} is not a whole number")
    raise SecAggRefused("bad-local-update", f"the training reply's MetricRecord carries no {protocol.NUM_EXAMPLES!r}")
