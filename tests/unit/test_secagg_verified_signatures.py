"""A signature that verified is remembered, and nothing but that exact signature passes because of it.

``crypto.verify_keys`` remembers (public key, signature, payload) triples that verified: every
neighbour of a site checks that site's one signature over its round keys, and simulated sites share
a process. The attacks: a dishonest coordinator replays keys and signatures that every site accepted
in an earlier round, or reuses a remembered signature with another key or payload.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from flsuite.secagg import SecAggAborted
from flsuite.secagg import primitives as crypto
from tests.unit.test_secagg_refusals import Sites, assert_all_refused, tamper_stage

REPLAYED = ("peer-names", "peer-c-pk", "peer-s-pk", "peer-signatures")


def count_verifications(monkeypatch) -> list[bytes]:
    """The public keys ``verify_keys`` really verifies a signature with, from now on."""
    checked: list[bytes] = []

    class Counted:
        @staticmethod
        def from_public_bytes(data):
            key = ed25519.Ed25519PublicKey.from_public_bytes(data)
            checked.append(data)
            return key

    monkeypatch.setattr(crypto, "Ed25519PublicKey", Counted)
    return checked


def payload(server_round: int, c_pk: bytes = b"\x01" * 32) -> bytes:
    return crypto.key_signature_payload(run_id=3, server_round=server_round, node=7, site_name="a", c_pk=c_pk,
                                        s_pk=b"\x02" * 32, setup_digest=b"\x03" * 32)


def test_a_remembered_signature_passes_for_its_own_key_and_payload_only():
    signer, other = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    public, other_public = crypto.public_key_bytes(signer), crypto.public_key_bytes(other)
    signature = signer.sign(payload(1))
    assert crypto.verify_keys(public, signature, payload(1))
    assert crypto.verify_keys(public, signature, payload(1))  # remembered now
    assert not crypto.verify_keys(public, signature, payload(2))  # another round
    assert not crypto.verify_keys(public, signature, payload(1, c_pk=b"\x09" * 32))  # other keys
    assert not crypto.verify_keys(other_public, signature, payload(1))  # another site's identity
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    assert not crypto.verify_keys(public, flipped, payload(1))


def test_a_failed_verification_is_not_remembered_and_a_mutable_buffer_is_checked_every_time(monkeypatch):
    signer = ed25519.Ed25519PrivateKey.generate()
    public, signature = crypto.public_key_bytes(signer), signer.sign(payload(5))
    calls = count_verifications(monkeypatch)
    forged = b"\x00" * 64
    assert not crypto.verify_keys(public, forged, payload(5))
    assert not crypto.verify_keys(public, forged, payload(5))
    assert len(calls) == 2
    buffer = bytearray(payload(5))
    assert crypto.verify_keys(public, signature, buffer)
    buffer[-1] ^= 1  # the same buffer, changed after it verified
    assert not crypto.verify_keys(public, signature, buffer)


def test_the_remembered_signatures_stay_within_their_bound(monkeypatch):
    monkeypatch.setattr(crypto, "_VERIFIED_MAX", 3)
    signer = ed25519.Ed25519PrivateKey.generate()
    public = crypto.public_key_bytes(signer)
    for server_round in range(10):
        assert crypto.verify_keys(public, signer.sign(payload(100 + server_round)), payload(100 + server_round))
    assert len(crypto._VERIFIED) <= 3


def test_each_site_s_signature_is_checked_once_in_a_process_of_simulated_sites(tmp_path, monkeypatch):
    sites = Sites(tmp_path, n=5)
    checked = count_verifications(monkeypatch)
    result = sites.run()
    assert len(result.survivors) == 5
    assert len(checked) == 5  # one per site's signature, not one per (site, neighbour): 20


def test_keys_and_signatures_every_site_accepted_last_round_are_refused_when_replayed(tmp_path):
    """A coordinator replays round 1's signed keys in round 2: the remembered signatures must not let them pass."""
    sites = Sites(tmp_path)
    first: dict[int, dict] = {}

    def record(msg, request):
        first[msg.metadata.dst_node_id] = {key: request[key] for key in (*REPLAYED, "peer-nodes")}
    sites.run(tamper=tamper_stage("share-keys", record), server_round=1)
    assert len(first) == len(sites.nodes)
    trained_in_round_1 = list(sites.trained)

    def replay(msg, request):  # the same peers, with the keys and signatures they sent in round 1
        old = first[msg.metadata.dst_node_id]
        assert request["peer-nodes"] == old["peer-nodes"]
        for key in REPLAYED:
            request[key] = old[key]
    with pytest.raises(SecAggAborted, match="unsigned-peer-key"):
        sites.run(tamper=tamper_stage("share-keys", replay), server_round=2)
    assert_all_refused(sites, "share-keys", "unsigned-peer-key")
    assert sites.trained == trained_in_round_1  # nobody trained in round 2
