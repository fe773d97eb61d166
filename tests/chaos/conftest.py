"""Fixtures of the chaos scenarios: a fresh stack of processes per scenario (the table of
results is printed by tests/conftest.py, the one conftest every test process loads)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from tests.chaos.harness import Stack

StackFactory = Callable[..., Stack]


@pytest.fixture
async def stacks(tmp_path: Path) -> AsyncIterator[StackFactory]:
    """Build stacks (`stacks(settings=..., maxmemory=...)`); all are stopped at the end."""
    made: list[Stack] = []

    def make(**kwargs: Any) -> Stack:
        stack = Stack(tmp_path / f"stack{len(made)}", **kwargs)
        stack.log_dir.mkdir(parents=True, exist_ok=True)
        made.append(stack)
        return stack

    try:
        yield make
    finally:
        for stack in reversed(made):
            await stack.close()
