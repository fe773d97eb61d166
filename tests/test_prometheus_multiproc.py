"""prometheus-client's multiprocess mode for a directory chosen after its import: the probe,
and what happens with the fast path and without it (the end to end runs are in test_metrics)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from prometheus_client import values

from spillway import prometheus_multiproc
from spillway.prometheus_multiproc import MULTIPROC_ENV, follow_environment, probe


@pytest.fixture(autouse=True)
def value_class(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever a test makes of prometheus-client's value class is undone after it."""
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_the_probe_passes_on_the_installed_prometheus_client() -> None:
    assert probe() is None


def test_with_the_fast_path_a_directory_set_after_the_import_takes_effect(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    in_memory = values.ValueClass
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="spillway.metrics"):
        follow_environment(fast=True)
    assert values.ValueClass is not in_memory
    assert warnings_of(caplog) == []


def test_a_prometheus_client_without_the_value_class_keeps_its_public_mode_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(
        prometheus_multiproc,
        "NEEDS",
        (*prometheus_multiproc.NEEDS, ("prometheus_client.values", "ValueClassGone")),
    )
    before = values.ValueClass
    with caplog.at_level(logging.WARNING, logger="spillway.metrics"):
        follow_environment(fast=True)
    assert values.ValueClass is before
    [warning] = warnings_of(caplog)
    assert "ValueClassGone is missing" in warning


def test_without_the_fast_path_a_late_directory_is_reported_not_applied(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = values.ValueClass
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path / "late"))
    with caplog.at_level(logging.WARNING, logger="spillway.metrics"):
        follow_environment(fast=False)
    assert values.ValueClass is before
    [warning] = warnings_of(caplog)
    assert "set it before it starts" in warning
