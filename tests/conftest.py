"""Shared test set-up: one torch thread, quiet Flower, and a helper to run the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``flsuite ARGS`` as a user would, in a subprocess (by default in a fresh folder)."""
    return subprocess.run(
        [sys.executable, "-m", "flsuite.cli.main", *args],
        cwd=cwd or tempfile.mkdtemp(prefix="flsuite-cli-"),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
