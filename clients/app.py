"""The Flower ClientApp of flsuite (named in pyproject.toml): a site, built by ``flsuite.site``."""

from flsuite.timing import mark, process_started_at

mark("clientapp-import", process_started=process_started_at())

from flsuite.site.app import build_client_app  # noqa: E402 - the trace above times this import

app = build_client_app()
mark("clientapp-built")
