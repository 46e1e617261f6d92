"""A site that sends a neighbour garbage instead of its encrypted shares cannot drop that neighbour.

The attack: a hostile site (or anyone on the path) corrupts the encrypted Shamir shares it sends at
share-keys. Before, each honest recipient refused the round at the train stage ("bad-share") and was
dropped from it, so one site could silently keep any neighbour's update out of every average. Now the
recipient keeps no share of that sender, masks with it as both agreed, reports the sender in its
masked reply, and stays in the round; the sender's secrets are rebuilt from the other holders'
shares. Too few readable shares of one site end the round at the train stage, before any unmasking.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message

from flsuite import protocol
from flsuite.errors import SecAggAborted
from flsuite.secagg.wire import CIPHERTEXT_SIZE, pack_blobs, unpack_blobs, unpack_ids
from tests.unit.test_secagg_hostile_replies import UPDATE, Federation
from tests.unit.test_secagg_refusals import Core

UPDATES = {10: 0.1, 11: -0.2, 12: 0.3, 13: 0.05, 14: -0.15}


def garbled(reply: dict, recipients: set[int]) -> dict:
    """``reply`` (a share-keys answer) with one byte flipped in each ciphertext for ``recipients``."""
    blobs = unpack_blobs(reply["ciphertexts"], CIPHERTEXT_SIZE)
    for position, recipient in enumerate(unpack_ids(reply["recipients"])):
        if recipient in recipients:
            blob = blobs[position]
            blobs[position] = blob[:30] + bytes([blob[30] ^ 0x5A]) + blob[31:]
    return dict(reply, ciphertexts=pack_blobs(blobs, CIPHERTEXT_SIZE))


def run_round(core: Core, *, hostile: int, victims: set[int], drop: int | None = None):
    """Every site through the round; ``hostile`` garbles its shares for ``victims``; ``drop`` sends no masked vector."""
    replies = {n: core.call(n, "share_keys", r) for n, r in core.setup().items()}
    replies[hostile] = garbled(replies[hostile], victims)
    train = core.coordinator.receive_shares(replies)
    masked = core.masked_updates(train, UPDATES)
    unmask = core.coordinator.receive_masked({n: m for n, m in masked.items() if n != drop})
    return core.coordinator.receive_unmask({n: core.call(n, "unmask", r) for n, r in unmask.items()})


def test_over_flower_garbage_shares_drop_no_honest_neighbour_and_the_operator_is_warned(tmp_path, caplog):
    def garble_all(reply: Message, record: dict) -> None:
        reply.content[protocol.SECAGG_RECORD] = ConfigRecord(garbled(record, set(unpack_ids(record["recipients"]))))
    fed = Federation(tmp_path, stage="share-keys", rewrite=garble_all)
    fed.nodes = fed.nodes[:4]  # the hostile site and 3 neighbours, threshold 3: its own shares cannot be rebuilt
    with caplog.at_level(logging.WARNING, logger="flsuite.coordinator.secure_round"):
        with pytest.raises(SecAggAborted, match="surviving holders"):  # the hostile site's own shares are unreadable
            fed.secure_round()
    fed = Federation(tmp_path / "five", stage="share-keys", rewrite=lambda reply, record: reply.content.__setitem__(
        protocol.SECAGG_RECORD, ConfigRecord(garbled(record, {unpack_ids(record["recipients"])[0]}))))
    victim = sorted(set(fed.nodes) - {fed.hostile})[0]
    with caplog.at_level(logging.WARNING, logger="flsuite.coordinator.secure_round"):
        result = fed.secure_round()
    assert sorted(result.survivors) == fed.nodes and not result.refusals  # the victim's update is in the average
    np.testing.assert_allclose(result.arrays["w"].numpy(), UPDATE, atol=result.error_bound + 1e-9)
    assert f"node {victim} holds no share of some peers" in caplog.text and f"[{fed.hostile}]" in caplog.text


@pytest.mark.parametrize("drop", [None, 10], ids=["sender-survives", "sender-drops"])
def test_the_victim_stays_and_the_sum_is_exact_whether_the_sender_survives_or_drops(drop):
    core = Core(n=5, threshold=3)
    hostile, victim = 10, 12
    summed = run_round(core, hostile=hostile, victims={victim}, drop=drop)
    expected = [n for n in core.nodes if n != drop]
    assert list(summed.survivors) == expected
    np.testing.assert_allclose(summed.weighted_update_sum[:4] / summed.total_weight,
                               np.mean([UPDATES[n] for n in expected]), atol=summed.error_bound + 1e-9)
    assert str(hostile) in summed.unreadable_shares[victim] and set(summed.unreadable_shares) == {victim}


def test_a_victim_reveals_no_share_it_could_not_read():
    core = Core(n=5, threshold=3)
    replies = {n: core.call(n, "share_keys", r) for n, r in core.setup().items()}
    replies[10] = garbled(replies[10], {12})
    masked = core.masked_updates(core.coordinator.receive_shares(replies), UPDATES)
    assert unpack_ids(masked[12]["unreadable-shares"]) == [10] and all(
        unpack_ids(masked[n]["unreadable-shares"]) == [] for n in masked if n != 12)
    unmask = core.coordinator.receive_masked(masked)
    answer = core.call(12, "unmask", unmask[12])
    assert 10 not in unpack_ids(answer["b-nodes"]) + unpack_ids(answer["sk-nodes"])
    assert {11, 13, 14} <= set(unpack_ids(answer["b-nodes"]))


def test_too_few_readable_shares_of_a_site_end_the_round_before_anything_is_unmasked():
    core = Core(n=5, threshold=3)
    with pytest.raises(SecAggAborted, match="only 2 surviving holders of node 10's shares") as info:
        run_round(core, hostile=10, victims={11, 12, 13})
    assert info.value.stage == "train"
    assert "surviving nodes [11, 12, 13] could not read the encrypted shares node 10 sent them" in str(info.value)


@pytest.mark.parametrize("claim", [b"\x00" * 7, "10", pack_blobs([], 8) + (99).to_bytes(8, "big")],
                         ids=["malformed", "text", "not-a-sender"])
def test_an_unreadable_list_that_does_not_parse_or_names_no_sender_counts_as_none(claim):
    core = Core(n=5, threshold=3)
    replies = {n: core.call(n, "share_keys", r) for n, r in core.setup().items()}
    masked = core.masked_updates(core.coordinator.receive_shares(replies), UPDATES)
    masked[11] = dict(masked[11], **{"unreadable-shares": claim})
    unmask = core.coordinator.receive_masked(masked)
    summed = core.coordinator.receive_unmask({n: core.call(n, "unmask", r) for n, r in unmask.items()})
    assert summed.unreadable_shares == {} and list(summed.survivors) == core.nodes
