"""In-process gateway benchmark: what one cached-token forward-auth decision costs in Python.

No sockets and no HTTP server: the assembled gateway app (:func:`gatekeeper.gateway.app.build_gateway`
from a config like the one ``gatekeeper serve`` reads, nginx mode, access log off) is called as an
ASGI app with the scope an ASGI server would build for nginx's ``auth_request`` subrequest
(``GET /auth`` with ``X-Original-Method``, ``X-Original-URI`` and a realistic ~825-character
RS256 bearer token). The token is verified once before timing, so every timed request is a
verified-token cache hit: the work measured is the endpoint's own (header parsing, path
normalisation, rule match, cache lookup, identity headers, the record, metrics).

Compared in the same run, through the same in-process ASGI call, with a bare Starlette app whose
one endpoint answers 200 with an empty body (what an *allow* looks like). Variants:

- ``bare``: the Starlette endpoint;
- ``decision (metrics off)``: the gateway with ``[metrics] enabled = false``;
- ``decision (metrics on)``: the gateway with Prometheus metrics (the default).

Rounds are interleaved (every variant once per round); the table gives the median microseconds
per request across rounds and each variant's throughput ratio to ``bare`` (``bare us / variant
us``: 1.0x is as fast as the bare endpoint) from those medians. This isolates the Python cost a
server stack adds on top of; benchmarks/gateway.py measures the same endpoint over HTTP with wrk.

A second table (``--stacks``, default ``h11,httptools``) puts uvicorn's own protocol class in
front of both apps, still without sockets: the bytes wrk sends are fed to ``H11Protocol`` /
``HttpToolsProtocol`` through an in-memory transport, so the request parsing, the ASGI scope and
the response head (every response header validated and written) are measured too, as uvicorn
configures them in ``gatekeeper serve`` (no ``Server`` header) and in the wrk benchmark's bare
app (uvicorn's defaults: ``Server: uvicorn``), each with uvicorn's ``Date`` header. This is
the per-request CPU the wrk numbers divide, without the kernel's loopback and wrk's noise.

Run::

    .venv/bin/python benchmarks/gateway_inprocess.py              # 7 rounds x 20,000 requests
    .venv/bin/python benchmarks/gateway_inprocess.py --quick      # smoke run
    .venv/bin/python benchmarks/gateway_inprocess.py --profile    # plus a cProfile of the decision
    .venv/bin/python benchmarks/gateway_inprocess.py --stacks ''  # the app-only table alone
    # instructions per request of the second table's variants (deterministic, unlike the clock):
    valgrind --tool=callgrind --callgrind-out-file=cg.out \
        .venv/bin/python benchmarks/gateway_inprocess.py --callgrind cg.out --requests 300

Exit 1: the gateway did not answer the request with a 200 carrying the identity headers.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import statistics
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from email.utils import formatdate
from typing import Any

import uvicorn
from _common import callgrind_count, realistic_token, table, under_callgrind
from uvicorn.server import ServerState

from gatekeeper.gateway.app import build_gateway
from gatekeeper.gateway.config import read_config
from gatekeeper.gateway.schema import Table
from gatekeeper.issuer import DevIssuer

ISSUER = "https://auth.example.com/"
ORIGINAL_URI = b"/api/items/42?page=2"
CONFIG = """
[[issuers]]
issuer = "https://auth.example.com/"
audience = "api"
jwks = {{ keys = [] }}

[forward_auth]
path = "/auth"
proxy = "nginx"

[metrics]
enabled = {metrics}
"""

App = Any


def gateway_app(issuer: DevIssuer, *, metrics: bool) -> App:
    """The assembled gateway (forward-auth on /auth, nginx mode, access log off)."""
    data = tomllib.loads(CONFIG.format(metrics="true" if metrics else "false"))
    data["issuers"][0]["jwks"] = issuer.jwks()
    return build_gateway(read_config(Table(data, file="bench.toml")), access_log=None)


def bare_app() -> App:
    """A bare Starlette endpoint answering 200 with an empty body, like an allow."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def allow(request: Request) -> Response:
        return Response(status_code=200)

    return Starlette(routes=[Route("/auth", allow)])


def auth_scope(token: str) -> dict[str, Any]:
    """The scope uvicorn builds for nginx's auth_request subrequest."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "scheme": "http",
        "method": "GET",
        "path": "/auth",
        "raw_path": b"/auth",
        "query_string": b"",
        "root_path": "",
        "server": ("127.0.0.1", 8080),
        "client": ("127.0.0.1", 50000),
        "headers": [
            (b"host", b"127.0.0.1:8080"),
            (b"x-original-method", b"GET"),
            (b"x-original-uri", ORIGINAL_URI),
            (b"authorization", b"Bearer " + token.encode("ascii")),
            (b"user-agent", b"wrk"),
            (b"accept", b"*/*"),
        ],
    }


class Caller:
    """Calls an ASGI app with a fresh copy of ``scope``, as a server would per request."""

    def __init__(self, app: App, scope: dict[str, Any]) -> None:
        self.app = app
        self.scope = scope
        self.messages: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(self, message: dict[str, Any]) -> None:
        self.messages.append(message)

    async def batch(self, n: int) -> float:
        """Microseconds per request over ``n`` requests."""
        app, scope, receive, send, messages = self.app, self.scope, self.receive, self.send, self.messages
        started = time.perf_counter()
        for _ in range(n):
            await app(dict(scope), receive, send)
            messages.clear()
        return (time.perf_counter() - started) / n * 1e6

    async def answer(self) -> tuple[int, dict[bytes, bytes]]:
        self.messages.clear()
        await self.app(dict(self.scope), self.receive, self.send)
        start = self.messages[0]
        self.messages.clear()
        return start["status"], dict(start["headers"])


def wire_request(token: str) -> bytes:
    """The request wrk sends for the decision leg of benchmarks/gateway.py."""
    return (
        b"GET /auth HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAuthorization: Bearer " + token.encode("ascii")
        + b"\r\nX-Original-Method: GET\r\nX-Original-URI: " + ORIGINAL_URI + b"\r\n\r\n"
    )  # fmt: skip


class Wire(asyncio.Transport):
    """An in-memory transport: what the protocol writes is kept (the last response's bytes)."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class StackCaller:
    """Feeds ``request`` to uvicorn's ``http`` protocol (a name, or a protocol class; one
    keep-alive connection per batch) in front of ``app``; a request is done when its response
    is complete (the protocol's ``on_response_complete``: the app may answer without a task,
    ``respond.DIRECT``, so the app itself is served, not a wrapper)."""

    def __init__(
        self, app: App, http: str | type[asyncio.Protocol], request: bytes, *, server_header: bool
    ) -> None:
        self.request = request
        self._done: asyncio.Future[None] | None = None
        self.config = uvicorn.Config(
            app, http=http, lifespan="off", access_log=False, proxy_headers=False,
            interface="asgi3", log_config=None, server_header=server_header,
        )  # fmt: skip
        self.config.load()
        self.last = b""

    def _connect(self, loop: asyncio.AbstractEventLoop) -> tuple[Any, Wire]:
        state = ServerState()
        # What uvicorn's Server sets every second: the Date header, then Server if configured.
        state.default_headers = [(b"date", formatdate(usegmt=True).encode()), *self.config.encoded_headers]
        protocol: Callable[..., Any] = self.config.http_protocol_class
        connection = protocol(config=self.config, server_state=state, app_state={}, _loop=loop)
        complete = connection.on_response_complete

        def on_response_complete() -> None:  # (each request's cycle takes it from the connection)
            complete()
            if self._done is not None and not self._done.done():
                self._done.set_result(None)

        connection.on_response_complete = on_response_complete
        wire = Wire()
        connection.connection_made(wire)
        return connection, wire

    async def batch(self, n: int) -> float:
        """Microseconds per request over ``n`` requests on one connection."""
        loop = asyncio.get_running_loop()
        connection, wire = self._connect(loop)
        request = self.request
        try:
            started = time.perf_counter()
            for _ in range(n):
                self._done = loop.create_future()
                connection.data_received(request)
                await self._done
                wire.written.clear()
            elapsed = time.perf_counter() - started
            # one more, kept: the answer as the client gets it
            self._done = loop.create_future()
            connection.data_received(request)
            await self._done
            await asyncio.sleep(0)  # the steps after the response (an app task's end, its record)
            self.last = bytes(wire.written)
        finally:
            self._done = None
            connection.connection_lost(None)
        return elapsed / n * 1e6

    async def answer(self) -> tuple[int, dict[bytes, bytes]]:
        await self.batch(1)
        head = self.last.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        status = int(head[0].split()[1])
        headers = dict(line.split(b": ", 1) for line in head[1:])
        return status, {name.lower(): value for name, value in headers.items()}


def measure(callers: dict[str, Any], rounds: int, requests: int) -> dict[str, list[float]]:
    """Interleaved rounds: every variant runs ``requests`` requests once per round."""
    loop = asyncio.new_event_loop()
    samples: dict[str, list[float]] = {name: [] for name in callers}
    try:
        for caller in callers.values():  # warm up: caches, code paths, metric children
            loop.run_until_complete(caller.batch(max(requests // 10, 100)))
        for _ in range(rounds):
            for name, caller in callers.items():
                gc_was_on = gc.isenabled()
                gc.disable()  # as timeit does: a collection in one batch is noise
                try:
                    samples[name].append(loop.run_until_complete(caller.batch(requests)))
                finally:
                    if gc_was_on:
                        gc.enable()
    finally:
        loop.close()
    return samples


def check(callers: dict[str, Any]) -> None:
    """Every variant answers 200; the gateway's answers carry the verified identity."""
    loop = asyncio.new_event_loop()
    try:
        for name, caller in callers.items():
            status, headers = loop.run_until_complete(caller.answer())
            if status != 200:
                raise SystemExit(f"{name} answered {status}, not 200")
            if not name.startswith("bare") and headers.get(b"x-auth-subject") != b"client-123":
                raise SystemExit(f"{name} did not send the verified identity headers")
    finally:
        loop.close()


def profile(caller: Caller, requests: int) -> None:
    loop = asyncio.new_event_loop()
    profiler = cProfile.Profile()
    try:
        profiler.enable()
        loop.run_until_complete(caller.batch(requests))
        profiler.disable()
    finally:
        loop.close()
    pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(20)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds x 300 requests")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=20_000, help="requests per variant per round")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the metrics-on decision")
    parser.add_argument(
        "--callgrind",
        metavar="OUT",
        help="under valgrind --tool=callgrind --callgrind-out-file=OUT: count the second table's "
        "instructions per request (counters zeroed around each variant's --requests)",
    )
    parser.add_argument(
        "--stacks",
        default="h11,httptools",
        help="uvicorn protocol classes for the second table (comma-separated; '' for none)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.requests = 2, 300

    issuer = DevIssuer(ISSUER)
    issuer.add_key("RS256")
    token = realistic_token(issuer, "RS256")
    if args.callgrind:
        stacks = [stack for stack in args.stacks.split(",") if stack]
        print(callgrind_table(issuer, token, stacks, args.requests, args.callgrind))
        return 0
    callers = {
        "bare": Caller(bare_app(), auth_scope(token)),
        "decision (metrics off)": Caller(gateway_app(issuer, metrics=False), auth_scope(token)),
        "decision (metrics on)": Caller(gateway_app(issuer, metrics=True), auth_scope(token)),
    }
    check(callers)  # also verifies the token once: every timed request is a cache hit
    samples = measure(callers, args.rounds, args.requests)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    bare = medians["bare"]
    rows = [
        [
            name,
            f"{medians[name]:.1f}",
            f"{min(samples[name]):.1f}",
            f"{medians[name] - bare:+.1f}",
            f"{bare / medians[name]:.2f}x",
        ]
        for name in callers
    ]
    print(
        f"## In-process cached-token GET /auth: {args.rounds} interleaved rounds"
        f" x {args.requests:,} requests (token {len(token)} chars, Python {sys.version.split()[0]})\n"
    )
    print(table(["variant", "median us/request", "best us", "vs bare us", "throughput vs bare"], rows))
    print(
        f"\ndecision / bare (metrics on): {bare / medians['decision (metrics on)']:.2f}x; "
        f"(metrics off): {bare / medians['decision (metrics off)']:.2f}x"
    )
    stacks = [stack for stack in args.stacks.split(",") if stack]
    if stacks:
        print()
        print(stack_table(issuer, token, stacks, args.rounds, args.requests))
    if args.profile:
        profile(callers["decision (metrics on)"], args.requests)
    return 0


def stack_callers(issuer: DevIssuer, token: str, stacks: Sequence[str]) -> dict[str, StackCaller]:
    """Per stack: the bare app as the wrk benchmark serves it, the gateway as serve does."""
    request = wire_request(token)
    callers: dict[str, StackCaller] = {}
    for stack in stacks:
        callers[f"bare ({stack})"] = StackCaller(bare_app(), stack, request, server_header=True)
        gateway = gateway_app(issuer, metrics=True)
        callers[f"decision, metrics on ({stack})"] = StackCaller(gateway, stack, request, server_header=False)
    return callers


def callgrind_table(issuer: DevIssuer, token: str, stacks: Sequence[str], requests: int, out: str) -> str:
    """Instructions per request of each stack variant, from callgrind's own counters: zeroed
    after a warm-up, dumped after ``requests`` requests (``callgrind_control``), read back from
    the numbered dump files ``OUT.1``, ``OUT.2``, ... The first dump has no requests: what the
    two ``callgrind_control`` calls cost this process, taken off every variant's count."""
    if not under_callgrind():
        raise SystemExit("--callgrind: run this under valgrind --tool=callgrind --callgrind-out-file=OUT")
    callers = stack_callers(issuer, token, stacks)
    check(callers)
    loop = asyncio.new_event_loop()
    counts: dict[str, float] = {}
    try:
        overhead = callgrind_count(out, 1, lambda: None)
        for dump, (name, caller) in enumerate(callers.items(), start=2):
            loop.run_until_complete(caller.batch(50))
            work = lambda: loop.run_until_complete(caller.batch(requests))  # noqa: B023, E731
            total = callgrind_count(out, dump, work)
            counts[name] = (total - overhead) / requests
    finally:
        loop.close()
    rows = []
    for stack in stacks:
        bare = counts[f"bare ({stack})"]
        for name in (f"bare ({stack})", f"decision, metrics on ({stack})"):
            rows.append([name, f"{counts[name]:,.0f}", f"{bare / counts[name]:.3f}x"])
    return "\n".join(
        [
            "## Instructions per request through uvicorn's protocol classes"
            f" (callgrind, {requests:,} requests per variant)",
            "",
            table(["variant", "instructions/request", "vs bare"], rows),
        ]
    )


def stack_table(issuer: DevIssuer, token: str, stacks: Sequence[str], rounds: int, requests: int) -> str:
    """The second table: both apps behind uvicorn's protocol classes, fed in memory."""
    callers = stack_callers(issuer, token, stacks)
    check(callers)
    sizes = {name: len(caller.last) for name, caller in callers.items()}
    heads = {name: caller.last.count(b"\r\n") - 2 for name, caller in callers.items()}
    samples = measure(callers, rounds, requests)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    rows = []
    for stack in stacks:
        bare = medians[f"bare ({stack})"]
        for name in (f"bare ({stack})", f"decision, metrics on ({stack})"):
            rows.append(
                [
                    name,
                    str(heads[name]),
                    str(sizes[name]),
                    f"{medians[name]:.1f}",
                    f"{min(samples[name]):.1f}",
                    f"{bare / medians[name]:.2f}x",
                ]
            )
    lines = [
        f"## The same request through uvicorn's protocol classes, in memory: {rounds} interleaved rounds"
        f" x {requests:,} requests",
        "",
        table(
            ["variant", "response headers", "response bytes", "median us/request", "best us", "vs bare"], rows
        ),
        "",
    ]
    for stack in stacks:
        ratio = medians[f"bare ({stack})"] / medians[f"decision, metrics on ({stack})"]
        lines.append(f"decision / bare through {stack}: {ratio:.2f}x")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
