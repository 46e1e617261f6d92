"""A stand-in for a standard-library module inside one Flower module, with one function replaced.

flsuite's entry points for Flower's SuperNode and SuperExec change how a Flower module sleeps
or starts processes by rebinding that module's global name (``time``, ``subprocess``) to a
view of the real module in which one function is replaced; the rest of the process, and the
real module, are untouched.
"""

from __future__ import annotations

from types import ModuleType, SimpleNamespace
from typing import Any

__all__ = ["module_view"]


def module_view(module: ModuleType, **replacements: Any) -> SimpleNamespace:
    """The public names of ``module`` (its ``__all__``, else every name without a leading underscore),
    with ``replacements`` in place of the real ones."""
    names = getattr(module, "__all__", None) or [name for name in dir(module) if not name.startswith("_")]
    return SimpleNamespace(**{**{name: getattr(module, name) for name in names}, **replacements})
