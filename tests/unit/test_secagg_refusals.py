"""An honest site refuses a misbehaving coordinator, says why, and ends its part in the round."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from flsuite import protocol
from flsuite.coordinator.secure_round import secure_train_round
from flsuite.flower import InProcessGrid, new_run
from flsuite.secagg import (
    CoordinatorRound,
    SecAggAborted,
    SecAggRefused,
    SecAggSettings,
    SiteRound,
    public_identity,
)
from flsuite.secagg import primitives as crypto
from flsuite.secagg.wire import KEY_SIZE, pack_blobs, pack_ids, pack_names, unpack_blobs, unpack_ids, unpack_names
from flsuite.site.testing import build_sites

torch.set_num_threads(1)
RUN_ID = 7

# --- through Flower: a coordinator that tampers with its own requests -------------------------


class Sites:
    def __init__(self, tmp_path, n=5, update=0.1):
        self.nodes = [2000 + 3 * i for i in range(n)]
        self.update = {node: update for node in self.nodes}
        self.trained: list[int] = []
        self.handlers, self.contexts = build_sites(tmp_path, self.nodes, self.train, run_id=RUN_ID)

    def train(self, msg: Message, context: Context) -> Message:
        self.trained.append(context.node_id)
        w = msg.content["arrays"]["w"].numpy()
        return Message(RecordDict({"arrays": ArrayRecord({"w": Array(w + self.update[context.node_id])}),
                                   "metrics": MetricRecord({"num-examples": 10})}), reply_to=msg)

    def run(self, *, tamper=None, settings=None, server_round=1):
        settings = settings or SecAggSettings(cohort_size=len(self.nodes), threshold=3)
        self.grid = InProcessGrid(self.handlers, self.contexts, run=new_run(RUN_ID), wire=True, tamper=tamper)
        with self.grid:
            return secure_train_round(self.grid, node_ids=self.nodes, server_round=server_round,
                                      global_arrays=ArrayRecord({"w": Array(np.zeros(6))}),
                                      train_configs={n: ConfigRecord() for n in self.nodes}, settings=settings,
                                      timeout_s=5)

    def refusals(self, stage):
        return {r.node: r.message.error.reason for r in self.grid.log if r.stage == stage and r.message.has_error()}


def tamper_stage(stage, change, only=None):
    def tamper(msg):
        request = msg.content.config_records.get("secagg")
        if request is not None and request["stage"] == stage and (only is None or msg.metadata.dst_node_id in only):
            change(msg, request)
        return msg
    return tamper


def assert_all_refused(sites, stage, reason):
    refusals = sites.refusals(stage)
    assert set(refusals) == set(sites.nodes if stage != "unmask" else refusals)
    assert refusals and all(why.startswith(f"[{reason}]") for why in refusals.values())
    assert not [r for r in sites.grid.log if r.stage == "unmask" and r.message.has_content()]  # no share revealed


def test_node_in_both_survivor_and_dropped_list_is_refused(tmp_path):
    sites = Sites(tmp_path)

    def both(msg, request):
        request["dropped"] = pack_ids(unpack_ids(request["survivors"])[:1])
    with pytest.raises(SecAggAborted, match="overlapping-lists"):
        sites.run(tamper=tamper_stage("unmask", both))
    assert_all_refused(sites, "unmask", "overlapping-lists")
    state = dict(sites.contexts[sites.nodes[0]].state["flsuite.secagg"])
    assert state["stage"] == "refused" and "s-sk" not in state and "seed" not in state  # secrets wiped


def test_shares_requested_below_threshold_are_refused(tmp_path):
    sites = Sites(tmp_path)

    def few(msg, request):  # claim that all but two sites dropped
        everyone = unpack_ids(request["survivors"])
        me = msg.metadata.dst_node_id
        keep = [me] + [n for n in everyone if n != me][:1]
        request["survivors"] = pack_ids(sorted(keep))
        request["dropped"] = pack_ids([n for n in everyone if n not in keep])
    with pytest.raises(SecAggAborted, match="below-threshold"):
        sites.run(tamper=tamper_stage("unmask", few))
    assert_all_refused(sites, "unmask", "below-threshold")


def test_peer_key_not_signed_by_pinned_identity_is_refused(tmp_path):
    sites = Sites(tmp_path)

    def swap_key(msg, request):  # the coordinator substitutes its own key for the first peer's
        keys = unpack_blobs(request["peer-c-pk"], KEY_SIZE)
        keys[0] = crypto.x25519_keypair(lambda n: b"\x42" * n)[1]
        request["peer-c-pk"] = pack_blobs(keys, KEY_SIZE)
    with pytest.raises(SecAggAborted, match="unsigned-peer-key"):
        sites.run(tamper=tamper_stage("share-keys", swap_key))
    assert_all_refused(sites, "share-keys", "unsigned-peer-key")
    assert sites.trained == []


def test_second_unmask_request_is_refused(tmp_path):
    sites = Sites(tmp_path)
    sites.run()
    node = sites.nodes[0]
    unmask = next(m for m in sites.grid.sent if m.metadata.dst_node_id == node
                  and m.content["secagg"]["stage"] == "unmask")
    again = sites.handlers[node](unmask, sites.contexts[node])
    assert again.has_error() and again.error.code == protocol.SECAGG_REFUSED
    assert again.error.reason.startswith("[repeated-unmask]")


def test_model_other_than_announced_is_refused_before_training(tmp_path):
    sites = Sites(tmp_path)
    victim = sites.nodes[1]

    def other_model(msg, request):
        msg.content["arrays"] = ArrayRecord({"w": Array(np.ones(6))})
    result = sites.run(tamper=tamper_stage("train", other_model, only={victim}))
    assert sites.refusals("train") == {victim: sites.refusals("train")[victim]}
    assert sites.refusals("train")[victim].startswith("[model-hash-mismatch]")
    assert victim not in sites.trained and victim in result.dropped
    assert "model-hash-mismatch" in result.refusals[victim]


def test_update_with_nan_or_inf_is_refused_before_masking(tmp_path):
    sites = Sites(tmp_path)
    sites.update[sites.nodes[0]] = np.array([0.1, np.nan, 0.1, np.inf, 0.1, 0.1])
    result = sites.run()
    assert sites.refusals("train")[sites.nodes[0]].startswith("[non-finite-update] 2 update values")
    assert sites.nodes[0] in result.dropped
    assert np.allclose(result.arrays["w"].numpy(), 0.1, atol=result.error_bound)


def test_values_beyond_range_are_refused_or_clipped_and_counted(tmp_path):
    sites = Sites(tmp_path)
    sites.update[sites.nodes[0]] = np.array([3.0, -2.0, 0.5, 0.5, 0.5, 0.5])
    result = sites.run()
    assert sites.refusals("train")[sites.nodes[0]].startswith("[out-of-range] 2 update values")
    assert sites.nodes[0] in result.dropped

    settings = SecAggSettings(cohort_size=5, threshold=3, clip_out_of_range=True)
    result = sites.run(settings=settings, server_round=2)
    assert result.clipped_values[sites.nodes[0]] == 2 and sum(result.clipped_values.values()) == 2
    first = np.array([1.0, -1.0, 0.5, 0.5, 0.5, 0.5])  # clipped to the range
    assert np.allclose(result.arrays["w"].numpy(), (first + 4 * 0.1) / 5, atol=result.error_bound)


def test_replayed_or_stale_round_is_refused(tmp_path):
    sites = Sites(tmp_path)
    sites.run(server_round=3)
    with pytest.raises(SecAggAborted, match="stale-round"):
        sites.run(server_round=3)
    with pytest.raises(SecAggAborted, match="stale-round"):
        sites.run(server_round=2)
    sites.run(server_round=4)


def test_a_tampered_share_is_not_held_and_its_recipient_stays_in_the_round(tmp_path):
    """A coordinator (or a site) that alters a share cannot drop its recipient: the recipient keeps no
    share of that sender and goes on (tests/unit/test_secagg_unreadable_shares.py has the attack)."""
    sites = Sites(tmp_path)

    def flip(msg, request):
        blob = bytearray(request["ciphertexts"])
        blob[20] ^= 1
        request["ciphertexts"] = bytes(blob)
    result = sites.run(tamper=tamper_stage("train", flip, only={sites.nodes[2]}))
    assert not sites.refusals("train") and sites.nodes[2] in result.survivors and not result.dropped


def test_site_without_key_files_answers_with_a_config_error(tmp_path):
    sites = Sites(tmp_path)
    context = sites.contexts[sites.nodes[0]]
    context.node_config = {**context.node_config, "identity-key": str(tmp_path / "missing.pem")}
    sites.run()
    error = next(r.message.error for r in sites.grid.log if r.node == sites.nodes[0])
    assert error.code == protocol.SECAGG_SITE_CONFIG and "missing.pem" in error.reason


# --- the protocol core, with a coordinator that forges keys ------------------------------------


class Core:
    """Sites and an honest coordinator over the pure core; tests alter requests in between."""

    def __init__(self, n=4, threshold=3, server_round=1):
        self.nodes = [10 + i for i in range(n)]
        self.keys = {f"s{i}": Ed25519PrivateKey.generate() for i in range(n)}
        self.pinned = {name: public_identity(key) for name, key in self.keys.items()}
        self.states = {node: None for node in self.nodes}
        self.round = server_round
        self.model_hash = hashlib.sha256(b"model").digest()
        self.coordinator = CoordinatorRound(SecAggSettings(cohort_size=n, threshold=threshold), run_id=RUN_ID,
                                            server_round=server_round, cohort=self.nodes, model_hash=self.model_hash,
                                            vector_length=5)

    def site(self, node):
        name = f"s{self.nodes.index(node)}"
        return SiteRound(node_id=node, run_id=RUN_ID, site_name=name, identity=self.keys[name], pinned=self.pinned,
                         state=self.states[node])

    def call(self, node, stage, request):
        site = self.site(node)
        try:
            return getattr(site, stage)(request)
        finally:
            self.states[node] = site.state

    def setup(self):
        self.setup_replies = {n: self.call(n, "setup", r) for n, r in self.coordinator.setup_requests().items()}
        return self.coordinator.receive_keys(self.setup_replies)

    def masked_updates(self, train, updates):
        """Each site's masked reply to its train request, its update a vector of 4 times ``updates[node]``."""
        masked = {}
        for node, request in train.items():
            site = self.site(node)
            site.begin_train(request, model_hash=self.model_hash)
            masked[node] = site.mask_update(update=np.full(4, updates[node]), num_examples=10)
            self.states[node] = site.state
        return masked


def forged_peer(core, request, *, name, signer, server_round):
    """Add (or replace) the first peer with keys the coordinator made and signed with ``signer``."""
    peers = unpack_ids(request["peer-nodes"])
    c_pk = crypto.x25519_keypair(lambda n: b"\x01" * n)[1]
    s_pk = crypto.x25519_keypair(lambda n: b"\x02" * n)[1]
    digest = core.site(peers[0])._state["setup-digest"]
    payload = crypto.key_signature_payload(run_id=RUN_ID, server_round=server_round, node=peers[0], site_name=name,
                                           c_pk=c_pk, s_pk=s_pk, setup_digest=digest)
    names = unpack_names(request["peer-names"])
    names[0] = name
    request = dict(request, **{"peer-names": pack_names(names)})
    for key, value in (("peer-c-pk", c_pk), ("peer-s-pk", s_pk), ("peer-signatures", crypto.sign_keys(signer, payload))):
        size = len(value)
        blobs = unpack_blobs(request[key], size)
        blobs[0] = value
        request[key] = pack_blobs(blobs, size)
    return request


def test_peer_signed_by_an_unpinned_identity_is_refused():
    core = Core()
    requests = core.setup()
    victim = core.nodes[-1]
    forged = forged_peer(core, requests[victim], name="mallory", signer=Ed25519PrivateKey.generate(),
                         server_round=core.round)
    with pytest.raises(SecAggRefused) as info:
        core.call(victim, "share_keys", forged)
    assert info.value.reason == "unsigned-peer-key" and "mallory" in str(info.value)


def test_pinned_identity_signature_for_another_round_is_refused():
    core = Core()
    requests = core.setup()
    victim = core.nodes[-1]
    name = unpack_names(requests[victim]["peer-names"])[0]
    forged = forged_peer(core, requests[victim], name=name, signer=core.keys[name], server_round=core.round + 1)
    with pytest.raises(SecAggRefused, match="unsigned-peer-key"):
        core.call(victim, "share_keys", forged)


def test_one_site_cannot_be_presented_twice():
    core = Core()
    requests = core.setup()
    victim = core.nodes[-1]
    request = dict(requests[victim])
    names = unpack_names(request["peer-names"])
    request["peer-names"] = pack_names([names[0]] * len(names))
    with pytest.raises(SecAggRefused, match="unsigned-peer-key"):
        core.call(victim, "share_keys", request)


@pytest.mark.parametrize("name", ["\ud800", "x" * 70_000], ids=["lone surrogate", "past 65535 bytes"])
def test_a_peer_name_that_cannot_be_signed_is_refused_as_unsigned(name):
    """A coordinator names a peer with a string no site could have signed: a refusal, never an exception."""
    core = Core()
    requests = core.setup()
    victim = core.nodes[-1]
    names = unpack_names(requests[victim]["peer-names"])
    names[0] = name
    request = dict(requests[victim], **{"peer-names": pack_names(names)})
    with pytest.raises(SecAggRefused, match="unsigned-peer-key"):
        core.call(victim, "share_keys", request)
    assert core.states[victim]["stage"] == "refused"  # the round ended for this site, its secrets wiped


def test_setup_with_a_weakened_threshold_is_refused():
    core = Core()
    request = dict(next(iter(core.coordinator.setup_requests().values())))
    request["settings"] = request["settings"].replace('"threshold":3', '"threshold":2')
    with pytest.raises(SecAggRefused, match="bad-request.*threshold"):
        core.call(core.nodes[0], "setup", request)


def test_request_for_another_run_is_refused():
    core = Core()
    request = dict(next(iter(core.coordinator.setup_requests().values())), **{"run-id": crypto.u64(RUN_ID + 1)})
    with pytest.raises(SecAggRefused, match="another run"):
        core.call(core.nodes[0], "setup", request)


def test_site_name_must_match_its_pinned_key():
    from flsuite.errors import ConfigError

    core = Core()
    with pytest.raises(ConfigError, match="does not match"):
        SiteRound(node_id=1, run_id=RUN_ID, site_name="s0", identity=core.keys["s1"], pinned=core.pinned)
    with pytest.raises(ConfigError, match="not in the pinned"):
        SiteRound(node_id=1, run_id=RUN_ID, site_name="nobody", identity=core.keys["s1"], pinned=core.pinned)
