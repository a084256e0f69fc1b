"""The token cache: one token per (token URL, client, scope, audience, resource), renewed single-flight.

:class:`TokenManager` holds no I/O. It answers one question under a lock: is there a token fresh
enough to send, and if not, who fetches the next one? The first caller to find the token due
becomes the *leader* and gets a :class:`concurrent.futures.Future` to settle; everyone else (in any
thread or task) gets the same future to wait on. A ``concurrent.futures.Future`` because a thread
can block on it and a task can await it, so threads and tasks share one flight.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import suppress
from typing import NamedTuple

from ..redact import fingerprint
from .config import Credentials, SlotKey
from .errors import InvalidRefreshToken
from .token import Token

__all__ = ["Claim", "Slot", "TokenManager"]


class Slot:
    """The state of one token: the current token, the refresh token and the fetch in flight."""

    __slots__ = ("credentials", "dead", "inflight", "refresh_token", "token")

    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials
        #: Read without the lock on the hot path (a single attribute read is atomic).
        self.token: Token | None = None
        self.refresh_token: str | None = credentials.refresh_token
        self.inflight: Future[Token | None] | None = None
        #: Set when a refresh-only session's refresh token was refused: nothing can renew it now.
        self.dead: InvalidRefreshToken | None = None

    def __repr__(self) -> str:
        refresh = f"fp:{fingerprint(self.refresh_token)}" if self.refresh_token else None
        where = f"{self.credentials.client_id!r}@{self.credentials.endpoint}"
        return f"Slot({where}, {self.token!r}, refresh={refresh})"


class Claim(NamedTuple):
    """No fresh token: wait for ``future``; the ``leader`` fetches and settles it."""

    future: Future[Token | None]
    leader: bool


class TokenManager:
    """Tokens per (token URL, client, scope, audience, resource), shared by every auth that uses it.

    ``clock`` (default ``time.monotonic``) measures token lifetimes; tests pass a clock they move.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._slots: dict[SlotKey, Slot] = {}

    def slot(self, credentials: Credentials) -> Slot:
        """The slot for these credentials' key, created on first use."""
        key = credentials.key
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slots[key] = Slot(credentials)
            return slot

    def __iter__(self) -> Iterator[Slot]:
        with self._lock:
            return iter(list(self._slots.values()))

    def claim(self, slot: Slot, stale: Token | None = None) -> Token | Claim:
        """A token fresh enough to send, or a :class:`Claim` on the fetch that will produce one.

        ``stale``: a token the API just refused. It is dropped (unless a newer one already replaced
        it), so the caller gets a renewed token rather than the refused one.
        """
        now = self.clock()
        with self._lock:
            token = slot.token
            if stale is not None and token is stale:
                slot.token = token = None
            if token is not None and token.usable(now):
                return token
            if slot.inflight is not None:
                return Claim(slot.inflight, leader=False)
            future: Future[Token | None] = Future()
            slot.inflight = future
            return Claim(future, leader=True)

    def settle(
        self,
        slot: Slot,
        future: Future[Token | None],
        token: Token | None,
        error: BaseException | None = None,
    ) -> None:
        """The leader's outcome: a token (cached, waiters get it), an error (waiters raise it), or
        neither (the leader gave up, e.g. was cancelled: waiters try again and one leads)."""
        with self._lock:
            if slot.inflight is future:
                slot.inflight = None
            if token is not None:
                slot.token = token
                if token.refresh_token is not None:
                    slot.refresh_token = token.refresh_token  # rotation: the old one is spent
        # Callbacks (waking waiting tasks) run here, outside the lock.
        with suppress(Exception):  # an already settled future cannot be settled twice
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(token)

    def drop_refresh_token(self, slot: Slot, refresh_token: str) -> None:
        """Forget a refresh token the issuer refused (unless it was already replaced)."""
        with self._lock:
            if slot.refresh_token == refresh_token:
                slot.refresh_token = None

    def invalidate(self, credentials: Credentials | None = None) -> None:
        """Forget cached access tokens (all, or those of ``credentials``); refresh tokens stay."""
        with self._lock:
            for key, slot in self._slots.items():
                if credentials is None or key == credentials.key:
                    slot.token = None

    def __repr__(self) -> str:
        return f"TokenManager({list(self)!r})"
