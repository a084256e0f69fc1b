"""The reverse proxy's direct path (:meth:`ReverseProxy.gatekeeper_direct`): a cached-token
``GET``/``HEAD`` served from the upstream connection's callback, without an ASGI task.

Served by the gateway's protocol (``GatewayHttpProtocol``), which offers each request to the
direct path first. Every answer must be the one the ASGI path gives (the same proxy served by
uvicorn's own httptools protocol, which never offers it): the same status, headers and body to
the client, the same request to the upstream, the same record. The failure paths (timeout,
broken answer, an idle connection closed under the request, a body cut off, a client gone, a
bug) and what the direct path leaves to the ASGI path are checked here too.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

import httpx
import pytest

pytest.importorskip("httptools", reason="the gateway's protocol needs httptools: pip install httptools")

import proxy_world
from proxy_world import clock
from upstream import RawUpstream, ServerThread, Upstream

from gatekeeper.bearer import BearerSource
from gatekeeper.decision import Gate
from gatekeeper.devserver import IssuerServer
from gatekeeper.gateway.http_protocol import GatewayHttpProtocol
from gatekeeper.gateway.identity import IdentityHeaders
from gatekeeper.gateway.proxy import ProxySettings, ReverseProxy, UpstreamSettings
from gatekeeper.gateway.record import RequestRecord
from gatekeeper.responses import get_profile
from gatekeeper.rules import Rule, RuleSet
from gatekeeper.verifier import Verifier

RULES = RuleSet((Rule("/open/**", access="exempt"), Rule("/admin/**", scopes=("admin",))))
OK = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"


issuer = proxy_world.issuer
upstream = proxy_world.upstream
token = proxy_world.token


class Proxy(proxy_world.Proxy):
    """A running ReverseProxy: what it reported, and what its direct path said per request."""

    def __init__(self, server: ServerThread, app: ReverseProxy, records: list[RequestRecord]) -> None:
        super().__init__(server, app, records)
        self.direct: list[bool] = []  # gatekeeper_direct's answers, in order
        offer = app.gatekeeper_direct

        def spy(cycle: Any) -> bool:
            taken = offer(cycle)
            self.direct.append(taken)
            return taken

        app.gatekeeper_direct = spy  # type: ignore[method-assign]

    def wait_records(self, n: int = 1) -> list[RequestRecord]:
        records = super().wait_records(n)
        assert len(records) >= n, f"{len(records)} records, expected {n}"
        return records

    def request(self, method: str, path: str, token: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.request(method, self.url + path, headers=headers, timeout=10)


MakeProxy = Callable[..., Proxy]


@pytest.fixture
def make_proxy(issuer: IssuerServer, upstream: Upstream) -> Iterator[MakeProxy]:
    started: list[ServerThread] = []

    def make(*, upstream_url: str | None = None, http: Any = GatewayHttpProtocol, **settings: Any) -> Proxy:
        verifier = Verifier(issuer.url, jwks_url=issuer.jwks_url, audience="api", clock=clock)
        gate = Gate(verifier, rules=RULES, source=BearerSource.of("bearer_token"))
        upstream_fields = {k: settings.pop(k) for k in list(settings) if k in UpstreamSettings.__slots__}
        default = UpstreamSettings(upstream_url or upstream.url, **upstream_fields)
        records: list[RequestRecord] = []
        app = ReverseProxy(
            gate,
            get_profile("rfc6750"),
            ProxySettings(upstream=default, **settings),
            IdentityHeaders(),
            records.append,
        )
        proxy = Proxy(ServerThread(app, http=http).start(), app, records)
        started.append(proxy.server)
        return proxy

    yield make
    for server in started:
        server.stop()


def comparable(proxy: Proxy, response: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    """What the client got, but the Date header (it names the second) and the proxy's own port
    (the echo's X-Forwarded-Host)."""
    headers = [(k, v) for k, v in response.headers.multi_items() if k != "date"]
    return response.status_code, headers, response.content.replace(b":%d" % proxy.port, b":PORT")


def record_fields(record: RequestRecord) -> dict[str, Any]:
    """A record's fields but its timings (each must have been measured)."""
    fields = asdict(record)
    for timing in ("latency", "decision_latency", "upstream_latency"):
        assert fields.pop(timing) > 0, timing
    return fields


REQUESTS = [
    ("GET", "/items/1"),
    ("GET", "/items/1?x=1&y=two"),
    ("HEAD", "/items/1"),
    ("GET", "/api/status?code=401"),  # the upstream's own 401 passes through
    ("GET", "/api/cookie"),
    ("GET", "/api/hop"),  # hop-by-hop response headers removed
    ("GET", "/api/download?size=1000&chunk=100"),
    ("GET", "/api/download?size=300000&chunk=65536"),  # over the whole-response size: relayed
    ("GET", "/api/download?size=5000&chunk=1000&chunked=1"),  # no length: relayed
]


@pytest.mark.parametrize(("method", "path"), REQUESTS)
def test_a_cached_request_is_served_directly_with_the_asgi_paths_answer(
    make_proxy: MakeProxy, upstream: Upstream, token: str, method: str, path: str
) -> None:
    direct = make_proxy()
    asgi = make_proxy(http="httptools")  # uvicorn's protocol: the ASGI path only
    answers = []
    seen = []
    for proxy in (direct, asgi):
        proxy.request(method, path, token)  # the path and the token are new: the ASGI path
        before = len(upstream.seen)
        answers.append(comparable(proxy, proxy.request(method, path, token)))
        seen.append(json.dumps(upstream.seen[before:]).replace(f":{proxy.port}", ":PORT"))
    assert direct.direct == [False, True]
    assert asgi.direct == []
    assert answers[0] == answers[1]
    assert answers[0][0] in (200, 401)
    assert seen[0] == seen[1]
    if path.startswith("/items/"):  # (the echo: the upstream's other answers keep no record)
        (request,) = json.loads(seen[0])
        assert ["x-auth-subject", "alice"] in request["headers"]
    direct_record = direct.wait_records(2)[1]
    asgi_record = asgi.wait_records(2)[1]
    assert record_fields(direct_record) == record_fields(asgi_record)
    assert direct_record.cached is True
    assert direct_record.upstream_latency is not None
    assert direct_record.upstream_latency <= direct_record.latency
    assert direct.app.in_flight == 0
    assert direct.app.transport.open_connections == 1  # the connection went back to the pool


def test_what_the_direct_path_leaves_to_the_asgi_path(
    make_proxy: MakeProxy, issuer: IssuerServer, token: str
) -> None:
    proxy = make_proxy()
    other = issuer.issuer.mint({"sub": "bob", "aud": "api"}, scope="read")
    cases: list[tuple[str, str, str | None, int]] = [
        ("GET", "/items/2", token, 200),  # a path not seen before
        ("GET", "/items/2", token, 200),  # ... and then seen: direct
        ("POST", "/items/2", token, 200),  # not GET or HEAD
        ("GET", "/items/2", other, 200),  # a token not in the cache yet
        ("GET", "/items/2", None, 401),  # no token: the denial
        ("GET", "/open/x", None, 200),  # an exempt route (no cached token to serve)
        ("GET", "/open/x", None, 200),
        ("GET", "/admin/x", token, 403),  # not enough scope: never a cache hit
        ("GET", "/admin/x", token, 403),
        ("GET", "/items/2?bearer_token=x", token, 400),  # a token in the query too
    ]
    for method, path, bearer, status in cases:
        assert proxy.request(method, path, bearer).status_code == status, (method, path)
    assert proxy.direct == [False, True, False, False, False, False, False, False, False, False]
    assert len(proxy.wait_records(len(cases))) == len(cases)


@pytest.mark.parametrize(
    "settings",
    [{"total_timeout": 30.0}, {"max_in_flight": 1}],
    ids=["a total timeout", "max_in_flight"],
)
def test_settings_the_direct_path_leaves_to_the_asgi_path(
    make_proxy: MakeProxy, token: str, settings: dict[str, Any]
) -> None:
    proxy = make_proxy(**settings)
    for _ in range(2):
        assert proxy.request("GET", "/items/3", token).status_code == 200
    expected = [False, False] if "total_timeout" in settings else [False, True]
    assert proxy.direct == expected
    if "max_in_flight" in settings:  # one running: the next is the ASGI path's 503
        proxy.app._in_flight = 1
        response = proxy.request("GET", "/items/3", token)
        proxy.app._in_flight = 0
        assert response.status_code == 503
        assert proxy.direct[-1] is False


def test_a_read_timeout_on_the_direct_path_is_504(make_proxy: MakeProxy, token: str) -> None:
    proxy = make_proxy(read_timeout=0.3)
    assert proxy.request("GET", "/api/slow?delay=0", token).status_code == 200
    response = proxy.request("GET", "/api/slow?delay=3", token)
    assert proxy.direct == [False, True]
    assert response.status_code == 504
    assert response.json()["error"] == "upstream_timeout"
    record = proxy.wait_records(2)[1]
    assert (record.status, record.decision, record.error_kind) == (504, "error", "upstream_timeout")
    assert proxy.app.transport.open_connections == 0  # the late answer must not meet the next request
    assert proxy.app.in_flight == 0


def test_a_malformed_answer_on_the_direct_path_is_502(make_proxy: MakeProxy, token: str) -> None:
    with RawUpstream(lambda conn, req, head: OK if req == 0 else b"HTTP/1.1 2OO OK\r\n\r\n") as raw:
        proxy = make_proxy(upstream_url=raw.url)
        assert proxy.request("GET", "/items/4", token).status_code == 200
        response = proxy.request("GET", "/items/4", token)
        assert proxy.direct == [False, True]
        assert response.status_code == 502
        assert response.json()["error"] == "upstream_unreachable"
        assert proxy.wait_records(2)[1].error_kind == "upstream_unreachable"
        assert proxy.app.transport.open_connections == 0


def test_an_idle_connection_closed_under_the_request_is_retried_on_a_new_one(
    make_proxy: MakeProxy, token: str
) -> None:
    # The upstream reads the second request on its first connection and closes it unanswered
    # (its keep-alive timeout raced the request): sent again, through the ASGI path, once.
    with RawUpstream(lambda conn, req, head: None if (conn, req) == (0, 1) else OK) as raw:
        proxy = make_proxy(upstream_url=raw.url)
        assert proxy.request("GET", "/items/5", token).status_code == 200
        response = proxy.request("GET", "/items/5", token)
        assert response.status_code == 200
        assert response.text == "ok"
        assert proxy.direct == [False, True]
        assert raw.connections == 2
        records = proxy.wait_records(2)
        time.sleep(0.1)
        assert len(records) == 2  # one record for the retried request
        assert (records[1].status, records[1].decision) == (200, "allow")


def test_a_body_cut_off_on_the_direct_path_aborts_the_client_connection(
    make_proxy: MakeProxy, token: str
) -> None:
    cut = b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n" + b"x" * 10
    with RawUpstream(lambda conn, req, head: OK if req == 0 else cut, close_after=False) as raw:
        proxy = make_proxy(upstream_url=raw.url, read_timeout=0.5)
        assert proxy.request("GET", "/items/6", token).status_code == 200
        with pytest.raises(httpx.HTTPError):
            proxy.request("GET", "/items/6", token)
        assert proxy.direct == [False, True]
        record = proxy.wait_records(2)[1]
        assert record.error_kind == "upstream_aborted"
        assert proxy.app.in_flight == 0


def pipelined(port: int, request: bytes, count: int) -> list[tuple[bytes, bytes]]:
    """Send ``request`` (several requests) in one write; the first ``count`` responses' status
    lines and bodies, in the order they came (each framed by its Content-Length)."""
    responses: list[tuple[bytes, bytes]] = []
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        while len(responses) < count:
            head, sep, rest = data.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            lengths = [line.split(b":")[1] for line in lines if line.lower().startswith(b"content-length:")]
            if sep and len(rest) >= int(lengths[0]):
                responses.append((lines[0], rest[: int(lengths[0])]))
                data = rest[int(lengths[0]) :]
                continue
            chunk = sock.recv(65536)
            assert chunk, "the proxy closed the connection"
            data += chunk
    return responses


def test_pipelined_requests_are_answered_directly_in_order(make_proxy: MakeProxy, token: str) -> None:
    proxy = make_proxy()
    paths = ["/a/one", "/b/two", "/c/three"]
    for path in paths:
        assert proxy.request("GET", path, token).status_code == 200
    request = b"".join(
        b"GET %s HTTP/1.1\r\nhost: gk\r\nauthorization: Bearer %s\r\n\r\n" % (path.encode(), token.encode())
        for path in paths
    )
    responses = pipelined(proxy.port, request, len(paths))
    assert [status for status, _ in responses] == [b"HTTP/1.1 200 OK"] * 3
    assert [json.loads(body)["path"] for _, body in responses] == paths
    assert proxy.direct == [False] * 3 + [True] * 3


def test_a_client_gone_before_the_answer_leaves_the_proxy_ready(make_proxy: MakeProxy, token: str) -> None:
    proxy = make_proxy()
    assert proxy.request("GET", "/api/slow?delay=0", token).status_code == 200
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(
            b"GET /api/slow?delay=0.5 HTTP/1.1\r\nhost: gk\r\nauthorization: Bearer %s\r\n\r\n"
            % token.encode()
        )
        time.sleep(0.1)
    record = proxy.wait_records(2)[1]
    assert (record.status, record.upstream_status, record.decision) == (200, 200, "allow")
    assert proxy.direct == [False, True]
    assert proxy.app.in_flight == 0
    assert proxy.app.transport.open_connections == 1  # the answer was read whole: reusable
    assert proxy.request("GET", "/api/slow?delay=0", token).status_code == 200
    assert proxy.direct[-1] is True


def test_a_bug_in_the_callback_is_answered_500_and_recorded(make_proxy: MakeProxy, token: str) -> None:
    proxy = make_proxy()
    assert proxy.request("GET", "/items/7", token).status_code == 200

    def broken(headers: Any) -> Any:
        raise ValueError("a bug")

    proxy.app._responses.rewrite = broken  # type: ignore[method-assign]
    response = proxy.request("GET", "/items/7", token)
    assert response.status_code == 500
    assert response.text == "Internal Server Error"
    assert proxy.direct == [False, True]
    assert len(proxy.wait_records(2)) == 2
    assert proxy.app.in_flight == 0


def test_a_server_shutdown_lets_a_direct_request_finish(
    issuer: IssuerServer, upstream: Upstream, token: str
) -> None:
    verifier = Verifier(issuer.url, jwks_url=issuer.jwks_url, audience="api", clock=clock)
    records: list[RequestRecord] = []
    app = ReverseProxy(
        Gate(verifier, rules=RULES, source=BearerSource.of("bearer_token")),
        get_profile("rfc6750"),
        ProxySettings(upstream=UpstreamSettings(upstream.url)),
        IdentityHeaders(),
        records.append,
    )
    server = ServerThread(app, http=GatewayHttpProtocol).start()
    try:
        headers = {"Authorization": f"Bearer {token}"}
        assert httpx.get(server.url + "/api/slow?delay=0", headers=headers).status_code == 200
        answers: list[httpx.Response] = []
        thread = threading.Thread(
            target=lambda: answers.append(
                httpx.get(server.url + "/api/slow?delay=1", headers=headers, timeout=10)
            )
        )
        thread.start()
        time.sleep(0.4)
        server.server.should_exit = True  # what SIGTERM does
        thread.join(10)
        assert [a.status_code for a in answers] == [200]
        assert answers[0].headers["connection"] == "close"
        server.thread.join(10)
        assert not server.thread.is_alive()
        assert [r.status for r in records] == [200, 200]
    finally:
        server.stop()
