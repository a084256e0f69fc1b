"""The hot-path cache of verified tokens.

A hit is one dict lookup, one clock read and two comparisons: the entry is served only while
its revalidation time (at most the token's ``exp``; the key set's freshness for remote keys)
has not passed and its signing key is still in the key set. Past its revalidation time an entry
whose key is alive is kept, not dropped: the verifier asks the key store (which may start a
background refresh) and then extends it with :meth:`TokenCache.revalidate`, without another
signature check. The cache is bounded in entries; eviction is second-chance FIFO (CLOCK), so a
flood of one-off tokens pushes out other one-off tokens before the hot ones.

A hit takes no lock (dict operations are atomic); writes, and dropping an entry that is no
longer valid, take a short one, so eviction never races with a removal. The store is an
``OrderedDict``: popping its oldest item is O(1), where ``next(iter(dict))`` walks every slot
deleted since the dict's last resize (O(n) per eviction, measured 2.7x slower per full insert).
Asyncio code never waits on the lock for long.

Who reads entries: :meth:`TokenCache.get` and :meth:`TokenCache.revalidate` here, and the
``Authorization`` memo of :class:`gatekeeper.decision.Gate`, which holds the entry lists that
:meth:`TokenCache.entry` hands out (through ``Verifier.cache_entry``) and serves a hit from one
itself, without a call into the cache. The invariants both rely on, kept in this module:

- An entry list is created by :meth:`TokenCache.put` and its ``CLAIMS``, ``KEY`` and
  ``EXPIRES`` never change; only ``UNTIL`` moves (:meth:`TokenCache.revalidate` extends it, in
  place, so a holder sees the extension) and ``USED`` is set by every hit.
- A holder may serve the entry's claims exactly when ``now < entry[UNTIL] and
  entry[KEY].alive`` (then it sets ``entry[USED] = True``, for the eviction), and must ask the
  verifier otherwise; revocation is the holder's own check (the claims' generation).
- An entry that leaves the cache (eviction, replacement, a drop, :meth:`TokenCache.clear`) is
  killed first: its ``UNTIL`` becomes ``DEAD``, so no holder serves it any longer.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from .claims import Claims
from .keys import VerificationKey

# An entry is a small list, not an object, to keep memory per entry low:
# [claims, serve until (then revalidate), signing key, recently used, the token's exp]
CLAIMS, UNTIL, KEY, USED, EXPIRES = 0, 1, 2, 3, 4
_CLAIMS, _UNTIL, _KEY, _USED, _EXPIRES = CLAIMS, UNTIL, KEY, USED, EXPIRES
#: The ``UNTIL`` of an entry that left the cache: no clock reads a time before it.
DEAD = float("-inf")


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

    def entry(self, token: str) -> list[Any] | None:
        """The live entry list for a token, for a holder that serves hits itself under the
        rules in this module's docstring (the decision's memo); None when none is cached."""
        return self._data.get(token)

    def get(self, token: str, now: float) -> Claims | None:
        """The claims for a token verified before, if they may be served now without asking
        the key store (None also when the entry is due for :meth:`revalidate`)."""
        entry = self._data.get(token)
        if entry is None:
            return None
        if now < entry[_UNTIL] and entry[_KEY].alive:
            entry[_USED] = True
            claims: Claims = entry[_CLAIMS]
            return claims
        if now < entry[_EXPIRES] and entry[_KEY].alive:
            return None  # due for revalidation: kept for it
        with self._lock:
            if self._data.get(token) is entry:  # not already replaced by a fresh verification
                del self._data[token]
                entry[_UNTIL] = DEAD
        return None

    def revalidate(self, token: str, now: float, until: float) -> Claims | None:
        """The claims of a cached token whose signing key is still alive and whose ``exp`` has
        not passed, now served until ``until`` (at most its ``exp``); None if there is none."""
        entry = self._data.get(token)
        if entry is None or not entry[_KEY].alive or now >= entry[_EXPIRES]:
            return None
        entry[_UNTIL] = min(until, entry[_EXPIRES])
        entry[_USED] = True
        claims: Claims = entry[_CLAIMS]
        return claims

    def put(
        self,
        token: str,
        claims: Claims,
        expires_at: float,
        key: VerificationKey,
        revalidate_at: float | None = None,
    ) -> None:
        """Cache verified claims until ``expires_at`` (the token's ``exp``), as long as ``key``
        stays alive; from ``revalidate_at`` (default: never before ``exp``) a lookup asks the
        verifier to :meth:`revalidate` the entry first."""
        if self.maxsize == 0:
            return
        until = expires_at if revalidate_at is None else min(revalidate_at, expires_at)
        with self._lock:
            data = self._data
            old = data.get(token)
            if old is not None:
                old[_UNTIL] = DEAD  # replaced: a holder of the old list asks the verifier again
            elif len(data) >= self.maxsize:
                self._evict_one(data)
            data[token] = [claims, until, key, False, expires_at]

    @staticmethod
    def _evict_one(data: OrderedDict[str, list[Any]]) -> None:
        # CLOCK: a recently used entry at the front loses its flag and goes to the back. One
        # full pass clears every flag, so this ends within len(data) + 1 steps; amortised it is
        # O(1), since each step consumes a flag that a hit set. A fixed scan limit would evict
        # hot entries whenever more of them than the limit sat at the front.
        for _ in range(len(data) + 1):
            oldest, entry = data.popitem(last=False)
            if not entry[_USED] or not entry[_KEY].alive:
                entry[_UNTIL] = DEAD
                return
            entry[_USED] = False
            data[oldest] = entry

    def clear(self) -> None:
        with self._lock:
            for entry in self._data.values():
                entry[_UNTIL] = DEAD
            self._data.clear()
