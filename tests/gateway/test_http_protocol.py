"""The gateway's HTTP protocol (:mod:`gatekeeper.gateway.http_protocol`) against uvicorn's own.

Every response an ASGI app can make (lengths, chunked, HEAD, 204, ``Connection: close``, the
app's mistakes) must reach the client byte for byte as uvicorn's httptools protocol sends it;
the only difference allowed is *when* a head marked ``BODY_FOLLOWS`` leaves: with its body.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

pytest.importorskip("httptools", reason="the gateway's protocol needs httptools: pip install httptools")

from upstream import ServerThread
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gatekeeper.gateway.http_protocol import GatewayHttpProtocol
from gatekeeper.gateway.respond import BODY_FOLLOWS, WHOLE, send_whole
from gatekeeper.gateway.server import _http_protocol

Scope = dict[str, Any]
released = threading.Event()  # lets /held-* send their body
mark: contextvars.ContextVar[bytes] = contextvars.ContextVar("mark", default=b"---")  # /ctx-set, /ctx-get


def _start(status: int, headers: list[tuple[bytes, bytes]], hint: bool) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "http.response.start", "status": status, "headers": headers}
    if hint:
        message[BODY_FOLLOWS] = True
    return message


# Whole responses (respond.send_whole): ours takes them in one call, uvicorn's as two messages.
WHOLE_RESPONSES: dict[str, tuple[int, list[tuple[bytes, bytes]], bytes]] = {
    "/whole": (201, [(b"content-length", b"4")], b"done"),
    "/whole-chunked": (200, [(b"content-type", b"text/plain")], b"abc"),
    "/whole-chunked-empty": (200, [], b""),
    "/whole-204": (204, [], b""),
    "/whole-close": (200, [(b"connection", b"close"), (b"content-length", b"2")], b"ok"),
    "/whole-too-long": (200, [(b"content-length", b"2")], b"hello"),
    "/whole-too-short": (200, [(b"content-length", b"10")], b"hi"),
    "/whole-bad-value": (200, [(b"x-split", b"a\r\nset-cookie: evil=1")], b""),
    "/whole-twice": (200, [(b"content-length", b"1")], b"1"),
}


async def app(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path: str = scope["path"]
    hint = path.endswith("-hint")
    name = path.removesuffix("-hint")
    length = [(b"content-type", b"text/plain"), (b"Content-Length", b"5")]
    if name == "/len":
        await send(_start(200, length, hint))
        await send({"type": "http.response.body", "body": b"hello"})
    elif name == "/len-pieces":
        await send(_start(200, length, hint))
        await send({"type": "http.response.body", "body": b"hel", "more_body": True})
        await send({"type": "http.response.body", "body": b"lo"})
    elif name == "/chunked":
        await send(_start(200, [(b"content-type", b"text/plain")], hint))
        await send({"type": "http.response.body", "body": b"ab", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": True})
        await send({"type": "http.response.body", "body": b"cd"})
    elif name == "/te":
        await send(_start(200, [(b"Transfer-Encoding", b"Chunked")], hint))
        await send({"type": "http.response.body", "body": b"xyz"})
    elif name == "/204":
        await send(_start(204, [], hint))
        await send({"type": "http.response.body"})
    elif name == "/304":
        await send(_start(304, [(b"etag", b'"1"')], hint))
        await send({"type": "http.response.body", "body": b""})
    elif name == "/close":
        await send(_start(200, [(b"connection", b"keep-alive, Close"), (b"content-length", b"2")], hint))
        await send({"type": "http.response.body", "body": b"ok"})
    elif name == "/too-long":
        await send(_start(200, [(b"content-length", b"2")], hint))
        await send({"type": "http.response.body", "body": b"hello"})
    elif name == "/too-short":
        await send(_start(200, [(b"content-length", b"10")], hint))
        await send({"type": "http.response.body", "body": b"hi"})
    elif name == "/bad-value":
        await send(_start(200, [(b"x-split", b"a\r\nset-cookie: evil=1")], hint))
        await send({"type": "http.response.body", "body": b""})
    elif name == "/bad-name":
        await send(_start(200, [(b"x split", b"a")], hint))
        await send({"type": "http.response.body", "body": b""})
    elif name == "/body-first":
        await send({"type": "http.response.body", "body": b"no start"})
    elif name == "/twice":
        await send(_start(200, [(b"content-length", b"1")], hint))
        await send({"type": "http.response.body", "body": b"1"})
        await send({"type": "http.response.body", "body": b"2"})
    elif name == "/no-body":
        await send(_start(200, [(b"content-length", b"1")], hint))
    elif name == "/wrong-type":
        await send(_start(200, [(b"content-length", b"1")], hint))
        await send({"type": "http.response.start", "status": 200})
    elif name == "/held":
        await send(_start(200, length, hint))
        await asyncio.get_running_loop().run_in_executor(None, released.wait, 10)
        await send({"type": "http.response.body", "body": b"hello"})
    elif name in WHOLE_RESPONSES:
        status, headers, body = WHOLE_RESPONSES[name]
        await send_whole(send, status, headers, body)
        if name == "/whole-twice":
            await send_whole(send, status, headers, body)
    elif name in ("/ctx-set", "/ctx-get"):
        if name == "/ctx-set":
            mark.set(b"set")
        await send(_start(200, [(b"content-length", b"3")], hint))
        await send({"type": "http.response.body", "body": mark.get()})
    else:
        await send(_start(200, [(b"content-length", b"3")], False))
        await send({"type": "http.response.body", "body": b"end"})


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[ServerThread, ServerThread]]:
    with ServerThread(app, http="httptools") as stock, ServerThread(app, http=GatewayHttpProtocol) as ours:
        yield stock, ours


END = b"GET /end HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"


def exchange(port: int, request: bytes) -> bytes:
    """Everything the server sends for ``request`` followed by a closing ``/end`` request."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request + END)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return re.sub(rb"date: [^\r]*\r\n", b"date: -\r\n", received)


CASES = [
    "/len", "/len-pieces", "/chunked", "/te", "/204", "/304", "/close", "/too-long", "/too-short",
    "/bad-value", "/bad-name", "/body-first", "/twice", "/no-body", "/wrong-type",
]  # fmt: skip


# The app fails after its start message; uvicorn has sent the head by then and closes.
FAILS_AFTER_HEAD = {"/too-long", "/no-body", "/wrong-type"}


@pytest.mark.parametrize("hint", [False, True], ids=["plain", "body-follows"])
@pytest.mark.parametrize("path", CASES)
def test_same_bytes_as_uvicorn(servers: tuple[ServerThread, ServerThread], path: str, hint: bool) -> None:
    stock, ours = servers
    request = f"GET {path}{'-hint' if hint else ''} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
    expected = exchange(stock.port, request)
    got = exchange(ours.port, request)
    if hint and path in FAILS_AFTER_HEAD:
        # A held head goes down with its body: the client sees the connection closed before
        # any response (not a head then a cut), the failure is as clear and sooner.
        assert expected.startswith(b"HTTP/1.1 200 OK\r\n")
        assert expected.endswith(b"\r\n\r\n")
        assert got == b""
    else:
        assert got == expected


@pytest.mark.parametrize(
    "request_head",
    [
        b"HEAD /len-hint HTTP/1.1\r\nHost: t\r\n\r\n",
        b"HEAD /chunked HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /len-hint HTTP/1.0\r\n\r\n",
        b"GET /len-hint HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        b"GET /chunked-hint HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        # pipelined: both in one write
        b"GET /len-hint HTTP/1.1\r\nHost: t\r\n\r\nGET /chunked-hint HTTP/1.1\r\nHost: t\r\n\r\n",
    ],
    ids=["head-length", "head-chunked", "http10", "http10-keep-alive", "request-close", "pipelined"],
)
def test_same_bytes_for_other_requests(
    servers: tuple[ServerThread, ServerThread], request_head: bytes
) -> None:
    stock, ours = servers
    assert exchange(ours.port, request_head) == exchange(stock.port, request_head)


def test_whole_response_helper(servers: tuple[ServerThread, ServerThread]) -> None:
    _, ours = servers
    got = exchange(ours.port, b"GET /whole HTTP/1.1\r\nHost: t\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 201 Created\r\n")
    assert b"content-length: 4\r\n\r\ndone" in got


def test_send_whole_takes_one_call_where_the_server_offers_it() -> None:
    calls: list[Any] = []

    class Owner:
        async def send(self, message: dict[str, Any]) -> None:
            calls.append(message)

    class OurCycle(Owner):
        async def gatekeeper_send_whole(self, status: int, headers: Any, body: bytes) -> None:
            calls.append((status, headers, body))

    assert hasattr(OurCycle, WHOLE)
    asyncio.run(send_whole(OurCycle().send, 201, [(b"content-length", b"2")], b"ok"))
    assert calls == [(201, [(b"content-length", b"2")], b"ok")]
    calls.clear()
    asyncio.run(send_whole(Owner().send, 201, [(b"content-length", b"2")], b"ok"))
    assert calls == [
        {
            "type": "http.response.start",
            "status": 201,
            "headers": [(b"content-length", b"2")],
            BODY_FOLLOWS: True,
        },
        {"type": "http.response.body", "body": b"ok"},
    ]


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("path", list(WHOLE_RESPONSES))
def test_whole_responses_same_bytes_as_uvicorn(
    servers: tuple[ServerThread, ServerThread], path: str, method: str
) -> None:
    stock, ours = servers
    request = f"{method} {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
    expected = exchange(stock.port, request)
    got = exchange(ours.port, request)
    if path == "/whole-too-long" and method == "GET":
        # uvicorn's protocol writes the head before the body is found too long; ours never
        # sends it (as for any marked head whose body fails: test_same_bytes_as_uvicorn).
        assert expected.startswith(b"HTTP/1.1 200 OK\r\n")
        assert got == b""
    else:
        assert got == expected


def first_bytes_before_release(port: int, path: str) -> bytes:
    """What arrives while the app holds its body back, then the whole response."""
    released.clear()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        sock.settimeout(0.3)
        try:
            early = sock.recv(65536)
        except TimeoutError:
            early = b""
        released.set()
        sock.settimeout(10)
        rest = early
        while chunk := sock.recv(65536):
            rest += chunk
    assert rest.endswith(b"\r\n\r\nhello")
    return early


def test_a_marked_head_waits_for_its_body(servers: tuple[ServerThread, ServerThread]) -> None:
    _, ours = servers
    assert first_bytes_before_release(ours.port, "/held-hint") == b""


def test_an_unmarked_head_leaves_at_once(servers: tuple[ServerThread, ServerThread]) -> None:
    # What keeps server-sent events and slow streams working: their head is never held.
    _, ours = servers
    early = first_bytes_before_release(ours.port, "/held")
    assert early.startswith(b"HTTP/1.1 200 OK\r\n")
    assert early.endswith(b"\r\n\r\n")


def test_gateway_serves_httptools_with_its_protocol() -> None:
    assert _http_protocol("auto") is GatewayHttpProtocol
    assert _http_protocol("httptools") is GatewayHttpProtocol
    assert _http_protocol("h11") == "h11"


# -- keep-alive: one timer per connection, closing when uvicorn's would --------------------------


class RecordingProtocol(GatewayHttpProtocol):
    """Ours, keeping every connection it serves (the tests read their timer)."""

    made: ClassVar[list[GatewayHttpProtocol]] = []

    def connection_made(self, transport: Any) -> None:
        RecordingProtocol.made.append(self)
        super().connection_made(transport)


def answered(sock: socket.socket) -> bytes:
    """One ``/len`` response (its 5-byte body last)."""
    sock.sendall(b"GET /len HTTP/1.1\r\nHost: t\r\n\r\n")
    received = b""
    while not received.endswith(b"hello"):
        chunk = sock.recv(65536)
        assert chunk, "the server closed a busy keep-alive connection"
        received += chunk
    return received


@pytest.mark.parametrize("protocol", [HttpToolsProtocol, GatewayHttpProtocol], ids=["uvicorn", "ours"])
def test_keep_alive_closes_an_idle_connection_when_uvicorn_does(protocol: type[HttpToolsProtocol]) -> None:
    # timeout 1 s; requests 0.5 s apart keep the connection for 2 s, then it closes ~1 s after
    # the last response, not 1 s after it first went idle.
    with (
        ServerThread(app, http=protocol, timeout_keep_alive=1) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock,
    ):
        for _ in range(4):
            assert answered(sock).startswith(b"HTTP/1.1 200 OK\r\n")
            time.sleep(0.5)
        assert answered(sock).startswith(b"HTTP/1.1 200 OK\r\n")
        idle_from = time.monotonic()
        assert sock.recv(1) == b""
        idle_for = time.monotonic() - idle_from
    assert 0.8 <= idle_for < 3.0


def test_one_keep_alive_timer_per_connection_cancelled_when_it_closes() -> None:
    RecordingProtocol.made.clear()
    with ServerThread(app, http=RecordingProtocol, timeout_keep_alive=5) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            answered(sock)
            (connection,) = RecordingProtocol.made
            timer = connection._keep_alive
            assert timer is not None
            assert not timer.cancelled()
            for _ in range(20):
                answered(sock)
            assert connection._keep_alive is timer  # not re-armed per request (uvicorn's is)
            assert connection._idle_since is not None
        deadline = time.monotonic() + 5
        while connection._keep_alive is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert connection._keep_alive is None
        assert timer.cancelled()  # the closed connection is not kept by its timer for 5 s


# -- the request's task: in the server's set while it runs, in the context uvicorn gives it --------


def test_a_request_task_is_in_the_servers_set_while_it_runs() -> None:
    # uvicorn's graceful shutdown waits for that set; ours leaves it as the task's last step.
    RecordingProtocol.made.clear()
    released.clear()
    with (
        ServerThread(app, http=RecordingProtocol) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock,
    ):
        sock.sendall(b"GET /held-hint HTTP/1.1\r\nHost: t\r\n\r\n")
        deadline = time.monotonic() + 5
        made = RecordingProtocol.made
        while not (made and made[0].tasks) and time.monotonic() < deadline:
            time.sleep(0.01)
        (connection,) = RecordingProtocol.made
        (task,) = connection.tasks
        assert not task.done()
        released.set()
        received = b""
        while not received.endswith(b"hello"):
            received += sock.recv(65536)
        while connection.tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not connection.tasks
        assert task.done()


@pytest.mark.parametrize("reset", [False, True], ids=["inherited", "reset"])
@pytest.mark.parametrize("protocol", [HttpToolsProtocol, GatewayHttpProtocol], ids=["uvicorn", "ours"])
def test_pipelined_request_context_as_uvicorn_gives_it(
    protocol: type[HttpToolsProtocol], reset: bool
) -> None:
    # A pipelined request's task is started from the previous one's: it inherits its context
    # variables unless uvicorn's reset_contextvars is on (uvicorn's workaround for CPython's
    # gh-140947); ours must do the same.
    pipelined = b"GET /ctx-set HTTP/1.1\r\nHost: t\r\n\r\nGET /ctx-get HTTP/1.1\r\nHost: t\r\n\r\n"
    with ServerThread(app, http=protocol, reset_contextvars=reset) as server:
        got = exchange(server.port, pipelined)
    bodies = re.findall(rb"\r\n\r\n(...)", got)
    assert bodies == [b"set", b"---" if reset else b"set", b"end"]


# -- requests served without a task (respond.DIRECT) -----------------------------------------


class DirectApp:
    """``app``, but whole responses are written from ``gatekeeper_direct`` (at once, or a little
    later from a timer for ``?later``), and ``/run`` is handed to a task through the cycle."""

    def __init__(self) -> None:
        self.offered: list[str] = []

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        await app(scope, receive, send)

    def gatekeeper_direct(self, cycle: Any) -> bool:
        path: str = cycle.scope["path"]
        self.offered.append(path)
        if path == "/run":
            cycle.gatekeeper_run(app)  # (app answers "end")
            return True
        if path not in WHOLE_RESPONSES or path == "/whole-twice":
            return False
        status, headers, body = WHOLE_RESPONSES[path]

        def write() -> None:
            try:
                cycle.gatekeeper_write(status, headers, body)
            except RuntimeError as exc:  # as the proxy does: the server answers the failure
                error = exc

                async def fail(scope: Scope, receive: Any, send: Any) -> None:
                    raise error

                cycle.gatekeeper_run(fail)

        if cycle.scope["query_string"] == b"later":
            asyncio.get_running_loop().call_later(0.05, write)
        else:
            write()
        return True


@pytest.fixture(scope="module")
def direct_server() -> Iterator[tuple[ServerThread, DirectApp]]:
    direct = DirectApp()
    with ServerThread(direct, http=GatewayHttpProtocol) as server:
        yield server, direct


@pytest.mark.parametrize("query", ["", "?later"], ids=["now", "later"])
@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("path", [p for p in WHOLE_RESPONSES if p != "/whole-twice"])
def test_a_direct_whole_response_has_uvicorns_bytes(
    servers: tuple[ServerThread, ServerThread],
    direct_server: tuple[ServerThread, DirectApp],
    path: str,
    method: str,
    query: str,
) -> None:
    stock, _ = servers
    server, direct = direct_server
    request = f"{method} {path}{query} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
    expected = exchange(stock.port, request)
    offered = len(direct.offered)
    got = exchange(server.port, request)
    assert direct.offered[offered] == path
    if path == "/whole-too-long" and method == "GET":  # (test_whole_responses_same_bytes_as_uvicorn)
        assert got == b""
    else:
        assert got == expected


def test_pipelined_direct_responses_keep_their_order(
    servers: tuple[ServerThread, ServerThread], direct_server: tuple[ServerThread, DirectApp]
) -> None:
    stock, _ = servers
    server, _ = direct_server
    request = (
        b"GET /whole?later HTTP/1.1\r\nHost: t\r\n\r\n"  # answered 50 ms later, from a timer
        b"GET /run HTTP/1.1\r\nHost: t\r\n\r\n"  # handed to a task
        b"GET /whole-chunked HTTP/1.1\r\nHost: t\r\n\r\n"  # answered at once
        b"GET /len HTTP/1.1\r\nHost: t\r\n\r\n"  # not taken: the app's task
    )
    got = exchange(server.port, request)
    expected = exchange(stock.port, request.replace(b"/run", b"/end-of-run"))
    assert got == expected
    assert got.count(b"HTTP/1.1 ") == 5


def test_no_direct_offer_when_uvicorn_answers_for_the_app() -> None:
    # limit_concurrency: uvicorn answers 503 itself; its app is not the server's, so no offer.
    direct = DirectApp()
    with ServerThread(direct, http=GatewayHttpProtocol, limit_concurrency=1) as server:
        got = exchange(server.port, b"GET /whole HTTP/1.1\r\nHost: t\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert direct.offered == []
