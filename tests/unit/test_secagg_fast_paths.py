"""The secure round's work cut to once per round must not cut a check.

Pair keys are agreed once per peer and round (the X25519 share secret is forgotten after
the share stage, the pair keys once the peers' shares are decrypted); the identity key and pinned identities are parsed once per process while
their files stay the same, and read again, with every check, as soon as either changes.
"""

from __future__ import annotations

import os
import re

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from flsuite import protocol
from flsuite.coordinator.secure_round import secure_train_round
from flsuite.flower import InProcessGrid, new_run
from flsuite.secagg import SecAggSettings, load_pinned_identities, public_identity, write_pinned_identities
from flsuite.secagg import primitives as crypto
from flsuite.secagg.site import SiteRound
from flsuite.site.testing import build_sites

RUN_ID = 11


class Sites:
    def __init__(self, tmp_path, n=5):
        self.dir = tmp_path
        self.nodes = [3000 + 7 * i for i in range(n)]
        self.handlers, self.contexts = build_sites(tmp_path, self.nodes, self.train, run_id=RUN_ID)

    def train(self, msg: Message, context: Context) -> Message:
        w = msg.content["arrays"]["w"].numpy()
        return Message(RecordDict({"arrays": ArrayRecord({"w": Array(w + 0.25)}),
                                   "metrics": MetricRecord({"num-examples": 10})}), reply_to=msg)

    def run(self, server_round, *, tamper=None):
        settings = SecAggSettings(cohort_size=len(self.nodes), threshold=3)
        self.grid = InProcessGrid(self.handlers, self.contexts, run=new_run(RUN_ID), wire=True, tamper=tamper)
        with self.grid:
            return secure_train_round(self.grid, node_ids=self.nodes, server_round=server_round,
                                      global_arrays=ArrayRecord({"w": Array(np.zeros(6))}),
                                      train_configs={n: ConfigRecord() for n in self.nodes}, settings=settings, timeout_s=5)

    def errors(self, stage):
        return {r.node: r.message.error.reason for r in self.grid.log if r.stage == stage and r.message.has_error()}


def test_x25519_shared_many_equals_one_agreement_per_peer():
    private, _ = crypto.x25519_keypair(os.urandom)
    peers = [crypto.x25519_keypair(os.urandom)[1] for _ in range(4)]
    assert crypto.x25519_shared_many(private, peers) == [crypto.x25519_shared(private, p) for p in peers]


def test_x25519_share_secret_is_gone_once_the_shares_are_sent(tmp_path, monkeypatch):
    sites = Sites(tmp_path)
    seen, at_masking, in_context = {}, {}, {}
    mask_update = SiteRound.mask_update

    def watched_mask_update(self, **kwargs):  # the per-peer share keys served begin_train only
        at_masking[self.node_id] = self.state
        in_context[self.node_id] = dict(sites.contexts[self.node_id].state[protocol.SECAGG_STATE])  # what training saw
        return mask_update(self, **kwargs)

    monkeypatch.setattr(SiteRound, "mask_update", watched_mask_update)

    def look(msg):  # at the train stage every site has sent its shares
        if stage_request(msg) == protocol.MASKED_TRAIN:
            node = msg.metadata.dst_node_id
            seen[node] = dict(sites.contexts[node].state[protocol.SECAGG_STATE])
        return msg

    result = sites.run(1, tamper=look)
    assert len(result.survivors) == len(sites.nodes)
    assert set(seen) == set(sites.nodes)
    for state in seen.values():
        assert "c-sk" not in state and len(state["share-keys"]) % 32 == 0 and state["share-keys"]
    assert set(at_masking) == set(sites.nodes)
    for state in [*at_masking.values(), *in_context.values()]:
        assert state["stage"] == "training" and "c-sk" not in state and "share-keys" not in state


def test_identity_key_opened_to_others_between_rounds_is_refused_at_once(tmp_path):
    sites = Sites(tmp_path)
    assert len(sites.run(1).survivors) == 5
    victim = sites.nodes[2]
    key = sites.contexts[victim].node_config[protocol.IDENTITY_KEY]
    os.chmod(key, 0o644)  # same bytes, same mtime: only the mode (and ctime) change
    result = sites.run(2)
    assert victim in result.dropped and victim not in result.survivors
    assert "mode 644" in sites.errors(protocol.SETUP)[victim]


def test_pinned_identities_rewritten_between_rounds_are_read_again(tmp_path):
    sites = Sites(tmp_path)
    assert len(sites.run(1).survivors) == 5
    # the federation's pinned file now holds another key for site-0, whose own key no longer matches it
    path = sites.contexts[sites.nodes[1]].node_config[protocol.IDENTITIES_FILE]
    pinned = load_pinned_identities(path)
    pinned["site-0"] = public_identity(Ed25519PrivateKey.generate())
    write_pinned_identities(path, pinned)
    result = sites.run(2)
    assert sites.nodes[0] in result.dropped and len(result.survivors) == 4
    assert "does not match its pinned public key" in sites.errors(protocol.SETUP)[sites.nodes[0]]


def test_rotated_identity_key_leaves_no_old_private_key_in_the_cache(tmp_path):
    from flsuite.secagg.identity import generate_identity
    from flsuite.site import secure_aggregation

    sites = Sites(tmp_path)
    assert len(sites.run(1).survivors) == 5
    config = sites.contexts[sites.nodes[0]].node_config
    key_path, ids_path = config[protocol.IDENTITY_KEY], config[protocol.IDENTITIES_FILE]
    old_key = secure_aggregation._identity_files(key_path, ids_path)[0]
    # the site rotates its key and the federation pins the new one
    pinned = load_pinned_identities(ids_path)
    pinned[config[protocol.SITE_NAME]] = generate_identity(key_path, overwrite=True)
    write_pinned_identities(ids_path, pinned)
    assert len(sites.run(2).survivors) == 5

    def cached(key):  # every cached object, whatever the entry's layout
        return [item for entry in secure_aggregation._LOADED.values() for item in entry if item is key]

    pair_entries = [k for k in secure_aggregation._LOADED if key_path in k and ids_path in k]
    assert len(pair_entries) == 1
    new_key = secure_aggregation._identity_files(key_path, ids_path)[0]
    assert not cached(old_key) and cached(new_key)
    assert public_identity(new_key) == pinned[config[protocol.SITE_NAME]] != public_identity(old_key)


def test_identity_key_refused_after_a_chmod_is_dropped_from_the_cache(tmp_path):
    from flsuite.site import secure_aggregation

    sites = Sites(tmp_path)
    assert len(sites.run(1).survivors) == 5
    config = sites.contexts[sites.nodes[2]].node_config
    key_path = config[protocol.IDENTITY_KEY]
    assert any(key_path in k for k in secure_aggregation._LOADED)
    os.chmod(key_path, 0o644)
    assert sites.nodes[2] in sites.run(2).dropped
    assert not any(key_path in k for k in secure_aggregation._LOADED)


def stage_request(msg):
    request = msg.content.config_records.get(protocol.SECAGG_RECORD) if msg.has_content() else None
    return request.get(protocol.STAGE) if request is not None else None


def test_quantise_vector_in_place_equals_the_reference_formula():
    from flsuite.secagg.quantize import quantise_vector, weight_level

    rng = np.random.default_rng(5)
    for cohort, weight in ((3, 1.0), (10, 0.37), (50, 0.0), (10, 1e-9)):
        levels, clip = (2**32 - 1) // cohort, 2.5
        update = rng.uniform(-clip, clip, 1001)
        update[:4] = [clip, -clip, 0.0, np.nextafter(clip, 0)]
        expected = np.clip(np.rint((update * weight + clip) * (levels / (2.0 * clip))), 0, levels).astype(np.uint32)
        got = quantise_vector(update, weight, clip_range=clip, levels=levels)
        assert got.dtype == np.uint32 and np.array_equal(got[:-1], expected)
        assert got[-1] == weight_level(weight, levels) and got.max() <= levels


def test_hkdf32_is_cryptography_hkdf_sha256_with_the_protocol_salt():
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    for size in (0, 1, 32, 77):
        ikm, info = os.urandom(32), os.urandom(size)
        expected = HKDF(algorithm=hashes.SHA256(), length=32, salt=crypto.PROTOCOL, info=info).derive(ikm)
        assert crypto.hkdf32(ikm, info=info) == expected


def reference_vector(record):
    """The layout's definition, written out: float64, sorted names, each array in C order."""
    return np.concatenate([np.asarray(record[k].numpy(), dtype=np.float64).ravel() for k in sorted(record.keys())])


def test_layout_difference_and_flatten_equal_the_reference():
    from flsuite.models.weights import ModelLayout

    rng = np.random.default_rng(9)
    shapes = {"b.weight": (7, 3), "a.bias": (3,), "c": (2, 2, 2), "step": ()}
    for dtype in (np.float32, np.float64, np.int64):
        glob = ArrayRecord({k: Array(np.asarray(rng.standard_normal(s) * 50).astype(dtype)) for k, s in shapes.items()})
        local = ArrayRecord({k: Array(np.asarray(rng.standard_normal(s) * 50).astype(dtype)) for k, s in shapes.items()})
        values = {k: glob[k].numpy() for k in glob}
        layout = ModelLayout.of_values(values)
        assert layout == ModelLayout.of(glob)
        got = layout.difference(values, local)
        assert got.dtype == np.float64 and np.array_equal(got, reference_vector(local) - reference_vector(glob))
        for flat in (layout.flatten_values(values), layout.flatten(glob)):
            assert flat.dtype == np.float64 and np.array_equal(flat, reference_vector(glob))
        rebuilt = layout.rebuild(reference_vector(local))
        assert all(np.array_equal(rebuilt[k].numpy(), local[k].numpy()) for k in shapes)


def test_layout_refuses_arrays_that_do_not_fit_the_model_naming_them():
    import pytest

    from flsuite.models.weights import ModelLayout

    values = {"w": np.zeros((2, 3)), "b": np.zeros(3)}
    layout = ModelLayout.of_values(values)
    for bad, named in (({"w": np.zeros((3, 2)), "b": np.zeros(3)}, "array 'w' has shape (3, 2)"),
                       ({"w": np.zeros((2, 3))}, "missing ['b']"),
                       ({"w": np.zeros((2, 3)), "b": np.zeros(3), "x": np.zeros(1)}, "unexpected ['x']")):
        record = ArrayRecord({k: Array(v) for k, v in bad.items()})
        for method, args in ((layout.difference, (values, record)), (layout.flatten, (record,)),
                             (layout.flatten_values, (bad,))):
            with pytest.raises(ValueError, match=re.escape(named)):
                method(*args)


def test_trained_weights_of_another_shape_are_refused_naming_the_array(tmp_path):
    sites = Sites(tmp_path)
    odd = sites.nodes[1]
    train = sites.train

    def reshaping_train(msg, context):
        reply = train(msg, context)
        if context.node_id == odd:
            reply.content["arrays"] = ArrayRecord({"w": Array(np.zeros(7))})
        return reply

    sites.handlers, sites.contexts = build_sites(tmp_path, sites.nodes, reshaping_train, run_id=RUN_ID)
    result = sites.run(1)
    assert odd in result.dropped and len(result.survivors) == 4
    assert "[bad-local-update]" in sites.errors(protocol.MASKED_TRAIN)[odd]
    assert "array 'w' has shape (7,), the model (6,)" in sites.errors(protocol.MASKED_TRAIN)[odd]


def test_empty_model_is_a_clear_config_error_before_any_site_is_asked(tmp_path):
    import pytest

    from flsuite.errors import ConfigError
    from flsuite.models.weights import ModelLayout

    assert ModelLayout.of_values({}).flatten_values({}).shape == (0,)
    sites = Sites(tmp_path)
    grid = InProcessGrid(sites.handlers, sites.contexts, run=new_run(RUN_ID), wire=True)
    with grid, pytest.raises(ConfigError, match="no weights to average"):
        secure_train_round(grid, node_ids=sites.nodes, server_round=1, global_arrays=ArrayRecord({}),
                           train_configs={n: ConfigRecord() for n in sites.nodes},
                           settings=SecAggSettings(cohort_size=5, threshold=3), timeout_s=5)
    assert not grid.log


def test_layout_rebuilds_a_scalar_integer_buffer():
    from flsuite.models.weights import ModelLayout

    record = ArrayRecord({"steps": Array(np.array(3, dtype=np.int64)), "w": Array(np.zeros(2, dtype=np.float32))})
    rebuilt = ModelLayout.of(record).rebuild(np.array([3.4, 0.5, -1.0]))
    assert rebuilt["steps"].numpy().shape == () and rebuilt["steps"].numpy() == 3
    assert rebuilt["steps"].numpy().dtype == np.int64 and np.array_equal(rebuilt["w"].numpy(), [0.5, -1.0])
