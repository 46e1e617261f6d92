"""Round-by-round progress of studies running in this process.

The coordinator publishes each finished round; the CLI subscribes to draw its progress
bar. Nothing here changes what a study computes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

_listeners: list[Callable[[Any], None]] = []
_lock = threading.Lock()


def subscribe(listener: Callable[[Any], None]) -> None:
    with _lock:
        _listeners.append(listener)


def unsubscribe(listener: Callable[[Any], None]) -> None:
    with _lock:
        if listener in _listeners:
            _listeners.remove(listener)


def publish(event: Any) -> None:
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        listener(event)
