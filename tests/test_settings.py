"""Settings: every one is documented in the README."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from tests.conftest import ROOT

from spillway import Settings


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = []
    for name in Settings.model_fields:
        env = f"SPILLWAY_{name.upper()}"
        # A row may name related settings by their suffix: `SPILLWAY_MAX_RETRIES` / `_RETRY_BASE`.
        if env not in readme and f"`_{name.upper()}`" not in readme:
            missing.append(env)
    assert not missing, f"README.md's settings table lacks {missing}"


def test_an_accept_linger_longer_than_half_the_redis_timeout_is_refused() -> None:
    # A caller waits at most twice redis_timeout for its 202: a linger near that would turn
    # every write under load into a 503.
    assert Settings(accept_linger=0.25, redis_timeout=0.5).accept_linger == 0.25
    with pytest.raises(ValidationError, match="accept_linger"):
        Settings(accept_linger=0.3, redis_timeout=0.5)
