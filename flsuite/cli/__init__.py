"""The ``flsuite`` command: every command group (run, launch, privacy, registry, audit, pki,
coordinator, site) and the one place that turns flsuite's errors into exit codes."""

from flsuite.lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {"app": "main", "main": "main"})
