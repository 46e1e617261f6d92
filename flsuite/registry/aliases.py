"""Alias history as a stack: a promotion pushes a version, a rollback pops back to the one before.

Pure functions over the recorded alias moves (oldest first); the registry appends a new
move for every change and never rewrites an old one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from flsuite.errors import RegistryError

__all__ = ["alias_stack", "current_aliases", "check_alias_name"]

_ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


def check_alias_name(alias: str) -> str:
    if not isinstance(alias, str) or not _ALIAS.match(alias):
        raise RegistryError(f"alias {alias!r}: use a lower-case name such as 'staging' or "
                            "'production' (letters, digits, - and _, up to 64)")
    return alias


def alias_stack(moves: Iterable[Mapping[str, Any]], alias: str) -> list[int]:
    """The versions an alias pointed at, oldest first; the last one is its current target."""
    stack: list[int] = []
    for move in moves:
        if move["alias"] != alias:
            continue
        if move["action"] == "promote":
            stack.append(move["to_version"])
        elif move["action"] == "rollback":
            if stack:
                stack.pop()
    return stack


def current_aliases(moves: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """{alias: version} as of the last move."""
    moves = list(moves)
    names = sorted({move["alias"] for move in moves})
    return {name: stack[-1] for name in names if (stack := alias_stack(moves, name))}
