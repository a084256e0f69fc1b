"""A real upstream service on 127.0.0.1 for gateway tests (and a runner for any ASGI app).

``Upstream()`` is a context manager serving :func:`upstream_app` with uvicorn in a thread:

- the last path segment picks the behaviour (``/open/sse`` is ``/sse``); any other path: echo
  as JSON (``method``, ``path`` = the raw path it received,
  ``query``, ``headers`` = every header pair as received, ``body_bytes``, ``body_sha256``); the
  body is hashed as it streams, never held whole.
- ``/download?size=N&chunk=C``: N bytes (``b"x"``), streamed in chunks of C, with Content-Length;
  ``&chunked=1`` without it (chunked transfer coding).
- ``/sse?n=N&interval=S``: N server-sent events S seconds apart, each carrying its send time
  (``time.monotonic()``, comparable across threads and processes on the same machine); it stops
  when the reader goes away and records ``{"sse_sent": k, "sse_reader_gone": ...}`` in ``seen``.
- ``/status?code=C``: status C with ``WWW-Authenticate: Bearer realm="upstream"`` and a body
  ``{"upstream": C}`` (the upstream's own 401 must pass through the proxy untouched).
- ``/slow?delay=S``: answers after S seconds (for timeouts).
- ``/cookie``: sets a cookie (``Set-Cookie: session=upstream-secret``); ``/close``: answers with
  ``Connection: close`` and closes the connection.
- ``/hop``: a response carrying hop-by-hop headers (``Connection: X-Upstream-Hop``,
  ``X-Upstream-Hop``, ``Keep-Alive``, ``Proxy-Authenticate``, ``Upgrade``) plus ``X-End-To-End``.
- websocket ``/ws/**``: sends the handshake it saw as a JSON text message first (``path``,
  ``headers``, ``subprotocol``), then echoes text and bytes; the text ``close:CODE:REASON``
  makes it close with that code and reason.

Every request's echo dict is also appended to ``Upstream.seen`` (for websocket handshakes too).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Self
from urllib.parse import parse_qs

import uvicorn

Scope = dict[str, Any]


def free_port() -> int:
    """A port nothing listens on right now (connecting to it is refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _params(scope: Scope) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode("latin-1")).items()}


def _headers(scope: Scope) -> list[list[str]]:
    return [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]]


class UpstreamApp:
    """The upstream's ASGI app (see the module docstring)."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        # The last segment picks the behaviour, so every one is reachable under any prefix
        # (``/open/download`` through an exempt rule, ``/items/download`` through a protected one).
        path = "/" + scope["path"].rsplit("/", 1)[-1]
        params = _params(scope)
        if path == "/download":
            await self._download(
                send, int(params["size"]), int(params.get("chunk", 65536)), "chunked" in params
            )
        elif path == "/sse":
            await self._sse(receive, send, int(params.get("n", 5)), float(params.get("interval", 0.2)))
        elif path == "/status":
            code = int(params["code"])
            headers = [
                (b"www-authenticate", b'Bearer realm="upstream"'),
                (b"content-type", b"application/json"),
            ]
            await self._json(send, {"upstream": code}, code, headers)
        elif path == "/slow":
            await asyncio.sleep(float(params.get("delay", 1)))
            await self._json(send, {"slow": True})
        elif path == "/cookie":
            headers = [
                (b"set-cookie", b"session=upstream-secret; Path=/"),
                (b"content-type", b"application/json"),
            ]
            await self._json(send, {"cookie": "set"}, 200, headers)
        elif path == "/close":
            await self._json(send, {"close": True}, 200, [(b"connection", b"close")])
        elif path == "/hop":
            headers = [
                (b"connection", b"X-Upstream-Hop"),
                (b"x-upstream-hop", b"1"),
                (b"keep-alive", b"timeout=5"),
                (b"proxy-authenticate", b"Basic"),
                (b"upgrade", b"h2c"),
                (b"x-end-to-end", b"1"),
            ]
            await self._json(send, {"hop": True}, 200, headers)
        else:
            await self._echo(scope, receive, send)

    async def _echo(self, scope: Scope, receive: Any, send: Any) -> None:
        digest = hashlib.sha256()
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            digest.update(chunk)
            size += len(chunk)
            if not message.get("more_body", False):
                break
        seen = {
            "method": scope["method"],
            "path": scope.get("raw_path", b"").decode("latin-1"),
            "query": scope.get("query_string", b"").decode("latin-1"),
            "headers": _headers(scope),
            "body_bytes": size,
            "body_sha256": digest.hexdigest(),
        }
        self.seen.append(seen)
        await self._json(send, seen)

    @staticmethod
    async def _json(
        send: Any, body: Any, status: int = 200, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        data = json.dumps(body).encode()
        out = headers or [(b"content-type", b"application/json")]
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*out, (b"content-length", str(len(data)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": data})

    @staticmethod
    async def _download(send: Any, size: int, chunk: int, chunked: bool) -> None:
        headers = [(b"content-type", b"application/octet-stream")]
        if not chunked:
            headers.append((b"content-length", str(size).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        block = b"x" * chunk
        left = size
        while left > 0:
            piece = block if left >= chunk else block[:left]
            left -= len(piece)
            await send({"type": "http.response.body", "body": piece, "more_body": left > 0})

    async def _sse(self, receive: Any, send: Any, n: int, interval: float) -> None:
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        gone = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.create_task(watch())
        sent = 0
        for i in range(n):
            if i:
                try:
                    await asyncio.wait_for(gone.wait(), interval)
                    break  # the reader went away
                except TimeoutError:
                    pass
            event = f"id: {i}\ndata: {json.dumps({'i': i, 'sent': time.monotonic()})}\n\n"
            await send({"type": "http.response.body", "body": event.encode(), "more_body": True})
            sent += 1
        watcher.cancel()
        self.seen.append({"sse_sent": sent, "sse_reader_gone": gone.is_set()})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _websocket(self, scope: Scope, receive: Any, send: Any) -> None:
        await receive()  # websocket.connect
        offered = scope.get("subprotocols") or []
        subprotocol = offered[0] if offered else None
        await send({"type": "websocket.accept", "subprotocol": subprotocol})
        seen = {
            "path": scope.get("raw_path", b"").decode("latin-1"),
            "query": scope.get("query_string", b"").decode("latin-1"),
            "headers": _headers(scope),
            "subprotocol": subprotocol,
        }
        self.seen.append(seen)
        await send({"type": "websocket.send", "text": json.dumps(seen)})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                self.seen.append({"closed_by_client": message.get("code")})
                return
            text = message.get("text")
            if text is not None and text.startswith("close:"):
                _, code, reason = text.split(":", 2)
                await send({"type": "websocket.close", "code": int(code), "reason": reason})
                return
            if text is not None:
                await send({"type": "websocket.send", "text": text})
            else:
                await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})


class ServerThread:
    """Any ASGI app served by uvicorn on 127.0.0.1 in a background thread (its own loop)."""

    def __init__(
        self,
        app: Any,
        *,
        http: str | type[asyncio.Protocol] = "h11",
        ws: str = "websockets-sansio",
        **config: Any,
    ) -> None:
        # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets whose protocol says TCP
        # (with proto 0, a response written as head then body waits ~40 ms for a delayed ACK).
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = app
        config.setdefault("log_level", "warning")
        # uvicorn would otherwise take scope["client"] from a loopback client's X-Forwarded-For.
        config.setdefault("proxy_headers", False)
        self.server = uvicorn.Server(uvicorn.Config(app, http=http, ws=ws, lifespan="on", **config))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Upstream(ServerThread):
    """The upstream service (:class:`UpstreamApp`) on a loopback port; ``seen`` lists what it got."""

    def __init__(self, **config: Any) -> None:
        self.upstream_app = UpstreamApp()
        super().__init__(self.upstream_app, **config)

    @property
    def seen(self) -> list[dict[str, Any]]:
        return self.upstream_app.seen

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


#: What a :class:`RawUpstream` answer function returns: bytes to send (then the next request
#: is read), or None to close the connection without answering.
Answer = Callable[[int, int, bytes], "bytes | None"]


class RawUpstream:
    """A hand-written HTTP/1.1 upstream on 127.0.0.1 for responses no real server sends
    (malformed, oversized, cut off): ``answer(connection, request, head)`` is called with the
    connection's and the request's number on it (from 0) and the request head as received;
    request bodies are not read. ``close_after``: close each connection after its first reply.
    ``connections`` counts accepted connections."""

    def __init__(self, answer: Answer, *, close_after: bool = False) -> None:
        self.answer = answer
        self.close_after = close_after
        self.connections = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._open: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            self._open.append(conn)
            number, self.connections = self.connections, self.connections + 1
            threading.Thread(target=self._serve, args=(conn, number), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        buffer = b""
        with conn:
            for request in itertools.count():
                while b"\r\n\r\n" not in buffer:
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        return
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                reply = self.answer(number, request, head)
                if reply is None:
                    return
                try:
                    conn.sendall(reply)
                except OSError:
                    return
                if self.close_after:
                    return

    def __enter__(self) -> RawUpstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
        for conn in self._open:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


@contextmanager
def upstream() -> Iterator[Upstream]:
    """``with upstream() as up: ...``"""
    with Upstream() as up:
        yield up


if __name__ == "__main__":  # python -m tests.gateway.upstream PORT: run it standalone (benchmarks)
    import sys

    uvicorn.run(UpstreamApp(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
