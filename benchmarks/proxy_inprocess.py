"""In-process reverse-proxy benchmark: what gatekeeper's proxy costs per request beyond the floor.

wrk's proxy numbers (benchmarks/gateway.py ``--proxy-only``) swing by a fifth between runs on a
shared machine; this script measures the same thing with less noise. The bytes wrk sends are fed
to uvicorn's ``HttpToolsProtocol`` (the default stack's server side) through an in-memory
transport, as in benchmarks/gateway_inprocess.py; the app forwards each request over real
loopback TCP, through gatekeeper's own upstream client, to a canned upstream in the same event
loop (an ``asyncio.Protocol`` answering every request head with the benchmark upstream's small
JSON response, no parsing). Both variants pay the same server side, upstream and system calls:

- ``floor``: the minimal ASGI proxy (``gateway.minimal_proxy_app``: the request forwarded as it
  came, no decision, no header rewriting, no record);
- ``gatekeeper``: the assembled gateway (``build_gateway`` from benchmarks/gateway.py's own TOML:
  forward-auth and the proxy, metrics on, access log off), its token a verified-token cache hit,
  served by the gateway's protocol as ``gatekeeper serve`` does (so the proxy's direct path,
  without an ASGI task, answers it); ``gatekeeper, uvicorn's protocol``: the same app on
  uvicorn's own protocol (the ASGI path).

Both get the same request (``GET /api/items/42`` with the ~825-character RS256 bearer token).
Rounds are interleaved; the table gives median microseconds per request and the difference.

``--callgrind OUT`` (under ``valgrind --tool=callgrind --callgrind-out-file=OUT``) counts
instructions per request instead, zeroed after a warm-up and dumped after ``--requests``:
repeatable whatever the machine's load, the measure the README's proxy rounds quote::

    .venv/bin/python benchmarks/proxy_inprocess.py                 # 7 rounds x 3,000 requests
    .venv/bin/python benchmarks/proxy_inprocess.py --quick         # smoke run
    valgrind --tool=callgrind --callgrind-out-file=cg.out \\
        .venv/bin/python benchmarks/proxy_inprocess.py --callgrind cg.out --requests 1000

Exit 1: a variant did not answer 200 with the upstream's body, or gatekeeper's upstream request
lacked the verified identity.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import tomllib
from collections.abc import Sequence
from typing import Any, ClassVar

from _common import callgrind_count, realistic_token, table, under_callgrind
from gateway import GATEKEEPER_TOML, ORIGINAL_URI, minimal_proxy_app
from gateway_inprocess import StackCaller

from gatekeeper.gateway.app import build_gateway
from gatekeeper.gateway.config import read_config
from gatekeeper.gateway.http_protocol import GatewayHttpProtocol
from gatekeeper.gateway.schema import Table
from gatekeeper.issuer import DevIssuer

ISSUER = "https://auth.example.com/"
_BODY = b'{"ok":true,"n":1}'[:16]  # what benchmarks/gateway.py's upstream answers
_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 16\r\n"
    b"date: Tue, 01 Dec 2026 00:00:00 GMT\r\nserver: uvicorn\r\n\r\n" + _BODY
)


class CannedUpstream(asyncio.Protocol):
    """Answers every request head with :data:`_RESPONSE`; keeps the last head it got."""

    heads: ClassVar[list[bytes]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            CannedUpstream.heads[:] = [head]
            self.transport.write(_RESPONSE)


def gatekeeper_app(issuer: DevIssuer, upstream_port: int) -> Any:
    """The gateway as ``benchmarks/gateway.py`` configures ``gatekeeper serve``."""
    text = GATEKEEPER_TOML.format(
        port=1, ops_port=2, loop="asyncio", http="httptools", cache_size=10_000, issuer=ISSUER,
        jwks_url="https://unused.invalid/jwks", upstream=f"http://127.0.0.1:{upstream_port}",
        max_body=1 << 40,
    )  # fmt: skip
    data = tomllib.loads(text)
    del data["issuers"][0]["jwks_url"]
    data["issuers"][0]["jwks"] = issuer.jwks()
    return build_gateway(read_config(Table(data, file="bench.toml")), access_log=None)


def wire_request(token: str) -> bytes:
    return (
        b"GET " + ORIGINAL_URI.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
        b"Authorization: Bearer " + token.encode("ascii") + b"\r\n\r\n"
    )


async def callers(issuer: DevIssuer, token: str) -> dict[str, StackCaller]:
    """Both variants in front of a canned upstream started in the running loop."""
    server = await asyncio.get_running_loop().create_server(CannedUpstream, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    request = wire_request(token)
    return {
        "floor": StackCaller(minimal_proxy_app(port), "httptools", request, server_header=True),
        "gatekeeper, uvicorn's protocol": StackCaller(
            gatekeeper_app(issuer, port), "httptools", request, server_header=True
        ),
        "gatekeeper": StackCaller(
            gatekeeper_app(issuer, port), GatewayHttpProtocol, request, server_header=True
        ),
    }


async def check(variants: dict[str, StackCaller]) -> None:
    """Each variant answers 200 with the upstream's body; gatekeeper's upstream request carries
    the verified subject (so the timed requests are allowed, cached decisions)."""
    for name, caller in variants.items():
        await caller.batch(1)
        head, _, body = caller.last.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200 ") or body != _BODY:
            raise SystemExit(f"{name} did not relay the upstream's answer: {head[:40]!r}")
        if name.startswith("gatekeeper") and b"x-auth-subject: client-123" not in CannedUpstream.heads[0]:
            raise SystemExit("gatekeeper's upstream request lacks the verified identity")


async def timed(variants: dict[str, StackCaller], rounds: int, requests: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for caller in variants.values():
        await caller.batch(max(requests // 10, 50))  # warm up: pools, memos, metric children
    for _ in range(rounds):
        for name, caller in variants.items():
            gc_was_on = gc.isenabled()
            gc.disable()  # as timeit does: a collection in one batch is noise
            try:
                samples[name].append(await caller.batch(requests))
            finally:
                if gc_was_on:
                    gc.enable()
    return samples


def callgrind_table(
    loop: asyncio.AbstractEventLoop, variants: dict[str, StackCaller], requests: int, out: str
) -> str:
    """Instructions per request of each variant; the first dump (no requests) is what the two
    ``callgrind_control`` calls cost, taken off every count."""
    if not under_callgrind():
        raise SystemExit("--callgrind: run under valgrind --tool=callgrind --callgrind-out-file=OUT")
    overhead = callgrind_count(out, 1, lambda: None)
    counts = {}
    for dump, (name, caller) in enumerate(variants.items(), start=2):
        loop.run_until_complete(caller.batch(50))
        work = lambda: loop.run_until_complete(caller.batch(requests))  # noqa: B023, E731
        counts[name] = (callgrind_count(out, dump, work) - overhead) / requests
    floor = counts["floor"]
    rows = [[name, f"{count:,.0f}", f"{count - floor:+,.0f}"] for name, count in counts.items()]
    return "\n".join(
        [
            f"## Instructions per proxied request (callgrind, {requests:,} requests per variant)",
            "",
            table(["variant", "instructions/request", "vs floor"], rows),
            "",
            f"floor / gatekeeper: {floor / counts['gatekeeper']:.3f}x",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds x 100 requests")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=3_000, help="requests per variant per round")
    parser.add_argument("--callgrind", metavar="OUT", help="count instructions (see the module doc)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.requests = 2, 100

    issuer = DevIssuer(ISSUER, algorithms=("RS256", "ES256"), audience="api")
    token = realistic_token(issuer, "RS256")
    loop = asyncio.new_event_loop()
    try:
        variants = loop.run_until_complete(callers(issuer, token))
        loop.run_until_complete(check(variants))
        if args.callgrind:
            print(callgrind_table(loop, variants, args.requests, args.callgrind))
            return 0
        samples = loop.run_until_complete(timed(variants, args.rounds, args.requests))
    finally:
        loop.close()
    medians = {name: statistics.median(values) for name, values in samples.items()}
    rows = [
        [
            name,
            f"{medians[name]:.1f}",
            f"{min(samples[name]):.1f}",
            f"{medians[name] - medians['floor']:+.1f}",
        ]
        for name in samples
    ]
    print(
        f"## In-process proxied GET {ORIGINAL_URI} through HttpToolsProtocol: {args.rounds} interleaved"
        f" rounds x {args.requests:,} requests (token {len(token)} chars, Python {sys.version.split()[0]})\n"
    )
    print(table(["variant", "median us/request", "best us", "vs floor us"], rows))
    print(f"\nfloor / gatekeeper: {medians['floor'] / medians['gatekeeper']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
