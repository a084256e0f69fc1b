"""Gateway benchmark: ``gatekeeper serve`` as a decision endpoint and as a reverse proxy, with wrk.

Everything runs on 127.0.0.1, started by this script and stopped at the end:

- a JWKS server (:class:`gatekeeper.devserver.IssuerServer`, in this process) whose issuer mints
  a realistic RS256 access token (~825 characters; never printed, it travels in wrk's Lua script);
- a small upstream (a pure ASGI app under uvicorn: a 16-byte JSON answer; streams for the
  memory legs), once per server stack;
- a bare Starlette app whose one endpoint answers 200 with an empty body, like an *allow*;
- ``gatekeeper serve`` (forward-auth on ``/auth``, the reverse proxy for every other path), once
  per server stack, from a TOML file this script writes (access log off, metrics on);
- nginx (when installed) with the benchmark's own configuration, written from :data:`NGINX_CONF`:
  one server with ``auth_request`` to gatekeeper (as ``examples/gateway/nginx.conf`` does it) in
  front of the upstream, one plain ``proxy_pass`` to the upstream.

Server stacks: ``asyncio + h11`` (uvicorn's pure-Python stack), ``uvloop + httptools`` (what
``gatekeeper serve``'s default ``loop = "auto"``, ``http = "auto"`` picks when both are installed,
as they are with ``uvicorn[standard]``) and ``asyncio + httptools`` (what the same defaults pick
as shipped: the ``server`` extra brings httptools, not uvloop; the reverse proxy leg only). The
upstream runs on the same stack as the gatekeeper in front of it.

Legs (rounds interleaved: every variant runs once per round; the tables give medians across
rounds). The two sides of each ratio run back to back in every round, in turns (A then B, then B
then A next round), and a ratio is the median of the per-round ratios: on a shared machine whose
speed drifts by a fifth within minutes, a pair measured seconds apart sees the same machine, and
the alternating order cancels what drifts within a pair. The ratio of the two medians is printed
beside it.

1. decision endpoint (cached token) vs the bare Starlette endpoint, same stack: target >= 0.9x.
2. nginx + auth_request -> gatekeeper -> upstream vs nginx -> upstream: the ratio is reported.
3. gatekeeper reverse proxy -> upstream vs the upstream directly: target >= 0.45x on the
   default stack as shipped (asyncio + httptools); reported on asyncio + h11 and
   uvloop + httptools too, with nginx ``proxy_pass`` as the ceiling and a minimal ASGI proxy
   (:func:`minimal_proxy_app`: gatekeeper's upstream client, nothing else; sent the same
   request as the gatekeeper proxy, its bearer token included) as the floor of
   any ASGI proxy served by uvicorn's own protocol on the default stack. ``gatekeeper serve``
   serves httptools with its own protocol (:mod:`gatekeeper.gateway.http_protocol`: a small
   response's head and body in one write, one keep-alive timer per connection rather than one
   per request), so its cost can go below that floor's; the upstream and
   the bare Starlette app run on uvicorn's protocols, as a service behind it would.
4. memory: RSS of a fresh ``gatekeeper serve`` (cache_size 10,000) after ``--requests``
   decisions cycling through ``--tokens`` distinct ES256 tokens (every one a cache miss once the
   cycle is longer than the cache), against the RSS once the cache is full;
   and the peak-RSS growth while ``--stream-mib`` MiB are uploaded and downloaded through the proxy.

Run (needs wrk; nginx for leg 2 and the ceiling, skipped with a note without it)::

    .venv/bin/python benchmarks/gateway.py                 # 5 rounds x 6 s, 1M requests/100k tokens
    .venv/bin/python benchmarks/gateway.py --quick         # smoke run: tiny sizes, 1 s per variant
    .venv/bin/python benchmarks/gateway.py --requests 200000 --tokens 100000 --stream-mib 1024
    .venv/bin/python benchmarks/gateway.py --decision-only # leg 1 only (benchmarks/gateway_inprocess.py
                                                           # measures the same endpoint in process)
    .venv/bin/python benchmarks/gateway.py --nice -10      # as root, on a busy shared machine
    .venv/bin/python benchmarks/gateway.py --proxy-only    # leg 3 only: reverse proxy vs upstream

The machine this was written on has 2 CPUs shared with other work: no process is pinned (three
processes take part in a proxied request), and each table row says how busy the servers were.
Targets are marked PASS/MISS; a MISS does not change the exit status unless ``--strict`` (exit 3).
Exit 2: wrk is not installed; exit 1: a server failed to start or answered wrongly.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from _common import BenchError, fmt_bytes, realistic_token, table, wrk_counts, wrk_latency_ms

from gatekeeper.devserver import IssuerServer
from gatekeeper.issuer import DevIssuer

MiB = 1024 * 1024
STACKS = {
    "h11": ("asyncio", "h11"),
    "httptools": ("uvloop", "httptools"),
    "asyncio-httptools": ("asyncio", "httptools"),
}
STACK_NAMES = {
    "h11": "asyncio + h11",
    "httptools": "uvloop + httptools",
    "asyncio-httptools": "asyncio + httptools",
}
# The decision endpoint's leg runs on these two; the reverse proxy's on every stack.
DECISION_STACKS = ("h11", "httptools")
# What `gatekeeper serve` runs on with its defaults (loop = "auto", http = "auto") when installed
# as shipped, `pip install gatekeeper-jwt[server]`: that extra brings httptools but not uvloop
# (uvicorn's "standard" extra does), so uvicorn's auto picks the asyncio loop and httptools.
# The proxy's target is judged on this stack.
DEFAULT_STACK = "asyncio-httptools"
ORIGINAL_URI = "/api/items/42"


# -- the apps served by subprocesses (``gateway.py --serve ROLE``) -------------------------------

_OK = b'{"ok":true,"n":1}'  # 16 bytes of JSON
_OK_HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"16")]


async def upstream_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The upstream: a small JSON answer; ``/download?size=N`` streams N bytes; request bodies
    are read and dropped (answered with their size)."""
    if scope["type"] != "http":
        return
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    if scope["path"].endswith("/download"):
        total = int(parse_qs(scope["query_string"].decode())["size"][0])
        headers = [(b"content-type", b"application/octet-stream"), (b"content-length", str(total).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        block = b"x" * MiB
        while total > 0:
            piece = block[: min(total, MiB)]
            total -= len(piece)
            await send({"type": "http.response.body", "body": piece, "more_body": total > 0})
        return
    body = _OK if not size else json.dumps({"received": size}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def bare_app() -> Any:
    """The bare Starlette endpoint the decision endpoint is compared with: 200, empty body."""
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    async def allow(request: Any) -> Response:
        return Response(b"", 200)

    return Starlette(routes=[Route("/auth", allow)])


def minimal_proxy_app(upstream_port: int) -> Any:
    """The floor of an ASGI reverse proxy on this stack: every request forwarded as it came
    (method, path, headers) through gatekeeper's own upstream client, the response relayed
    as it came; no decision, no header rewriting, no record, served by uvicorn's own protocol.
    What this reaches against the upstream bounds what any ASGI proxy served by stock uvicorn
    can reach here."""
    from gatekeeper.gateway.upstream_pool import Timeouts, UpstreamPool

    origin = ("http", "127.0.0.1", upstream_port)
    timeouts = Timeouts()
    pools: list[UpstreamPool] = []  # made in the server's loop, at the first request

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if not pools:
            pools.append(UpstreamPool(100))
        pool = pools[0]
        method = scope["method"].encode()
        response = await pool.exchange(
            method, origin, scope["raw_path"], scope["headers"], None, None, timeouts
        )
        try:
            await send(
                {"type": "http.response.start", "status": response.status, "headers": response.headers}
            )
            while chunk := await response.read():
                more = not response.complete
                await send({"type": "http.response.body", "body": chunk, "more_body": more})
                if not more:
                    return
            await send({"type": "http.response.body", "body": b""})
        finally:
            pool.release(response)

    return app


def serve(role: str, port: int, stack: str, upstream_port: int | None = None) -> None:
    import uvicorn

    loop, http_impl = STACKS[stack]
    if role == "minimal-proxy":
        assert upstream_port is not None
        app = minimal_proxy_app(upstream_port)
    else:
        app = upstream_app if role == "upstream" else bare_app()
    uvicorn.run(
        app, host="127.0.0.1", port=port, loop=loop, http=http_impl, log_level="warning",
        access_log=False, proxy_headers=False, lifespan="off",
    )  # fmt: skip


# -- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def proc_status_kib(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise BenchError(f"no {name} in /proc/{pid}/status")


class Process:
    """A server subprocess with its output in a log file."""

    def __init__(self, name: str, cmd: Sequence[str], port: int, logs: Path, ready_path: str = "/") -> None:
        self.name = name
        self.port = port
        self.ready_port = port
        self.ready_path = ready_path
        self.log = logs / f"{name}.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(  # the child keeps its own copy of the descriptor
                list(cmd), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=logs
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited ({self.proc.returncode}):\n{self.output()}")
            try:
                status, _ = get(self.ready_port, self.ready_path)
                if status < 500:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise BenchError(f"{self.name} did not become ready within {timeout:.0f} s\n{self.output()}")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss(self) -> int:
        return proc_status_kib(self.proc.pid, "VmRSS") * 1024

    def peak_rss(self) -> int:
        return proc_status_kib(self.proc.pid, "VmHWM") * 1024

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def python_role(name: str, role: str, stack: str, logs: Path, upstream: Process | None = None) -> Process:
    port = free_port()
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--serve",
        role,
        "--port",
        str(port),
        "--stack",
        stack,
    ]
    if upstream is not None:
        cmd += ["--upstream-port", str(upstream.port)]
    return Process(name, cmd, port, logs)


CLI = "import sys; from gatekeeper.cli import main; sys.exit(main())"
GATEKEEPER_TOML = """\
error_profile = "rfc6750"

[server]
listen = "127.0.0.1:{port}"
ops_listen = "127.0.0.1:{ops_port}"
workers = 1
loop = "{loop}"
http = "{http}"
cache_size = {cache_size}

[tokens]
header = true

[[issuers]]
issuer = "{issuer}"
audience = "api"
jwks_url = "{jwks_url}"
algorithms = ["RS256", "ES256"]

[default]
access = "required"

[forward_auth]
path = "/auth"
proxy = "nginx"

[upstreams.app]
url = "{upstream}"

[proxy]
upstream = "app"
max_request_body = {max_body}

[metrics]
enabled = true

[logging]
access_log = "off"
level = "warning"
"""


def gatekeeper(
    name: str, stack: str, issuer: IssuerServer, upstream: Process, logs: Path, cache_size: int = 10_000
) -> Process:
    port, ops_port = free_port(), free_port()
    loop, http_impl = STACKS[stack]
    config = logs / f"{name}.toml"
    config.write_text(
        GATEKEEPER_TOML.format(
            port=port,
            ops_port=ops_port,
            loop=loop,
            http=http_impl,
            cache_size=cache_size,
            issuer=issuer.url,
            jwks_url=issuer.jwks_url,
            upstream=upstream.url,
            max_body=1 << 40,
        )
    )
    executable = Path(sys.executable).parent / "gatekeeper"
    launcher = [str(executable)] if executable.exists() else [sys.executable, "-c", CLI]
    cmd = [*launcher, "serve", "--config", str(config)]
    process = Process(name, cmd, port, logs, ready_path="/readyz")
    process.ready_port = ops_port
    return process


NGINX_CONF = """\
worker_processes 1;
pid nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path client_body;
    proxy_temp_path proxy;
    fastcgi_temp_path fastcgi;
    uwsgi_temp_path uwsgi;
    scgi_temp_path scgi;
    underscores_in_headers off;

    upstream gatekeeper {{ server 127.0.0.1:{gatekeeper_port}; keepalive 64; }}
    upstream app {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}

    # nginx -> auth_request to gatekeeper -> the upstream (examples/gateway/nginx.conf's shape)
    server {{
        listen 127.0.0.1:{auth_port};
        location / {{
            auth_request /_gatekeeper/auth;
            auth_request_set $gk_subject $upstream_http_x_auth_subject;
            auth_request_set $gk_scopes $upstream_http_x_auth_scopes;
            proxy_set_header X-Auth-Subject $gk_subject;
            proxy_set_header X-Auth-Scopes $gk_scopes;
            proxy_set_header Authorization "";
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://app;
        }}
        location = /_gatekeeper/auth {{
            internal;
            proxy_pass http://gatekeeper/auth;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-Method $request_method;
            proxy_set_header X-Original-URI $request_uri;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}

    # nginx -> the upstream directly (and the reverse-proxy ceiling)
    server {{
        listen 127.0.0.1:{direct_port};
        location / {{
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://app;
        }}
    }}
}}
"""


def nginx(gatekeeper_proc: Process, upstream: Process, logs: Path) -> tuple[Process, int, int] | None:
    binary = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
    if binary is None:
        return None
    auth_port, direct_port = free_port(), free_port()
    prefix = logs / "nginx"
    prefix.mkdir()
    (prefix / "nginx.conf").write_text(
        NGINX_CONF.format(
            gatekeeper_port=gatekeeper_proc.port,
            upstream_port=upstream.port,
            auth_port=auth_port,
            direct_port=direct_port,
        )
    )
    cmd = [binary, "-p", str(prefix), "-c", "nginx.conf", "-g", "daemon off;"]
    process = Process("nginx", cmd, direct_port, logs)
    return process, auth_port, direct_port


# -- wrk ----------------------------------------------------------------------------------


@dataclass
class Variant:
    """One thing wrk loads: a URL with a Lua script, and the server processes whose CPU counts."""

    key: str
    label: str
    url: str
    script: Path
    servers: list[Process]
    results: list[WrkResult] = field(default_factory=list)

    def median(self, attr: str) -> float:
        return float(statistics.median(getattr(r, attr) for r in self.results))


@dataclass(frozen=True)
class WrkResult:
    requests: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    busy: float = 0.0  # server CPU seconds per wall second over the run (all listed servers)


def parse_wrk(output: str) -> WrkResult:
    requests, rate, non_2xx = wrk_counts(output)
    return WrkResult(requests, rate, wrk_latency_ms(output, "50"), wrk_latency_ms(output, "99"), non_2xx)


def run_wrk(url: str, script: Path, duration: float, args: argparse.Namespace) -> WrkResult:
    cmd = [
        "wrk",
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 600, check=False)
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return parse_wrk(done.stdout)


def measure(variant: Variant, args: argparse.Namespace) -> None:
    run_wrk(variant.url, variant.script, args.warmup, args)
    before = sum(s.cpu_seconds() for s in variant.servers)
    start = time.monotonic()
    result = run_wrk(variant.url, variant.script, args.duration, args)
    busy = (sum(s.cpu_seconds() for s in variant.servers) - before) / (time.monotonic() - start)
    if result.non_2xx:
        raise BenchError(f"{variant.label}: {result.non_2xx} non-2xx responses under load")
    variant.results.append(WrkResult(**{**result.__dict__, "busy": busy}))


def lua_headers(path: Path, headers: dict[str, str]) -> Path:
    lines = [f'wrk.headers["{name}"] = "{value}"' for name, value in headers.items()]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


FLOOD_LUA = """\
local tokens = {{}}
for line in io.lines("{tokens}") do tokens[#tokens + 1] = line end
local i = {start}
request = function()
  i = i % #tokens + 1
  return wrk.format("GET", "/auth", {{
    ["Authorization"] = "Bearer " .. tokens[i],
    ["X-Original-Method"] = "GET",
    ["X-Original-URI"] = "{uri}",
  }})
end
"""


# -- legs ---------------------------------------------------------------------------------


def counter(process: Process, name: str, label: str = "") -> float:
    """A Prometheus counter of ``gatekeeper serve`` (summed over its labels) from ``/metrics``."""
    status, body = get(process.ready_port, "/metrics")
    if status != 200:
        raise BenchError(f"/metrics answered {status}")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name + "{") and label in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def flood(process: Process, script: Path, target: int, args: argparse.Namespace) -> WrkResult:
    """Load ``process`` with wrk until its decision counter has grown by ``target``: wrk has no
    request-count option, so it runs open-ended and is stopped with SIGINT (it then prints its
    statistics as usual)."""
    start = counter(process, "gatekeeper_decisions_total")
    cmd = ["wrk", f"-t{args.threads}", f"-c{args.connections}", "-d3600s", "--latency", "-s", str(script)]
    wrk = subprocess.Popen(
        [*cmd, process.url + "/auth"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        while counter(process, "gatekeeper_decisions_total") - start < target:
            if wrk.poll() is not None:
                raise BenchError(f"wrk ended early: {wrk.stderr.read() if wrk.stderr else ''}")
            time.sleep(0.2)
    finally:
        wrk.send_signal(signal.SIGINT)
        out, _ = wrk.communicate(timeout=60)
    return parse_wrk(out)


def verdict(ratio: float, target: float | None) -> str:
    if target is None:
        return "-"
    return "PASS" if ratio >= target else "MISS"


def row(variant: Variant) -> list[str]:
    return [
        variant.label,
        f"{variant.median('requests_per_s'):,.0f}",
        f"{variant.median('p50_ms'):.2f}",
        f"{variant.median('p99_ms'):.2f}",
        f"{variant.median('busy') * 100:.0f}%",
    ]


def paired_groups(by_key: dict[str, Variant]) -> list[list[Variant]]:
    """The variants in the order one round measures them: each ratio's two sides next to each
    other (the minimal proxy and nginx beside the upstream they are compared with)."""
    keys = [[f"bare-{s}", f"decision-{s}"] for s in DECISION_STACKS]
    for s in STACKS:
        group = [f"upstream-{s}", f"proxy-{s}"]
        if s == DEFAULT_STACK:
            group.append("minimal-proxy")
        if s == "httptools":
            group += ["nginx-direct", "nginx-auth"]
        keys.append(group)
    groups = [[by_key[k] for k in group if k in by_key] for group in keys]
    measured = [v for group in groups for v in group]
    assert sorted(v.key for v in measured) == sorted(by_key), "a variant belongs to no group"
    return [group for group in groups if group]


RATIO_HEADERS = ["ratio", "median of per-round ratios", "per round", "ratio of medians", "target", "verdict"]


def ratio_row(name: str, top: Variant, bottom: Variant, target: float | None) -> tuple[list[str], bool]:
    """Judged on the median of the per-round ratios (the module doc says why)."""
    rounds = [t.requests_per_s / b.requests_per_s for t, b in zip(top.results, bottom.results, strict=True)]
    median = statistics.median(rounds)
    of_medians = top.median("requests_per_s") / bottom.median("requests_per_s")
    mark = verdict(median, target)
    each = " ".join(f"{r:.2f}" for r in rounds)
    goal = f">= {target}x" if target else "report"
    return [name, f"{median:.2f}x", each, f"{of_medians:.2f}x", goal, mark], mark != "MISS"


def check(port: int, path: str, headers: dict[str, str], want: int, what: str) -> None:
    status, body = get(port, path, headers)
    if status != want:
        raise BenchError(f"{what}: expected {want}, got {status}: {body[:300]!r}")


def mint_tokens(issuer: DevIssuer, n: int) -> list[str]:
    return [issuer.mint({"jti": f"t{i}"}, alg="ES256", scope="read", expires_in=86_400) for i in range(n)]


def memory_leg(args: argparse.Namespace, issuer: IssuerServer, upstream: Process, logs: Path) -> list[str]:
    """RSS under a flood of distinct tokens, and while bytes stream through the proxy."""
    out: list[str] = []
    cache_size = 10_000
    tokens = mint_tokens(issuer.issuer, args.tokens)
    token_file = logs / "tokens.txt"
    token_file.write_text("\n".join(tokens) + "\n")
    token_file.chmod(0o600)
    gk = gatekeeper("gatekeeper-memory", "httptools", issuer, upstream, logs, cache_size=cache_size)
    try:
        gk.wait_ready()
        headers = {
            "Authorization": f"Bearer {tokens[0]}",
            "X-Original-Method": "GET",
            "X-Original-URI": ORIGINAL_URI,
        }
        for _ in range(20):
            check(gk.port, "/auth", headers, 200, "memory gatekeeper")
        rss_start = gk.rss()
        fill = min(cache_size, args.tokens, args.requests)
        rest = max(args.requests - fill, 0)
        counts = []
        for start, limit, name in ((0, fill, "fill"), (fill, rest, "flood")):
            if limit <= 0:
                continue
            script = logs / f"{name}.lua"
            script.write_text(FLOOD_LUA.format(tokens=token_file, start=start, uri=ORIGINAL_URI))
            result = flood(gk, script, limit, args)
            if result.non_2xx:
                raise BenchError(f"memory {name}: {result.non_2xx} non-2xx responses")
            counts.append((name, result.requests, result.requests_per_s, gk.rss()))
        out.append(f"## Memory: {args.requests:,} decisions requested over {args.tokens:,} distinct tokens")
        out.append("")
        out.append(
            f"`gatekeeper serve` on uvloop + httptools, cache_size = {cache_size:,}, ES256 tokens "
            "cycled in order (with more tokens than cache entries every request is a miss: a full "
            "verification and an eviction)."
        )
        out.append("")
        rows = [["after 20 requests, 1 token", "-", "-", fmt_bytes(rss_start)]]
        rss_full = rss_start
        for name, done_requests, rate, rss in counts:
            label = f"first pass: {fill:,} distinct tokens" if name == "fill" else "after the rest"
            rows.append([label, f"{done_requests:,}", f"{rate:,.0f}", fmt_bytes(rss)])
            if name == "fill":
                rss_full = rss
        out.append(table(["point", "requests (wrk)", "req/s", "RSS"], rows))
        final = counts[-1][3] if counts else rss_start
        out.append("")
        out.append(
            f"RSS growth from a full cache to the end of the flood: {fmt_bytes(final - rss_full)} "
            f"(from the start: {fmt_bytes(final - rss_start)}); the cache holds at most "
            f"{cache_size:,} entries."
        )
        out.append("")
        out.extend(stream_leg(args, gk, tokens[0]))
    finally:
        gk.stop()
    return out


def stream_leg(args: argparse.Namespace, gk: Process, token: str) -> list[str]:
    import httpx

    size = args.stream_mib * MiB
    auth = {"Authorization": f"Bearer {token}"}
    rows = []
    with httpx.Client(timeout=600) as client:
        client.get(gk.url + "/warm", headers=auth)

        def upload() -> Iterator[bytes]:
            block = b"u" * MiB
            for _ in range(args.stream_mib):
                yield block

        for what in ("upload", "download"):
            before, start = gk.rss(), time.monotonic()
            if what == "upload":
                response = client.post(gk.url + "/upload", content=upload(), headers=auth)
                ok = response.status_code == 200 and response.json().get("received") == size
            else:
                received = 0
                with client.stream("GET", gk.url + f"/download?size={size}", headers=auth) as response:
                    for chunk in response.iter_raw():
                        received += len(chunk)
                ok = response.status_code == 200 and received == size
            elapsed = time.monotonic() - start
            if not ok:
                raise BenchError(f"{what} through the proxy failed: {response.status_code}")
            growth = gk.peak_rss() - before
            rows.append(
                [
                    what,
                    f"{args.stream_mib:,} MiB",
                    f"{size / MiB / elapsed:,.0f} MiB/s",
                    fmt_bytes(before),
                    fmt_bytes(max(growth, 0)),
                ]
            )
    return [
        f"## Memory: {args.stream_mib:,} MiB streamed through the reverse proxy",
        "",
        table(["direction", "bytes", "throughput", "RSS before", "peak RSS growth"], rows),
        "",
    ]


def throughput_legs(
    args: argparse.Namespace,
    token: str,
    upstreams: dict[str, Process],
    logs: Path,
    start: Any,
    issuer: IssuerServer,
) -> bool:
    """Legs 1-3 with wrk; returns whether every target was met."""
    bares = {s: start(python_role(f"bare-{s}", "bare", s, logs)) for s in DECISION_STACKS}
    for p in bares.values():
        p.wait_ready()
    gks = {s: start(gatekeeper(f"gatekeeper-{s}", s, issuer, upstreams[s], logs)) for s in upstreams}
    for p in gks.values():
        p.wait_ready()
    minimal = None
    if not args.decision_only:
        up = upstreams[DEFAULT_STACK]
        minimal = start(python_role("minimal-proxy", "minimal-proxy", DEFAULT_STACK, logs, up))
        minimal.wait_ready()
    ngx = None if args.decision_only else nginx(gks["httptools"], upstreams["httptools"], logs)
    if ngx is not None:
        start(ngx[0]).wait_ready()

    auth = {"Authorization": f"Bearer {token}"}
    decision_headers = {**auth, "X-Original-Method": "GET", "X-Original-URI": ORIGINAL_URI}
    for s in gks:
        check(gks[s].port, "/auth", decision_headers, 200, f"decision endpoint ({s})")
        check(
            gks[s].port,
            "/auth",
            {"X-Original-Method": "GET", "X-Original-URI": ORIGINAL_URI},
            401,
            "decision without a token",
        )
        check(gks[s].port, ORIGINAL_URI, auth, 200, f"proxy ({s})")
        check(gks[s].port, ORIGINAL_URI, {}, 401, "proxy without a token")
    decision_lua = lua_headers(logs / "decision.lua", decision_headers)
    auth_lua = lua_headers(logs / "auth.lua", auth)
    plain_lua = lua_headers(logs / "plain.lua", {})

    variants: list[Variant] = []
    for s in gks:
        if s in DECISION_STACKS:
            variants += [
                Variant(
                    f"bare-{s}",
                    f"bare Starlette /auth ({STACK_NAMES[s]})",
                    bares[s].url + "/auth",
                    decision_lua,
                    [bares[s]],
                ),
                Variant(
                    f"decision-{s}",
                    f"gatekeeper /auth, cached token ({STACK_NAMES[s]})",
                    gks[s].url + "/auth",
                    decision_lua,
                    [gks[s]],
                ),
            ]
        variants += [
            Variant(
                f"upstream-{s}",
                f"upstream directly ({STACK_NAMES[s]})",
                upstreams[s].url + ORIGINAL_URI,
                plain_lua,
                [upstreams[s]],
            ),
            Variant(
                f"proxy-{s}",
                f"gatekeeper proxy -> upstream ({STACK_NAMES[s]})",
                gks[s].url + ORIGINAL_URI,
                auth_lua,
                [gks[s], upstreams[s]],
            ),
        ]
    if minimal is not None:
        variants.append(
            Variant(
                "minimal-proxy",
                f"minimal ASGI proxy -> upstream ({STACK_NAMES[DEFAULT_STACK]}): the ASGI floor",
                minimal.url + ORIGINAL_URI,
                auth_lua,  # the gatekeeper proxy's request, token included (forwarded as it came)
                [minimal, upstreams[DEFAULT_STACK]],
            )
        )
    if ngx is not None:
        nginx_proc, auth_port, direct_port = ngx
        check(auth_port, ORIGINAL_URI, auth, 200, "nginx auth_request")
        check(auth_port, ORIGINAL_URI, {}, 401, "nginx auth_request without a token")
        up = upstreams["httptools"]
        variants += [
            Variant(
                "nginx-direct",
                "nginx -> upstream (uvloop + httptools)",
                f"http://127.0.0.1:{direct_port}{ORIGINAL_URI}",
                plain_lua,
                [nginx_proc, up],
            ),
            Variant(
                "nginx-auth",
                "nginx + auth_request -> gatekeeper -> upstream",
                f"http://127.0.0.1:{auth_port}{ORIGINAL_URI}",
                auth_lua,
                [nginx_proc, gks["httptools"], up],
            ),
        ]
    if args.decision_only:
        variants = [v for v in variants if v.key.startswith(("bare-", "decision-"))]
    if args.proxy_only:
        variants = [
            v for v in variants if v.key.startswith(("upstream-", "proxy-", "minimal-", "nginx-direct"))
        ]
    by_key = {v.key: v for v in variants}

    for i in range(args.rounds):
        for group in paired_groups(by_key):
            for variant in group if i % 2 == 0 else group[::-1]:
                measure(variant, args)

    headers = ["variant", "req/s (median)", "p50 ms", "p99 ms", "busy"]
    ok = True
    ratios: list[list[str]] = []
    decision_stacks = () if args.proxy_only else DECISION_STACKS
    if decision_stacks:
        print("## Decision endpoint vs a bare Starlette endpoint")
        print()
        rows = [row(by_key[f"{k}-{s}"]) for s in decision_stacks for k in ("bare", "decision")]
        print(table(headers, rows))
        print()
    for s in decision_stacks:
        cells, fine = ratio_row(
            f"decision / bare ({STACK_NAMES[s]})", by_key[f"decision-{s}"], by_key[f"bare-{s}"], 0.9
        )
        ratios.append(cells)
        ok &= fine
    if args.decision_only:
        print(table(RATIO_HEADERS, ratios))
        print(flush=True)
        return ok
    if ngx is not None and not args.proxy_only:
        print("## nginx + auth_request -> gatekeeper -> upstream vs nginx -> upstream")
        print()
        print(table(headers, [row(by_key["nginx-direct"]), row(by_key["nginx-auth"])]))
        print()
        cells, _ = ratio_row(
            "nginx+auth_request / nginx direct", by_key["nginx-auth"], by_key["nginx-direct"], None
        )
        ratios.append(cells)
    elif ngx is None:
        print("nginx is not installed (apt-get install nginx): the nginx rows are skipped.\n")
    print("## Reverse proxy vs the upstream directly")
    print()
    print(
        f"`gatekeeper serve`'s default stack as installed with the [server] extra: "
        f'{STACK_NAMES[DEFAULT_STACK]} (uvicorn\'s loop = "auto" picks uvloop only when it is '
        'installed, as uvicorn[standard] does; http = "auto" picks httptools). The proxy\'s '
        "target is judged on it; the other stacks are reported."
    )
    print()
    proxy_rows = [row(by_key[f"{k}-{s}"]) for s in STACKS for k in ("upstream", "proxy")]
    if minimal is not None:
        proxy_rows.append(row(by_key["minimal-proxy"]))
    if ngx is not None:
        proxy_rows.append(row(by_key["nginx-direct"]))
    print(table(headers, proxy_rows))
    print()
    for s in (DEFAULT_STACK, *(s for s in STACKS if s != DEFAULT_STACK)):
        target = 0.45 if s == DEFAULT_STACK else None
        default = ": the default stack" if s == DEFAULT_STACK else ""
        cells, fine = ratio_row(
            f"gatekeeper proxy / upstream ({STACK_NAMES[s]}{default})",
            by_key[f"proxy-{s}"],
            by_key[f"upstream-{s}"],
            target,
        )
        ratios.append(cells)
        ok &= fine
    if minimal is not None:
        cells, _ = ratio_row(
            f"minimal ASGI proxy / upstream ({STACK_NAMES[DEFAULT_STACK]}): the ASGI floor",
            by_key["minimal-proxy"],
            by_key[f"upstream-{DEFAULT_STACK}"],
            None,
        )
        ratios.append(cells)
    if ngx is not None:
        cells, _ = ratio_row(
            "nginx proxy_pass / upstream (uvloop + httptools): the ceiling",
            by_key["nginx-direct"],
            by_key["upstream-httptools"],
            None,
        )
        ratios.append(cells)
    print("## Ratios and targets")
    print()
    print(table(RATIO_HEADERS, ratios))
    print(flush=True)
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, 1 s per variant")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=6, help="seconds per measured wrk run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of wrk before each measured run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--requests", type=int, default=1_000_000, help="memory leg: decisions")
    parser.add_argument("--tokens", type=int, default=100_000, help="memory leg: distinct tokens")
    parser.add_argument("--stream-mib", type=int, default=1024, help="memory leg: MiB up and down")
    parser.add_argument("--skip-memory", action="store_true", help="only the wrk throughput legs")
    parser.add_argument("--skip-throughput", action="store_true", help="only the memory legs")
    parser.add_argument(
        "--decision-only", action="store_true", help="only leg 1: the decision endpoint vs bare Starlette"
    )
    parser.add_argument(
        "--proxy-only", action="store_true", help="only leg 3: the reverse proxy vs the upstream directly"
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run this script, the servers it starts and wrk at this niceness (negative: root only)",
    )
    parser.add_argument("--strict", action="store_true", help="exit 3 when a target is missed")
    parser.add_argument("--serve", choices=("upstream", "bare", "minimal-proxy"), help=argparse.SUPPRESS)
    parser.add_argument("--upstream-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--stack", choices=tuple(STACKS), default="h11", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port, args.stack, args.upstream_port)
        return 0
    if args.nice < 0 and os.geteuid() != 0:
        parser.error("a negative --nice needs root")
    if args.nice:
        # Inherited by every server and wrk started from here: other work on the machine yields.
        os.nice(args.nice)
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 1.0, 1.0
        args.requests, args.tokens, args.stream_mib = 3_000, 2_000, 16
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    try:
        return run(args)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1


def run(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory(prefix="gk-bench-") as tmp:
        logs = Path(tmp)
        issuer = IssuerServer()
        issuer.issuer = DevIssuer(issuer.url, algorithms=("RS256", "ES256"), audience="api")
        stack.enter_context(issuer)
        token = realistic_token(issuer.issuer, "RS256")
        processes: list[Process] = []

        def stop_all() -> None:
            for process in reversed(processes):
                process.stop()

        stack.callback(stop_all)

        def start(process: Process) -> Process:
            processes.append(process)
            return process

        stacks = DECISION_STACKS if args.decision_only else tuple(STACKS)
        upstreams = {s: start(python_role(f"upstream-{s}", "upstream", s, logs)) for s in stacks}
        for p in upstreams.values():
            p.wait_ready()
        print("# Gateway benchmark")
        print()
        print(
            f"{os.cpu_count()} CPUs (shared with other work; nothing pinned), wrk -t{args.threads} "
            f"-c{args.connections}, {args.rounds} round(s) x {args.duration:g} s per variant after "
            f"{args.warmup:g} s warm-up, rounds interleaved (each ratio's two sides back to back, in "
            "turns; a ratio is the median of its per-round ratios); "
            f"RS256 token of {len(token)} chars; "
            f"gatekeeper: metrics on, access log off; servers and wrk at nice {os.nice(0)}; 'busy' = "
            "CPU seconds of the variant's servers per second of the run."
        )
        print(flush=True)
        ok = True
        if not args.skip_throughput:
            ok = throughput_legs(args, token, upstreams, logs, start, issuer)
        if not args.skip_memory and not args.decision_only and not args.proxy_only:
            print()
            for line in memory_leg(args, issuer, upstreams["httptools"], logs):
                print(line)
        return 0 if ok or not args.strict else 3


if __name__ == "__main__":
    sys.exit(main())
