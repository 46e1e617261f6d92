"""The cryptographic building blocks of the protocol, all in one place.

X25519 key agreement, HKDF-SHA256 key derivation (every derived key binds run, round and
the two nodes), AES-256-GCM for Shamir shares in transit, Ed25519 signatures over a
site's round keys, Shamir sharing of 32-byte secrets (over GF(2^31-1) in numpy, see
``shamir``), and the mask keystream (AES-256-CTR or ChaCha20 over zeros).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from . import shamir

__all__ = [
    "model_hash",
    "PROTOCOL",
    "RandomBytes",
    "apply_mask",
    "combine_secret",
    "decrypt_share",
    "encrypt_share",
    "hkdf32",
    "key_signature_payload",
    "mask_stream",
    "pairwise_mask_key",
    "public_key_bytes",
    "self_mask_key",
    "share_encryption_key",
    "share_aad",
    "sign_keys",
    "split_secrets",
    "SHARE_BYTES",
    "u64",
    "verify_keys",
    "x25519_keypair",
    "x25519_public",
    "x25519_shared",
    "x25519_shared_many",
    "x25519_usable",
]

PROTOCOL = b"flsuite-secagg/v1"
RandomBytes = Callable[[int], bytes]
_CHUNK = 1 << 18
_ZEROS = memoryview(bytes(_CHUNK))


def u64(value: int) -> bytes:
    """Big-endian unsigned 64-bit encoding (node ids, run ids and rounds are uint64)."""
    return int(value).to_bytes(8, "big")


# --- key agreement and derivation -------------------------------------------------------

def x25519_keypair(random_bytes: RandomBytes) -> tuple[bytes, bytes]:
    """A fresh X25519 key pair as raw (private, public) bytes."""
    private = X25519PrivateKey.from_private_bytes(random_bytes(32))
    return private.private_bytes_raw(), private.public_key().public_bytes_raw()


def x25519_public(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def x25519_shared(private: bytes, peer_public: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).exchange(X25519PublicKey.from_public_bytes(peer_public))


def x25519_usable(public: bytes) -> bool:
    """Whether ``public`` is an X25519 public key an agreement can use (not one of the low-order points)."""
    try:
        _PROBE.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:  # OpenSSL refuses a low-order point: the shared secret would be all zeros
        return False
    return True


#: A throwaway private key: agreeing with it tells whether a public key is usable (its secret never matters).
_PROBE = X25519PrivateKey.generate()


def x25519_shared_many(private: bytes, peer_publics: Sequence[bytes]) -> list[bytes]:
    """``x25519_shared(private, p)`` for every p, loading the private key once (the load costs
    about as much as an exchange)."""
    key = X25519PrivateKey.from_private_bytes(private)
    return [key.exchange(X25519PublicKey.from_public_bytes(peer)) for peer in peer_publics]


def hkdf32(ikm: bytes, *, info: bytes) -> bytes:
    """HKDF-SHA256 (RFC 5869) with salt PROTOCOL, 32 bytes out: the output is the first
    expand block, T(1) = HMAC(PRK, info || 0x01) with PRK = HMAC(salt, ikm). Written with the
    standard library's one-shot HMAC (same bytes as ``cryptography``'s HKDF, which a test
    checks) because a site derives about 20 keys per round and the HKDF object costs more
    to build than the two HMACs."""
    prk = hmac.digest(PROTOCOL, ikm, "sha256")
    return hmac.digest(prk, info + b"\x01", "sha256")


def _pair_info(label: bytes, run_id: int, server_round: int, node_a: int, node_b: int) -> bytes:
    low, high = sorted((node_a, node_b))
    return label + u64(run_id) + u64(server_round) + u64(low) + u64(high)


def pairwise_mask_key(shared: bytes, *, run_id: int, server_round: int, node_a: int, node_b: int) -> bytes:
    """Key of the mask two neighbours add (lower id) and subtract (higher id)."""
    return hkdf32(shared, info=_pair_info(b"pairwise-mask", run_id, server_round, node_a, node_b))


def share_encryption_key(shared: bytes, *, run_id: int, server_round: int, node_a: int, node_b: int) -> bytes:
    """AES-256-GCM key for the shares two neighbours send each other."""
    return hkdf32(shared, info=_pair_info(b"share-encryption", run_id, server_round, node_a, node_b))


def self_mask_key(seed: bytes, *, run_id: int, server_round: int, node: int) -> bytes:
    """Key of a site's self mask, from its 32-byte self-mask seed."""
    return hkdf32(seed, info=b"self-mask" + u64(run_id) + u64(server_round) + u64(node))


def secret_commitment(kind: bytes, secret: bytes, *, run_id: int, server_round: int, node: int) -> bytes:
    """SHA-256 commitment to one of a site's round secrets (``kind``: b"seed", the self-mask seed,
    or b"mask-key", its X25519 mask key), sent with its shares: the coordinator checks a secret
    rebuilt at unmask against it, so a wrong share is found, not used. The secrets are 32 uniform
    bytes, so the hash reveals nothing about a secret that is never rebuilt. A mask key needs its
    own commitment besides its public key: X25519 clamps keys, so keys that differ in the clamped
    bits share a public key, and a liar could move the rebuilt key there unseen."""
    return hashlib.sha256(PROTOCOL + b"/commitment/" + kind + u64(run_id) + u64(server_round) + u64(node) + secret).digest()


# --- mask keystream ---------------------------------------------------------------------

def mask_stream(key: bytes, words: int, *, cipher: str) -> np.ndarray:
    """``words`` little-endian uint32 words of keystream under a 256-bit key (nonce zero).

    Every key is used for one stream only (keys are derived per round and pair), so a
    fixed nonce is safe.
    """
    encryptor = _encryptor(key, cipher)
    nbytes = 4 * words
    out = np.empty(nbytes + 16, dtype=np.uint8)
    view = memoryview(out)
    # Chunks of zeros keep the input in cache; update_into needs 15 spare bytes.
    for offset in range(0, nbytes, _CHUNK):
        size = min(_CHUNK, nbytes - offset)
        encryptor.update_into(_ZEROS[:size], view[offset : offset + size + 15])
    return out[:nbytes].view("<u4")


def apply_mask(target: np.ndarray, key: bytes, *, cipher: str, subtract: bool = False) -> None:
    """Add (or subtract) the keystream of ``key`` to a uint32 vector in place, modulo 2**32.

    Same words as ``mask_stream(key, target.size)``, generated chunk by chunk into a small
    per-thread scratch buffer that stays in cache, so no vector-sized buffer is allocated.
    """
    if target.dtype != np.uint32 or target.ndim != 1:
        raise ValueError("masks apply to 1-D uint32 vectors")
    encryptor = _encryptor(key, cipher)
    scratch = _scratch()
    view = memoryview(scratch)
    words_per_chunk = _CHUNK // 4
    operation = np.subtract if subtract else np.add
    for start in range(0, target.size, words_per_chunk):
        words = min(words_per_chunk, target.size - start)
        encryptor.update_into(_ZEROS[: 4 * words], view[: 4 * words + 15])
        part = target[start : start + words]
        operation(part, scratch[: 4 * words].view("<u4"), out=part)


def _encryptor(key: bytes, cipher: str):  # noqa: ANN202 - a cryptography CipherContext
    if len(key) != 32:
        raise ValueError("mask keys are 32 bytes")
    if cipher == "aes-256-ctr":
        return Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    if cipher == "chacha20":
        return Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    raise ValueError(f"unknown mask cipher {cipher!r}")


_LOCAL = threading.local()


def _scratch() -> np.ndarray:
    scratch = getattr(_LOCAL, "scratch", None)
    if scratch is None:
        scratch = _LOCAL.scratch = np.empty(_CHUNK + 16, dtype=np.uint8)
    return scratch


# --- shares in transit ------------------------------------------------------------------

def share_aad(*, run_id: int, server_round: int, sender: int, recipient: int) -> bytes:
    return PROTOCOL + b"/share-keys" + u64(run_id) + u64(server_round) + u64(sender) + u64(recipient)


def encrypt_share(key: bytes, plaintext: bytes, *, aad: bytes, nonce: bytes) -> bytes:
    """nonce (12 bytes) || AES-256-GCM ciphertext and tag."""
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def decrypt_share(key: bytes, blob: bytes, *, aad: bytes) -> bytes | None:
    """The plaintext, or None when the blob does not authenticate."""
    if len(blob) < 12 + 16:
        return None
    try:
        return AESGCM(key).decrypt(blob[:12], blob[12:], aad)
    except InvalidTag:
        return None


# --- identity signatures ----------------------------------------------------------------

def key_signature_payload(*, run_id: int, server_round: int, node: int, site_name: str,
                          c_pk: bytes, s_pk: bytes, setup_digest: bytes) -> bytes:
    """What a site signs: its round keys bound to run, round, node, name and the setup."""
    name = site_name.encode("utf-8")
    return (PROTOCOL + b"/keys" + u64(run_id) + u64(server_round) + u64(node)
            + len(name).to_bytes(2, "big") + name + c_pk + s_pk + setup_digest)


def sign_keys(identity: Ed25519PrivateKey, payload: bytes) -> bytes:
    return identity.sign(payload)


def verify_keys(identity_public: bytes, signature: bytes, payload: bytes) -> bool:
    """Whether ``signature`` is ``identity_public``'s Ed25519 signature of ``payload``.

    A verification is a pure function of those three byte strings, so one that succeeded is
    remembered, keyed by the three exactly (``_VERIFIED``): every neighbour of a site checks that
    site's one signature over its round keys, and simulated sites share a process, so the
    signature is checked there once instead of once per neighbour. Any other key, signature or
    payload is a different key and is verified; failures are never remembered, and only
    immutable ``bytes`` are (a mutable buffer could change after it was checked).
    """
    triple = (identity_public, signature, payload)
    remember = all(type(part) is bytes for part in triple)
    if remember:
        with _VERIFIED_LOCK:
            if triple in _VERIFIED:
                _VERIFIED.move_to_end(triple)
                return True
    try:
        Ed25519PublicKey.from_public_bytes(identity_public).verify(signature, payload)
    except (InvalidSignature, ValueError):
        return False
    if remember:
        with _VERIFIED_LOCK:
            _VERIFIED[triple] = None
            while len(_VERIFIED) > _VERIFIED_MAX:
                _VERIFIED.popitem(last=False)
    return True


#: Signatures that verified, keyed by (public key, signature, payload) exactly; a round of 50 sites adds 50.
_VERIFIED: OrderedDict[tuple[bytes, bytes, bytes], None] = OrderedDict()
_VERIFIED_MAX = 4096
_VERIFIED_LOCK = threading.Lock()


def public_key_bytes(identity: Ed25519PrivateKey) -> bytes:
    return identity.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


# --- Shamir sharing of 32-byte secrets --------------------------------------------------

SHARE_BYTES = shamir.SHARE_BYTES


def split_secrets(secrets: Sequence[bytes], *, threshold: int, holders: int,
                  random_bytes: RandomBytes = os.urandom) -> list[list[bytes]]:
    """Shares 1..holders of each 32-byte secret (``SHARE_BYTES`` each), all secrets in one pass."""
    return shamir.split(secrets, threshold=threshold, holders=holders, random_bytes=random_bytes)


def combine_secret(shares: Sequence[tuple[int, bytes]]) -> bytes:
    """Rebuild a 32-byte secret from (index, share) pairs (threshold of them); ValueError when
    the shares cannot be of one secret."""
    return shamir.combine(shares)


def shares_off_secret(basis: Sequence[tuple[int, bytes]], others: Sequence[tuple[int, bytes]]) -> list[int]:
    """The indices of ``others`` not on the polynomial through ``basis`` (``shamir.off_polynomial``)."""
    return shamir.off_polynomial(basis, others)


def model_hash(arrays: Mapping[str, np.ndarray]) -> bytes:
    """SHA-256 over every array's name, dtype, shape and bytes, in sorted name order:
    the model a secure round announces at setup and every site checks before training."""
    h = hashlib.sha256(PROTOCOL + b"/model")
    for key in sorted(arrays):
        array = np.ascontiguousarray(arrays[key])
        name = key.encode()
        h.update(u64(len(name)) + name + array.dtype.str.encode() + u64(array.ndim))
        for dim in array.shape:
            h.update(u64(dim))
        data = array.tobytes()
        h.update(u64(len(data)) + data)
    return h.digest()
