"""Whatever a dishonest coordinator (or a hostile site through it) sends, an honest site refuses and forgets the round.

Found by fuzzing ``SiteRound``: inputs no check foresaw (a negative round, a settings string nested
past Python's recursion limit, integers too large for a float, a low-order X25519 key, a global model
that does not decode) made a stage raise something other than ``SecAggRefused`` and left the round's
secrets in the site's state. Every stage now ends the round on any failure, and says why.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message

from flsuite import protocol
from flsuite.errors import ConfigError
from flsuite.secagg import CoordinatorRound, SecAggAborted, SecAggRefused, SecAggSettings
from flsuite.secagg import primitives as crypto
from flsuite.secagg.wire import KEY_SIZE, pack_blobs, unpack_blobs, unpack_names
from tests.unit.test_secagg_refusals import RUN_ID, Core, Sites, tamper_stage

SECRETS = ("c-sk", "s-sk", "seed", "share-keys", "held-b-shares", "held-sk-shares", "own-b-share", "own-sk-share")
NESTED = "[" * 100_000 + "]" * 100_000


def assert_round_ended(state, reason):
    assert state["stage"] == "refused" and state["refusal"] == reason
    assert not set(SECRETS) & set(state)


def settings_wire(**changes) -> str:
    data = json.loads(SecAggSettings(cohort_size=4, threshold=3).to_wire())
    data.update(changes)
    return json.dumps(data)


@pytest.mark.parametrize(("field", "value"), [
    ("round", -1),
    ("round", 2**64),
    ("vector-length", 2**64),
    ("settings", NESTED),
    ("settings", settings_wire(clip_range=10**400)),
    ("settings", settings_wire(cohort_size=10**400)),
    ("settings", settings_wire(weight_cap=10**400)),
    ("settings", '{"cohort_size": ' + NESTED + ', "threshold": 3}'),
], ids=["negative round", "round past uint64", "length past uint64", "nested settings", "huge clip range",
        "huge cohort", "huge weight cap", "nested cohort"])
def test_a_setup_no_check_foresaw_is_refused_and_ends_the_round_in_progress(field, value):
    core = Core()
    core.setup()
    victim = core.nodes[0]
    assert "s-sk" in core.states[victim]  # mid-round: its keys for round 1 are in its state
    next_round = CoordinatorRound(SecAggSettings(cohort_size=4, threshold=3), run_id=RUN_ID, server_round=2,
                                  cohort=core.nodes, model_hash=core.model_hash, vector_length=5)
    request = dict(next_round.setup_requests()[victim], **{field: value})
    with pytest.raises(SecAggRefused) as info:
        core.call(victim, "setup", request)
    assert info.value.reason == "bad-request"
    assert_round_ended(core.states[victim], "bad-request")


def test_a_cohort_past_the_limit_is_refused_before_a_site_builds_its_graph():
    with pytest.raises(ConfigError, match="at most 1024 sites"):
        SecAggSettings.from_wire(json.dumps({"cohort_size": 20_000, "threshold": 19_999}))


def test_peer_names_nested_past_the_recursion_limit_are_refused():
    core = Core()
    requests = core.setup()
    victim = core.nodes[-1]
    with pytest.raises(SecAggRefused, match="bad-request"):
        core.call(victim, "share_keys", dict(requests[victim], **{"peer-names": NESTED}))
    assert_round_ended(core.states[victim], "bad-request")


@pytest.mark.parametrize("key", ["peer-c-pk", "peer-s-pk"])
def test_a_low_order_key_signed_by_a_pinned_site_is_refused_by_its_neighbours(key):
    """A hostile site signs an all-zero key and a dishonest coordinator forwards it unchecked."""
    core = Core()
    requests = core.setup()
    victim = core.nodes[-1]
    request = dict(requests[victim])
    names = unpack_names(request["peer-names"])
    peer = core.nodes[core.nodes.index(victim) - 1]
    index = names.index(f"s{core.nodes.index(peer)}")
    c_pks, s_pks = unpack_blobs(request["peer-c-pk"], KEY_SIZE), unpack_blobs(request["peer-s-pk"], KEY_SIZE)
    (c_pks if key == "peer-c-pk" else s_pks)[index] = bytes(KEY_SIZE)
    digest = core.site(victim)._state["setup-digest"]
    signature = crypto.sign_keys(core.keys[names[index]], crypto.key_signature_payload(
        run_id=core.coordinator.run_id, server_round=core.round, node=peer, site_name=names[index], c_pk=c_pks[index],
        s_pk=s_pks[index], setup_digest=digest))
    signatures = unpack_blobs(request["peer-signatures"], 64)
    signatures[index] = signature
    request.update({"peer-c-pk": pack_blobs(c_pks, KEY_SIZE), "peer-s-pk": pack_blobs(s_pks, KEY_SIZE),
                    "peer-signatures": pack_blobs(signatures, 64)})
    if key == "peer-c-pk":  # the share keys are agreed at once
        with pytest.raises(SecAggRefused, match="low-order"):
            core.call(victim, "share_keys", request)
        assert_round_ended(core.states[victim], "bad-request")
        return
    # the mask keys are agreed when the site masks: it refuses to mask
    replies = {n: core.call(n, "share_keys", request if n == victim else r) for n, r in requests.items()}
    train = core.coordinator.receive_shares(replies)[victim]
    site = core.site(victim)
    site.begin_train(train, model_hash=core.model_hash)
    with pytest.raises(SecAggRefused, match="low-order") as info:
        site.mask_update(update=np.zeros(4), num_examples=3)
    assert info.value.reason == "bad-request"
    assert_round_ended(site.state, "bad-request")


def test_an_honest_coordinator_drops_a_site_whose_key_is_a_low_order_point(tmp_path):
    sites = Sites(tmp_path, n=5)
    hostile = sites.nodes[0]
    original = sites.handlers[hostile]

    def hostile_site(msg, context):  # its setup reply carries an all-zero X25519 key
        reply = original(msg, context)
        if reply.has_content() and protocol.SECAGG_RECORD in reply.content.config_records:
            record = dict(reply.content.config_records[protocol.SECAGG_RECORD])
            if record.get("stage") == "setup":
                record["c-pk"] = bytes(KEY_SIZE)
                reply.content[protocol.SECAGG_RECORD] = ConfigRecord(record)
        return reply
    sites.handlers[hostile] = hostile_site
    result = sites.run()
    assert hostile not in result.survivors and len(result.survivors) == 4
    assert "low-order" in result.refusals[hostile]


def test_a_global_model_that_does_not_decode_is_refused_and_ends_the_round(tmp_path):
    sites = Sites(tmp_path)

    def garbage(msg, request):  # bytes that are no np.save output
        msg.content[protocol.ARRAYS] = ArrayRecord({"w": Array(dtype="float64", shape=(6,), stype="numpy.ndarray", data=b"garbage")})
    with pytest.raises(SecAggAborted):
        sites.run(tamper=tamper_stage(protocol.MASKED_TRAIN, garbage))
    for node in sites.nodes:
        assert_round_ended(dict(sites.contexts[node].state[protocol.SECAGG_STATE]), "bad-request")
    assert sites.trained == []


class SitesWithABrokenOne(Sites):
    def train(self, msg: Message, context) -> Message:
        if context.node_id == self.nodes[0]:
            raise RuntimeError("the site's disk is gone")
        return super().train(msg, context)


def test_a_site_whose_training_fails_forgets_the_round(tmp_path):
    sites = SitesWithABrokenOne(tmp_path)
    broken = sites.nodes[0]
    result = sites.run()
    assert broken not in result.survivors
    assert_round_ended(dict(sites.contexts[broken].state[protocol.SECAGG_STATE]), "bad-local-update")


def test_a_local_update_that_is_not_numbers_is_refused_as_a_bad_local_update():
    core = Core()
    requests = core.setup()
    shares = core.coordinator.receive_shares({n: core.call(n, "share_keys", r) for n, r in requests.items()})
    node = core.nodes[0]
    site = core.site(node)
    site.begin_train(shares[node], model_hash=core.model_hash)
    with pytest.raises(SecAggRefused) as info:
        site.mask_update(update=np.array(["a", "b", "c", "d"]), num_examples=3)
    assert info.value.reason == "bad-local-update"
    assert_round_ended(site.state, "bad-local-update")
