"""Settings: every one is documented in the README."""

from __future__ import annotations

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
