"""The waits a refusal advises: the drain-rate estimator and the formula, without Redis."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spillway.pacing import Bounds, DrainRate, Pacer, drain_seconds, header_seconds, spread


def low_end(a: float, b: float) -> float:
    return a


def high_end(a: float, b: float) -> float:
    return b


def paced(limit: int = 100, shards: int = 1, **bounds: float) -> Pacer:
    return Pacer(Bounds(**bounds), limit=limit, shards=shards, slow_down_at=0.8, halflife=1.0)


def test_a_steady_counter_gives_its_rate() -> None:
    rate = DrainRate(halflife=5)
    for second in range(10):
        rate.update(total=40 * second, now=100.0 + second)

    assert rate.rate == pytest.approx(40)


def test_the_rate_is_unknown_until_two_samples() -> None:
    rate = DrainRate(halflife=5)
    assert rate.rate is None
    rate.update(10, now=1.0)
    assert rate.rate is None
    rate.update(10, now=2.0)
    assert rate.rate == 0


def test_a_sample_half_life_long_moves_the_average_half_way() -> None:
    rate = DrainRate(halflife=2)
    rate.update(0, now=0.0)
    rate.update(100, now=1.0)  # 100/s
    rate.update(100, now=3.0)  # 0/s over one half-life

    assert rate.rate == pytest.approx(50)


def test_a_counter_that_went_backwards_is_a_new_baseline_and_keeps_the_rate() -> None:
    rate = DrainRate(halflife=1)
    rate.update(0, now=0.0)
    rate.update(10, now=1.0)
    rate.update(3, now=2.0)  # the stream was deleted and made again
    assert rate.rate == pytest.approx(10)
    rate.update(13, now=3.0)
    assert rate.rate == pytest.approx(10)


def test_a_sample_with_no_time_passed_is_ignored() -> None:
    rate = DrainRate(halflife=1)
    rate.update(0, now=5.0)
    rate.update(50, now=5.0)
    rate.update(10, now=6.0)

    assert rate.rate == pytest.approx(10)


def test_drain_seconds_is_the_excess_over_the_rate_and_infinite_without_drain() -> None:
    assert drain_seconds(200, 50.0) == 4
    assert drain_seconds(0, 50.0) == pytest.approx(1 / 50)  # one slot at least
    assert drain_seconds(200, 0.0) == math.inf
    assert drain_seconds(200, None) is None


def test_the_base_wait_is_bounded_and_short_while_unmeasured() -> None:
    bounds = Bounds(low=1, high=60)

    assert bounds.base(0.01) == 1
    assert bounds.base(math.inf) == 60
    assert bounds.base(12.5) == 12.5
    assert bounds.base(None) == 2


@given(
    st.floats(min_value=0, max_value=1e9, allow_nan=False),
    st.floats(min_value=1, max_value=100),
    st.floats(min_value=0, max_value=3600),
    st.floats(min_value=0, max_value=0.99),
)
def test_a_jittered_wait_stays_within_the_bounds_and_the_jitter(
    seconds: float, low: float, span: float, jitter: float
) -> None:
    bounds = Bounds(low=low, high=low + span, jitter=jitter)
    base = bounds.base(seconds)
    for draw in (low_end, high_end, random.uniform):
        wait = bounds.jittered(base, draw)
        assert bounds.low <= wait <= bounds.high
        assert base * (1 - jitter) - 1e-9 <= wait <= base * (1 + jitter) + 1e-9


def test_a_wait_at_the_upper_bound_is_jittered_below_it_not_piled_on_it() -> None:
    bounds = Bounds(low=1, high=60, jitter=0.5)

    assert (bounds.jittered(60, low_end), bounds.jittered(60, high_end)) == (30, 60)


def test_many_waits_spread_out() -> None:
    bounds = Bounds(low=1, high=60, jitter=0.5)
    headers = {header_seconds(bounds.jittered(20)) for _ in range(200)}

    assert len(headers) > 10
    assert all(10 <= int(h) <= 30 for h in headers)


def test_a_refusal_waits_for_the_backlog_above_the_threshold_to_drain() -> None:
    pacer = paced(limit=100, jitter=0)
    pacer.observe({"q": (100, 0)}, now=0.0)
    pacer.observe({"q": (100, 10)}, now=1.0)  # 10 tasks a second

    # 100 - 80 = 20 tasks above the threshold, at 10 a second.
    assert pacer.retry_after("q", 100) == pytest.approx(2)


def test_the_wait_grows_with_the_backlog_and_shrinks_with_a_faster_drain() -> None:
    def wait(limit: int, per_second: int) -> float:
        pacer = paced(limit=limit, jitter=0)
        pacer.observe({"q": (limit, 0)}, now=0.0)
        pacer.observe({"q": (limit, per_second)}, now=1.0)
        return pacer.retry_after("q", limit)

    assert wait(1000, 10) > wait(100, 10)
    assert wait(1000, 100) < wait(1000, 10)


def test_a_lane_that_does_not_drain_waits_the_upper_bound_and_an_unmeasured_one_briefly() -> None:
    pacer = paced(jitter=0)
    pacer.observe({"stuck": (100, 7)}, now=0.0)
    pacer.observe({"stuck": (100, 7)}, now=1.0)

    assert pacer.retry_after("stuck", 100) == 60
    assert pacer.retry_after("never-sampled", 100) == 2


def test_a_sharded_lane_counts_its_excess_over_every_shard() -> None:
    pacer = paced(limit=100, shards=4, jitter=0)  # 25 a shard, threshold 20 a shard
    pacer.observe({"q": (100, 0)}, now=0.0)
    pacer.observe({"q": (100, 10)}, now=1.0)

    assert pacer.retry_after("q", 25) == pytest.approx(2)  # (25 - 20) * 4 / 10


def test_only_lanes_above_the_threshold_advise_their_202s() -> None:
    pacer = paced(limit=100)
    pacer.observe({"calm": (80, 0), "busy": (90, 0)}, now=0.0)
    pacer.observe({"calm": (80, 10), "busy": (90, 10)}, now=1.0)

    assert set(pacer.slow) == {"busy"}
    assert pacer.slow["busy"] == pytest.approx(1)  # (90 - 80) / 10
    assert pacer.advice("calm") is None
    assert pacer.advice("busy") in {"1", "2"}


def test_a_lane_back_under_the_threshold_stops_advising_and_an_unread_lane_keeps_its_advice() -> (
    None
):
    pacer = paced(limit=100)
    slow = pacer.slow
    pacer.observe({"a": (95, 0), "b": (95, 0)}, now=0.0)
    pacer.observe({"a": (10, 50)}, now=1.0)  # b could not be read this time

    assert set(slow) == {"b"}  # the same dict, updated in place


def test_a_broker_outage_wait_is_spread_over_one_to_three_times_its_value() -> None:
    assert (spread(1.0, low_end), spread(1.0, high_end)) == (1, 3)
    assert {header_seconds(spread(1.0)) for _ in range(200)} == {"1", "2", "3"}


def test_a_header_is_whole_seconds_and_never_zero() -> None:
    assert [header_seconds(s) for s in (0.0, 0.4, 1.4, 1.6, 60.0)] == ["1", "1", "1", "2", "60"]


def test_a_callers_wait_is_its_excess_over_the_pace_of_rounds() -> None:
    pacer = paced(limit=100, jitter=0)
    pacer.observe_rounds({"q": 0}, now=0.0)
    pacer.observe_rounds({"q": 5}, now=1.0)  # 5 rounds a second

    # A quota of 20 waiting tasks, slowing down at 0.8: 20 - 16 = 4 rounds to go, then 0.8 s
    # (the lower bound, 1 s).
    assert pacer.caller_retry_after("q", 20, 20) == pytest.approx(1)
    assert pacer.caller_retry_after("q", 66, 20) == pytest.approx(10)


def test_rounds_that_have_not_moved_yet_leave_the_lanes_drain_rate_to_stand_in() -> None:
    """Rounds only pass while callers' tasks are held: before a surge they read 0 a second,
    which must not make the surge's first refusals wait the upper bound."""
    pacer = paced(limit=100, jitter=0)
    for second in range(5):
        pacer.observe({"q": (50, 1000 * second)}, now=float(second))  # 1000 tasks a second
        pacer.observe_rounds({"q": 0}, now=float(second))
    assert pacer.caller_retry_after("q", 2016, 20) == pytest.approx(2)
    # Once they move, their own pace counts from their first motion, not from the idle zeros.
    pacer.observe_rounds({"q": 100}, now=5.0)
    pacer.observe_rounds({"q": 200}, now=6.0)
    assert pacer.caller_retry_after("q", 216, 20) == pytest.approx(2)
