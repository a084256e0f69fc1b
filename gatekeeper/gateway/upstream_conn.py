"""One keep-alive HTTP/1.1 connection to an upstream: an ``asyncio.Protocol`` that parses the
responses with httptools' ``HttpResponseParser`` (llhttp, the C parser uvicorn uses for
requests).

Why not httpx/httpcore (h11): a proxied request is two HTTP exchanges in Python, and h11's
pure-Python parsing, header validation and state machine were about half of the proxy's CPU
(``README.md``, gateway benchmark). Here the response is parsed in C and the protocol hands the
proxy what it needs (status, header pairs, body chunks) without a per-request object graph.

One exchange at a time (no pipelining): :meth:`UpstreamConnection.exchange` writes the request
head and streams the body, then waits for the response head; :meth:`UpstreamConnection.read`
returns body chunks until ``b""``. :meth:`UpstreamConnection.begin` is the same exchange for a
request without a body, without a coroutine: it returns once the head is written, and the
connection calls back when the response head is in (with the body, when it came in the same
read), or the exchange failed. Flow control both ways, so nothing is buffered whole:

- request bodies: after each chunk, when the transport's write buffer is over its high-water
  mark (``pause_writing``), the sender waits for ``resume_writing``;
- response bodies: once :data:`READ_AHEAD` bytes wait unread, the socket is no longer read
  (``pause_reading``) until the proxy has taken them: a slow client slows the upstream down.

Limits and failures (:mod:`.upstream_errors`): a response head over :data:`MAX_HEAD` bytes, a
malformed response, a protocol switch, or an EOF before the response is complete are
:class:`UpstreamBroken`; a response that ends at EOF by its framing (no ``Content-Length``, not
chunked) is complete at EOF. Waiting longer than the read/write timeout for the next bytes is
:class:`UpstreamTimeout`. A connection is reused only when its response was complete, the
upstream did not ask to close it, and nothing arrived after the response (:attr:`reusable`).
"""

from __future__ import annotations

import asyncio
import select
from collections import deque
from collections.abc import AsyncIterable, Callable, Sequence
from typing import Final

import httptools

from .upstream_errors import UnsafeRequest, UpstreamBroken, UpstreamTimeout

#: Response body bytes read ahead of the proxy before the socket stops being read.
READ_AHEAD: Final = 64 * 1024
#: Largest response head (status line and headers) accepted; llhttp itself has no bound.
MAX_HEAD: Final = 64 * 1024

_NO_BODY_STATUS: Final = frozenset({204, 304})
_LAST_CHUNK: Final = b"0\r\n\r\n"
_NEVER: Final = float("inf")


def request_head_py(
    method: bytes, target: bytes, headers: Sequence[tuple[bytes, bytes]], chunked: bool
) -> bytes | None:
    """The request line and header block (``chunked`` adds ``Transfer-Encoding: chunked``), or
    None when a CR, LF or NUL inside the method, the target or a header would change the
    message's framing. Twin of ``gatekeeper.gateway._headers.request_head``."""
    lines = [method, b" ", target, b" HTTP/1.1\r\n"]
    for name, value in headers:
        lines += (name, b": ", value, b"\r\n")
    if chunked:
        lines.append(b"transfer-encoding: chunked\r\n")
    lines.append(b"\r\n")
    head = b"".join(lines)
    breaks = len(headers) + chunked + 2
    if head.count(b"\n") != breaks or head.count(b"\r") != breaks or b"\0" in head:
        return None
    return head


try:
    from . import _headers
except ImportError:  # built without a C compiler: the twin
    _headers = None  # type: ignore[assignment]

_build_head: Final = request_head_py if _headers is None else _headers.request_head


def request_head(
    method: bytes, target: bytes, headers: Sequence[tuple[bytes, bytes]], chunked: bool
) -> bytes:
    """The request line and header block; ``chunked`` adds ``Transfer-Encoding: chunked``.

    Raises :class:`UnsafeRequest` when a CR, LF or NUL inside the target or a header would
    change the message's framing (the server in front already refuses them: defence in depth).
    Built in C where ``gatekeeper.gateway._headers`` was (:func:`request_head_py` is the twin)."""
    head = _build_head(method, target, headers, chunked)
    if head is None:
        raise UnsafeRequest("a CR, LF or NUL in the request target or a header")
    return head


def _time_out(waiter: asyncio.Future[None], what: str) -> None:
    if not waiter.done():
        waiter.set_exception(UpstreamTimeout(what))


class UpstreamConnection(asyncio.Protocol):
    """One HTTP/1.1 connection (see the module docstring). The pool creates it through
    ``loop.create_connection`` and owns it; ``status`` and ``headers`` (as received) are the
    current response's once :meth:`exchange` returns."""

    def __init__(self, origin: tuple[str, str, int]) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.fileno = -1
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self._parser = httptools.HttpResponseParser(self)
        self._fresh_parser = False  # after a HEAD: llhttp would wait for the body it announced
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._head_bytes = 0
        self._read_timeout: float | None = None
        self._loop = asyncio.get_running_loop()
        self._waiter: asyncio.Future[None] | None = None
        self._ready: Callable[[UpstreamConnection], None] | None = None  # begin()'s callback
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = _NEVER
        self._what = ""
        self._drain: asyncio.Future[None] | None = None
        self._busy = False
        self._head_request = False
        self._informational = False
        self._headers_done = False
        self._complete = False
        self._keep_alive = False
        self._received = False  # any byte of this exchange's response
        self._broken = False
        self._eof = False
        self._reading_paused = False
        self._writing_paused = False
        self._error: Exception | None = None

    # -- the pool's view ---------------------------------------------------------------------

    @property
    def reusable(self) -> bool:
        """Whether the connection can carry another exchange now."""
        return (
            self._complete
            and self._keep_alive
            and not self._chunks
            and not (self._broken or self._eof)
            and self.transport is not None
            and not self.transport.is_closing()
        )

    @property
    def complete(self) -> bool:
        """Whether the response has ended and :meth:`read` has returned all of its body."""
        return self._complete and not self._chunks

    @property
    def stale(self) -> bool:
        """For an idle connection (one :meth:`finish` found :attr:`reusable`): it must not be
        used (closed, or the upstream sent something: EOF included, which may still be unread
        in the kernel). What made it reusable cannot change while it is idle; what can is
        checked here."""
        transport = self.transport
        if self._broken or self._eof or transport is None or transport.is_closing():
            return True
        readable, _, _ = select.select([self.fileno], [], [], 0)
        return bool(readable)

    @property
    def answered(self) -> bool:
        """Whether the current exchange's response head is in (``status``, ``headers``)."""
        return self._headers_done

    @property
    def error(self) -> Exception | None:
        """Why the current exchange failed, if it did (after :meth:`begin`'s callback)."""
        return self._error

    @property
    def received_nothing(self) -> bool:
        """Whether no byte of the current exchange's response arrived (a reused connection that
        the upstream had already closed: the request may be retried on a new one)."""
        return not self._received

    def finish(self) -> bool:
        """End the current exchange; returns :attr:`reusable`."""
        self._busy = False
        return self.reusable

    def close(self) -> None:
        """Close the connection (an unfinished response with it)."""
        self._broken = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:
            self.transport.close()

    # -- one exchange -------------------------------------------------------------------------

    async def exchange(
        self,
        head: bytes,
        head_request: bool,
        body: AsyncIterable[bytes] | None,
        length: int | None,
        read_timeout: float | None,
        write_timeout: float | None,
    ) -> None:
        """Send a request (``head`` from :func:`request_head`; ``body`` framed by ``length``, or
        chunked when it is None) and wait for the response head."""
        transport = self._start(head_request, read_timeout)
        transport.write(head)
        if body is not None:
            await self._send_body(transport, body, length, write_timeout)
        while not self._headers_done:
            if self._error is not None:
                raise self._error
            await self._waiting(read_timeout, "the upstream did not answer in time")

    def begin(
        self,
        head: bytes,
        head_request: bool,
        read_timeout: float | None,
        ready: Callable[[UpstreamConnection], None],
    ) -> None:
        """Send a request without a body and return: :meth:`exchange` without the wait.

        ``ready(self)`` is called once, from the connection's own callbacks, when the response
        head is in (:attr:`answered`; the body's first bytes, or all of it, too when they came
        in the same read: :meth:`read_rest`), or when the exchange failed first (:attr:`error`:
        the upstream closed, broke the protocol, or sent nothing within ``read_timeout``).
        From then on the connection is used as after :meth:`exchange`."""
        transport = self._start(head_request, read_timeout)
        self._ready = ready
        self._arm(read_timeout, "the upstream did not answer in time")
        transport.write(head)

    def _start(self, head_request: bool, read_timeout: float | None) -> asyncio.Transport:
        """Reset the per-exchange state for a new request."""
        transport = self.transport
        assert transport is not None
        if self._fresh_parser:
            self._parser = httptools.HttpResponseParser(self)
            self._fresh_parser = False
        self._busy = True
        self._head_request = self._fresh_parser = head_request
        self._complete = self._headers_done = self._received = False
        self._head_bytes = 0
        self._read_timeout = read_timeout
        return transport

    def _call_ready(self) -> None:
        """``begin``'s callback, once: the response head is in, or the exchange failed."""
        ready = self._ready
        if ready is not None:
            self._ready = None
            ready(self)

    async def _send_body(
        self,
        transport: asyncio.Transport,
        body: AsyncIterable[bytes],
        length: int | None,
        write_timeout: float | None,
    ) -> None:
        sent = 0
        async for chunk in body:
            if self._eof or transport.is_closing():
                # The upstream stopped reading (it may have answered early, e.g. 413):
                # its answer, or its failure, is what the caller waits for next.
                return
            sent += len(chunk)
            if length is None:
                transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
            elif sent > length:
                raise UpstreamBroken("the request body is longer than its Content-Length")
            else:
                transport.write(chunk)
            if self._writing_paused:
                self._drain = asyncio.get_running_loop().create_future()
                await self._timed(self._drain, write_timeout, "sending to the upstream timed out")
        if length is None:
            transport.write(_LAST_CHUNK)
        elif sent != length:
            raise UpstreamBroken("the request body is shorter than its Content-Length")

    async def read(self) -> bytes:
        """The next response body bytes as they arrived (all that wait, joined); ``b""`` once
        the response is complete."""
        chunks = self._chunks
        while not chunks:
            if self._complete:
                return b""
            if self._error is not None:
                raise self._error
            await self._waiting(self._read_timeout, "the upstream stopped sending in time")
        return self._take()

    def read_rest(self) -> bytes | None:
        """The whole rest of the body, when the response has ended and all of it is here (a
        small response usually arrives with its head); else None, and :meth:`read` it."""
        if not self._complete:
            return None
        return self._take() if self._chunks else b""

    def _take(self) -> bytes:
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        return data

    def _waiting(self, seconds: float | None, what: str) -> asyncio.Future[None]:
        """A future for the next response bytes (or EOF, or an error), failed with
        :class:`UpstreamTimeout` when nothing comes within ``seconds``.

        One timer per connection, moved lazily: a wait only sets the deadline the timer checks
        when it fires (a timer per wait costs more than the rest of the wait, twice a request).
        A failed future, not a cancel scope: an outside cancellation (the proxy's total timeout,
        a server shutdown) stays a cancellation."""
        waiter = self._waiter = self._loop.create_future()
        self._arm(seconds, what)
        return waiter

    def _arm(self, seconds: float | None, what: str) -> None:
        """Set the deadline of the current wait (a future's, or :meth:`begin`'s callback's)."""
        if seconds is None:
            self._deadline = _NEVER
            return
        loop = self._loop
        self._deadline = loop.time() + seconds
        self._what = what
        timer = self._timer
        if timer is None or timer.when() > self._deadline:  # (a shorter timeout than before)
            if timer is not None:
                timer.cancel()
            self._timer = loop.call_at(self._deadline, self._check_deadline)

    def _check_deadline(self) -> None:
        self._timer = None
        waiter = self._waiter
        waits = (waiter is not None and not waiter.done()) or self._ready is not None
        if not waits or self._deadline == _NEVER:
            return  # nothing waits (any later wait arms the timer anew)
        if self._loop.time() < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._check_deadline)
        elif waiter is not None and not waiter.done():
            waiter.set_exception(UpstreamTimeout(self._what))
        else:
            self._error = UpstreamTimeout(self._what)
            self._call_ready()

    @staticmethod
    async def _timed(future: asyncio.Future[None], seconds: float | None, what: str) -> None:
        # (for the rare waits on a full write buffer: a timer of their own)
        if seconds is None:
            await future
            return
        handle = asyncio.get_running_loop().call_later(seconds, _time_out, future, what)
        try:
            await future
        finally:
            handle.cancel()

    def _wake(self) -> None:
        """Wake whoever waits for the connection (callers check ``_waiter`` first: most
        callbacks come when nobody waits any more)."""
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _fail(self, error: Exception) -> None:
        if self._error is None:
            self._error = error
        self.close()
        self._wake()

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        self.fileno = sock.fileno() if sock is not None else -1

    def data_received(self, data: bytes) -> None:
        if not self._busy or self._broken:
            self.close()  # bytes nobody asked for: this connection's framing cannot be trusted
            return
        self._received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamBroken("the upstream switched protocols on a plain request"))
        except httptools.HttpParserError:
            self._fail(UpstreamBroken("the upstream's response is not valid HTTP/1.1"))
        if not self._headers_done:
            # (checked per received block: the parser holds at most one more block than this)
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD:
                self._fail(UpstreamBroken(f"the upstream's response head is over {MAX_HEAD} bytes"))
        if self._ready is not None and (self._headers_done or self._error is not None):
            self._call_ready()  # (after the whole block: a small body that came with the head is in)

    def eof_received(self) -> bool:
        self._eof = True
        if self._busy and not self._complete:
            if self._headers_done and self._ends_at_eof():
                self._complete = True
            else:
                self._fail(UpstreamBroken("the upstream closed the connection mid-response"))
        self._wake()
        self._call_ready()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._busy and not self._complete and self._error is None:
            self._error = UpstreamBroken("the upstream connection was lost mid-response")
        self._eof = True
        self._wake()
        self._call_ready()
        self._writing_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def _ends_at_eof(self) -> bool:
        """Whether the response's body is framed by the end of the connection."""
        if self._head_request or self.status in _NO_BODY_STATUS:
            return False
        return not any(name.lower() in (b"content-length", b"transfer-encoding") for name, _ in self.headers)

    # -- httptools callbacks -------------------------------------------------------------------

    # Once the response is complete, whatever follows (a second response to one request, a
    # body after a HEAD response) is not this exchange's: it only marks the connection broken.

    def on_message_begin(self) -> None:
        if self._complete:
            self._broken = True
        else:
            self.headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._complete:
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._complete:
            return
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            self._informational = True  # 100 Continue, 103 Early Hints: the answer follows
            return
        self.status = status
        self._headers_done = True
        if self._head_request:
            self._complete = True
            self._keep_alive = self._parser.should_keep_alive()
        if self._waiter is not None:
            self._wake()

    def on_body(self, body: bytes) -> None:
        if self._complete:
            self._broken = True
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered >= READ_AHEAD and not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()
        if self._waiter is not None:
            self._wake()

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
            self._head_bytes = 0
            return
        if self._complete:
            return
        self._complete = True
        self._keep_alive = self._parser.should_keep_alive()
        if self._waiter is not None:
            self._wake()
