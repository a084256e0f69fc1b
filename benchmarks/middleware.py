"""Middleware benchmark: gatekeeper's cost per request, in process and under uvicorn + wrk.

In process (no server, no wrk needed): one ASGI call per request with a scope built as uvicorn
builds it (a new dict and new header bytes per request, the headers httpx sends plus the
token), into a no-op app, and the same app behind ``GatekeeperMiddleware``: the difference is
what the middleware adds per request, with the token in its cache (the hot path) and with no
cache (every request verifies the RS256 signature). Time is this thread's CPU time, so being
preempted by other processes does not count; rounds alternate bare and middleware calls and
the table gives medians of the per-round differences. A calibration row gives the cost of the
decision's fast path alone called from a Python function (``Gate.probe``: the header scan, the
remembered value, the cache entry's checks; with the C extension the middleware calls it from
C, in ``gatekeeper._speedups.Dispatch``, so it is not a part of the first row), and a
last row the middleware in front of the Starlette app served below (vs that app alone), where
the CPU caches no longer hold its code and data from one request to the next.

Under load, the same endpoint (``GET /whoami``, a small JSON with the token's subject; the bare
app answers a constant subject) is served three ways, each by its own ``uvicorn --workers 1``
subprocess:

- ``bare``: the app alone, no authentication;
- ``gatekeeper``: ``GatekeeperMiddleware`` with a ``Verifier`` fetching keys from ``jwks_url``
  (measured warm: the token is already in the verified-token cache);
- ``pyjwt``: what users write today, a pure-ASGI middleware calling
  ``jwt.PyJWKClient(jwks_url).get_signing_key_from_jwt()`` and ``jwt.decode()`` on every request
  (``PyJWKClient`` caches the JWK set, as it does by default).

on each uvicorn stack: the default one (asyncio + h11) and the fast one (uvloop + httptools,
where installed; skipped with a note otherwise). The JWKS comes from a real
:class:`gatekeeper.devserver.IssuerServer` on 127.0.0.1 and the token is a real RS256 access
token minted by its ``DevIssuer`` (it is never printed). Each server is pinned to one CPU and
wrk to another, so they do not compete. Before measuring, every server must answer 200 with
the token, and the two authenticating ones 401 without it or with a forged signature. All
servers are then loaded with wrk in rotation (stack by stack, variant by variant) for
``--rounds`` rounds (each run preceded by a short warm-up), and the tables give the medians
across rounds of requests/s and p50/p99 latency, and the ratios per stack.

Run (needs wrk: ``apt-get install wrk``; PyJWT: ``pip install -e '.[bench]'``)::

    .venv/bin/python benchmarks/middleware.py              # 3 rounds of 10 s per run (~5 min)
    .venv/bin/python benchmarks/middleware.py --quick      # smoke run, 2 s per run
    .venv/bin/python benchmarks/middleware.py --in-process-only   # no servers, no wrk (~20 s)
    .venv/bin/python benchmarks/middleware.py --rounds 5 --duration 20 --connections 64
    .venv/bin/python benchmarks/middleware.py --nice -10   # as root, on a busy shared machine

Each wrk run also reports the server's CPU time per request and how much of the run it spent on
the CPU: below 90% other processes were competing, and req/s says more about them than about
the app (``--nice -10`` gives the server and wrk precedence over other processes of this
machine, not over a busy virtualisation host).

Targets (from the issues): the middleware adds at most 1.0 µs per request with a cached token
(in process); gatekeeper serves at least 0.97x the bare app's requests/s on each stack and at
least 1.8x the PyJWT middleware's. Each is marked PASS or MISS; a MISS does not change the exit
status unless ``--strict`` is given (exit 3). Exit 2: wrk is not installed; exit 1: a server
failed to start, answered wrongly, or returned non-2xx responses under load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import http.client
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jwt
from _common import BenchError, median, realistic_token, table, wrk_counts, wrk_latency_ms
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, SimpleUser
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gatekeeper.decision import SPEEDUPS
from gatekeeper.devserver import IssuerServer
from gatekeeper.middleware import GatekeeperMiddleware
from gatekeeper.verifier import Verifier

BENCH_DIR = Path(__file__).resolve().parent
PATH = "/whoami"
AUDIENCE = "api"
BARE_SUBJECT = "client-123"  # what DevIssuer.mint() puts in ``sub`` by default, so bodies match
INSTALL_WRK = "apt-get install wrk"
INSTALL_FAST = "pip install 'uvicorn[standard]'"
TARGET_VS_BARE = 0.97
TARGET_VS_PYJWT = 1.8
TARGET_ADDED_US = 1.0  # in process, cached token
STARVED_BELOW = 0.9  # a saturated server is on its CPU nearly all the time

# The server subprocesses get their configuration from the environment (uvicorn --factory).
ENV_ISSUER = "GATEKEEPER_BENCH_ISSUER"
ENV_JWKS_URL = "GATEKEEPER_BENCH_JWKS_URL"

# Runs a command on one CPU (-1: any) at a niceness: ``python -c LAUNCH cpu nice cmd...``. Affinity and
# niceness survive exec and are inherited by every thread the command starts (no need for taskset).
LAUNCH = """import os, sys
cpu, nice = int(sys.argv[1]), int(sys.argv[2])
if cpu >= 0:
    os.sched_setaffinity(0, {cpu})
if nice:
    os.nice(nice)
os.execvp(sys.argv[3], sys.argv[3:])
"""


# -- the app, served in the uvicorn subprocesses ------------------------------------------------


async def whoami(request: Request) -> JSONResponse:
    """The endpoint of all three variants: who is calling (a constant for the bare app)."""
    user = request.scope.get("user")
    return JSONResponse({"sub": user.display_name if user is not None else BARE_SUBJECT})


def _app(middleware: Sequence[Middleware] = ()) -> Starlette:
    return Starlette(routes=[Route(PATH, whoami)], middleware=list(middleware))


class PyJWTMiddleware:
    """The usual hand-written middleware: PyJWKClient for the keys, ``jwt.decode`` per request.

    The claims end up where Starlette looks for them (``request.user``, ``request.auth``).
    """

    def __init__(self, app: ASGIApp, *, jwks_url: str, issuer: str, audience: str) -> None:
        self.app = app
        self.jwks_client = jwt.PyJWKClient(jwks_url)
        self.issuer = issuer
        self.audience = audience

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            await self._unauthorized(scope, receive, send)
            return
        try:
            signing_key = self.jwks_client.get_signing_key_from_jwt(token)
            claims = jwt.decode(
                token, signing_key.key, algorithms=["RS256"], audience=self.audience, issuer=self.issuer
            )
        except jwt.PyJWTError:
            await self._unauthorized(scope, receive, send)
            return
        scope["user"] = SimpleUser(claims["sub"])
        scope["auth"] = AuthCredentials(claims.get("scope", "").split())
        scope["claims"] = claims
        await self.app(scope, receive, send)

    @staticmethod
    async def _unauthorized(scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse({"detail": "Unauthorized"}, 401, headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


def bare_app() -> ASGIApp:
    """uvicorn factory: the app alone."""
    return _app()


def gatekeeper_app() -> ASGIApp:
    """uvicorn factory: the app behind gatekeeper (keys prefetched at lifespan startup)."""
    verifier = Verifier(os.environ[ENV_ISSUER], jwks_url=os.environ[ENV_JWKS_URL], audience=AUDIENCE)
    return _app([Middleware(GatekeeperMiddleware, verifier=verifier)])


def pyjwt_app() -> ASGIApp:
    """uvicorn factory: the app behind the PyJWT-per-request middleware."""
    options = {"jwks_url": os.environ[ENV_JWKS_URL], "issuer": os.environ[ENV_ISSUER], "audience": AUDIENCE}
    return _app([Middleware(PyJWTMiddleware, **options)])


# -- in process: what the middleware adds to one ASGI call ----------------------------------------

#: What httpx sends besides the token (uvicorn passes them on lower-cased, in this order).
CLIENT_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"host", b"127.0.0.1:8000"),
    (b"accept", b"*/*"),
    (b"accept-encoding", b"gzip, deflate"),
    (b"connection", b"keep-alive"),
    (b"user-agent", b"python-httpx/0.28.1"),
)


async def noop_app(scope: Scope, receive: Receive, send: Send) -> None:
    """The inner app of the in-process measurement: it does nothing, so all that differs
    between the variants is what sits in front of it."""


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _send(message: Message) -> None:
    return None


def asgi_scope(authorization: bytes) -> Scope:
    """An http scope as uvicorn builds one per request: a new dict, and new header bytes (a
    server parses them from the socket, so no hash of them is cached yet)."""
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
        "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000), "scheme": "http",
        "method": "GET", "root_path": "", "path": PATH, "raw_path": PATH.encode(), "query_string": b"",
        "headers": [*CLIENT_HEADERS, (b"authorization", authorization[:-1] + authorization[-1:])],
        "state": {},
    }  # fmt: skip


ASGICall = Callable[[Scope, Receive, Send], Awaitable[None]]


async def _ns_per_request(app: ASGICall, authorization: bytes, n: int) -> float:
    start = time.thread_time_ns()
    for _ in range(n):
        await app(asgi_scope(authorization), _receive, _send)
    return (time.thread_time_ns() - start) / n


@dataclass(frozen=True)
class InProcessRow:
    name: str
    bare_ns: float
    added_ns: float
    target_us: float | None = None


#: name -> (the app measured, the bare app it is compared with, requests per round)
InProcessVariants = dict[str, tuple[ASGICall, ASGICall, int]]


async def _in_process(variants: InProcessVariants, authorization: bytes, rounds: int) -> list[InProcessRow]:
    for app, bare_app, _ in variants.values():  # warm-up: the first call verifies, and fills the caches
        await _ns_per_request(app, authorization, 5)
        await _ns_per_request(bare_app, authorization, 5)
    added: dict[str, list[float]] = {name: [] for name in variants}
    bare: dict[str, list[float]] = {name: [] for name in variants}
    enabled = gc.isenabled()
    gc.disable()  # as timeit does: a collection would land in one variant's round at random
    try:
        for round_no in range(rounds):
            for name, (app, bare_app, n) in variants.items():
                # Bare and middleware back to back, alternating which goes first.
                if round_no % 2:
                    base = await _ns_per_request(bare_app, authorization, n)
                    cost = await _ns_per_request(app, authorization, n)
                else:
                    cost = await _ns_per_request(app, authorization, n)
                    base = await _ns_per_request(bare_app, authorization, n)
                added[name].append(cost - base)
                bare[name].append(base)
            gc.collect()  # between rounds, outside the timed calls
    finally:
        if enabled:
            gc.enable()
    return [InProcessRow(name, median(bare[name]), median(added[name])) for name in variants]


def measure_in_process(
    issuer: str, jwks: Mapping[str, Any], token: str, rounds: int, per_round: int
) -> list[InProcessRow]:
    """Median ns per request the middleware adds to a no-op app, cached token and no cache."""
    cached = Verifier(issuer, jwks=jwks, audience=AUDIENCE)
    uncached = Verifier(issuer, jwks=jwks, audience=AUDIENCE, cache_size=0)
    middleware = GatekeeperMiddleware(noop_app, verifier=cached)
    probe, rule = middleware.gate.probe, middleware.rules.default

    def probe_only(scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        probe(rule, scope["headers"], b"")  # the decision's part of the hot path, for scale
        return noop_app(scope, receive, send)

    variants: InProcessVariants = {
        "gatekeeper, cached token": (middleware, noop_app, per_round),
        "gatekeeper, no cache (RS256 verified)": (
            GatekeeperMiddleware(noop_app, verifier=uncached),
            noop_app,
            max(1, per_round // 50),
        ),
        "Gate.probe alone, from a Python function": (probe_only, noop_app, per_round),
        # The same middleware in front of the benchmark's Starlette app: its code and data no
        # longer stay in the CPU caches between requests, as in a server.
        "in front of the Starlette app, cached token": (
            _app([Middleware(GatekeeperMiddleware, verifier=cached)]),
            _app(),
            max(1, per_round // 5),
        ),
    }
    rows = asyncio.run(_in_process(variants, f"Bearer {token}".encode(), rounds))
    return [replace(rows[0], target_us=TARGET_ADDED_US), *rows[1:]]


def report_in_process(rows: Sequence[InProcessRow]) -> bool:
    """Print the in-process table; whether a target was missed."""
    missed = False
    lines = []
    for row in rows:
        target = result = ""
        if row.target_us is not None:
            ok = row.added_ns / 1000 <= row.target_us
            missed = missed or not ok
            target = f"<= {row.target_us:.2f} us"
            result = f"{'PASS' if ok else 'MISS'} ({row.added_ns / 1000 / row.target_us:.2f}x the target)"
        lines.append([row.name, f"{row.bare_ns / 1000:.2f}", f"{row.added_ns / 1000:.2f}", target, result])
    headers = ["in process, per request", "bare app us", "added us (median)", "target", "result"]
    print(table(headers, lines))
    return missed


# -- the driver ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    name: str
    factory: str
    authenticates: bool


VARIANTS = (
    Variant("bare", "bare_app", authenticates=False),
    Variant("gatekeeper", "gatekeeper_app", authenticates=True),
    Variant("pyjwt", "pyjwt_app", authenticates=True),
)


@dataclass(frozen=True)
class WrkResult:
    requests: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    #: The server's CPU time (user + system) per request during the run, when /proc tells it:
    #: the cost per request, unaffected by other processes taking the CPU away from the server.
    server_cpu_us: float | None = None
    #: The share of the run's wall time the server spent on the CPU (100%: it was never starved).
    server_busy: float | None = None


@dataclass(frozen=True)
class Placement:
    """Where a process runs: on one CPU (None: wherever the scheduler likes) and at which niceness."""

    cpu: int | None
    nice: int = 0

    def command(self, cmd: Sequence[str]) -> list[str]:
        if self.cpu is None and not self.nice:
            return list(cmd)
        cpu = -1 if self.cpu is None else self.cpu
        return [sys.executable, "-c", LAUNCH, str(cpu), str(self.nice), *cmd]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Stack:
    """A uvicorn server stack: its event loop and HTTP implementation."""

    loop: str
    http: str

    @property
    def name(self) -> str:
        return f"{self.loop}+{self.http}"

    def available(self) -> bool:
        return all(importlib.util.find_spec(module) is not None for module in (self.loop, self.http))


#: uvicorn's default stack, and its fast one (the ``uvicorn[standard]`` extras).
STACKS = (Stack("asyncio", "h11"), Stack("uvloop", "httptools"))


def request(port: int, token: str | None) -> tuple[int, bytes]:
    """One GET of the endpoint; the token, if any, as a bearer Authorization header."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        conn.request("GET", PATH, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class Server:
    """One variant served by ``uvicorn --workers 1`` in a subprocess placed at ``where``."""

    def __init__(
        self, variant: Variant, where: Placement, env: dict[str, str], stack: Stack, logs: Path
    ) -> None:
        self.variant = variant
        self.stack = stack
        self.port = free_port()
        self.log = logs / f"{stack.name}-{variant.name}.log"
        cmd = [
            sys.executable, "-m", "uvicorn", f"middleware:{variant.factory}", "--factory",
            "--app-dir", str(BENCH_DIR), "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", "1", "--log-level", "warning", "--no-access-log",
            "--loop", stack.loop, "--http", stack.http,
        ]  # fmt: skip
        with self.log.open("wb") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                where.command(cmd), env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )

    @property
    def label(self) -> str:
        return f"{self.variant.name} on {self.stack.name}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}"

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.label}: uvicorn exited ({self.proc.returncode})\n{self.output()}")
            try:
                request(self.port, None)
                return
            except OSError:
                time.sleep(0.05)
        raise BenchError(f"{self.label}: uvicorn did not answer within {timeout:.0f} s\n{self.output()}")

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the server process so far (all its threads), from /proc."""
        try:
            stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        except OSError:
            return None
        fields = stat.rpartition(")")[2].split()  # after "pid (comm)": state is fields[0]
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def output(self) -> str:
        """The tail of uvicorn's output (warnings and errors only: no access log)."""
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def check_correctness(server: Server, token: str, forged: str) -> None:
    """200 with the token (and the right subject); 401 without it or forged, where authenticating."""
    name = server.label
    status, body = request(server.port, token)
    if status != 200:
        raise BenchError(f"{name}: expected 200 with the token, got {status}")
    if json.loads(body).get("sub") != BARE_SUBJECT:
        raise BenchError(f"{name}: unexpected body with the token: {body[:200]!r}")
    if server.variant.authenticates:
        for what, credential in (("without a token", None), ("with a forged signature", forged)):
            status, _ = request(server.port, credential)
            if status != 401:
                raise BenchError(f"{name}: expected 401 {what}, got {status}")


def forge(token: str) -> str:
    """The token with a different (still well-formed) signature."""
    head, _, signature = token.rpartition(".")
    return f"{head}.{'A' if signature[0] != 'A' else 'B'}{signature[1:]}"


def parse_wrk(output: str) -> WrkResult:
    """requests/s, p50/p99 (ms), non-2xx responses and socket errors from ``wrk --latency``."""
    requests, rate, non_2xx = wrk_counts(output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return WrkResult(
        requests=requests,
        requests_per_s=rate,
        p50_ms=wrk_latency_ms(output, "50"),
        p99_ms=wrk_latency_ms(output, "99"),
        non_2xx=non_2xx,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
    )


def run_wrk(url: str, script: Path, duration: int, args: argparse.Namespace, where: Placement) -> WrkResult:
    cmd = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{duration}s", "--latency"]
    cmd += ["-s", str(script), url]  # the token is in the Lua script, not on the command line
    done = subprocess.run(
        where.command(cmd), capture_output=True, text=True, timeout=duration + 60, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return parse_wrk(done.stdout)


def measure(server: Server, script: Path, args: argparse.Namespace, where: Placement) -> WrkResult:
    """One measured wrk run against ``server``, with the server's CPU time over the run."""
    before, start = server.cpu_seconds(), time.monotonic()
    result = run_wrk(server.url, script, args.duration, args, where)
    after, wall = server.cpu_seconds(), time.monotonic() - start
    if before is None or after is None or not result.requests:
        return result
    used = after - before
    return replace(result, server_cpu_us=used * 1e6 / result.requests, server_busy=used / wall)


def plan_cpus() -> tuple[int | None, int | None, str]:
    """(server CPU, wrk CPU, description): two different CPUs when at least two are available."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return None, None, "not pinned (no sched_setaffinity on this platform)"
    if len(cpus) < 2:
        return None, None, f"not pinned (only CPU {cpus[0]} available): server and wrk share it"
    return cpus[0], cpus[1], f"server on CPU {cpus[0]}, wrk (and this driver) on CPU {cpus[1]}"


def version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def wrk_version() -> str:
    done = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    first = (done.stdout or done.stderr).splitlines()
    return first[0].split(" Copyright")[0] if first else "?"


@contextlib.contextmanager
def servers(
    where: Placement, env: dict[str, str], stacks: Sequence[Stack], logs: Path
) -> Iterator[list[Server]]:
    """Every variant on every stack started, answering, and stopped on the way out."""
    started: list[Server] = []
    try:
        for stack in stacks:
            for variant in VARIANTS:
                started.append(Server(variant, where, env, stack, logs))
        for server in started:
            server.wait_ready()
        yield started
    finally:
        for server in started:
            server.stop()


def fmt_ms(ms: float) -> str:
    return f"{ms:.2f}" if ms < 10 else f"{ms:.1f}"


def _cpu_median(runs: Sequence[WrkResult]) -> float | None:
    costs = [r.server_cpu_us for r in runs if r.server_cpu_us is not None]
    return median(costs) if len(costs) == len(runs) else None


def report_stack(stack: Stack, results: dict[str, list[WrkResult]]) -> bool:
    """Print one stack's medians table and its ratios against the targets; whether one missed."""
    rows = []
    rate: dict[str, float] = {}
    cpu: dict[str, float | None] = {}
    for variant in VARIANTS:
        runs = results[variant.name]
        rate[variant.name] = median(r.requests_per_s for r in runs)
        cpu[variant.name] = _cpu_median(runs)
        cost = cpu[variant.name]
        rows.append(
            [
                variant.name,
                f"{rate[variant.name]:,.0f}",
                fmt_ms(median(r.p50_ms for r in runs)),
                fmt_ms(median(r.p99_ms for r in runs)),
                " / ".join(f"{r.requests_per_s:,.0f}" for r in runs),
                f"{cost:,.0f}" if cost is not None else "n/a",
                str(sum(r.non_2xx + r.socket_errors for r in runs)),
            ]
        )
    print(f"uvicorn {stack.name}:")
    headers = [
        f"variant ({stack.name})",
        "req/s",
        "p50 ms",
        "p99 ms",
        "req/s by round",
        "server CPU us/req",
        "errors",
    ]
    print(table(headers, rows))
    print()
    ratio_rows = []
    missed = False
    for other, target in (("bare", TARGET_VS_BARE), ("pyjwt", TARGET_VS_PYJWT)):
        value = rate["gatekeeper"] / rate[other]
        by_round = [
            gk.requests_per_s / ref.requests_per_s
            for gk, ref in zip(results["gatekeeper"], results[other], strict=True)
        ]
        gk_cost, other_cost = cpu["gatekeeper"], cpu[other]
        cpu_ratio = f"{other_cost / gk_cost:.2f}x" if gk_cost and other_cost else "n/a"
        missed = missed or value < target
        ratio_rows.append(
            [
                f"gatekeeper / {other}",
                f"{value:.2f}x",
                f">= {target:.2f}x",
                "PASS" if value >= target else "MISS",
                " / ".join(f"{r:.2f}x" for r in by_round),
                cpu_ratio,
            ]
        )
    headers = [f"req/s ratio ({stack.name})", "value", "target", "result", "by round", "by server CPU/req"]
    print(table(headers, ratio_rows))
    print()
    return missed


def note_starved(runs: Sequence[WrkResult]) -> None:
    starved = sum(r.server_busy is not None and r.server_busy < STARVED_BELOW for r in runs)
    if starved:
        print(
            f"note: in {starved} of {len(runs)} runs the server was on the CPU less than "
            f"{STARVED_BELOW:.0%} of the time: other processes took the CPU from it or from wrk, so "
            "req/s is unreliable there (server CPU/req less so). Rerun on a quieter machine or with "
            "more --rounds (--nice -10, as root, helps when the competition is inside this machine)."
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per variant and round")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of unmeasured load before each run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all servers in rotation")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument(
        "--in-process-rounds", type=int, default=200, help="rounds of the in-process measurement"
    )
    parser.add_argument(
        "--in-process-requests", type=int, default=1000, help="requests per in-process round (cached)"
    )
    parser.add_argument("--in-process-only", action="store_true", help="no servers and no wrk")
    parser.add_argument(
        "--stack",
        action="append",
        choices=[stack.name for stack in STACKS],
        help="uvicorn stack(s) to load (default: both, the fast one where installed)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 2 s per run, 1 s warm-up, fewer rounds in process"
    )
    parser.add_argument("--strict", action="store_true", help="exit 3 when a target is missed")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness of the server and wrk; as root, e.g. -10 puts them ahead of other processes on a "
        "busy shared machine (at those processes' expense)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = 2, 1
        args.in_process_rounds = min(args.in_process_rounds, 20)
        args.in_process_requests = min(args.in_process_requests, 200)
    numbers = (args.duration, args.rounds, args.connections, args.threads, args.in_process_rounds)
    if min(*numbers, args.in_process_requests) < 1 or args.warmup < 0:
        parser.error("--duration, --rounds, --connections, --threads and --in-process-* must be >= 1")
    if args.connections < args.threads:
        parser.error("wrk needs at least one connection per thread")
    if args.nice < 0 and os.geteuid() != 0:
        parser.error("a negative --nice needs root")
    return args


def load(
    stacks: Sequence[Stack], token: str, env: dict[str, str], args: argparse.Namespace, tmp: Path
) -> bool:
    """The wrk comparison on every stack, interleaved; print its tables; whether a target missed."""
    server_cpu, wrk_cpu, pinning = plan_cpus()
    if wrk_cpu is not None:
        os.sched_setaffinity(0, {wrk_cpu})  # this driver and the JWKS server thread stay off the server CPU
    server_at, wrk_at = Placement(server_cpu, args.nice), Placement(wrk_cpu, args.nice)
    if args.nice:
        pinning += f"; server and wrk at nice {args.nice}"
    script = tmp / "auth.lua"
    script.touch(mode=0o600)
    script.write_text(f'wrk.method = "GET"\nwrk.headers["Authorization"] = "Bearer {token}"\n')
    print(
        f"under load: uvicorn {version('uvicorn')} (1 worker) on {', '.join(s.name for s in stacks)}, "
        f"starlette {version('starlette')}, PyJWT {version('PyJWT')}, {wrk_version()}"
    )
    print(
        f"{pinning}; wrk -t{args.threads} -c{args.connections}, {args.duration} s per run after "
        f"{args.warmup} s warm-up, {args.rounds} round(s) of every stack and variant in rotation"
    )
    print(flush=True)
    results: dict[tuple[str, str], list[WrkResult]] = {}
    with servers(server_at, env, stacks, tmp) as started:
        for server in started:
            check_correctness(server, token, forge(token))
        for round_no in range(1, args.rounds + 1):
            for server in started:
                if args.warmup:
                    run_wrk(server.url, script, args.warmup, args, wrk_at)
                result = measure(server, script, args, wrk_at)
                if result.non_2xx:
                    raise BenchError(f"{server.label}: {result.non_2xx} non-2xx responses under load")
                results.setdefault((server.stack.name, server.variant.name), []).append(result)
                cpu = ""
                if result.server_cpu_us is not None and result.server_busy is not None:
                    cpu = f"  server CPU {result.server_cpu_us:,.0f} us/req, busy {result.server_busy:.0%}"
                print(
                    f"round {round_no}/{args.rounds} {server.stack.name:<17} {server.variant.name:<10} "
                    f"{result.requests_per_s:>9,.0f} req/s  p50 {fmt_ms(result.p50_ms)} ms  "
                    f"p99 {fmt_ms(result.p99_ms)} ms{cpu}",
                    flush=True,
                )
    print()
    missed = False
    for stack in stacks:
        by_variant = {variant.name: results[(stack.name, variant.name)] for variant in VARIANTS}
        missed = report_stack(stack, by_variant) or missed
    note_starved([r for runs in results.values() for r in runs])
    return missed


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.in_process_only and shutil.which("wrk") is None:
        print(
            f"wrk is not installed. Install it (Debian/Ubuntu, as root) with:\n    {INSTALL_WRK}\n"
            "(after apt-get update on a fresh machine; --in-process-only runs without it)",
            file=sys.stderr,
        )
        return 2
    wanted = [stack for stack in STACKS if args.stack is None or stack.name in args.stack]
    stacks = [stack for stack in wanted if stack.available()]

    with IssuerServer() as issuer_server, tempfile.TemporaryDirectory(prefix="gk-bench-") as tmp:
        token = realistic_token(issuer_server.issuer, "RS256", expires_in=3600)
        env = {**os.environ, ENV_ISSUER: issuer_server.url, ENV_JWKS_URL: issuer_server.jwks_url}
        print("gatekeeper middleware benchmark: bare vs gatekeeper (warm cache) vs PyJWT per request")
        print(
            f"python {platform.python_version()}; GET {PATH} with an RS256 token ({len(token)} chars), "
            f"{len(CLIENT_HEADERS) + 1} request headers in process; the middleware's hot path in "
            f"{'C (gatekeeper._speedups)' if SPEEDUPS else 'Python (gatekeeper._speedups not built)'}"
        )
        print()
        print(
            f"in process: {args.in_process_rounds} rounds of {args.in_process_requests} ASGI calls per "
            "variant (no cache: 1/50 of that), thread CPU time, bare and middleware back to back",
            flush=True,
        )
        rows = measure_in_process(
            issuer_server.url,
            issuer_server.issuer.jwks(),
            token,
            args.in_process_rounds,
            args.in_process_requests,
        )
        missed = report_in_process(rows)
        print()
        if not args.in_process_only:
            for stack in wanted:
                if stack not in stacks:
                    print(f"note: uvicorn stack {stack.name} is not installed: skipped ({INSTALL_FAST})")
            if stacks:
                missed = load(stacks, token, env, args, Path(tmp)) or missed
    return 3 if args.strict and missed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
