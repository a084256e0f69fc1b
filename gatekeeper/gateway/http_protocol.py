"""The HTTP/1.1 protocol ``gatekeeper serve`` gives uvicorn: its httptools protocol, with a
response head that can wait for its body so that both leave in one write.

uvicorn writes a response's status line and headers as soon as the app sends
``http.response.start``, and the body when ``http.response.body`` comes: two ``send()`` system
calls, two TCP segments and two wake-ups of the client for every small response. For a reverse
proxy that relays a small answer that is a measurable part of the whole cost of a request
(``benchmarks/gateway.py``, the proxy leg). So the gateway's apps mark a start message with
:data:`~.respond.BODY_FOLLOWS` when their next message is the body and nothing is awaited in
between (:func:`~.respond.send_whole`: the upstream's whole small body is already in, an error
answer, a forward-auth decision), and this protocol then keeps the encoded head and writes it
with that body.

Everything else is uvicorn's :class:`HttpToolsProtocol`: parsing, flow control, pipelining,
websocket upgrades. Ours are:

- the response writing (:meth:`_Cycle.send`), which keeps uvicorn's rules: the same header
  checks, ``content-length`` accounting, chunked encoding when the app gives no length,
  ``connection: close`` when the connection will not be kept. Without the mark a start message
  is written at once, as uvicorn does; a server that does not know the key ignores it, so the
  apps stay plain ASGI. :func:`~.respond.send_whole` hands a whole response to
  :meth:`_Cycle.gatekeeper_send_whole` in one call instead of two messages;
- the keep-alive timer (:meth:`GatewayHttpProtocol.on_response_complete`, below);
- how a request's task leaves the server's set of tasks, which uvicorn's graceful shutdown
  waits to see empty: as the task's last step, not through a done callback (one handle fewer
  scheduled and run per request);
- requests served without a task: before starting the app's task, the protocol offers the
  request to the app's :data:`~.respond.DIRECT` method with the cycle
  (:class:`~.respond.DirectCycle`: :meth:`_Cycle.gatekeeper_write` writes a whole response
  now, :meth:`_Cycle.gatekeeper_run` starts the task later). The reverse proxy serves a
  cached-token ``GET`` that way, from its upstream connection's callback: no task, no
  coroutine, no future, and no loop turn between the upstream's answer and the client's.
  The cycle is uvicorn's as before (keep-alive, pipelining, disconnects, graceful shutdown
  waiting for the connection).

uvicorn arms a keep-alive timer after every response and cancels it when the next request's
first bytes come: a ``call_later`` and a ``cancel`` per request, and a cancelled handle for the
loop to sift out of its heap. Here a connection has at most one timer, armed when it first goes
idle and moved on only when it fires: each response notes the time it ended, and the timer,
when due, closes the connection if it has been idle for ``timeout_keep_alive`` since then, or
sleeps again until that moment. The connection closes when uvicorn's would.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
import types
from typing import Any

from uvicorn.protocols.http import httptools_impl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from .respond import BODY_FOLLOWS, DIRECT

# The characters uvicorn refuses in a header name and in a header value (response splitting).
_BAD_NAME = re.compile(b'[\x00-\x1f\x7f()<>@,;:\\[\\]={} \t\\\\"]')
_BAD_VALUE = re.compile(b"[\x00-\x08\x0a-\x1f\x7f]")


class _Cycle(RequestResponseCycle):
    """uvicorn's request/response cycle with our ``send`` (the module doc says what differs)."""

    _held: bytes | None = None  # an encoded head waiting for the body (BODY_FOLLOWS)
    _task: asyncio.Task[None]  # the task running this cycle, in the server's set ``_tasks``
    _tasks: set[asyncio.Task[None]]
    _protocol: GatewayHttpProtocol  # (set for a request the app serves directly)

    async def run_asgi(self, app: Any) -> None:
        # The task leaves the server's set as its own last step (uvicorn: a done callback,
        # one more handle scheduled and run per request; GatewayHttpProtocol._start_asgi_task).
        try:
            await super().run_asgi(app)
        finally:
            self._tasks.discard(self._task)

    async def send(self, message: Any) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        kind = message["type"]
        if not self.response_started:
            if kind != "http.response.start":
                raise RuntimeError(f"Expected ASGI message 'http.response.start', but got '{kind}'.")
            head = self._head(message["status"], message.get("headers", ()))
            if message.get(BODY_FOLLOWS):
                self._held = head
            else:
                self.transport.write(head)
            return
        if self.response_complete:
            raise RuntimeError(f"Unexpected ASGI message '{kind}' sent, after response already completed.")
        if kind != "http.response.body":
            raise RuntimeError(f"Expected ASGI message 'http.response.body', but got '{kind}'.")
        more_body: bool = message.get("more_body", False)
        data = self._body(message.get("body", b""), more_body)
        held = self._held
        if held is not None:
            self._held = None
            data = held + data
        if data:
            self.transport.write(data)
        if not more_body:
            self._complete()

    async def gatekeeper_send_whole(self, status: int, headers: Any, body: bytes) -> None:
        """What :func:`.respond.send_whole`'s two messages do, in one call: the head and all of
        ``body`` in one write (as :meth:`send` does for a start marked ``BODY_FOLLOWS``)."""
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        if self.response_started:  # the app's mistake: send's own errors say which
            await self.send({"type": "http.response.start", "status": status, "headers": headers})
            return
        self.gatekeeper_write(status, headers, body)

    def gatekeeper_write(self, status: int, headers: Any, body: bytes) -> None:
        """A whole response in one write, now (:class:`.respond.DirectCycle`; nothing when the
        client is gone). Raises ``RuntimeError`` as :meth:`send` would."""
        if self.disconnected:
            return
        if self.response_started:
            raise RuntimeError("The response has already started.")
        head = self._head(status, headers)
        self.transport.write(head + self._body(body, False))
        self._complete()

    def gatekeeper_run(self, app: Any) -> None:
        """Run ``app`` on this request in a task, as the server would have
        (:class:`.respond.DirectCycle`: an app serving the request directly hands it on)."""
        self._protocol._run_asgi_task(self, app)

    def _body(self, body: bytes, more_body: bool) -> bytes:
        """``body`` as it goes on the wire (HEAD: nothing; chunked; or counted against the
        Content-Length)."""
        if self.scope["method"] == "HEAD":
            self.expected_content_length = 0
            return b""
        if self.chunked_encoding:
            data = b"%x\r\n%b\r\n" % (len(body), body) if body else b""
            return data if more_body else data + b"0\r\n\r\n"
        if len(body) > self.expected_content_length:
            raise RuntimeError("Response content longer than Content-Length")
        self.expected_content_length -= len(body)
        return body

    def _complete(self) -> None:
        """The last body message went out."""
        if self.expected_content_length != 0:
            raise RuntimeError("Response content shorter than Content-Length")
        self.response_complete = True
        self.message_event.set()
        if not self.keep_alive:
            self.transport.close()
        self.on_response()

    def _head(self, status: int, headers: Any) -> bytes:
        """The status line and headers (uvicorn's ``send`` rules); the response has started."""
        self.response_started = True
        self.waiting_for_100_continue = False
        if self.access_log:
            self.access_logger.info(
                '%s - "%s %s HTTP/%s" %d',
                get_client_addr(self.scope),
                self.scope["method"],
                get_path_with_query_string(self.scope),
                self.scope["http_version"],
                status,
            )
        content = [STATUS_LINE[status]]
        closes = False
        for name, value in (*self.default_headers, *headers):
            if _BAD_NAME.search(name):
                raise RuntimeError("Invalid HTTP header name.")
            if _BAD_VALUE.search(value):
                raise RuntimeError("Invalid HTTP header value.")
            name = name.lower()
            if name == b"content-length" and self.chunked_encoding is None:
                self.expected_content_length = int(value.decode())
                self.chunked_encoding = False
            elif name == b"transfer-encoding" and value.lower() == b"chunked":
                self.expected_content_length = 0
                self.chunked_encoding = True
            elif name == b"connection" and b"close" in [t.strip() for t in value.lower().split(b",")]:
                self.keep_alive = False
                closes = True
            content += (name, b": ", value, b"\r\n")
        if not self.keep_alive and not closes:
            content.append(b"connection: close\r\n")
        if self.chunked_encoding is None and self.scope["method"] != "HEAD" and status not in (204, 304):
            self.chunked_encoding = True
            content.append(b"transfer-encoding: chunked\r\n")
        content.append(b"\r\n")
        return b"".join(content)


class GatewayHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol whose request cycles are :class:`_Cycle`, with one
    keep-alive timer per connection and tasks that leave the server's set themselves (the
    module doc)."""

    # uvicorn's own ``on_headers_complete`` (the request's scope and cycle, the app's task), run
    # with :class:`_Cycle` where it names ``RequestResponseCycle``: uvicorn's request handling
    # is kept as it is (no copy of its source, no patch of its module), only ``send`` is ours.
    on_headers_complete = types.FunctionType(
        HttpToolsProtocol.on_headers_complete.__code__,
        {**vars(httptools_impl), "RequestResponseCycle": _Cycle},
        "on_headers_complete",
    )

    _idle_since: float | None = None  # when the last response ended, if no request came since
    _keep_alive: asyncio.TimerHandle | None = None  # the connection's one keep-alive timer

    def _unset_keepalive_if_required(self) -> None:
        # uvicorn calls this when request bytes arrive (and where it is about to re-arm): the
        # connection is busy; the timer, if armed, finds that when it fires.
        self._idle_since = None

    def on_response_complete(self) -> None:
        # uvicorn's, but for the keep-alive timer (the module doc).
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._idle_since = now = self.loop.time()
        if self._keep_alive is None:
            self._keep_alive = self.loop.call_at(now + self.timeout_keep_alive, self._keep_alive_due)

    def _keep_alive_due(self) -> None:
        self._keep_alive = None
        if self._idle_since is None:
            return  # busy: the response that ends it arms the timer again
        deadline = self._idle_since + self.timeout_keep_alive
        if self.loop.time() >= deadline:
            self.timeout_keep_alive_handler()
        else:
            self._keep_alive = self.loop.call_at(deadline, self._keep_alive_due)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._keep_alive is not None:
            self._keep_alive.cancel()
            self._keep_alive = None

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        # The app may serve the request without a task (respond.DIRECT). (Where uvicorn answers
        # for the app, limit_concurrency's 503, ``app`` is uvicorn's own: no offer.)
        direct = getattr(app, DIRECT, None)
        if direct is not None:
            cycle._protocol = self
            if direct(cycle):
                return
        self._run_asgi_task(cycle, app)

    def _run_asgi_task(self, cycle: Any, app: Any) -> None:
        # uvicorn's _start_asgi_task (reset_contextvars included), but the task removes itself
        # from the server's set (_Cycle.run_asgi), which uvicorn's graceful shutdown waits to
        # see empty.
        context = contextvars.Context() if self.config.reset_contextvars else None
        task = self.loop.create_task(cycle.run_asgi(app), context=context)
        cycle._task, cycle._tasks = task, self.tasks
        self.tasks.add(task)
