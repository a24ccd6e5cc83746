"""The token replay cache: freshness window, replays and the eviction floor."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.errors import AuthenticationFailed
from node.tokens import ReplayCache

NOW = 1_800_000_000.0
NOW_MS = int(NOW * 1000)


def rejection(cache: ReplayCache, key, timestamp_ms: int, now: float = NOW) -> str:
    with pytest.raises(AuthenticationFailed) as caught:
        cache.check(key, timestamp_ms, now)
    return caught.value.reason


def test_fresh_token_is_accepted_once():
    cache = ReplayCache(window=30)

    cache.check("a", NOW_MS, NOW)

    assert len(cache) == 1
    assert rejection(cache, "a", NOW_MS) == "replayed-token"


def test_replay_later_is_rejected():
    cache = ReplayCache(window=30)
    cache.check("a", NOW_MS, NOW)

    assert rejection(cache, "a", NOW_MS, NOW + 29) == "replayed-token"


def test_distinct_nonces_are_accepted():
    cache = ReplayCache(window=30)

    for key in ("a", "b", "c"):
        cache.check(key, NOW_MS, NOW)

    assert len(cache) == 3


def test_token_older_than_window_is_stale():
    cache = ReplayCache(window=30)

    assert rejection(cache, "a", NOW_MS - 30_001) == "stale-token"
    assert len(cache) == 0


def test_token_newer_than_window_is_stale():
    # the window applies on both sides, to bound a sender's clock skew
    cache = ReplayCache(window=30)

    assert rejection(cache, "a", NOW_MS + 30_001) == "stale-token"


def test_window_edges_are_inclusive():
    cache = ReplayCache(window=30)

    cache.check("past", NOW_MS - 30_000, NOW)
    cache.check("future", NOW_MS + 30_000, NOW)

    assert len(cache) == 2


def test_expired_entries_are_forgotten():
    cache = ReplayCache(window=30)
    cache.check("a", NOW_MS, NOW)

    cache.check("b", NOW_MS + 31_000, NOW + 31)

    assert len(cache) == 1
    # the forgotten nonce is now outside the window, so it stays rejected
    assert rejection(cache, "a", NOW_MS, NOW + 31) == "stale-token"


def test_eviction_keeps_size_bound():
    cache = ReplayCache(window=30, max_entries=2)

    for offset, key in enumerate("abcde"):
        cache.check(key, NOW_MS + offset, NOW)

    assert len(cache) == 2


def test_evicted_nonce_is_rejected_by_floor():
    cache = ReplayCache(window=30, max_entries=2)
    cache.check("a", NOW_MS, NOW)
    cache.check("b", NOW_MS + 1, NOW)
    cache.check("c", NOW_MS + 2, NOW)

    # "a" was evicted, but its timestamp became the floor, so it cannot replay
    assert rejection(cache, "a", NOW_MS) == "stale-token"


def test_new_token_at_floor_is_stale():
    cache = ReplayCache(window=30, max_entries=1)
    cache.check("a", NOW_MS, NOW)
    cache.check("b", NOW_MS + 5, NOW)

    assert rejection(cache, "z", NOW_MS) == "stale-token"
    assert rejection(cache, "z", NOW_MS - 1) == "stale-token"


def test_new_token_above_floor_is_accepted():
    cache = ReplayCache(window=30, max_entries=1)
    cache.check("a", NOW_MS, NOW)
    cache.check("b", NOW_MS + 5, NOW)

    cache.check("z", NOW_MS + 1, NOW)

    assert len(cache) == 1


@pytest.mark.parametrize("window, max_entries", [(0, 10), (-1, 10), (30, 0)])
def test_invalid_limits_are_rejected(window, max_entries):
    with pytest.raises(ValueError):
        ReplayCache(window=window, max_entries=max_entries)


@given(
    st.dictionaries(
        st.sampled_from("abcdefgh"), st.integers(-20_000, 60_000), min_size=1
    ),
    st.lists(st.tuples(st.integers(0, 7), st.integers(0, 5_000)), max_size=60),
    st.integers(1, 4),
)
def test_no_nonce_is_accepted_twice(timestamps, checks, max_entries):
    # each nonce has one timestamp, as a replayed signed token would
    cache = ReplayCache(window=30, max_entries=max_entries)
    keys = sorted(timestamps)
    now = NOW
    accepted = set()

    for index, step_ms in checks:
        key = keys[index % len(keys)]
        now += step_ms / 1000
        try:
            cache.check(key, NOW_MS + timestamps[key], now)
        except AuthenticationFailed as error:
            assert error.reason in ("stale-token", "replayed-token")
            continue
        assert key not in accepted
        accepted.add(key)
        assert len(cache) <= max_entries
