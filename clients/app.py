"""The Flower ClientApp of flsuite (named in pyproject.toml): a site, built by ``flsuite.site``."""

from flsuite.site.app import build_client_app

app = build_client_app()
