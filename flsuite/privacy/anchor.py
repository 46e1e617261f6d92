"""The signed, anchored head of a site's privacy ledger: what stops a ledger from being cut.

After every append the site signs its ledger head (``flsuite.protocol.LedgerHead``: site,
dataset, entries, hash; Ed25519 over ``LedgerHead.payload()`` with the site's identity key)
and stores it OUTSIDE the ledger file, in ``<ledger>.head`` (written atomically). On every
use the site checks its ledger against that anchor and fails closed (IntegrityError) when:

- the anchor is missing (a ledger is created with its genesis anchor, so a missing anchor
  means it was deleted, or the site was never set up);
- the anchor is not signed by this site's identity key, or names another site;
- the ledger is missing while the anchor counts entries, is shorter than the anchor, or
  holds another entry where the anchor's head should be (cut, emptied or rewritten).

A ledger LONGER than its anchor, whose first entries match it, is a site that stopped
between an append and the anchor's write: it is accepted and re-anchored at the next write.
Only the operator's explicit reset command starts a ledger over (it archives, never deletes).
Pure: no torch, no flwr.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from flsuite.errors import IntegrityError, ProtocolError
from flsuite.privacy.ledger import GENESIS_HASH, LedgerHead, LedgerState
from flsuite.protocol import LedgerHead as SignedLedgerHead
from flsuite.storage import canonical_json, write_atomic

__all__ = ["ANCHOR_SUFFIX", "RESET_HINT", "LedgerAnchor", "SignedLedgerHead", "anchor_path", "sign_head", "verify_head"]

ANCHOR_SUFFIX = ".head"
RESET_HINT = (
    "The site refuses every request until this is resolved. Only the operator's explicit reset command "
    "can start the ledger over (it archives the old ledger and anchor): `flsuite site reset-ledger "
    "--config SITE.yaml --yes`, or `flsuite site reset-ledger --sites-dir DIR --site NAME --yes` for a "
    "simulated site."
)


def anchor_path(ledger_path: str | os.PathLike[str]) -> Path:
    """Where a ledger's signed head is anchored: ``<ledger>.head``, beside it."""
    ledger_path = Path(ledger_path)
    return ledger_path.with_name(ledger_path.name + ANCHOR_SUFFIX)


def sign_head(key: Ed25519PrivateKey, *, site: str, dataset: str, head: LedgerHead) -> SignedLedgerHead:
    """The site's signature over its ledger head."""
    unsigned = SignedLedgerHead(site=site, dataset=dataset, entries=head.entries, hash=head.hash, signature="00")
    return SignedLedgerHead(
        site=site, dataset=dataset, entries=head.entries, hash=head.hash, signature=key.sign(unsigned.payload()).hex()
    )


def verify_head(head: SignedLedgerHead, public_key: bytes | Ed25519PublicKey) -> bool:
    """True when ``head`` is signed by the Ed25519 key (raw 32 bytes or a public key object)."""
    try:
        public = public_key if isinstance(public_key, Ed25519PublicKey) else Ed25519PublicKey.from_public_bytes(public_key)
        public.verify(bytes.fromhex(head.signature), head.payload())
    except (InvalidSignature, ValueError):
        return False
    return True


class LedgerAnchor:
    """The anchored head of one site's ledger, signed with the site's identity key."""

    def __init__(self, ledger_path: str | os.PathLike[str], *, site: str, dataset: str, key: Ed25519PrivateKey) -> None:
        self.ledger_path = Path(ledger_path)
        self.path = anchor_path(self.ledger_path)
        self.site, self.dataset, self._key = site, dataset, key

    def __repr__(self) -> str:
        return f"LedgerAnchor({str(self.path)!r}, site={self.site!r}, dataset={self.dataset!r})"

    def sign(self, head: LedgerHead) -> SignedLedgerHead:
        return sign_head(self._key, site=self.site, dataset=self.dataset, head=head)

    def read(self) -> SignedLedgerHead | None:
        """The anchored head, its signature verified; None when there is no anchor file."""
        try:
            text = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise IntegrityError(f"anchored ledger head {self.path} cannot be read: {error.strerror}. {RESET_HINT}") from None
        try:
            record = json.loads(text)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
            anchored = SignedLedgerHead.from_record(record)
        except (ValueError, UnicodeDecodeError, ProtocolError) as error:
            raise IntegrityError(f"anchored ledger head {self.path} is not a signed ledger head ({error}). {RESET_HINT}") from None
        if anchored.site != self.site:
            raise IntegrityError(
                f"anchored ledger head {self.path} belongs to site {anchored.site!r}, not {self.site!r}. {RESET_HINT}"
            )
        if not verify_head(anchored, self._key.public_key()):
            raise IntegrityError(
                f"anchored ledger head {self.path} is not signed by site {self.site!r}'s identity key. {RESET_HINT}"
            )
        return anchored

    def check(self, state: LedgerState) -> SignedLedgerHead:
        """Fail closed unless the ledger holds at least, and exactly, what its anchor signed."""
        anchored = self.read()
        ledger = f"privacy ledger {self.ledger_path}"
        if anchored is None:
            if state.head.entries:
                raise IntegrityError(
                    f"{ledger} holds {state.head.entries} entries but its anchored head {self.path} is missing "
                    f"(deleted?): the ledger cannot be checked against what the site signed. {RESET_HINT}"
                )
            raise IntegrityError(
                f"{ledger} has no anchored head {self.path}: a site's ledger is created with its genesis anchor "
                "(`flsuite site start`, or when a simulated site's folder is made), so this site was never set up "
                f"or its ledger and anchor were deleted. {RESET_HINT}"
            )
        if not state.exists and anchored.entries:
            raise IntegrityError(
                f"{ledger} is missing (deleted?) but its anchored head {self.path} counts {anchored.entries} "
                f"entries. {RESET_HINT}"
            )
        if state.head.entries < anchored.entries:
            raise IntegrityError(
                f"{ledger} holds {state.head.entries} entries, fewer than the {anchored.entries} of its anchored "
                f"head {self.path}: entries were removed (cut or emptied). {RESET_HINT}"
            )
        if state.hash_at(anchored.entries) != anchored.hash:
            raise IntegrityError(
                f"{ledger} differs from its anchored head {self.path} at entry {anchored.entries}: the ledger "
                f"was rewritten or replaced. {RESET_HINT}"
            )
        return anchored

    def write(self, head: LedgerHead) -> SignedLedgerHead:
        """Sign ``head`` and anchor it atomically; never moves the anchor backwards."""
        current = self.read()
        if current is not None and head.entries < current.entries:
            raise IntegrityError(
                f"refusing to anchor {self.ledger_path} at {head.entries} entries below the anchored {current.entries}"
            )
        signed = self.sign(head)
        write_atomic(self.path, canonical_json(signed.to_record()) + b"\n", mode=0o600)
        return signed

    def write_genesis(self) -> SignedLedgerHead:
        """Anchor an empty ledger (entries 0, the genesis hash): a brand-new site's first anchor."""
        signed = self.sign(LedgerHead(0, GENESIS_HASH))
        write_atomic(self.path, canonical_json(signed.to_record()) + b"\n", mode=0o600)
        return signed
