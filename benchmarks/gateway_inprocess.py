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

Run::

    .venv/bin/python benchmarks/gateway_inprocess.py              # 7 rounds x 20,000 requests
    .venv/bin/python benchmarks/gateway_inprocess.py --quick      # smoke run
    .venv/bin/python benchmarks/gateway_inprocess.py --profile    # plus a cProfile of the decision

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
from collections.abc import Sequence
from typing import Any

from _common import realistic_token, table

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


def measure(callers: dict[str, Caller], rounds: int, requests: int) -> dict[str, list[float]]:
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


def check(callers: dict[str, Caller]) -> None:
    """Every variant answers 200; the gateway's answers carry the verified identity."""
    loop = asyncio.new_event_loop()
    try:
        for name, caller in callers.items():
            status, headers = loop.run_until_complete(caller.answer())
            if status != 200:
                raise SystemExit(f"{name} answered {status}, not 200")
            if name != "bare" and headers.get(b"x-auth-subject") != b"client-123":
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
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.requests = 2, 300

    issuer = DevIssuer(ISSUER)
    issuer.add_key("RS256")
    token = realistic_token(issuer, "RS256")
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
    if args.profile:
        profile(callers["decision (metrics on)"], args.requests)
    return 0


if __name__ == "__main__":
    sys.exit(main())
