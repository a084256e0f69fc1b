"""The hot-path cache of verified tokens.

A hit is one dict lookup, one clock read and two comparisons: the entry is served only while
the token's ``exp`` has not passed and its signing key is still in the key set. The cache is
bounded in entries; eviction is second-chance FIFO (CLOCK), so a flood of one-off tokens pushes
out other one-off tokens before the hot ones.

Reads take no lock (dict operations are atomic); writes take a short one. Asyncio code never
waits on it for long: a write holds it for a few dict operations.
"""

from __future__ import annotations

import threading
from typing import Any

from .claims import Claims
from .keys import VerificationKey

# An entry is a small list, not an object, to keep memory per entry low:
# [claims, expires_at, signing key, recently used]
_CLAIMS, _EXPIRES, _KEY, _USED = 0, 1, 2, 3
_SECOND_CHANCE_SCAN = 32


class TokenCache:
    """Verified claims by token, bounded to ``maxsize`` entries (0 disables caching)."""

    __slots__ = ("_data", "_lock", "maxsize")

    def __init__(self, maxsize: int = 10_000) -> None:
        if maxsize < 0:
            raise ValueError("maxsize must be >= 0")
        self.maxsize = maxsize
        self._data: dict[str, list[Any]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, token: str, now: float) -> Claims | None:
        """The claims for a token verified before, if still valid now."""
        entry = self._data.get(token)
        if entry is None:
            return None
        if now < entry[_EXPIRES] and entry[_KEY].alive:
            entry[_USED] = True
            claims: Claims = entry[_CLAIMS]
            return claims
        self._data.pop(token, None)
        return None

    def put(self, token: str, claims: Claims, expires_at: float, key: VerificationKey) -> None:
        if self.maxsize == 0:
            return
        with self._lock:
            data = self._data
            if token not in data and len(data) >= self.maxsize:
                self._evict_one(data)
            data[token] = [claims, expires_at, key, False]

    def _evict_one(self, data: dict[str, list[Any]]) -> None:
        # Give recently used entries a second chance by moving them to the back, a bounded
        # number of times, then evict the oldest.
        for _ in range(_SECOND_CHANCE_SCAN):
            oldest = next(iter(data))
            entry = data.pop(oldest)
            if not entry[_USED] or not entry[_KEY].alive:
                return
            entry[_USED] = False
            data[oldest] = entry
        del data[next(iter(data))]

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
