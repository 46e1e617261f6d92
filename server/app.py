"""The Flower ServerApp of flsuite (named in pyproject.toml): the coordinator, built by ``flsuite.coordinator``."""

from flsuite.coordinator.app import build_server_app

app = build_server_app()
