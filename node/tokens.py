"""Token freshness and the bounded replay cache (RFC 1949 appendix A).

A token carries a timestamp (freshness) and a random nonce (originality).
A receiver accepts a token only inside the freshness window and only once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from .errors import AuthenticationFailed


class ReplayCache:
    """Nonces seen inside the freshness window, bounded in size.

    When the cache is full, the oldest entry is evicted and its timestamp
    becomes a floor: any later token at or below the floor is rejected as
    stale, so eviction never reopens a window for replays.
    """

    def __init__(self, window: float, max_entries: int = 100_000):
        if window <= 0 or max_entries <= 0:
            raise ValueError("window and max_entries must be positive")
        self.window_ms = int(window * 1000)
        self.max_entries = max_entries
        self._seen: OrderedDict[Hashable, int] = OrderedDict()
        self._floor_ms = -1

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, key: Hashable, timestamp_ms: int, now: float) -> None:
        """Accept ``key`` once, or raise ``AuthenticationFailed``.

        Reasons: ``stale-token`` outside the window (either side, to bound
        clock skew) or below the eviction floor, ``replayed-token`` if seen.
        """
        now_ms = int(now * 1000)
        if abs(now_ms - timestamp_ms) > self.window_ms:
            raise AuthenticationFailed(
                f"token time is {(now_ms - timestamp_ms) / 1000:.1f} s from now, "
                f"outside the {self.window_ms / 1000:g} s window",
                reason="stale-token",
            )
        if timestamp_ms <= self._floor_ms:
            raise AuthenticationFailed(
                "token is older than the replay cache keeps", reason="stale-token"
            )
        if key in self._seen:
            raise AuthenticationFailed(
                "token nonce seen before", reason="replayed-token"
            )

        self._expire(now_ms)
        self._seen[key] = timestamp_ms
        if len(self._seen) > self.max_entries:
            _, evicted_ms = self._seen.popitem(last=False)
            self._floor_ms = max(self._floor_ms, evicted_ms)

    def _expire(self, now_ms: int) -> None:
        # entries arrive roughly in time order, so the oldest sit at the front
        while self._seen:
            key, timestamp_ms = next(iter(self._seen.items()))
            if now_ms - timestamp_ms <= self.window_ms:
                return
            del self._seen[key]
