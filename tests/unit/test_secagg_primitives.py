"""Known-answer vectors for the mask stream and the key derivation; Shamir and share encryption."""

from __future__ import annotations

import hashlib
import hmac
import os

import numpy as np
import pytest

from flsuite.secagg import primitives as crypto
from flsuite.secagg.graph import neighbour_graph, share_group
from flsuite.secagg.quantize import average_error_bound, dequantise_sum, quantise_vector

# RFC 7748 section 6.1
ALICE_SK = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PK = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_SK = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PK = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
SHARED = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")


def test_aes_256_ctr_mask_stream_known_answer():
    # AES-256 with the all-zero key on the all-zero block (counter 0)
    words = crypto.mask_stream(bytes(32), 4, cipher="aes-256-ctr")
    assert words.tobytes() == bytes.fromhex("dc95c078a2408989ad48a21492842087")
    assert words.dtype == np.dtype("<u4") and words[0] == 0x78C095DC  # little-endian words


def test_chacha20_mask_stream_known_answer():
    # RFC 8439 appendix A.1, test vector 1 (zero key, zero nonce, block counter 0)
    words = crypto.mask_stream(bytes(32), 16, cipher="chacha20")
    assert words.tobytes() == bytes.fromhex(
        "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
        "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586")


def test_mask_stream_is_one_continuous_keystream_across_chunks():
    key = bytes(range(32))
    long = crypto.mask_stream(key, 100_003, cipher="aes-256-ctr")  # spans two internal chunks
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    expected = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(4 * 100_003))
    assert long.tobytes() == expected


@pytest.mark.parametrize("cipher", ["aes-256-ctr", "chacha20"])
def test_applying_a_mask_in_place_adds_and_subtracts_the_same_stream(cipher):
    key, words = os.urandom(32), 150_001
    values = np.random.default_rng(0).integers(0, 2**32, words, dtype=np.uint32)
    masked = values.copy()
    crypto.apply_mask(masked, key, cipher=cipher)
    assert np.array_equal(masked, values + crypto.mask_stream(key, words, cipher=cipher))  # wraps mod 2**32
    crypto.apply_mask(masked, key, cipher=cipher, subtract=True)
    assert np.array_equal(masked, values)
    with pytest.raises(ValueError):
        crypto.apply_mask(values.astype(np.int64), key, cipher=cipher)


def _hkdf_sha256(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def test_x25519_and_key_derivation_known_answers():
    assert crypto.x25519_public(ALICE_SK) == ALICE_PK
    assert crypto.x25519_shared(ALICE_SK, BOB_PK) == SHARED == crypto.x25519_shared(BOB_SK, ALICE_PK)
    pair = crypto.pairwise_mask_key(SHARED, run_id=1, server_round=2, node_a=4, node_b=3)
    info = b"pairwise-mask" + (1).to_bytes(8, "big") + (2).to_bytes(8, "big") + (3).to_bytes(8, "big") + (4).to_bytes(8, "big")
    assert pair == _hkdf_sha256(SHARED, b"flsuite-secagg/v1", info)
    assert pair.hex() == "9400f3f726dc35d1e1da87dda1ad9ed6debf428fdd65a7356b230284f6be02fb"
    assert pair == crypto.pairwise_mask_key(SHARED, run_id=1, server_round=2, node_a=3, node_b=4)  # symmetric
    enc = crypto.share_encryption_key(SHARED, run_id=1, server_round=2, node_a=3, node_b=4)
    assert enc == _hkdf_sha256(SHARED, b"flsuite-secagg/v1", info.replace(b"pairwise-mask", b"share-encryption"))
    own = crypto.self_mask_key(bytes(32), run_id=1, server_round=2, node=3)
    assert own == _hkdf_sha256(bytes(32), b"flsuite-secagg/v1",
                               b"self-mask" + b"".join(x.to_bytes(8, "big") for x in (1, 2, 3)))
    assert len({pair, enc, own}) == 3
    # every bound value changes the key
    assert pair != crypto.pairwise_mask_key(SHARED, run_id=1, server_round=3, node_a=3, node_b=4)
    assert pair != crypto.pairwise_mask_key(SHARED, run_id=2, server_round=2, node_a=3, node_b=4)


def test_pairwise_mask_stream_known_answer():
    key = crypto.pairwise_mask_key(SHARED, run_id=1, server_round=2, node_a=3, node_b=4)
    words = crypto.mask_stream(key, 4, cipher="aes-256-ctr")
    assert words.tobytes().hex() == "67c24928f388197dbfd8d53a4d1230c4"


def test_shamir_32_byte_secret_needs_threshold_shares():
    secret = os.urandom(32)
    (shares,) = crypto.split_secrets([secret], threshold=3, holders=5)
    assert len(shares) == 5 and all(len(s) == crypto.SHARE_BYTES for s in shares)
    assert crypto.combine_secret([(1, shares[0]), (4, shares[3]), (5, shares[4])]) == secret
    assert crypto.combine_secret([(2, shares[1]), (3, shares[2]), (5, shares[4]), (1, shares[0])]) == secret
    with pytest.raises(ValueError):  # two shares of a threshold-3 secret interpolate to no 256-bit secret (almost surely)
        assert crypto.combine_secret([(1, shares[0]), (2, shares[1])]) != secret


def test_share_ciphertext_is_bound_to_sender_recipient_and_round():
    key, nonce = os.urandom(32), os.urandom(12)
    aad = crypto.share_aad(run_id=1, server_round=2, sender=3, recipient=4)
    blob = crypto.encrypt_share(key, b"share", aad=aad, nonce=nonce)
    assert crypto.decrypt_share(key, blob, aad=aad) == b"share"
    for other in (crypto.share_aad(run_id=1, server_round=2, sender=4, recipient=3),
                  crypto.share_aad(run_id=1, server_round=3, sender=3, recipient=4)):
        assert crypto.decrypt_share(key, blob, aad=other) is None
    assert crypto.decrypt_share(key, blob[:-1] + bytes([blob[-1] ^ 1]), aad=aad) is None


def test_neighbour_graph_is_symmetric_regular_and_shared_by_everyone():
    cohort = list(range(100, 111))
    graph = neighbour_graph(cohort, neighbours=4, run_id=1, server_round=5)
    assert all(len(peers) == 4 and node not in peers for node, peers in graph.items())
    assert all(node in graph[peer] for node, peers in graph.items() for peer in peers)
    assert graph == neighbour_graph(reversed(cohort), neighbours=4, run_id=1, server_round=5)
    assert graph != neighbour_graph(cohort, neighbours=4, run_id=1, server_round=6)
    assert share_group(graph, 100) == sorted(graph[100] | {100})
    full = neighbour_graph(cohort, neighbours=10, run_id=1, server_round=5)
    assert all(len(p) == 10 for p in full.values())


def test_quantised_sum_of_a_full_cohort_never_wraps_and_meets_the_bound():
    n, clip = 7, 2.0
    levels = (2**32 - 1) // n
    rng = np.random.default_rng(3)
    updates = [rng.uniform(-clip, clip, 50) for _ in range(n)]
    updates[0][:] = clip  # extremes
    updates[1][:] = -clip
    weights = [1.0, 1.0] + list(rng.uniform(0, 1, n - 2))
    total = np.zeros(51, dtype=np.uint32)
    for u, w in zip(updates, weights):
        q = quantise_vector(u, w, clip_range=clip, levels=levels)
        assert q.max() <= levels
        total += q
    numerator, weight = dequantise_sum(total, sites=n, clip_range=clip, levels=levels)
    exact = sum(w * u for u, w in zip(updates, weights)) / sum(weights)
    bound = average_error_bound(sites=n, total_weight=weight, clip_range=clip, levels=levels)
    assert np.max(np.abs(numerator / weight - exact)) <= bound
    assert abs(weight - sum(weights)) <= n / (2 * levels)
