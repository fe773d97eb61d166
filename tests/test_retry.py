"""The retry policy's one stored form, and the backoff between attempts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spillway.retry import RetryPolicy, backoff_delay

_seconds = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)


@given(st.integers(min_value=0, max_value=10**6), _seconds, _seconds, _seconds)
def test_a_policy_reads_back_as_it_was_written(
    max_retries: int, timeout: float, base: float, cap: float
) -> None:
    policy = RetryPolicy(max_retries, timeout, base, cap)

    again = RetryPolicy.decode(policy.text)

    assert again == policy
    assert (again.max_retries, again.timeout, again.base, again.cap) == (
        max_retries, timeout, base, cap,
    )  # fmt: skip


def test_a_policy_text_begins_with_the_attempt_limit_begin_lua_reads() -> None:
    assert RetryPolicy(7, 30, 1, 60).text.split("|")[0] == "7"


@pytest.mark.parametrize("text", ["", "3|30|1", "3|30|1|60|9", "x|30|1|60"])
def test_text_that_is_not_a_policy_is_refused(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - any ValueError: the text is not a policy
        RetryPolicy.decode(text)


def test_a_task_s_own_limit_or_timeout_replaces_only_those_parts() -> None:
    policy = RetryPolicy(3, 300, 1, 60)

    assert policy.replace(max_retries=None, timeout=None) is policy
    assert policy.replace(max_retries=0, timeout=None) == RetryPolicy(0, 300, 1, 60)
    assert policy.replace(max_retries=None, timeout=5) == RetryPolicy(3, 5, 1, 60)


def test_backoff_doubles_up_to_its_cap_and_jitter_stays_below_the_ceiling() -> None:
    assert [backoff_delay(n, 1, 5, jitter=False) for n in (1, 2, 3, 4)] == [1, 2, 4, 5]
    assert all(0 <= backoff_delay(3, 1, 60) <= 4 for _ in range(100))


def test_equal_policies_have_one_text_whatever_the_number_types() -> None:
    assert RetryPolicy(3, 30, 1, 60).text == RetryPolicy(3, 30.0, 1.0, 60.0).text
    assert RetryPolicy.decode(RetryPolicy(3, 30, 1, 60).text) == RetryPolicy(3, 30, 1, 60)
