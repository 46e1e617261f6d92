"""A site's prepared records, kept per process so a site does not redo them for every message.

A CSV site answers train, evaluate and query messages, each of which needs its records read,
scaled with the study's declared ranges and split into training and held-out parts. The
result depends only on the file's version and the settings that shape it, so ``prepare_once``
keeps the last few results keyed on both: the file's identity as ``load_csv`` keys it
(``file_identity``: resolved path, inode, modification and change times, size) and the
caller's settings (the data section with its ranges, seed and class count, the hold-out
fraction, the site's name). A changed or replaced file, or any changed setting, is another
key and is prepared afresh; a file that cannot be stat'ed is not cached (its reader raises).
``FileVersionCache`` is that bounded cache; ``load_csv`` keeps its parsed datasets in one too.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

CACHE_SIZE = 4
"""Prepared results kept (least recently used first out)."""


class FileVersionCache:
    """The last ``size`` results built from files, keyed on the file's version and the caller's settings.

    Thread-safe; least recently used first out. A file that cannot be stat'ed is not cached.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[tuple, object] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, path: str | Path, settings: Hashable, build: Callable[[], T]) -> T:
        """``build()``'s result for this version of ``path`` and these ``settings``, built once.

        The file is stat'ed before ``build`` reads it, so a file changed while it is read is kept
        under its older identity and read again on the next call: never a fresh key with stale records.
        """
        try:
            key = (file_identity(path), settings)
        except OSError:
            return build()  # no such file (or unreadable): the reader names the problem
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]  # type: ignore[return-value]
        value = build()
        with self._lock:
            self._entries[key] = value
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_CACHE = FileVersionCache(CACHE_SIZE)


def file_identity(path: str | Path) -> tuple[str, int, int, int, int]:
    """The version of a file: resolved path, inode, modification and change times (ns), size."""
    resolved = Path(path)
    stat = resolved.stat()
    return str(resolved.resolve()), stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size


def prepare_once(path: str | Path, settings: Hashable, build: Callable[[], T]) -> T:
    """``build()``'s result for this version of ``path`` and these ``settings``, built once per process."""
    return _CACHE.get(path, settings, build)


def clear_site_cache() -> None:
    """Forget every prepared result (the next call prepares again)."""
    _CACHE.clear()
