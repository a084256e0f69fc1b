"""A lean HTTP/1.1 connection pool for the proxy's ``httpx.AsyncClient``.

httpx's default transport (httpcore's ``AsyncConnectionPool``) rescans every pooled connection,
through anyio's per-call socket attribute dictionaries, several times per request; under a few
dozen concurrent requests that costs more than the proxying itself (measured: 160 req/s instead
of thousands). A reverse proxy talks to a handful of upstream origins over keep-alive
connections, so this transport keeps a stack of idle connections per origin instead:

- a request takes the most recently used idle connection of its origin whose socket is not
  readable (a readable idle socket means the server closed it or broke the protocol), else opens
  one, while at most ``max_connections`` are open in total (waiting up to the pool timeout:
  ``httpx.PoolTimeout``);
- each connection is httpcore's own ``AsyncHTTP11Connection`` (h11), so HTTP semantics, body
  streaming and timeouts are httpcore's;
- when the response body is closed, a connection that is idle again goes back on its stack;
  anything else is closed.

httpcore exceptions become the httpx exceptions of the same name, as httpx's own transport does.
"""

from __future__ import annotations

import asyncio
import select
import socket
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import httpcore
import httpx

Origin = tuple[bytes, bytes, int]


@contextmanager
def _httpx_errors() -> Any:
    try:
        yield
    except httpcore.TimeoutException as exc:
        raise getattr(httpx, type(exc).__name__, httpx.TimeoutException)(str(exc)) from exc
    except httpcore.ProtocolError as exc:
        raise getattr(httpx, type(exc).__name__, httpx.ProtocolError)(str(exc)) from exc
    except httpcore.NetworkError as exc:
        raise getattr(httpx, type(exc).__name__, httpx.NetworkError)(str(exc)) from exc
    except httpcore.UnsupportedProtocol as exc:
        raise httpx.UnsupportedProtocol(str(exc)) from exc


def _readable(sock: Any) -> bool:
    """Whether an idle connection's socket has something to read (EOF included): it is stale."""
    if sock is None or sock.fileno() < 0:
        return True
    # (an asyncio TransportSocket: select wants the descriptor)
    readable, _, _ = select.select([sock.fileno()], [], [], 0)
    return bool(readable)


#: Bytes an upstream may send ahead of the proxy's reads before the socket stops being read:
#: a slow client slows the upstream down instead of filling memory.
READ_AHEAD = 64 * 1024


class _StreamProtocol(asyncio.Protocol):
    """The socket side of :class:`_PlainStream`: a bounded read buffer and write flow control."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self.reader: asyncio.Future[None] | None = None
        self.drained: asyncio.Future[None] | None = None
        self.paused_writing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) >= READ_AHEAD and self.transport is not None:
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake_reader()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self._wake_reader()
        self.paused_writing = False
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def pause_writing(self) -> None:
        self.paused_writing = True

    def resume_writing(self) -> None:
        self.paused_writing = False
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def _wake_reader(self) -> None:
        if self.reader is not None and not self.reader.done():
            self.reader.set_result(None)


async def _wait(future: asyncio.Future[None], seconds: float | None, error: type[Exception]) -> None:
    """Await ``future`` for at most ``seconds`` (a timer handle: cheaper than a cancel scope
    per read, which is what this stream saves over anyio's)."""
    if seconds is None:
        await future
        return
    handle = asyncio.get_running_loop().call_later(seconds, future.cancel)
    try:
        await future
    except asyncio.CancelledError:
        if future.cancelled() and not _current_task_cancelling():
            raise error("timed out") from None
        raise
    finally:
        handle.cancel()


def _current_task_cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class _PlainStream(httpcore.AsyncNetworkStream):
    """A plain TCP stream on an asyncio protocol for httpcore's HTTP/1.1 connection."""

    def __init__(self, transport: asyncio.Transport, protocol: _StreamProtocol) -> None:
        self._transport = transport
        self._protocol = protocol

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109 (httpcore's signature)
        protocol = self._protocol
        if not protocol.buffer and not protocol.eof:
            protocol.reader = asyncio.get_running_loop().create_future()
            self._transport.resume_reading()
            await _wait(protocol.reader, timeout, httpcore.ReadTimeout)
        if not protocol.buffer:
            if protocol.error is not None:
                raise httpcore.ReadError(str(protocol.error))
            return b""
        data = bytes(protocol.buffer[:max_bytes])
        del protocol.buffer[:max_bytes]
        if len(protocol.buffer) < READ_AHEAD and not protocol.eof:
            self._transport.resume_reading()
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        if not buffer:
            return
        protocol = self._protocol
        if self._transport.is_closing():
            raise httpcore.WriteError("the upstream connection is closed")
        self._transport.write(buffer)
        if protocol.paused_writing:
            protocol.drained = asyncio.get_running_loop().create_future()
            await _wait(protocol.drained, timeout, httpcore.WriteTimeout)

    async def aclose(self) -> None:
        self._transport.close()

    def get_extra_info(self, info: str) -> Any:
        if info == "socket":
            return self._transport.get_extra_info("socket")
        if info == "is_readable":
            return _readable(self._transport.get_extra_info("socket"))
        return None


async def _connect_plain(host: str, port: int, seconds: float | None) -> _PlainStream:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(seconds):
            transport, protocol = await loop.create_connection(_StreamProtocol, host, port)
    except TimeoutError:
        raise httpcore.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
    except OSError as exc:
        raise httpcore.ConnectError(str(exc)) from exc
    return _PlainStream(transport, protocol)


class _Connection:
    __slots__ = ("http", "origin", "sock")

    def __init__(
        self, origin: Origin, http: httpcore.AsyncHTTP11Connection, sock: socket.socket | None
    ) -> None:
        self.origin = origin
        self.http = http
        self.sock = sock


class Exchange:
    """One request's response: ``status``, ``headers`` (the upstream's, as received), the body
    through :meth:`aiter_raw`; :meth:`aclose` hands the connection back to the pool."""

    __slots__ = ("_closed", "_connection", "_pool", "headers", "response", "status")

    def __init__(self, pool: LeanPool, connection: _Connection, response: httpcore.Response) -> None:
        self._pool = pool
        self._connection = connection
        self.response = response
        self.status: int = response.status
        self.headers: list[tuple[bytes, bytes]] = response.headers
        self._closed = False

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        """The body as the upstream encoded it, chunk by chunk as it arrives."""
        with _httpx_errors():
            async for chunk in self.response.stream:  # type: ignore[union-attr]
                yield chunk

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            with _httpx_errors():
                await self.response.aclose()
        finally:
            await self._pool.release(self._connection)


class _Body(httpx.AsyncByteStream):
    """An :class:`Exchange`'s body as an httpx stream."""

    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._exchange.aiter_raw():
            yield chunk

    async def aclose(self) -> None:
        await self._exchange.aclose()


class LeanPool(httpx.AsyncBaseTransport):
    """An ``httpx`` transport with at most ``max_connections`` HTTP/1.1 connections, kept in a
    stack of idle ones per origin (see the module docstring)."""

    def __init__(self, max_connections: int, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.max_connections = max_connections
        self._ssl = ssl_context
        self._backend = httpcore.AnyIOBackend()
        self._idle: dict[Origin, list[_Connection]] = {}
        self._slots = asyncio.Semaphore(max_connections)  # one per open connection
        self._open = 0

    @property
    def open_connections(self) -> int:
        """Connections open now, idle or busy."""
        return self._open

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """The ``httpx`` transport interface (for any client built on this pool)."""
        url = request.url
        scheme = url.raw_scheme
        origin: Origin = (scheme, url.raw_host, url.port or (443 if scheme == b"https" else 80))
        exchange = await self.exchange(
            request.method.encode("ascii"),
            origin,
            url.raw_path,
            request.headers.raw,
            request.stream,  # type: ignore[arg-type]
            request.extensions.get("timeout", {}),
        )
        return httpx.Response(
            status_code=exchange.status,
            headers=exchange.headers,
            stream=_Body(exchange),
            extensions=exchange.response.extensions,
        )

    async def exchange(
        self,
        method: bytes,
        origin: Origin,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        content: AsyncIterable[bytes] | None,
        timeouts: Mapping[str, float | None],
    ) -> Exchange:
        """Send a request (``headers`` complete: ``Host`` and body framing included) and return
        once the response headers are in; the body is read from the :class:`Exchange`.

        The proxy's hot path: no ``httpx.URL``/``Request``/``Response`` objects are built (their
        parsing and validation cost more than the proxying), errors are still httpx's."""
        connection = await self._take_idle(origin)
        if connection is None:
            connection = await self._connect(origin, timeouts)
        scheme, host, port = origin
        request = httpcore.Request(
            method=method,
            url=httpcore.URL(scheme=scheme, host=host, port=port, target=target),
            headers=list(headers),
            content=content,
            extensions={"timeout": dict(timeouts)},
        )
        try:
            with _httpx_errors():
                response = await connection.http.handle_async_request(request)
        except BaseException:
            await self._discard(connection)
            raise
        return Exchange(self, connection, response)

    async def _take_idle(self, origin: Origin) -> _Connection | None:
        stack = self._idle.get(origin)
        while stack:
            connection = stack.pop()
            if connection.http.is_idle() and not _readable(connection.sock):
                return connection
            await self._discard(connection)
        return None

    async def _connect(self, origin: Origin, timeouts: Mapping[str, float | None]) -> _Connection:
        await self._slot(timeouts.get("pool"))
        self._open += 1
        try:
            scheme, host, port = origin
            with _httpx_errors():
                stream: httpcore.AsyncNetworkStream
                if scheme == b"http":
                    stream = await _connect_plain(host.decode("ascii"), port, timeouts.get("connect"))
                else:  # TLS: anyio's stream (the per-read cost matters less than TLS's own)
                    stream = await self._backend.connect_tcp(
                        host.decode("ascii"), port, timeout=timeouts.get("connect")
                    )
                    context = self._ssl or ssl.create_default_context()
                    stream = await stream.start_tls(
                        context, server_hostname=host.decode("ascii"), timeout=timeouts.get("connect")
                    )
        except BaseException:
            self._open -= 1
            self._slots.release()
            raise
        sock = stream.get_extra_info("socket")
        http = httpcore.AsyncHTTP11Connection(httpcore.Origin(scheme, host, port), stream)
        return _Connection(origin, http, sock if hasattr(sock, "fileno") else None)

    async def _slot(self, wait: float | None) -> None:
        """Take a connection slot: at once if one is free, else by closing the oldest idle
        connection of any origin, else by waiting (``httpx.PoolTimeout`` after ``wait`` seconds)."""
        if not self._slots.locked():
            await self._slots.acquire()
            return
        for stack in self._idle.values():
            if stack:
                await self._discard(stack.pop(0))
                break
        try:
            async with asyncio.timeout(wait):
                await self._slots.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout("no upstream connection became free in time") from None

    async def release(self, connection: _Connection) -> None:
        """Back to the idle stack if the connection can take another request, else closed."""
        if connection.http.is_idle():
            self._idle.setdefault(connection.origin, []).append(connection)
        else:
            await self._discard(connection)

    async def _discard(self, connection: _Connection) -> None:
        self._open -= 1
        self._slots.release()
        # Closing a broken connection may fail; it is gone either way.
        with suppress(Exception):
            await connection.http.aclose()

    async def aclose(self) -> None:
        """Close every idle connection."""
        stacks, self._idle = self._idle, {}
        for stack in stacks.values():
            for connection in stack:
                await self._discard(connection)
