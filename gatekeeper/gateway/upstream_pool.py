"""The reverse proxy's bounded pool of keep-alive upstream connections.

A reverse proxy talks to a handful of upstream origins over keep-alive connections, so the pool
keeps a stack of idle :class:`~.upstream_conn.UpstreamConnection` per origin
(``(scheme, host, port)``):

- a request takes the most recently used idle connection of its origin that is not stale (the
  upstream closed it, or sent something unasked: :attr:`UpstreamConnection.stale`), else opens
  one, while at most ``max_connections`` are open in total; when all are busy it waits up to
  the pool timeout (:class:`~.upstream_errors.PoolTimeout`); when the limit is reached with
  idle connections of another origin, the oldest of those is closed to make room;
- a request without a body and with a safe method (``GET``, ``HEAD``, ``OPTIONS``, ``TRACE``)
  that fails on a *reused* connection before any response byte arrived is sent once more on a
  new connection (the upstream closed the idle connection while the request was on its way,
  the race every keep-alive client has; Go's ``net/http`` retries the same requests);
- :meth:`UpstreamPool.begin` sends a request without a body on an idle connection and returns
  at once (the connection calls back when the answer is in), or says there is none;
- :meth:`UpstreamPool.release` puts a connection whose response was read to the end back on its
  stack; anything else (an unread or broken response, ``Connection: close``) is closed.

``https`` origins use TLS with the origin's own ``ssl.SSLContext`` from ``ssl_contexts`` (an
upstream's CA file and client certificate: :mod:`.upstream_tls`), else ``ssl_context``, else
the system's trust store; certificates and host names are always verified.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import AsyncIterable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from .upstream_conn import UpstreamConnection, request_head
from .upstream_errors import PoolTimeout, UpstreamBroken, UpstreamTimeout, UpstreamUnreachable

Origin = tuple[str, str, int]
_RETRYABLE: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds (None: no bound): ``connect`` (TCP and TLS), ``read`` (per wait for the next
    response bytes), ``write`` (per wait for the socket to drain), ``pool`` (for a free
    connection slot)."""

    connect: float | None = 5.0
    read: float | None = 60.0
    write: float | None = 60.0
    pool: float | None = 5.0


class UpstreamPool:
    """At most ``max_connections`` HTTP/1.1 upstream connections (see the module docstring)."""

    def __init__(
        self,
        max_connections: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        ssl_contexts: Mapping[Origin, ssl.SSLContext] | None = None,
    ) -> None:
        self.max_connections = max_connections
        self._ssl = ssl_context
        self._ssl_by_origin = dict(ssl_contexts or {})
        self._idle: dict[Origin, list[UpstreamConnection]] = {}
        self._slots = asyncio.Semaphore(max_connections)  # one per open connection
        self._open = 0

    @property
    def open_connections(self) -> int:
        """Connections open now, idle or busy."""
        return self._open

    async def exchange(
        self,
        method: bytes,
        origin: Origin,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        body: AsyncIterable[bytes] | None,
        length: int | None,
        timeouts: Timeouts,
    ) -> UpstreamConnection:
        """Send a request and return its connection once the response head is in (``status``,
        ``headers``; the body through ``read()``); hand it back with :meth:`release`.

        ``headers`` are complete (``Host`` included) except the body's framing: ``length``
        bytes of ``body`` (its ``Content-Length`` header among ``headers``), or chunked when
        ``length`` is None. Raises :mod:`.upstream_errors` exceptions."""
        head = request_head(method, target, headers, body is not None and length is None)
        connection = self._take_idle(origin)
        if connection is not None:
            try:
                await connection.exchange(
                    head, method == b"HEAD", body, length, timeouts.read, timeouts.write
                )
                return connection
            except UpstreamBroken:
                self._discard(connection)
                if not (connection.received_nothing and body is None and method in _RETRYABLE):
                    raise
            except BaseException:
                self._discard(connection)
                raise
        connection = await self._connect(origin, timeouts)
        try:
            await connection.exchange(head, method == b"HEAD", body, length, timeouts.read, timeouts.write)
        except BaseException:
            self._discard(connection)
            raise
        return connection

    def begin(
        self,
        method: bytes,
        origin: Origin,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        timeouts: Timeouts,
        ready: Callable[[UpstreamConnection], None],
    ) -> UpstreamConnection | None:
        """:meth:`exchange` for a request without a body, without waiting, on an idle
        connection: the request is sent and its connection returned at once, and ``ready``
        called with it when the response head is in or the exchange failed
        (:meth:`UpstreamConnection.begin`; hand it back with :meth:`release` either way). None
        when no idle connection is open: nothing was sent (:meth:`exchange` connects).
        Raises :class:`~.upstream_errors.UnsafeRequest` as :meth:`exchange` does.

        There is no retry here: a failure before any response byte (:attr:`received_nothing
        <.UpstreamConnection.received_nothing>`) is the caller's to send again."""
        head = request_head(method, target, headers, False)
        connection = self._take_idle(origin)
        if connection is not None:
            connection.begin(head, method == b"HEAD", timeouts.read, ready)
        return connection

    def release(self, connection: UpstreamConnection) -> None:
        """Back to the idle stack if the connection can take another request, else closed."""
        if connection.finish():
            self._idle.setdefault(connection.origin, []).append(connection)
        else:
            self._discard(connection)

    def _take_idle(self, origin: Origin) -> UpstreamConnection | None:
        stack = self._idle.get(origin)
        while stack:
            connection = stack.pop()
            if not connection.stale:
                return connection
            self._discard(connection)
        return None

    async def _connect(self, origin: Origin, timeouts: Timeouts) -> UpstreamConnection:
        await self._slot(timeouts.pool)
        self._open += 1
        scheme, host, port = origin
        context = None
        if scheme == "https":
            context = self._ssl_by_origin.get(origin) or self._ssl or _default_context()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeouts.connect):
                _, connection = await loop.create_connection(
                    lambda: UpstreamConnection(origin),
                    host,
                    port,
                    ssl=context,
                    server_hostname=host if context is not None else None,
                )
        except TimeoutError:
            self._free_slot()
            raise UpstreamTimeout(f"connecting to {host}:{port} timed out") from None
        except OSError as exc:  # refused, DNS (gaierror), TLS (SSLError)
            self._free_slot()
            raise UpstreamUnreachable(f"cannot connect to {host}:{port}: {type(exc).__name__}") from None
        except BaseException:
            self._free_slot()
            raise
        return connection

    async def _slot(self, wait: float | None) -> None:
        """Take a connection slot: at once if one is free, else by closing the oldest idle
        connection of any origin, else by waiting (:class:`PoolTimeout` after ``wait``)."""
        if not self._slots.locked():
            await self._slots.acquire()
            return
        for stack in self._idle.values():
            if stack:
                self._discard(stack.pop(0))
                break
        try:
            async with asyncio.timeout(wait):
                await self._slots.acquire()
        except TimeoutError:
            raise PoolTimeout("no upstream connection became free in time") from None

    def _free_slot(self) -> None:
        self._open -= 1
        self._slots.release()

    def _discard(self, connection: UpstreamConnection) -> None:
        self._free_slot()
        connection.close()

    async def aclose(self) -> None:
        """Close every idle connection."""
        stacks, self._idle = self._idle, {}
        for stack in stacks.values():
            for connection in stack:
                self._discard(connection)


@functools.cache
def _default_context() -> ssl.SSLContext:
    """The system trust store's context, built once (loading the store costs milliseconds)."""
    return ssl.create_default_context()
