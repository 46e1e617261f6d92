"""The coordinator's side of one secure-aggregation round, as a state machine over plain dicts.

It routes keys and encrypted shares between sites, adds up the masked vectors as they
arrive (it never sees one site's update unmasked), and at the end rebuilds only the
self masks of survivors and the mask keys of dropped sites. Sites that do not answer a
stage, or answer malformed, are dropped; below the minimum the round aborts with
SecAggAborted and nothing is unmasked. The unmasked sum is checked before it is returned
(``quantize.sum_problem``): its total weight must equal the survivors' declared weights
(from ``declared``, each node's declared record count, when the coordinator knows them) and every coordinate must lie in the range
honest updates fill; a sum that fails aborts the round (stage "sum-check").

A rebuilt secret is checked before it is used, against the commitment the site sent with its
shares (a survivor's self-mask seed; a dropped site's mask key, and its announced public key).
A holder that reveals a wrong share is outvoted: other subsets of the shares are tried until one
rebuilds the committed secret, and the shares off its polynomial are recorded against their
holders (``RoundSum.wrong_shares``; only when the first subset failed, since a wrong share
outside it changed nothing). The round aborts only when no subset within ``search_limit`` does
(thresholds above 256, where tries cost most, search less than it takes to leave out any one share).

A site whose copy of a peer's shares does not authenticate holds none of them and says so in its
masked reply ("unreadable-shares"); it stays in the round (``RoundSum.unreadable_shares``, a hint),
and does not count as a holder of that peer's shares when the round checks that every secret it
may need is still recoverable.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flsuite.errors import ConfigError, SecAggAborted

from . import primitives as crypto
from .graph import neighbour_graph, share_group
from .quantize import average_error_bound, dequantise_sum, site_weight, sum_problem
from .settings import SecAggSettings
from .wire import (
    CIPHERTEXT_SIZE,
    KEY_SIZE,
    SHARE_SIZE,
    SIGNATURE_SIZE,
    pack_blobs,
    pack_ids,
    pack_names,
    setup_digest,
    unpack_blobs,
    unpack_ids,
)

__all__ = ["MAX_SUBSETS", "CoordinatorRound", "RoundSum", "search_limit"]

#: Subsets of threshold shares tried per secret when some share is wrong, fewest left out first:
#: enough for any 4 wrong shares among 18. Past it the round aborts. Each try costs about
#: threshold^2 modular products, so large thresholds try fewer (``search_limit``).
MAX_SUBSETS = 4096
_SEARCH_PRODUCTS = 1 << 24
COMMITMENT_SIZE = 32


@dataclass(frozen=True)
class RoundSum:
    """What the coordinator learns: the sum of w*update over survivors and the sum of w."""

    weighted_update_sum: np.ndarray
    total_weight: float
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    error_bound: float  # per coordinate, on weighted_update_sum / total_weight
    clipped_values: dict[int, int]
    rejected: dict[int, str]  # node -> why its reply was not used
    # holder -> the shares it revealed that are off the polynomial that rebuilt their secret. A hint, never a
    # reason to drop or exclude the holder: the share's dealer may have dealt it wrong, and when more than
    # (m + 1 - threshold) / 2 of a secret's m revealed shares are wrong, cooperating liars can put an honest
    # holder's share off the polynomial they chose (the secret is still the committed one).
    wrong_shares: dict[int, str] = field(default_factory=dict)
    # recipient -> the senders whose encrypted shares it could not authenticate, which it holds none of. A hint
    # too: the sender dealt garbage, or the shares were altered on the way (by this coordinator's path).
    unreadable_shares: dict[int, str] = field(default_factory=dict)


class CoordinatorRound:
    """Drive one round: setup_requests, then receive_keys, receive_shares, receive_masked, receive_unmask."""

    SUM_CHECK = "sum-check"  # the stage of an abort whose unmasked sum cannot be honest sites' sum

    def __init__(self, settings: SecAggSettings, *, run_id: int, server_round: int, cohort: Sequence[int],
                 model_hash: bytes, vector_length: int, declared: Mapping[int, int] | None = None,
                 pinned: Mapping[str, bytes] | None = None) -> None:
        """``declared``: per node, its declared record count, which gives its weight (None: unknown).

        ``pinned``: the sites' pinned identities (name -> Ed25519 public key), when the coordinator has
        them: a setup reply whose keys are not signed by the pinned identity of the site it names is
        dropped here, so that no honest neighbour is made to refuse the round over it.
        """
        cohort = sorted(set(cohort))
        if len(cohort) != settings.cohort_size:
            raise ConfigError(f"secagg.cohort_size={settings.cohort_size} but the round selected {len(cohort)} sites; "
                              "select exactly cohort_size sites per secure round.")
        self.settings = settings
        self.run_id, self.server_round = run_id, server_round
        self.cohort = cohort
        self.model_hash, self.vector_length = model_hash, vector_length
        self.weights = {n: site_weight(count, settings.weight_cap) for n, count in declared.items()} if declared is not None else None
        self.pinned = dict(pinned) if pinned is not None else None
        self._digest = setup_digest(run_id=run_id, server_round=server_round, settings_wire=settings.to_wire(), cohort=cohort,
                                    model_hash=model_hash, vector_length=vector_length)
        self.graph = neighbour_graph(cohort, neighbours=settings.neighbour_count, run_id=run_id, server_round=server_round)
        self.rejected: dict[int, str] = {}
        self._stage = "setup"
        self._keys: dict[int, dict[str, Any]] = {}
        self._routes: dict[int, dict[int, bytes]] = {}  # recipient -> sender -> ciphertext
        self._senders: dict[int, list[int]] = {}
        self._commitments: dict[int, dict[str, bytes]] = {}  # node -> "seed" / "mask-key" -> its commitment
        self._wrong_shares: dict[int, list[str]] = {}
        self._unheld: dict[int, frozenset[int]] = {}  # survivor -> senders whose shares it could not read (it says)
        self._shared_round: list[int] = []  # U2: sites whose shares went out
        self._survivors: list[int] = []  # U3: sites whose masked vectors are in the sum
        self._sum: np.ndarray | None = None
        self._clipped: dict[int, int] = {}

    # --- requests and replies -----------------------------------------------------------
    def setup_requests(self) -> dict[int, dict[str, Any]]:
        self._advance("setup", "keys")
        request = {"stage": "setup", **self._header(), "settings": self.settings.to_wire(),
                   "cohort": pack_ids(self.cohort), "model-hash": self.model_hash, "vector-length": self.vector_length}
        return {node: dict(request) for node in self.cohort}

    def receive_keys(self, replies: Mapping[int, Mapping[str, Any]]) -> dict[int, dict[str, Any]]:
        """Keep well-formed key replies (U1) and send each site its neighbours' signed keys."""
        self._advance("keys", "shares")
        for node, reply in self._expected(replies, self.cohort, "setup").items():
            try:
                keys = {"site-name": reply["site-name"], "c-pk": reply["c-pk"], "s-pk": reply["s-pk"],
                        "signature": reply["signature"]}
                if not isinstance(keys["site-name"], str) or not all(type(keys[k]) is bytes for k in ("c-pk", "s-pk", "signature")):
                    raise TypeError("the site name must be text and the keys and signature bytes")
                if len(keys["c-pk"]) != KEY_SIZE or len(keys["s-pk"]) != KEY_SIZE or len(keys["signature"]) != SIGNATURE_SIZE:
                    raise ValueError("key or signature of wrong size")
                if not (crypto.x25519_usable(keys["c-pk"]) and crypto.x25519_usable(keys["s-pk"])):
                    raise ValueError("a key is a low-order X25519 point, which no agreement can use")
                self._check_signed(node, keys)
            except (KeyError, TypeError, ValueError) as exc:
                self.rejected[node] = f"malformed setup reply: {exc}"
                continue
            self._keys[node] = keys
        alive = sorted(self._keys)
        self._require(alive, "setup")
        requests = {}
        for node in alive:
            peers = sorted(self.graph[node] & set(alive))
            requests[node] = {"stage": "share-keys", **self._header(), "peer-nodes": pack_ids(peers),
                              "peer-names": pack_names([self._keys[p]["site-name"] for p in peers]),
                              "peer-c-pk": pack_blobs([self._keys[p]["c-pk"] for p in peers], KEY_SIZE),
                              "peer-s-pk": pack_blobs([self._keys[p]["s-pk"] for p in peers], KEY_SIZE),
                              "peer-signatures": pack_blobs([self._keys[p]["signature"] for p in peers], SIGNATURE_SIZE)}
        return requests

    def _check_signed(self, node: int, keys: Mapping[str, Any]) -> None:
        """ValueError unless the keys are signed by the pinned identity of the site they name (with pinned identities)."""
        if self.pinned is None:
            return
        public = self.pinned.get(keys["site-name"])
        if public is None:
            raise ValueError(f"site {keys['site-name']!r} has no pinned identity")
        payload = crypto.key_signature_payload(run_id=self.run_id, server_round=self.server_round, node=node,
                                               site_name=keys["site-name"], c_pk=keys["c-pk"], s_pk=keys["s-pk"],
                                               setup_digest=self._digest)
        if not crypto.verify_keys(public, keys["signature"], payload):
            raise ValueError(f"the keys are not signed by the pinned identity of site {keys['site-name']!r} for this round")

    def receive_shares(self, replies: Mapping[int, Mapping[str, Any]]) -> dict[int, dict[str, Any]]:
        """Keep sites that sent a share to every live neighbour (U2); build the train requests."""
        self._advance("shares", "masked")
        alive = set(self._keys)
        sent: dict[int, dict[int, bytes]] = {}
        for node, reply in self._expected(replies, sorted(alive), "share-keys").items():
            try:
                recipients = unpack_ids(reply["recipients"])
                blobs = unpack_blobs(reply["ciphertexts"], CIPHERTEXT_SIZE)
                if sorted(recipients) != sorted(self.graph[node] & alive) or len(recipients) != len(blobs):
                    raise ValueError("shares do not go to exactly the live neighbours")
                commitments = {kind: reply.get(f"{kind}-commitment") for kind in ("seed", "mask-key")}
                for kind, commitment in commitments.items():
                    if type(commitment) is not bytes or len(commitment) != COMMITMENT_SIZE:
                        raise ValueError(f"the {kind} commitment is not {COMMITMENT_SIZE} bytes")
            except (KeyError, TypeError, ValueError) as exc:
                self.rejected[node] = f"malformed share-keys reply: {exc}"
                continue
            sent[node] = dict(zip(recipients, blobs, strict=True))
            self._commitments[node] = commitments
        self._shared_round = sorted(sent)
        self._require(self._shared_round, "share-keys")
        requests = {}
        for node in self._shared_round:
            senders = sorted(s for s in self._shared_round if node in sent[s])
            self._senders[node] = senders
            requests[node] = {"stage": "train", **self._header(), "senders": pack_ids(senders),
                              "ciphertexts": pack_blobs([sent[s][node] for s in senders], CIPHERTEXT_SIZE)}
        return requests

    def receive_masked(self, replies: Mapping[int, Mapping[str, Any]]) -> dict[int, dict[str, Any]]:
        """Add up the masked vectors (U3) and ask survivors for the shares that remove the masks."""
        self._advance("masked", "unmask")
        total = np.zeros(self.vector_length, dtype=np.uint32)
        for node, reply in self._expected(replies, self._shared_round, "train").items():
            masked = reply.get("masked")
            if not isinstance(masked, np.ndarray) or masked.dtype != np.uint32 or masked.shape != (self.vector_length,):
                self.rejected[node] = f"masked vector is not uint32[{self.vector_length}]"
                continue
            total += masked  # wraps modulo 2**32, which is what cancels the masks
            self._survivors.append(node)
            self._unheld[node] = self._unreadable(node, reply.get("unreadable-shares"))
            clipped = reply.get("clipped-values", 0)  # a count the site reports: anything else counts as none
            self._clipped[node] = clipped if isinstance(clipped, int) and not isinstance(clipped, bool) and clipped >= 0 else 0
        self._sum = total
        self._survivors.sort()
        self._require(self._survivors, "train")
        self._check_recoverable(self._survivors, "train")
        dropped = [n for n in self._shared_round if n not in self._survivors]
        request = {"stage": "unmask", **self._header(), "survivors": pack_ids(self._survivors), "dropped": pack_ids(dropped)}
        return {node: dict(request) for node in self._survivors}

    def receive_unmask(self, replies: Mapping[int, Mapping[str, Any]]) -> RoundSum:
        """Rebuild survivors' self masks and dropped sites' mask keys; return the unmasked sum."""
        self._advance("unmask", "done")
        survivors = set(self._survivors)
        dropped = [n for n in self._shared_round if n not in survivors]
        b_shares: dict[int, dict[int, bytes]] = {n: {} for n in survivors}  # owner -> share index -> share
        sk_shares: dict[int, dict[int, bytes]] = {n: {} for n in dropped}
        answered = []
        for holder, reply in self._expected(replies, self._survivors, "unmask").items():
            try:
                parsed = [(owner, share, b_shares) for owner, share in zip(
                    unpack_ids(reply["b-nodes"]), unpack_blobs(reply["b-shares"], SHARE_SIZE), strict=True)]
                parsed += [(owner, share, sk_shares) for owner, share in zip(
                    unpack_ids(reply["sk-nodes"]), unpack_blobs(reply["sk-shares"], SHARE_SIZE), strict=True)]
                for owner, share, pool in parsed:
                    if owner not in pool or int.from_bytes(share[:2], "big") != share_group(self.graph, owner).index(holder) + 1:
                        raise ValueError(f"share for node {owner} is not one this holder can have")
            except (KeyError, TypeError, ValueError) as exc:
                self.rejected[holder] = f"malformed unmask reply: {exc}"
                continue
            answered.append(holder)
            for owner, share, pool in parsed:
                pool[owner][int.from_bytes(share[:2], "big")] = share[2:]
        t = self.settings.threshold
        short = sorted(n for pool in (b_shares, sk_shares) for n, got in pool.items() if len(got) < t)
        if short:
            raise SecAggAborted(f"round {self.server_round}: too few shares to unmask nodes {short} "
                                f"(threshold {t}, {len(answered)} of {len(self._survivors)} survivors answered)", stage="unmask")
        assert self._sum is not None
        total, cipher = self._sum.copy(), self.settings.mask_cipher
        for node in self._survivors:
            seed = self._rebuild(node, b_shares[node], "self-mask seed", "commitment", self._committed(node, "seed"))
            key = crypto.self_mask_key(seed, run_id=self.run_id, server_round=self.server_round, node=node)
            crypto.apply_mask(total, key, cipher=cipher, subtract=True)
        for node in dropped:
            committed, announced = self._committed(node, "mask-key"), self._keys[node]["s-pk"]
            s_sk = self._rebuild(node, sk_shares[node], "mask key", "commitment and public key",
                                 lambda secret, committed=committed, announced=announced:
                                 committed(secret) and crypto.x25519_public(secret) == announced)
            for peer in self._survivors:
                if node not in self._senders.get(peer, ()):
                    continue
                shared = crypto.x25519_shared(s_sk, self._keys[peer]["s-pk"])
                key = crypto.pairwise_mask_key(shared, run_id=self.run_id, server_round=self.server_round,
                                               node_a=peer, node_b=node)
                # the survivor added this mask if its id is the lower one; take it out
                crypto.apply_mask(total, key, cipher=cipher, subtract=peer < node)
        weights = [self.weights.get(n) if self.weights is not None else None for n in self._survivors]
        problem = sum_problem(total, weights=weights, levels=self.settings.levels)
        if problem is not None:
            self._stage = "aborted"
            raise SecAggAborted(f"round {self.server_round}: the unmasked sum fails its check: {problem}. Nothing was published.",
                                stage=self.SUM_CHECK)
        numerator, weight = dequantise_sum(total, sites=len(self._survivors), clip_range=self.settings.clip_range,
                                           levels=self.settings.levels)
        bound = average_error_bound(sites=len(self._survivors), total_weight=weight,
                                    clip_range=self.settings.clip_range, levels=self.settings.levels)
        return RoundSum(weighted_update_sum=numerator, total_weight=weight, survivors=tuple(self._survivors),
                        dropped=tuple(n for n in self.cohort if n not in survivors), error_bound=bound,
                        clipped_values=dict(self._clipped), rejected=dict(self.rejected),
                        wrong_shares={holder: "; ".join(why) for holder, why in sorted(self._wrong_shares.items())},
                        unreadable_shares={holder: f"the encrypted shares from nodes {sorted(unheld)} did not authenticate: "
                                           "their sender dealt them wrong, or they were altered on the way"
                                           for holder, unheld in sorted(self._unheld.items()) if unheld})

    # --- helpers ------------------------------------------------------------------------
    def _rebuild(self, node: int, shares: Mapping[int, bytes], what: str, check: str, genuine: Callable[[bytes], bool]) -> bytes:
        """The secret that ``threshold`` of ``shares`` rebuild and ``genuine`` accepts (the owner's
        commitment, fixed before any share was revealed). The first ``threshold`` shares do unless
        one is wrong; then other subsets are tried, up to ``search_limit``, those that leave out
        fewer shares first, and the shares off the found secret's polynomial are recorded against
        their holders."""
        ordered = sorted(shares.items())
        limit = search_limit(self.settings.threshold)
        for tried, subset in enumerate(itertools.islice(_subsets_fewest_left_out_first(ordered, self.settings.threshold), limit)):
            try:
                secret = crypto.combine_secret(subset)
            except ValueError:  # limbs no 256-bit secret has: a wrong share among these
                continue
            if genuine(secret):
                group = share_group(self.graph, node)
                others = [share for share in ordered if share not in subset] if tried else []  # the first subset passed: no hint needed
                for index in crypto.shares_off_secret(subset, others):
                    self._wrong_shares.setdefault(group[index - 1], []).append(
                        f"its share of node {node}'s {what} is off the polynomial of the other shares and node {node}'s "
                        f"{check} (it altered the share, or node {node} dealt it wrong)")
                return secret
        self._stage = "aborted"
        raise SecAggAborted(f"round {self.server_round}: no {self.settings.threshold} of the {len(ordered)} shares of node "
                            f"{node}'s {what} rebuild the secret its {check} fixes (tried up to {limit} subsets): "
                            f"sites sent wrong shares, or node {node} dealt them wrong. Nothing was published.",
                            stage="unmask")

    def _committed(self, node: int, kind: str) -> Callable[[bytes], bool]:
        """Whether a secret is the one ``node`` committed to (``kind``: "seed" or "mask-key")."""
        commitment = self._commitments[node][kind]
        return lambda secret: crypto.secret_commitment(kind.encode(), secret, run_id=self.run_id,
                                                       server_round=self.server_round, node=node) == commitment

    def _header(self) -> dict[str, Any]:
        return {"run-id": crypto.u64(self.run_id), "round": self.server_round}

    def _advance(self, expected: str, following: str) -> None:
        if self._stage != expected:
            raise RuntimeError(f"coordinator round is at stage {self._stage!r}, not {expected!r}")
        self._stage = following

    def _expected(self, replies: Mapping[int, Mapping[str, Any]], asked: Sequence[int], stage: str) -> dict[int, Mapping[str, Any]]:
        kept = {}
        for node, reply in replies.items():
            if node not in asked:
                continue  # a reply from a node that was not asked (or was dropped) is ignored
            if reply.get("stage") != stage or reply.get("round") != self.server_round:
                self.rejected[node] = f"reply is not a {stage!r} reply for round {self.server_round}"
                continue
            kept[node] = reply
        return kept

    def _require(self, alive: Sequence[int], stage: str) -> None:
        need = self.settings.min_survivors
        if len(alive) < need:
            self._stage = "aborted"
            raise SecAggAborted(
                f"round {self.server_round}: only {len(alive)} of {len(self.cohort)} sites completed stage {stage!r}; "
                f"at least {need} are needed (threshold {self.settings.threshold}, tolerated dropouts "
                f"{self.settings.tolerated_dropouts}). Nothing was unmasked.", stage=stage)

    def _unreadable(self, node: int, packed: Any) -> frozenset[int]:
        """The senders whose shares ``node`` says it could not read: a hint, and shares it will not reveal.

        Only this round's senders to ``node`` count; a list that does not parse (or an older site's
        reply without one) counts as none, which at worst leaves the unmask stage short of a share."""
        try:
            unheld = frozenset(unpack_ids(packed)) & set(self._senders.get(node, ())) if packed is not None else frozenset()
        except ValueError:
            unheld = frozenset()
        return unheld

    def _check_recoverable(self, survivors: Sequence[int], stage: str) -> None:
        alive = set(survivors)
        for node in self._shared_round:
            # a holder that could not read its share of this node cannot reveal it: it does not count
            holders = {h for h in alive if node in self._senders.get(h, ()) and node not in self._unheld.get(h, ())} | ({node} & alive)
            if len(holders) < self.settings.threshold:
                self._stage = "aborted"
                unreadable = sorted(h for h in alive if node in self._unheld.get(h, ()))
                why = (f" (surviving nodes {unreadable} could not read the encrypted shares node {node} sent them: it "
                       "dealt them wrong, or they were altered on the way)") if unreadable else ""
                raise SecAggAborted(f"round {self.server_round}: only {len(holders)} surviving holders of node {node}'s "
                                    f"shares, threshold {self.settings.threshold}{why}. Nothing was unmasked.", stage=stage)


def _subsets_fewest_left_out_first(ordered: Sequence[tuple[int, bytes]], threshold: int):
    """Each distinct subset of ``threshold`` shares once: the first ``threshold`` shares left after
    leaving out no share, then each single share, then each pair, ... So e wrong shares among m cost
    at most 1 + m + ... + C(m, e) tries wherever they sit (in lexicographic order, one wrong first
    share would come before C(m - 1, threshold - 1) subsets: 75,582 for 12 of 20)."""
    seen = set()
    for left_out in range(len(ordered) - threshold + 1):
        for excluded in itertools.combinations(range(len(ordered)), left_out):
            subset = tuple(share for position, share in enumerate(ordered) if position not in excluded)[:threshold]
            key = tuple(index for index, _ in subset)
            if key not in seen:
                seen.add(key)
                yield subset


def search_limit(threshold: int) -> int:
    """Subsets tried per secret: ``MAX_SUBSETS``, fewer for thresholds whose tries cost more (63 at
    threshold 513), never fewer than 16. One wrong share is outvoted wherever it sits while the
    limit exceeds the threshold (thresholds up to 256); above that, only within the first
    ``limit - 1`` shares, and a wrong share further on aborts the round, as any did before."""
    return max(16, min(MAX_SUBSETS, _SEARCH_PRODUCTS // threshold**2))

