"""What the test API servers serve: `tests.api.server_app:app`, configured by their environment."""

from tests.api.sample_app import build

from spillway import Settings

app = build(Settings())
