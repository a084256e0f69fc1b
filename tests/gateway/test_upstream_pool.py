"""The proxy's upstream HTTP/1.1 client (upstream_pool + upstream_conn) against real loopback
upstreams: uvicorn (:class:`Upstream`) and hand-written responses (:class:`RawUpstream`)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest
from upstream import RawUpstream, Upstream

from gatekeeper.gateway.upstream_conn import MAX_HEAD, READ_AHEAD, UpstreamConnection, request_head
from gatekeeper.gateway.upstream_errors import (
    PoolTimeout,
    UnsafeRequest,
    UpstreamBroken,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from gatekeeper.gateway.upstream_pool import Origin, Timeouts, UpstreamPool

T = TypeVar("T")
QUICK = Timeouts(connect=2.0, read=2.0, write=2.0, pool=2.0)
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


@pytest.fixture(scope="module")
def upstream() -> Any:
    with Upstream() as up:
        yield up


def origin(port: int) -> Origin:
    return ("http", "127.0.0.1", port)


def run(test: Callable[[UpstreamPool], Awaitable[T]], size: int = 4) -> T:
    async def main() -> T:
        pool = UpstreamPool(size)
        try:
            return await test(pool)
        finally:
            await pool.aclose()

    return asyncio.run(main())


async def get(
    pool: UpstreamPool, port: int, target: bytes = b"/", method: bytes = b"GET", timeouts: Timeouts = QUICK
) -> tuple[UpstreamConnection, bytes]:
    """One exchange read to the end and released: (its connection, the body)."""
    connection = await pool.exchange(method, origin(port), target, [(b"host", b"up")], None, None, timeouts)
    body = b""
    try:
        while chunk := await connection.read():
            body += chunk
    finally:
        pool.release(connection)
    return connection, body


# -- the request -----------------------------------------------------------------------------


def test_request_head_is_the_request_line_and_headers() -> None:
    head = request_head(b"POST", b"/a?b=1", [(b"host", b"up"), (b"x-one", b"1")], chunked=True)
    assert head == b"POST /a?b=1 HTTP/1.1\r\nhost: up\r\nx-one: 1\r\ntransfer-encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    ("target", "value"),
    [
        (b"/a", b"1\r\nx-injected: 1"),
        (b"/a", b"1\nx: 2"),
        (b"/a", b"1\r"),
        (b"/a", b"\x00"),
        (b"/a\r\nx: 1", b"1"),
    ],
)
def test_a_cr_lf_or_nul_cannot_split_the_upstream_request(target: bytes, value: bytes) -> None:
    with pytest.raises(UnsafeRequest):
        request_head(b"GET", target, [(b"x-value", value)], chunked=False)


def test_a_chunked_body_is_framed_and_arrives_whole(upstream: Upstream) -> None:
    async def body() -> AsyncIterator[bytes]:
        for size in (1, 100_000, 7):
            yield b"y" * size

    async def test(pool: UpstreamPool) -> Any:
        connection = await pool.exchange(
            b"POST", origin(upstream.port), b"/echo", [(b"host", b"up")], body(), None, QUICK
        )
        data = b""
        while chunk := await connection.read():
            data += chunk
        pool.release(connection)
        return json.loads(data)

    seen = run(test)
    assert seen["body_bytes"] == 100_008
    assert ["transfer-encoding", "chunked"] in seen["headers"]


def test_a_body_shorter_than_its_content_length_is_not_sent_as_complete(upstream: Upstream) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"x" * 10

    async def test(pool: UpstreamPool) -> None:
        headers = [(b"host", b"up"), (b"content-length", b"11")]
        with pytest.raises(UpstreamBroken):
            await pool.exchange(b"POST", origin(upstream.port), b"/echo", headers, body(), 11, QUICK)
        assert pool.open_connections == 0

    run(test)


def test_an_upstream_that_stops_reading_the_body_makes_the_sender_wait_then_time_out() -> None:
    # Backpressure: the body generator is not drained into memory while the upstream reads
    # nothing; the write timeout ends the wait.
    produced = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal produced
        while True:
            produced += 65536
            yield b"z" * 65536

    async def test(pool: UpstreamPool) -> None:
        headers = [(b"host", b"up")]
        timeouts = Timeouts(connect=2.0, read=2.0, write=0.3, pool=2.0)
        with pytest.raises(UpstreamTimeout):
            await pool.exchange(b"POST", origin(raw.port), b"/", headers, body(), None, timeouts)

    release = threading.Event()

    def hold(*_: object) -> None:  # reads the head only, answers nothing until released
        release.wait(10)

    with RawUpstream(hold) as raw:
        try:
            run(test)
        finally:
            release.set()
    # The kernel's socket buffers and the transport's high-water mark, not the whole stream.
    assert produced < 64 * 1024 * 1024


# -- the response ----------------------------------------------------------------------------


def test_keep_alive_connections_are_reused(upstream: Upstream) -> None:
    async def test(pool: UpstreamPool) -> tuple[bool, int]:
        first, _ = await get(pool, upstream.port, b"/echo")
        second, body = await get(pool, upstream.port, b"/echo")
        assert json.loads(body)["path"] == "/echo"
        return first is second, pool.open_connections

    assert run(test) == (True, 1)


def test_a_response_larger_than_the_read_ahead_waits_in_the_kernel_not_in_memory(upstream: Upstream) -> None:
    size = 32 * 1024 * 1024

    async def test(pool: UpstreamPool) -> tuple[int, int]:
        connection = await pool.exchange(
            b"GET",
            origin(upstream.port),
            f"/download?size={size}".encode(),
            [(b"host", b"up")],
            None,
            None,
            QUICK,
        )
        # Nobody reads for a while: the connection stops reading at READ_AHEAD.
        for _ in range(50):
            await asyncio.sleep(0.01)
        held = connection._buffered
        received = 0
        while chunk := await connection.read():
            received += len(chunk)
        pool.release(connection)
        return held, received

    held, received = run(test)
    assert received == size
    assert READ_AHEAD <= held <= READ_AHEAD + 256 * 1024  # one socket read past the mark at most


def test_a_head_response_announcing_a_body_leaves_the_connection_reusable() -> None:
    def answer(connection: int, request: int, head: bytes) -> bytes:
        if head.startswith(b"HEAD"):
            return b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n"
        return OK

    async def test(pool: UpstreamPool) -> tuple[bytes, bytes, int]:
        _, head_body = await get(pool, raw.port, method=b"HEAD")
        _, body = await get(pool, raw.port)
        return head_body, body, raw.connections

    with RawUpstream(answer) as raw:
        assert run(test) == (b"", b"ok", 1)


def test_read_rest_hands_over_a_body_that_is_all_here_and_nothing_before(upstream: Upstream) -> None:
    async def test(pool: UpstreamPool) -> tuple[bytes | None, bytes | None, bytes, bytes | None]:
        with RawUpstream(lambda *_: OK) as raw:
            whole = await pool.exchange(b"GET", origin(raw.port), b"/", [(b"host", b"up")], None, None, QUICK)
            rest = whole.read_rest()
            for _ in range(50):  # (the body usually comes in the head's segment)
                if rest is not None:
                    break
                await asyncio.sleep(0.01)
                rest = whole.read_rest()
            after = whole.read_rest()  # taken: the body is not handed over twice
            pool.release(whole)
        # An event stream: the head is in, the body is still coming.
        stream = await pool.exchange(
            b"GET", origin(upstream.port), b"/sse?n=2&interval=0.3", [(b"host", b"up")], None, None, QUICK
        )
        early = stream.read_rest()
        body = b""
        while chunk := await stream.read():
            body += chunk
        pool.release(stream)
        return rest, after, body, early

    rest, after, body, early = run(test)
    assert (rest, after) == (b"ok", b"")
    assert early is None
    assert body.count(b"data:") == 2


def test_informational_responses_are_skipped() -> None:
    early = b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n"
    with RawUpstream(lambda *_: early + OK) as raw:
        connection, body = run(lambda pool: get(pool, raw.port))
    assert (connection.status, body) == (200, b"ok")


def test_a_body_framed_by_the_end_of_the_connection_is_complete_at_eof() -> None:
    reply = b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it"
    with RawUpstream(lambda *_: reply, close_after=True) as raw:

        async def test(pool: UpstreamPool) -> tuple[bytes, int]:
            _, body = await get(pool, raw.port)
            return body, pool.open_connections

        assert run(test) == (b"all of it", 0)


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\ncut short",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
    ],
)
def test_eof_mid_body_is_a_broken_response_not_a_short_one(reply: bytes) -> None:
    with RawUpstream(lambda *_: reply, close_after=True) as raw:

        async def test(pool: UpstreamPool) -> None:
            with pytest.raises(UpstreamBroken):
                await get(pool, raw.port)
            assert pool.open_connections == 0

        run(test)


@pytest.mark.parametrize(
    "reply",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 2OO OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\nconnection: upgrade\r\n\r\n",
    ],
)
def test_a_malformed_response_is_broken(reply: bytes) -> None:
    with RawUpstream(lambda *_: reply) as raw:

        async def test(pool: UpstreamPool) -> None:
            with pytest.raises(UpstreamBroken):
                await get(pool, raw.port)
            assert pool.open_connections == 0

        run(test)


def test_a_huge_response_head_is_refused_before_it_is_held() -> None:
    huge = b"HTTP/1.1 200 OK\r\n" + b"x-big: " + b"a" * (4 * MAX_HEAD) + b"\r\ncontent-length: 2\r\n\r\nok"
    with RawUpstream(lambda *_: huge) as raw:

        async def test(pool: UpstreamPool) -> None:
            with pytest.raises(UpstreamBroken, match="head is over"):
                await get(pool, raw.port)

        run(test)


def test_a_second_response_to_one_request_makes_the_connection_unusable() -> None:
    with RawUpstream(lambda *_: OK + OK) as raw:

        async def test(pool: UpstreamPool) -> int:
            _, body = await get(pool, raw.port)
            assert body == b"ok"
            await get(pool, raw.port)
            return raw.connections

        assert run(test) == 2


# -- the pool ----------------------------------------------------------------------------------


def test_a_get_on_a_reused_connection_the_upstream_closed_is_retried_on_a_new_one() -> None:
    # First connection: answers once, then closes at the second request without answering
    # (the keep-alive race); the GET is sent again on a new connection.
    with RawUpstream(lambda connection, request, _: OK if connection or not request else None) as raw:

        async def test(pool: UpstreamPool) -> tuple[bytes, bytes, int]:
            _, first = await get(pool, raw.port)
            _, second = await get(pool, raw.port)
            return first, second, raw.connections

        assert run(test) == (b"ok", b"ok", 2)


def test_a_request_with_a_body_is_never_retried() -> None:
    with RawUpstream(lambda connection, request, _: OK if connection or not request else None) as raw:

        async def body() -> AsyncIterator[bytes]:
            yield b"once"

        async def test(pool: UpstreamPool) -> int:
            await get(pool, raw.port)
            headers = [(b"host", b"up"), (b"content-length", b"4")]
            with pytest.raises(UpstreamBroken):
                await pool.exchange(b"POST", origin(raw.port), b"/", headers, body(), 4, QUICK)
            return raw.connections

        assert run(test) == 1


def test_an_unread_response_closes_its_connection(upstream: Upstream) -> None:
    async def test(pool: UpstreamPool) -> int:
        connection = await pool.exchange(
            b"GET", origin(upstream.port), b"/download?size=1000000", [(b"host", b"up")], None, None, QUICK
        )
        pool.release(connection)  # body not read
        return pool.open_connections

    assert run(test) == 0


def test_the_pool_is_bounded_and_times_out(upstream: Upstream) -> None:
    async def test(pool: UpstreamPool) -> None:
        busy = await pool.exchange(
            b"GET", origin(upstream.port), b"/echo", [(b"host", b"up")], None, None, QUICK
        )
        with pytest.raises(PoolTimeout):
            await get(pool, upstream.port, timeouts=Timeouts(connect=1.0, read=1.0, write=1.0, pool=0.2))
        while await busy.read():
            pass
        pool.release(busy)
        _, body = await get(pool, upstream.port, b"/echo")
        assert json.loads(body)["path"] == "/echo"
        assert pool.open_connections == 1

    run(test, size=1)


def test_refused_and_unresolvable_upstreams_are_unreachable() -> None:
    from upstream import free_port

    async def test(pool: UpstreamPool) -> None:
        with pytest.raises(UpstreamUnreachable):
            await get(pool, free_port())
        with pytest.raises(UpstreamUnreachable):
            await pool.exchange(
                b"GET", ("http", "gatekeeper-test.invalid", 80), b"/", [(b"host", b"x")], None, None, QUICK
            )
        assert pool.open_connections == 0

    run(test)


def test_a_slow_answer_is_a_read_timeout(upstream: Upstream) -> None:
    async def test(pool: UpstreamPool) -> None:
        with pytest.raises(UpstreamTimeout):
            await get(
                pool, upstream.port, b"/slow?delay=3", timeouts=Timeouts(connect=1.0, read=0.2, write=1.0)
            )
        assert pool.open_connections == 0

    run(test)


def test_a_shorter_read_timeout_on_a_reused_connection_applies(upstream: Upstream) -> None:
    async def test(pool: UpstreamPool) -> None:
        await get(pool, upstream.port, b"/echo", timeouts=Timeouts(read=60.0))
        assert pool.open_connections == 1  # idle, armed with the 60 s deadline's timer
        with pytest.raises(UpstreamTimeout):
            await get(pool, upstream.port, b"/slow?delay=3", timeouts=Timeouts(read=0.2))
        assert pool.open_connections == 0  # the same connection, closed after its timeout

    run(test)


# -- begin: the exchange without a coroutine ------------------------------------------------


async def begin(
    pool: UpstreamPool, port: int, target: bytes, timeouts: Timeouts = QUICK, method: bytes = b"GET"
) -> tuple[UpstreamConnection | None, list[tuple[bool, Exception | None, bytes | None]]]:
    """``pool.begin`` and what its callback saw (answered, error, read_rest), once it came."""
    seen: list[tuple[bool, Exception | None, bytes | None]] = []
    came = asyncio.Event()

    def ready(connection: UpstreamConnection) -> None:
        seen.append((connection.answered, connection.error, connection.read_rest()))
        came.set()

    connection = pool.begin(method, origin(port), target, [(b"host", b"up")], timeouts, ready)
    if connection is not None:
        await asyncio.wait_for(came.wait(), 10)
        await asyncio.sleep(0.05)  # (a second call would come by now)
    return connection, seen


def test_begin_needs_an_idle_connection_and_calls_back_once_with_the_whole_answer(upstream: Upstream) -> None:
    async def test(pool: UpstreamPool) -> None:
        nothing, seen = await begin(pool, upstream.port, b"/echo")
        assert (nothing, seen, pool.open_connections) == (None, [], 0)  # nothing sent
        idle, _ = await get(pool, upstream.port, b"/echo")
        connection, seen = await begin(pool, upstream.port, b"/echo?x=1")
        assert connection is idle
        ((answered, error, body),) = seen
        assert (answered, error, connection.status) == (True, None, 200)
        assert body is not None
        assert json.loads(body)["query"] == "x=1"
        pool.release(connection)
        assert pool.open_connections == 1
        assert connection.reusable

    run(test)


def test_begin_hands_over_a_body_that_is_not_all_here(upstream: Upstream) -> None:
    async def test(pool: UpstreamPool) -> None:
        await get(pool, upstream.port, b"/echo")
        size = 4 * READ_AHEAD
        connection, seen = await begin(pool, upstream.port, b"/download?size=%d&chunk=65536" % size)
        assert connection is not None
        ((answered, error, rest),) = seen
        assert (answered, error, rest) == (True, None, None)  # the head only: read() the body
        body = b""
        while chunk := await connection.read():
            body += chunk
        assert body == b"x" * size
        pool.release(connection)
        assert pool.open_connections == 1

    run(test)


def test_begin_calls_back_with_a_head_request_complete() -> None:
    reply = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"
    with RawUpstream(lambda connection, request, _: OK if not request else reply) as raw:

        async def test(pool: UpstreamPool) -> None:
            await get(pool, raw.port)
            connection, seen = await begin(pool, raw.port, b"/", method=b"HEAD")
            assert connection is not None
            assert seen == [(True, None, b"")]
            pool.release(connection)
            assert connection.reusable

        run(test)


@pytest.mark.parametrize(
    ("answer", "error", "nothing"),
    [
        (None, UpstreamBroken, True),  # closed at the request, unanswered: the caller may retry
        (b"HTTP/1.1 2OO OK\r\n\r\n", UpstreamBroken, False),
        (
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\nconnection: upgrade\r\n\r\n",
            UpstreamBroken,
            False,
        ),
    ],
)
def test_begin_calls_back_with_the_failure(
    answer: bytes | None, error: type[Exception], nothing: bool
) -> None:
    with RawUpstream(lambda connection, request, _: OK if not request else answer) as raw:

        async def test(pool: UpstreamPool) -> None:
            await get(pool, raw.port)
            connection, seen = await begin(pool, raw.port, b"/")
            assert connection is not None
            ((answered, failure, _),) = seen
            assert not answered
            assert isinstance(failure, error)
            assert connection.received_nothing is nothing
            pool.release(connection)
            assert pool.open_connections == 0

        run(test)


def test_begin_calls_back_with_a_read_timeout(upstream: Upstream) -> None:
    async def test(pool: UpstreamPool) -> None:
        await get(pool, upstream.port, b"/echo")
        started = asyncio.get_running_loop().time()
        connection, seen = await begin(pool, upstream.port, b"/slow?delay=3", Timeouts(read=0.2))
        assert connection is not None
        ((answered, failure, _),) = seen
        assert not answered
        assert isinstance(failure, UpstreamTimeout)
        assert asyncio.get_running_loop().time() - started < 2
        pool.release(connection)
        assert pool.open_connections == 0

    run(test)
