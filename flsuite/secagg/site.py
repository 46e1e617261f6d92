"""A site's side of one secure-aggregation round, as a state machine over plain dicts.

Stages (each a method taking the coordinator's request and returning the reply):
setup -> share_keys -> begin_train (+ local training) -> mask_update -> unmask.
The state between stages is a flat dict of str/int/bytes (``state``), so it can live in
Flower's Context.state between messages in separate processes. Any refusal ends the
round for this site: its secrets are wiped and later requests for the round are refused.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from functools import lru_cache, partial, wraps
from types import MappingProxyType
from typing import Any, NoReturn

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flsuite.errors import ConfigError, SecAggRefused

from . import primitives as crypto
from .graph import neighbour_graph, share_group
from .quantize import check_range, quantise_vector
from .settings import SecAggSettings
from .wire import (
    CIPHERTEXT_SIZE,
    KEY_SIZE,
    SHARE_SIZE,
    SIGNATURE_SIZE,
    field,
    pack_blobs,
    pack_ids,
    setup_digest,
    unpack_blobs,
    unpack_ids,
    unpack_names,
)

__all__ = ["SiteRound"]

#: Round numbers and lengths travel as uint64 in what sites sign, and as Flower's signed 64-bit ints.
_MAX_U63 = 2**63 - 1


def _refusals_end_the_round(method: Callable[..., Any], unexpected: str = "bad-request") -> Callable[..., Any]:
    """Any failure of the stage ends the site's round (its secrets wiped) and is a refusal.

    A ``SecAggRefused`` passes as it is; any other exception (an input no check foresaw) becomes
    the refusal ``unexpected``, naming the exception, so nothing a coordinator sends makes a site
    raise anything else, nor keep a round's secrets after it failed.
    """
    @wraps(method)
    def guarded(self: SiteRound, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except SecAggRefused as refusal:
            self._end_round(stage="refused", reason=refusal.reason)
            raise
        except Exception as exc:
            self._end_round(stage="refused", reason=unexpected)
            raise SecAggRefused(unexpected, f"{method.__name__} could not use its input ({_described(exc)})") from exc
    return guarded


def _agree(private: bytes, peer_publics: list[bytes]) -> list[bytes]:
    """X25519 agreements with the peers' keys; a low-order peer key (a signed one too) is refused."""
    try:
        return crypto.x25519_shared_many(private, peer_publics)
    except ValueError:
        raise SecAggRefused("bad-request", "a peer's X25519 key is a low-order point, which no agreement can use") from None


def _described(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 300 else text[:300] + "..."


class SiteRound:
    """One site's protocol state; build it per message from the stored ``state`` dict."""

    def __init__(self, *, node_id: int, run_id: int, site_name: str, identity: Ed25519PrivateKey,
                 pinned: Mapping[str, bytes], state: Mapping[str, Any] | None = None,
                 random_bytes: crypto.RandomBytes = os.urandom) -> None:
        if site_name not in pinned:
            raise ConfigError(f"site name {site_name!r} is not in the pinned identities; add it or fix node-config 'site-name'.")
        if pinned[site_name] != crypto.public_key_bytes(identity):
            raise ConfigError(f"the identity key of site {site_name!r} does not match its pinned public key.")
        self.node_id = node_id
        self.run_id = run_id
        self.site_name = site_name
        self._identity = identity
        self._pinned = dict(pinned)
        self._random = random_bytes
        self._state: dict[str, Any] = dict(state or {})

    @property
    def state(self) -> dict[str, Any]:
        """The flat state to store until the next stage (str/int/bytes values only)."""
        return dict(self._state)

    # --- stage 1 ----------------------------------------------------------------------
    @_refusals_end_the_round
    def setup(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Check the announced round and answer with fresh X25519 keys signed by the identity."""
        self._check_header(request, "setup", new_round=True)
        server_round = field(request, "round", int)
        try:
            settings = SecAggSettings.from_wire(field(request, "settings", str))
            cohort = unpack_ids(field(request, "cohort", bytes))
        except (ConfigError, ValueError, TypeError) as exc:
            raise SecAggRefused("bad-request", f"setup carries unusable settings or cohort: {exc}") from None
        if sorted(set(cohort)) != cohort or len(cohort) != settings.cohort_size or self.node_id not in cohort:
            raise SecAggRefused("bad-request", "the cohort must be sorted, unique, of cohort_size nodes and include this site")
        model_hash = field(request, "model-hash", bytes)
        vector_length = field(request, "vector-length", int)
        if len(model_hash) != 32 or not 2 <= vector_length <= _MAX_U63:
            raise SecAggRefused("bad-request", "model hash must be 32 bytes and the vector between 2 and 2**63-1 long")
        digest = setup_digest(run_id=self.run_id, server_round=server_round, settings_wire=settings.to_wire(),
                              cohort=cohort, model_hash=model_hash, vector_length=vector_length)
        c_sk, c_pk = crypto.x25519_keypair(self._random)
        s_sk, s_pk = crypto.x25519_keypair(self._random)
        payload = crypto.key_signature_payload(run_id=self.run_id, server_round=server_round, node=self.node_id,
                                               site_name=self.site_name, c_pk=c_pk, s_pk=s_pk, setup_digest=digest)
        self._state = {
            "run-id": crypto.u64(self.run_id), "round": server_round, "last-round": server_round,
            "stage": "keys-sent", "settings": settings.to_wire(), "cohort": pack_ids(cohort),
            "model-hash": model_hash, "vector-length": vector_length, "setup-digest": digest,
            "c-sk": c_sk, "s-sk": s_sk,
        }
        return {"stage": "setup", "round": server_round, "site-name": self.site_name, "c-pk": c_pk, "s-pk": s_pk,
                "signature": crypto.sign_keys(self._identity, payload)}

    # --- stage 2 ----------------------------------------------------------------------
    @_refusals_end_the_round
    def share_keys(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Verify peers' signed keys against the pinned identities; send them encrypted Shamir shares."""
        self._check_header(request, "share-keys", expect="keys-sent")
        settings, graph = self._settings(), self._graph()
        try:
            peers = unpack_ids(field(request, "peer-nodes", bytes))
            names = unpack_names(field(request, "peer-names", str))
            c_pks = unpack_blobs(field(request, "peer-c-pk", bytes), KEY_SIZE)
            s_pks = unpack_blobs(field(request, "peer-s-pk", bytes), KEY_SIZE)
            signatures = unpack_blobs(field(request, "peer-signatures", bytes), SIGNATURE_SIZE)
        except ValueError as exc:
            raise SecAggRefused("bad-request", f"peer keys are malformed: {exc}") from None
        if not len(peers) == len(names) == len(c_pks) == len(s_pks) == len(signatures):
            raise SecAggRefused("bad-request", "peer lists differ in length")
        if len(set(peers)) != len(peers) or not set(peers) <= graph[self.node_id]:
            raise SecAggRefused("bad-request", "peers must be distinct neighbours of this site in the round's graph")
        if len(set(names)) != len(names) or self.site_name in names:
            raise SecAggRefused("unsigned-peer-key", "two peers claim one site identity (or a peer claims this site's)")
        round_, digest = self._state["round"], self._state["setup-digest"]
        for peer, name, c_pk, s_pk, signature in zip(peers, names, c_pks, s_pks, signatures, strict=True):
            pinned = self._pinned.get(name)
            # Only a pinned name is encoded into the payload: any other (one that does not even encode) is refused here.
            if pinned is None or not crypto.verify_keys(pinned, signature, crypto.key_signature_payload(
                    run_id=self.run_id, server_round=round_, node=peer, site_name=name, c_pk=c_pk, s_pk=s_pk,
                    setup_digest=digest)):
                raise SecAggRefused("unsigned-peer-key", f"the keys of node {peer} ({name!r}) are not signed by a pinned "
                                    "site identity for this run, round and setup")
        if len(peers) + 1 < settings.threshold:
            raise SecAggRefused("below-threshold", f"only {len(peers) + 1} share holders left, threshold is {settings.threshold}")
        seed = self._random(32)
        group = share_group(graph, self.node_id)
        seed_shares, key_shares = crypto.split_secrets([seed, self._state["s-sk"]], threshold=settings.threshold,
                                                       holders=len(group), random_bytes=self._random)
        # One agreement per peer for the round: the key encrypts the shares sent now and decrypts
        # the peer's shares at the train stage; the X25519 secret c-sk is not needed after this.
        pair_keys = [crypto.share_encryption_key(shared, run_id=self.run_id, server_round=round_, node_a=self.node_id, node_b=peer)
                     for peer, shared in zip(peers, _agree(self._state["c-sk"], c_pks), strict=True)]
        ciphertexts = []
        for peer, pair_key in zip(peers, pair_keys, strict=True):
            index = group.index(peer) + 1
            plaintext = (crypto.u64(self.node_id) + crypto.u64(peer) + index.to_bytes(2, "big")
                         + seed_shares[index - 1] + key_shares[index - 1])
            ciphertexts.append(crypto.encrypt_share(pair_key, plaintext, nonce=self._random(12),
                                                    aad=crypto.share_aad(run_id=self.run_id, server_round=round_,
                                                                         sender=self.node_id, recipient=peer)))
        own = group.index(self.node_id)
        del self._state["c-sk"]
        self._state.update({
            "stage": "shares-sent", "seed": seed, "peer-nodes": pack_ids(peers), "share-keys": pack_blobs(pair_keys, KEY_SIZE),
            "peer-s-pk": pack_blobs(s_pks, KEY_SIZE), "own-b-share": seed_shares[own], "own-sk-share": key_shares[own],
        })
        return {"stage": "share-keys", "round": round_, "recipients": pack_ids(peers),
                "ciphertexts": pack_blobs(ciphertexts, CIPHERTEXT_SIZE),
                "seed-commitment": crypto.secret_commitment(b"seed", seed, run_id=self.run_id, server_round=round_,
                                                            node=self.node_id),
                "mask-key-commitment": crypto.secret_commitment(b"mask-key", self._state["s-sk"], run_id=self.run_id,
                                                                server_round=round_, node=self.node_id)}

    # --- stage 3 ----------------------------------------------------------------------
    @_refusals_end_the_round
    def begin_train(self, request: Mapping[str, Any], *, model_hash: bytes) -> None:
        """Check the received model against the announced hash and keep the peers' shares.

        A share that does not authenticate (dealt wrong by its sender, or altered on the way) is
        not kept, and the round goes on: refusing would let any one site drop its honest
        neighbours from every round by sending them garbage. The sender still counts as a peer
        that shared (both sides mask with each other, as the coordinator expects); this site just
        holds none of its shares, and says so in its masked reply ("unreadable-shares")."""
        self._check_header(request, "train", expect="shares-sent")
        if model_hash != self._state["model-hash"]:
            raise SecAggRefused("model-hash-mismatch", "the global model differs from the one announced at setup")
        settings, graph = self._settings(), self._graph()
        try:
            senders = unpack_ids(field(request, "senders", bytes))
            ciphertexts = unpack_blobs(field(request, "ciphertexts", bytes), CIPHERTEXT_SIZE)
        except ValueError as exc:
            raise SecAggRefused("bad-request", f"forwarded shares are malformed: {exc}") from None
        peers = unpack_ids(self._state["peer-nodes"])
        pair_keys = dict(zip(peers, unpack_blobs(self._state["share-keys"], KEY_SIZE), strict=True))
        if len(senders) != len(ciphertexts) or len(set(senders)) != len(senders) or not set(senders) <= set(peers):
            raise SecAggRefused("bad-request", "shares must come from distinct peers whose keys this site verified")
        if len(senders) + 1 < settings.threshold:
            raise SecAggRefused("below-threshold", f"only {len(senders) + 1} sites shared secrets, threshold is {settings.threshold}")
        owners, unreadable, b_shares, sk_shares = [], [], [], []
        for sender, blob in zip(senders, ciphertexts, strict=True):
            aad = crypto.share_aad(run_id=self.run_id, server_round=self._state["round"], sender=sender, recipient=self.node_id)
            plain = crypto.decrypt_share(pair_keys[sender], blob, aad=aad)
            index = share_group(graph, sender).index(self.node_id) + 1
            if plain is None or plain[:18] != crypto.u64(sender) + crypto.u64(self.node_id) + index.to_bytes(2, "big"):
                unreadable.append(sender)  # not held (see above); its sender stays a masking peer
                continue
            owners.append(sender)
            b_shares.append(plain[18 : 18 + crypto.SHARE_BYTES])
            sk_shares.append(plain[18 + crypto.SHARE_BYTES :])
        # the pair keys served only to decrypt these shares: forget them before training and masking
        del self._state["share-keys"]
        self._state.update({"stage": "training", "senders": pack_ids(senders), "share-owners": pack_ids(owners),
                            "unreadable-shares": pack_ids(unreadable),
                            "held-b-shares": b"".join(b_shares), "held-sk-shares": b"".join(sk_shares)})

    @partial(_refusals_end_the_round, unexpected="bad-local-update")
    def mask_update(self, *, update: np.ndarray, num_examples: int) -> dict[str, Any]:
        """Quantise [w*update, w] and add the self mask and the pairwise masks."""
        if self._state.get("stage") != "training":
            raise SecAggRefused("bad-request", "mask_update needs begin_train first")
        settings = self._settings()
        update = np.asarray(update, dtype=np.float64).ravel()
        if update.size != self._state["vector-length"] - 1:
            raise SecAggRefused("bad-local-update", f"the update has {update.size} values, the model {self._state['vector-length'] - 1}")
        bad = int(np.count_nonzero(~np.isfinite(update)))
        if bad:
            raise SecAggRefused("non-finite-update", f"{bad} update values are NaN or Inf; nothing was masked or sent")
        checked = check_range(update, clip_range=settings.clip_range)
        if checked.clipped and not settings.clip_out_of_range:
            raise SecAggRefused("out-of-range", f"{checked.clipped} update values lie beyond the clip range "
                                f"±{settings.clip_range} (largest |value| {checked.largest:.4g}); raise secagg.clip_range "
                                "or set secagg.clip_out_of_range=true to clip them")
        if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)) or num_examples < 0:
            raise SecAggRefused("bad-local-update", f"num-examples={num_examples!r} must be an integer >= 0")
        weight = min(int(num_examples), settings.weight_cap) / settings.weight_cap
        masked = quantise_vector(checked.values, weight, clip_range=settings.clip_range, levels=settings.levels)
        round_ = self._state["round"]
        self_key = crypto.self_mask_key(self._state["seed"], run_id=self.run_id, server_round=round_, node=self.node_id)
        crypto.apply_mask(masked, self_key, cipher=settings.mask_cipher)
        peers = unpack_ids(self._state["peer-nodes"])
        s_pks = dict(zip(peers, unpack_blobs(self._state["peer-s-pk"], KEY_SIZE), strict=True))
        senders = unpack_ids(self._state["senders"])
        for peer, shared in zip(senders, _agree(self._state["s-sk"], [s_pks[p] for p in senders]), strict=True):
            key = crypto.pairwise_mask_key(shared, run_id=self.run_id, server_round=round_, node_a=self.node_id, node_b=peer)
            # the lower node id adds the pair's mask, the higher subtracts it: they cancel in the sum
            crypto.apply_mask(masked, key, cipher=settings.mask_cipher, subtract=self.node_id > peer)
        self._state["stage"] = "masked-sent"
        return {"stage": "train", "round": round_, "masked": masked, "clipped-values": checked.clipped,
                "unreadable-shares": self._state["unreadable-shares"]}

    # --- stage 4 ----------------------------------------------------------------------
    @_refusals_end_the_round
    def unmask(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Reveal self-mask shares of survivors and key shares of dropped sites, once per round."""
        if self._state.get("stage") == "unmasked" and request.get("round") == self._state.get("round"):
            raise SecAggRefused("repeated-unmask", f"round {self._state['round']} was already unmasked; a second request is refused")
        self._check_header(request, "unmask", expect="masked-sent")
        settings = self._settings()
        try:
            survivors = unpack_ids(field(request, "survivors", bytes))
            dropped = unpack_ids(field(request, "dropped", bytes))
        except ValueError as exc:
            raise SecAggRefused("bad-request", f"survivor/dropped lists are malformed: {exc}") from None
        both = set(survivors) & set(dropped)
        if both:
            raise SecAggRefused("overlapping-lists", f"nodes {sorted(both)} are listed both as survivors and as dropped")
        cohort = set(unpack_ids(self._state["cohort"]))
        if not (set(survivors) | set(dropped)) <= cohort or self.node_id not in survivors:
            raise SecAggRefused("bad-request", "the lists name nodes outside the cohort or list this site as dropped")
        if len(set(survivors)) < settings.threshold:
            raise SecAggRefused("below-threshold", f"only {len(set(survivors))} survivors, threshold is {settings.threshold}; "
                                "revealing shares could not complete the round")
        graph = self._graph()
        held = {self.node_id: (self._state["own-b-share"], self._state["own-sk-share"])}
        owners = unpack_ids(self._state["share-owners"])
        b_held = unpack_blobs(self._state["held-b-shares"], crypto.SHARE_BYTES)
        sk_held = unpack_blobs(self._state["held-sk-shares"], crypto.SHARE_BYTES)
        held.update({s: (b, k) for s, b, k in zip(owners, b_held, sk_held, strict=True)})
        b_nodes, b_out, sk_nodes, sk_out = [], [], [], []
        for owner, (b_share, sk_share) in sorted(held.items()):
            index = (share_group(graph, owner).index(self.node_id) + 1).to_bytes(2, "big")
            if owner in survivors:
                b_nodes.append(owner)
                b_out.append(index + b_share)
            elif owner in dropped:
                sk_nodes.append(owner)
                sk_out.append(index + sk_share)
        round_ = self._state["round"]
        self._end_round(stage="unmasked")
        return {"stage": "unmask", "round": round_, "b-nodes": pack_ids(b_nodes), "b-shares": pack_blobs(b_out, SHARE_SIZE),
                "sk-nodes": pack_ids(sk_nodes), "sk-shares": pack_blobs(sk_out, SHARE_SIZE)}

    def end(self, reason: str) -> None:
        """End this site's part in the round (its secrets wiped) without raising: something outside the stages failed."""
        self._end_round(stage="refused", reason=reason)

    def refuse(self, reason: str, message: str) -> NoReturn:
        """Refuse on behalf of the transport (e.g. an unusable training reply): end the round and raise."""
        self._end_round(stage="refused", reason=reason)
        raise SecAggRefused(reason, message)

    # --- helpers ----------------------------------------------------------------------
    def _check_header(self, request: Mapping[str, Any], stage: str, *, expect: str | None = None,
                      new_round: bool = False) -> None:
        if request.get("stage") != stage:
            raise SecAggRefused("bad-request", f"expected a {stage!r} request, got {request.get('stage')!r}")
        if field(request, "run-id", bytes) != crypto.u64(self.run_id):
            raise SecAggRefused("bad-request", "the request belongs to another run")
        server_round = field(request, "round", int)
        if not 0 <= server_round <= _MAX_U63:
            raise SecAggRefused("bad-request", f"round {server_round} is not between 0 and 2**63-1")
        if new_round:
            last = self._state.get("last-round")
            if self._state.get("run-id") == crypto.u64(self.run_id) and last is not None and server_round <= last:
                raise SecAggRefused("stale-round", f"setup for round {server_round}, but this site already took part in "
                                    f"round {last}; every secure round needs a new, larger round number")
            return
        if server_round != self._state.get("round") or self._state.get("stage") != expect:
            raise SecAggRefused("bad-request", f"a {stage!r} request for round {server_round} does not follow this "
                                f"site's state (round {self._state.get('round')}, stage {self._state.get('stage')!r})")

    def _end_round(self, *, stage: str, reason: str | None = None) -> None:
        kept = {k: v for k, v in self._state.items() if k in ("run-id", "round", "last-round")}
        kept["stage"] = stage
        if reason:
            kept["refusal"] = reason
        self._state = kept

    def _settings(self) -> SecAggSettings:
        return _settings_from_wire(self._state["settings"])

    def _graph(self) -> Mapping[int, frozenset[int]]:
        return _round_graph(self._state["settings"], self._state["cohort"], self.run_id, self._state["round"])


# Every stage needs the round's settings and graph; both are pure functions of what the site
# stored at setup, so they are parsed and built once per round, not once per stage.
@lru_cache(maxsize=256)
def _settings_from_wire(wire: str) -> SecAggSettings:
    return SecAggSettings.from_wire(wire)


@lru_cache(maxsize=256)
def _round_graph(settings_wire: str, cohort: bytes, run_id: int, server_round: int) -> Mapping[int, frozenset[int]]:
    graph = neighbour_graph(unpack_ids(cohort), neighbours=_settings_from_wire(settings_wire).neighbour_count,
                            run_id=run_id, server_round=server_round)
    return MappingProxyType(graph)  # shared between calls: read-only

