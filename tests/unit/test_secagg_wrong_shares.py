"""A site that reveals wrong shares at unmask cannot abort a secure round, nor change its average.

The attack: a survivor alters the shares it reveals, of survivors' self-mask seeds or of a dropped
site's mask key. Before, any wrong share aborted the round (a hostile site could stop every round
it took part in), and a share altered so that the rebuilt seed was still a valid 256-bit value
unmasked a wrong sum, which only declared weights or the clip range could catch. Now each site
commits to its self-mask seed when it sends its shares; the coordinator rebuilds each secret from
shares that match the commitment (or the dropped site's public key), trying other subsets when
one share is wrong, and records the wrong shares against their holder.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message

from flsuite import protocol
from flsuite.errors import SecAggAborted
from flsuite.secagg import shamir
from flsuite.secagg.graph import share_group
from flsuite.secagg.wire import SHARE_SIZE, pack_blobs, unpack_blobs, unpack_ids
from tests.unit.test_secagg_hostile_replies import UPDATE, Federation, assert_dropped_and_averaged_without
from tests.unit.test_secagg_refusals import Core

UPDATES = {10: 0.1, 11: -0.2, 12: 0.3, 13: 0.05, 14: -0.15, **{node: 0.01 * (node - 20) for node in range(15, 30)}}


def run_to_unmask(core: Core, *, drop: int | None = None, commitments: dict[int, bytes] | None = None):
    """Every site of ``core`` through share-keys and masked training (``drop`` sends no masked vector;
    ``commitments`` replace the seed commitments some sites send)."""
    replies = {n: core.call(n, "share_keys", r) for n, r in core.setup().items()}
    for node, commitment in (commitments or {}).items():
        replies[node] = dict(replies[node], **{"seed-commitment": commitment})
    masked = core.masked_updates(core.coordinator.receive_shares(replies), UPDATES)
    unmask = core.coordinator.receive_masked({n: m for n, m in masked.items() if n != drop})
    return {n: core.call(n, "unmask", r) for n, r in unmask.items()}


def shifting_the_secret(core: Core, owner: int, holders: list[int], liar: int) -> int:
    """The change to ``liar``'s limb 0 that moves the secret rebuilt from ``holders``' shares by exactly one:
    a wrong secret that is still a valid 256-bit value, so no limb check can see it."""
    group = share_group(core.coordinator.graph, owner)
    indices = sorted(group.index(h) + 1 for h in holders)
    weight = int(shamir._lagrange_weights(tuple(indices), (0,))[0, indices.index(group.index(liar) + 1)])
    return pow(weight, shamir.PRIME - 2, shamir.PRIME)


def alter(answer: dict, kind: str, owner: int, delta: int) -> dict:
    """``answer`` with its revealed ``kind`` ("b" or "sk") share of ``owner`` moved by ``delta`` in limb 0."""
    owners = unpack_ids(answer[f"{kind}-nodes"])
    blobs = unpack_blobs(answer[f"{kind}-shares"], SHARE_SIZE)
    blob = blobs[owners.index(owner)]
    limb = (int.from_bytes(blob[2:6], "little") + delta) % shamir.PRIME
    blobs[owners.index(owner)] = blob[:2] + limb.to_bytes(4, "little") + blob[6:]
    return dict(answer, **{f"{kind}-shares": pack_blobs(blobs, SHARE_SIZE)})


def average(summed) -> np.ndarray:
    return summed.weighted_update_sum[:4] / summed.total_weight


def test_a_wrong_self_mask_share_that_rebuilds_a_valid_seed_is_outvoted_not_unmasked():
    """Without the commitment this unmasked a wrong sum: with no declared weights, a 4-site cohort's
    sum check accepts any vector."""
    core = Core(n=4, threshold=3)
    answers = run_to_unmask(core)
    owner = core.nodes[1]
    group = share_group(core.coordinator.graph, owner)
    liar = group[0]  # holder of share 1: in the first subset the coordinator tries
    first = sorted(group[:3])
    answers[liar] = alter(answers[liar], "b", owner, shifting_the_secret(core, owner, first, liar))
    summed = core.coordinator.receive_unmask(answers)
    np.testing.assert_allclose(average(summed), np.mean([UPDATES[n] for n in core.nodes]), atol=summed.error_bound + 1e-9)
    assert set(summed.wrong_shares) == {liar} and f"node {owner}'s self-mask seed" in summed.wrong_shares[liar]
    assert liar in summed.survivors and liar not in summed.rejected


def test_every_share_a_liar_reveals_is_outvoted_and_each_is_named():
    core = Core(n=5, threshold=3)
    answers = run_to_unmask(core)
    liar = core.nodes[0]
    for owner in unpack_ids(answers[liar]["b-nodes"]):
        answers[liar] = alter(answers[liar], "b", owner, 12345)
    summed = core.coordinator.receive_unmask(answers)
    np.testing.assert_allclose(average(summed), np.mean(list(UPDATES.values())), atol=summed.error_bound + 1e-9)
    owners = set(unpack_ids(answers[liar]["b-nodes"]))
    assert sum(f"node {owner}'s self-mask seed" in summed.wrong_shares[liar] for owner in owners) == len(owners)
    assert list(summed.wrong_shares) == [liar]


def test_a_wrong_share_of_a_dropped_site_s_mask_key_is_outvoted():
    core = Core(n=5, threshold=3)
    dropped = core.nodes[-1]
    answers = run_to_unmask(core, drop=dropped)
    liar = core.nodes[0]
    answers[liar] = alter(answers[liar], "sk", dropped, 777)
    summed = core.coordinator.receive_unmask(answers)
    survivors = [n for n in core.nodes if n != dropped]
    np.testing.assert_allclose(average(summed), np.mean([UPDATES[n] for n in survivors]), atol=summed.error_bound + 1e-9)
    assert summed.dropped == (dropped,) and f"node {dropped}'s mask key" in summed.wrong_shares[liar]


def test_sites_revealing_only_wrong_shares_abort_the_round_at_the_coordinator():
    """Every survivor answers the unmask request with altered self-mask shares: the coordinator aborts
    with SecAggAborted (nothing published), not a crash or garbage unmasked. A 4-site cohort's sum check
    accepts every vector, so this is the share check: no subset rebuilds the seed a site committed to."""
    core = Core(n=4, threshold=3)
    answers = run_to_unmask(core)
    for liar in sorted(answers):  # every holder alters the top limb of every share it reveals (the index stays)
        blobs = unpack_blobs(answers[liar]["b-shares"], SHARE_SIZE)
        answers[liar] = dict(answers[liar], **{"b-shares": pack_blobs(
            [b[:-2] + bytes([b[-2] ^ 0x5A]) + b[-1:] for b in blobs], SHARE_SIZE)})
    with pytest.raises(SecAggAborted) as info:
        core.coordinator.receive_unmask(answers)
    assert info.value.stage == "unmask" and "rebuild the secret its commitment fixes" in str(info.value)


def test_more_wrong_shares_than_can_be_outvoted_abort_the_round_and_publish_nothing():
    core = Core(n=4, threshold=3)
    answers = run_to_unmask(core)
    owner = core.nodes[2]
    for liar, delta in zip(core.nodes[:2], (99, 5)):  # two of four shares wrong: every subset of three holds one
        answers[liar] = alter(answers[liar], "b", owner, delta)
    with pytest.raises(SecAggAborted) as info:
        core.coordinator.receive_unmask(answers)
    assert info.value.stage == "unmask"
    assert f"no 3 of the 4 shares of node {owner}'s self-mask seed rebuild the secret its commitment fixes" in str(info.value)
    with pytest.raises(RuntimeError, match="aborted"):  # nothing more can be asked of an aborted round
        core.coordinator.receive_unmask(answers)


def test_a_site_that_commits_to_another_seed_than_it_shared_is_named_when_the_round_aborts():
    core = Core(n=4, threshold=3)
    owner = core.nodes[3]
    answers = run_to_unmask(core, commitments={owner: bytes(32)})
    with pytest.raises(SecAggAborted, match=f"or node {owner} dealt them wrong"):
        core.coordinator.receive_unmask(answers)


def commitment(kind: str, value):
    def rewrite(reply: Message, record: dict) -> None:
        if value is None:
            del record[f"{kind}-commitment"]
        else:
            record[f"{kind}-commitment"] = value
        reply.content[protocol.SECAGG_RECORD] = ConfigRecord(record)
    return rewrite


@pytest.mark.parametrize("kind", ["seed", "mask-key"])
@pytest.mark.parametrize("value", [None, bytes(31), "0" * 32], ids=["missing", "short", "text"])
def test_a_share_keys_reply_without_a_usable_commitment_drops_its_site(tmp_path, kind, value):
    fed = Federation(tmp_path, stage="share-keys", rewrite=commitment(kind, value))
    assert_dropped_and_averaged_without(fed.secure_round(), fed, f"{kind} commitment")


def test_over_flower_a_liar_s_shares_are_outvoted_its_update_kept_and_the_operator_warned(tmp_path, caplog):
    def lie(reply: Message, record: dict) -> None:
        blobs = unpack_blobs(record["b-shares"], SHARE_SIZE)
        record["b-shares"] = pack_blobs([b[:2] + bytes([b[2] ^ 1]) + b[3:] for b in blobs], SHARE_SIZE)
        reply.content[protocol.SECAGG_RECORD] = ConfigRecord(record)
    fed = Federation(tmp_path, stage="unmask", rewrite=lie)
    with caplog.at_level(logging.WARNING, logger="flsuite.coordinator.secure_round"):
        result = fed.secure_round(declared=False)
    assert sorted(result.survivors) == fed.nodes and fed.hostile not in result.missed
    np.testing.assert_allclose(result.arrays["w"].numpy(), UPDATE, atol=result.error_bound + 1e-9)
    assert list(result.wrong_shares) == [fed.hostile]
    assert f"node {fed.hostile} revealed a wrong share" in caplog.text


def test_cooperating_liars_who_keep_the_secret_change_nothing_but_the_hint():
    """Two of four holders shift their shares so that a polynomial through theirs and one honest
    share keeps the secret. The round is right; the names are only a hint (RoundSum.wrong_shares)."""
    core = Core(n=4, threshold=3)
    answers = run_to_unmask(core)
    owner = core.nodes[2]
    for liar in core.nodes[:2]:  # shares 1 and 2 moved alike: the Lagrange weights at 0 of {1, 2, 3} are 3, -3, 1
        answers[liar] = alter(answers[liar], "b", owner, 99)
    summed = core.coordinator.receive_unmask(answers)
    np.testing.assert_allclose(average(summed), np.mean([UPDATES[n] for n in core.nodes]), atol=summed.error_bound + 1e-9)
    assert summed.wrong_shares == {}  # the first subset passed: no hint is sought (it could name the honest holder)


def test_a_liar_holding_the_first_share_in_a_large_group_is_outvoted_within_the_search_limit():
    """Subsets in lexicographic order would all hold share 1 for C(19, 11) = 75,582 tries, past the
    limit; leaving out one share at a time finds the honest subset at the second try."""
    core = Core(n=20, threshold=12)
    answers = run_to_unmask(core)
    for owner in core.nodes[1:4]:
        liar = share_group(core.coordinator.graph, owner)[0]
        answers[liar] = alter(answers[liar], "b", owner, 1)
    summed = core.coordinator.receive_unmask(answers)
    np.testing.assert_allclose(average(summed), np.mean([UPDATES[n] for n in core.nodes]), atol=summed.error_bound + 1e-9)
    assert list(summed.wrong_shares) == [core.nodes[0]]


def test_a_liar_cannot_move_a_dropped_site_s_mask_key_within_its_clamped_bits():
    """Found in review: X25519 clamps private keys, so a key moved by 64 in its lowest limb has the
    same public key. A liar among the first holders moved its share so; the public-key check alone
    accepted the moved key at the first subset, and the honest holders outside it were named. The
    mask key's own commitment refuses it: the liar is outvoted and named, no honest holder is."""
    core = Core(n=5, threshold=3)
    dropped = core.nodes[-1]
    answers = run_to_unmask(core, drop=dropped)
    group = share_group(core.coordinator.graph, dropped)
    survivors = [n for n in core.nodes if n != dropped]
    liar = survivors[0]
    first = sorted(survivors, key=group.index)[:3]
    answers[liar] = alter(answers[liar], "sk", dropped, 64 * shifting_the_secret(core, dropped, first, liar) % shamir.PRIME)
    summed = core.coordinator.receive_unmask(answers)
    np.testing.assert_allclose(average(summed), np.mean([UPDATES[n] for n in survivors]), atol=summed.error_bound + 1e-9)
    assert list(summed.wrong_shares) == [liar]


def test_a_share_that_is_no_field_element_is_outvoted_and_named_not_a_crash():
    """Found by the benchmark's smoke test: the off-polynomial check raised on a share value >= the prime."""
    core = Core(n=5, threshold=3)
    answers = run_to_unmask(core)
    liar, owner = core.nodes[0], core.nodes[2]
    owners = unpack_ids(answers[liar]["b-nodes"])
    blobs = unpack_blobs(answers[liar]["b-shares"], SHARE_SIZE)
    blobs[owners.index(owner)] = blobs[owners.index(owner)][:2] + b"\xff" * 36
    answers[liar] = dict(answers[liar], **{"b-shares": pack_blobs(blobs, SHARE_SIZE)})
    summed = core.coordinator.receive_unmask(answers)
    np.testing.assert_allclose(average(summed), np.mean(list(UPDATES.values())), atol=summed.error_bound + 1e-9)
    assert f"node {owner}'s self-mask seed" in summed.wrong_shares[liar]


def test_the_search_costs_at_most_a_fixed_number_of_products_at_any_threshold():
    from flsuite.secagg.coordinator import MAX_SUBSETS, search_limit

    assert search_limit(3) == search_limit(64) == MAX_SUBSETS
    assert search_limit(513) == 63 and search_limit(1024) == 16
    assert all(search_limit(t) * t * t <= 1 << 24 for t in range(65, 1025) if search_limit(t) > 16)
