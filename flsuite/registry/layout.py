"""Where things live inside a registry folder (the whole folder can be copied).

    registry/
      registry.json         format and registry id (informational; the log's first entry rules)
      audit.jsonl           the append-only, hash-chained, signed audit log (record of truth)
      head.json             the signed head: seq and hash of the log's last entry
      catalogue.sqlite      SQLite index of versions and alias moves (WAL, synchronous=FULL)
      keys/<key id>.pub     the coordinator's Ed25519 public key(s), PEM
      blobs/sha256/<hex>    weight blobs, named by the SHA-256 of the plaintext safetensors
      .lock                 fcntl lock that serialises writers
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["Layout", "REGISTRY_FORMAT"]

REGISTRY_FORMAT = "flsuite.registry/1"


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def info(self) -> Path:
        return self.root / "registry.json"

    @property
    def log(self) -> Path:
        return self.root / "audit.jsonl"

    @property
    def head(self) -> Path:
        return self.root / "head.json"

    @property
    def catalogue(self) -> Path:
        return self.root / "catalogue.sqlite"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def blobs(self) -> Path:
        return self.root / "blobs" / "sha256"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    def blob(self, address: str) -> Path:
        return self.blobs / address

    def key_file(self, key_id: str) -> Path:
        return self.keys / f"{key_id}.pub"

    def is_registry(self) -> bool:
        return self.log.is_file() and self.info.is_file()
