"""The reverse proxy over real HTTP: client -> gatekeeper proxy (uvicorn) -> upstream (uvicorn),
all on 127.0.0.1, with tokens verified against a real JWKS server.

Covers the decision (allow, deny in the profile's shape), identity-header stripping on every
route, hop-by-hop headers both ways, the token kept from the upstream (query parameter,
Authorization), X-Forwarded-*, Host, path normalisation, per-route upstreams, the upstream's own
401, upstream failures (502, 504), limits (413, 503) and the per-request records.
"""

from __future__ import annotations

import asyncio
import json
import select
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import proxy_world
import pytest
from proxy_world import clock
from upstream import RawUpstream, ServerThread, Upstream, free_port

from gatekeeper.bearer import BearerSource
from gatekeeper.decision import Gate
from gatekeeper.devserver import IssuerServer
from gatekeeper.gateway.identity import IdentityHeaders
from gatekeeper.gateway.proxy import ProxySettings, ReverseProxy, UpstreamRoute, UpstreamSettings
from gatekeeper.gateway.record import RequestRecord
from gatekeeper.redact import fingerprint
from gatekeeper.responses import get_profile
from gatekeeper.rules import Rule, RuleSet
from gatekeeper.verifier import Verifier

RULES = RuleSet(
    (
        Rule("/open/**", access="exempt"),
        Rule("/maybe/**", access="optional"),
        Rule("/admin/**", scopes=("admin",)),
    )
)


issuer = proxy_world.issuer
upstream = proxy_world.upstream
token = proxy_world.token


Proxy = proxy_world.Proxy
MakeProxy = Callable[..., Proxy]


@pytest.fixture
def make_proxy(issuer: IssuerServer, upstream: Upstream) -> Iterator[MakeProxy]:
    started: list[ServerThread] = []

    def make(
        *,
        profile: str = "rfc6750",
        upstream_url: str | None = None,
        query_param: str | None = "bearer_token",
        http: str = "h11",
        **settings: Any,
    ) -> Proxy:
        verifier = Verifier(issuer.url, jwks_url=issuer.jwks_url, audience="api", clock=clock)
        gate = Gate(verifier, rules=RULES, source=BearerSource.of(query_param))
        upstream_fields = {k: settings.pop(k) for k in list(settings) if k in UpstreamSettings.__slots__}
        default = UpstreamSettings(upstream_url or upstream.url, **upstream_fields)
        records: list[RequestRecord] = []
        app = ReverseProxy(
            gate,
            get_profile(profile),
            ProxySettings(upstream=default, **settings),
            IdentityHeaders(),
            records.append,
        )
        server = ServerThread(app, http=http).start()
        started.append(server)
        return Proxy(server, app, records)

    yield make
    for server in started:
        server.stop()


def seen_headers(response: httpx.Response) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in response.json()["headers"]:
        out.setdefault(name, []).append(value)
    return out


# -- the decision ---------------------------------------------------------------------------


def test_allowed_request_reaches_upstream_with_identity(make_proxy: MakeProxy, token: str) -> None:
    proxy = make_proxy()
    response = proxy.get("/items/1?x=1", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    body = response.json()
    assert body["path"] == "/items/1"
    assert body["query"] == "x=1"
    headers = seen_headers(response)
    assert headers["x-auth-subject"] == ["alice"]
    assert headers["x-auth-client-id"] == ["app-1"]
    assert headers["x-auth-scopes"] == ["read"]
    (record,) = proxy.wait_records()
    assert (record.door, record.decision, record.status, record.upstream_status) == (
        "proxy",
        "allow",
        200,
        200,
    )
    assert record.subject == "alice"
    assert record.client_id == "app-1"
    assert record.token == fingerprint(token)
    assert record.rule == "/**"
    assert record.upstream_latency is not None
    assert record.upstream_latency <= record.latency


@pytest.mark.parametrize(
    ("claims", "logged"),
    [
        ({"client_id": "app-1", "azp": "app-2"}, "app-1"),
        ({"client_id": None, "azp": "app-2"}, "app-2"),  # (None: the claim is left out)
        ({"client_id": 7, "azp": "app-2"}, "app-2"),  # not a string: the next claim
        ({"client_id": 7}, None),
    ],
)
def test_the_logged_client_is_the_first_string_of_client_id_and_azp(
    make_proxy: MakeProxy, issuer: IssuerServer, claims: dict[str, Any], logged: str | None
) -> None:
    token = issuer.issuer.mint({"sub": "alice", "aud": "api", **claims}, scope="read")
    proxy = make_proxy()
    assert proxy.get("/items/1", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert proxy.wait_records()[0].client_id == logged


@pytest.mark.parametrize("profile", ["rfc6750", "addressfinder", "placewise"])
def test_denial_is_the_profile_response_and_never_reaches_upstream(
    make_proxy: MakeProxy, upstream: Upstream, profile: str
) -> None:
    proxy = make_proxy(profile=profile)
    before = len(upstream.seen)
    response = proxy.get("/items/1", headers={"Authorization": "Bearer not-a-jwt"})
    rendered = get_profile(profile).render(_error("invalid_token"))
    assert response.status_code == rendered.status
    assert (
        response.json()["error" if profile != "addressfinder" else "error_code"]
        == json.loads(rendered.body)["error" if profile != "addressfinder" else "error_code"]
    )
    assert len(upstream.seen) == before
    (record,) = proxy.wait_records()
    assert (record.decision, record.error_kind, record.upstream_status) == ("deny", "invalid_token", None)


def _error(kind: Any) -> Any:
    from gatekeeper.errors import AuthError

    return AuthError(kind)


def test_head_gets_the_upstream_headers_and_no_body(make_proxy: MakeProxy) -> None:
    proxy = make_proxy()
    response = httpx.head(proxy.url + "/open/download?size=5000", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-length"] == "5000"
    assert response.content == b""


def test_missing_scope_is_denied(make_proxy: MakeProxy, token: str) -> None:
    proxy = make_proxy()
    response = proxy.get("/admin/x", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 403
    assert response.json()["error"] == "insufficient_scope"


def test_upstream_401_passes_through_untouched_and_is_not_a_denial(make_proxy: MakeProxy, token: str) -> None:
    proxy = make_proxy()
    response = proxy.get("/status?code=401", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="upstream"'
    assert response.json() == {"upstream": 401}
    (record,) = proxy.wait_records()
    assert (record.decision, record.error_kind, record.status, record.upstream_status) == (
        "allow",
        None,
        401,
        401,
    )


# -- identity headers: client copies never reach the upstream, on any route -----------------

FORGED = [
    ("X-Auth-Subject", "admin"),
    ("x-auth-subject", "admin2"),
    ("X_Auth_Subject", "admin3"),
    ("X-AUTH-CLIENT-ID", "evil"),
    ("X-Auth-Anything", "under-the-prefix"),
    ("X-Auth-Scopes", "admin"),
]


@pytest.mark.parametrize(
    ("path", "with_token"),
    [("/open/x", False), ("/maybe/x", False), ("/maybe/x", True), ("/items/x", True), ("/open/x", True)],
)
def test_client_identity_headers_are_stripped_on_every_route(
    make_proxy: MakeProxy, token: str, path: str, with_token: bool
) -> None:
    proxy = make_proxy()
    headers = httpx.Headers(FORGED)
    if with_token:
        headers["Authorization"] = f"Bearer {token}"
    response = proxy.get(path, headers=headers)
    assert response.status_code == 200
    seen = seen_headers(response)
    forged_names = {
        "x-auth-subject",
        "x_auth_subject",
        "x-auth-client-id",
        "x-auth-anything",
        "x-auth-scopes",
    }
    verified = with_token and path != "/open/x"  # an exempt route is not looked at
    for name in forged_names:
        for value in seen.get(name, []):
            assert value not in {"admin", "admin2", "admin3", "evil", "under-the-prefix"}, (name, value)
    if verified:
        assert seen["x-auth-subject"] == ["alice"]
    else:
        assert not forged_names & set(seen)


def test_connection_naming_an_identity_header_cannot_remove_the_verified_one(
    make_proxy: MakeProxy, token: str
) -> None:
    proxy = make_proxy()
    response = proxy.get(
        "/items/x",
        headers={
            "Authorization": f"Bearer {token}",
            "Connection": "keep-alive, X-Auth-Subject, X_Auth_Client_Id",
            "X-Auth-Subject": "admin",
        },
    )
    seen = seen_headers(response)
    assert seen["x-auth-subject"] == ["alice"]
    assert seen["x-auth-client-id"] == ["app-1"]
    assert "connection" not in seen or "x-auth" not in seen["connection"][0].lower()


def test_an_upstream_cookie_is_never_replayed_to_another_request(make_proxy: MakeProxy) -> None:
    # A client library's cookie jar in the proxy would send one client's session to the next.
    proxy = make_proxy()
    set_cookie = proxy.get("/open/cookie")
    assert set_cookie.headers["set-cookie"] == "session=upstream-secret; Path=/"
    seen = seen_headers(proxy.get("/open/echo"))
    assert "cookie" not in seen


def test_the_proxy_adds_no_client_library_headers(make_proxy: MakeProxy) -> None:
    proxy = make_proxy()
    response = proxy.raw(b"GET /open/echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    body = json.loads(response.partition(b"\r\n\r\n")[2])
    names = {name for name, _ in body["headers"]}
    assert names == {"host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}


def test_upstream_connections_are_kept_alive_and_reused(make_proxy: MakeProxy) -> None:
    proxy = make_proxy()
    with httpx.Client() as client:  # one client connection: requests one after another
        for _ in range(3):
            assert client.get(proxy.url + "/open/echo").status_code == 200
    assert proxy.app.transport.open_connections == 1


def test_a_connection_the_upstream_closes_is_not_reused(make_proxy: MakeProxy) -> None:
    proxy = make_proxy()
    assert proxy.get("/open/close").json() == {"close": True}
    proxy.wait_records()
    assert proxy.app.transport.open_connections == 0
    assert proxy.get("/open/echo").status_code == 200


def test_an_idle_connection_closed_by_the_upstream_is_replaced(make_proxy: MakeProxy) -> None:
    # The upstream drops idle keep-alive connections after 1 s; the next request must not be
    # sent on the dead one (its socket reads EOF: the pool discards it and connects anew).
    with Upstream(timeout_keep_alive=1) as short:
        proxy = make_proxy(upstream_url=short.url)
        assert proxy.get("/open/echo").status_code == 200
        proxy.wait_records()
        (stack,) = proxy.app.transport._idle.values()
        (idle,) = stack
        deadline = time.monotonic() + 10
        while not select.select([idle.fileno], [], [], 0.05)[0]:
            assert time.monotonic() < deadline, "the upstream never closed the idle connection"
        response = proxy.get("/open/echo")
        assert response.status_code == 200
        assert proxy.app.transport.open_connections == 1


# -- hop-by-hop headers --------------------------------------------------------------------


def test_hop_by_hop_request_headers_are_removed(make_proxy: MakeProxy) -> None:
    proxy = make_proxy()
    response = proxy.get(
        "/open/echo",
        headers={
            "Connection": "keep-alive, X-Client-Hop",
            "X-Client-Hop": "1",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Trailer": "X-Checksum",
            "Proxy-Authorization": "Basic Zm9vOmJhcg==",
            "Proxy-Connection": "keep-alive",
            "X-End-To-End": "kept",
        },
    )
    seen = seen_headers(response)
    for name in ("x-client-hop", "keep-alive", "te", "trailer", "proxy-authorization", "proxy-connection"):
        assert name not in seen, name
    assert seen["x-end-to-end"] == ["kept"]


def test_connection_cannot_strip_the_body_length_to_smuggle_a_request(
    make_proxy: MakeProxy, upstream: Upstream
) -> None:
    # Content-Length named in Connection is hop-by-hop by the letter of RFC 9110, but the
    # body goes on as it came: without its length the upstream would read it as a second
    # request, one no token was checked for.
    proxy = make_proxy()
    smuggled = b"GET /admin/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    answer = proxy.raw(
        b"POST /open/up HTTP/1.1\r\nHost: x\r\nConnection: close, Content-Length\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(smuggled), smuggled)
    )
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["body_bytes"] == len(smuggled)
    time.sleep(0.2)  # a smuggled request would reach the upstream right after the first
    assert not [seen for seen in upstream.seen if "smuggled" in seen["path"]]


def test_hop_by_hop_response_headers_are_removed(make_proxy: MakeProxy) -> None:
    proxy = make_proxy()
    response = proxy.get("/open/hop")
    assert response.status_code == 200
    for name in ("x-upstream-hop", "keep-alive", "proxy-authenticate", "upgrade"):
        assert name not in response.headers, name
    assert "x-upstream-hop" not in response.headers.get("connection", "").lower()
    assert response.headers["x-end-to-end"] == "1"


# -- the token goes no further than it must --------------------------------------------------


def test_the_response_carries_one_date_and_one_server_header(make_proxy: MakeProxy) -> None:
    # The upstream (uvicorn) sends both, and so does the server in front of the proxy.
    response = make_proxy().get("/open/echo")
    assert response.status_code == 200
    names = [name.lower() for name, _ in response.headers.raw]
    assert names.count(b"date") == 1
    assert names.count(b"server") == 1


@pytest.mark.parametrize("name", ["bearer_token", "bearer%5Ftoken"])
def test_query_token_is_removed_from_the_upstream_url(make_proxy: MakeProxy, token: str, name: str) -> None:
    proxy = make_proxy()
    response = proxy.get(f"/items/1?a=1&{name}={token}&b=%20two")
    assert response.status_code == 200
    body = response.json()
    assert body["query"] == "a=1&b=%20two"
    assert token not in json.dumps(body)
    assert seen_headers(response)["x-auth-subject"] == ["alice"]
    assert token not in proxy.wait_records()[0].path
    assert "[redacted]" in proxy.wait_records()[0].path


def test_authorization_is_removed_by_default(make_proxy: MakeProxy, token: str) -> None:
    response = make_proxy().get("/items/1", headers={"Authorization": f"Bearer {token}"})
    assert "authorization" not in seen_headers(response)


def test_authorization_is_forwarded_when_configured(make_proxy: MakeProxy, token: str) -> None:
    proxy = make_proxy(forward_authorization=True)
    response = proxy.get("/items/1", headers={"Authorization": f"Bearer {token}"})
    assert seen_headers(response)["authorization"] == [f"Bearer {token}"]


# -- X-Forwarded-* and Host ----------------------------------------------------------------


def test_x_forwarded_set_replaces_client_values(make_proxy: MakeProxy) -> None:
    proxy = make_proxy()
    response = proxy.get(
        "/open/x",
        headers={
            "X-Forwarded-For": "6.6.6.6",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "evil",
            "Forwarded": "for=6.6.6.6",
        },
    )
    seen = seen_headers(response)
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["http"]
    assert seen["x-forwarded-host"] == [f"127.0.0.1:{proxy.port}"]
    assert "forwarded" not in seen


def test_x_forwarded_append_keeps_the_chain(make_proxy: MakeProxy) -> None:
    proxy = make_proxy(x_forwarded="append")
    response = proxy.get(
        "/open/x",
        headers={
            "X-Forwarded-For": "203.0.113.9",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "api.example",
        },
    )
    seen = seen_headers(response)
    assert seen["x-forwarded-for"] == ["203.0.113.9, 127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["https"]
    assert seen["x-forwarded-host"] == ["api.example"]


def test_forwarding_headers_named_in_connection_count_as_never_sent(make_proxy: MakeProxy) -> None:
    # Hop-by-hop by the client's Connection header: not part of the chain, not the Host passed on.
    proxy = make_proxy(x_forwarded="append", host="forward")
    names = "X-Forwarded-For, x-forwarded-proto, X-Forwarded-Host, Host, Forwarded"
    response = proxy.get(
        "/open/x",
        headers={
            "Connection": f"keep-alive, {names}",
            "Host": "api.example",
            "X-Forwarded-For": "203.0.113.9",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "chosen.example",
            "Forwarded": "for=203.0.113.9",
        },
    )
    seen = seen_headers(response)
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["http"]
    assert "x-forwarded-host" not in seen
    assert "forwarded" not in seen
    assert seen["host"] == [proxy.app.upstream_for("/x").netloc.decode()]  # type: ignore[union-attr]


def test_x_forwarded_append_without_prior_values_sets_them(make_proxy: MakeProxy) -> None:
    seen = seen_headers(make_proxy(x_forwarded="append").get("/open/x"))
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["http"]


def test_x_forwarded_off_removes_them(make_proxy: MakeProxy) -> None:
    proxy = make_proxy(x_forwarded="off")
    seen = seen_headers(proxy.get("/open/x", headers={"X-Forwarded-For": "6.6.6.6"}))
    assert not {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"} & set(seen)


def test_host_is_rewritten_by_default(make_proxy: MakeProxy, upstream: Upstream) -> None:
    seen = seen_headers(make_proxy().get("/open/x", headers={"Host": "api.example"}))
    assert seen["host"] == [f"127.0.0.1:{upstream.port}"]


def test_host_is_forwarded_when_configured(make_proxy: MakeProxy) -> None:
    seen = seen_headers(make_proxy(host="forward").get("/open/x", headers={"Host": "api.example"}))
    assert seen["host"] == ["api.example"]


# -- paths -------------------------------------------------------------------------------------


def test_upstream_gets_the_normalised_path(make_proxy: MakeProxy) -> None:
    proxy = make_proxy()
    response = proxy.raw(
        b"GET /open//a/./b/../c/%7Efile%C3%A9 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert json.loads(body)["path"] == "/open/a/c/~file%C3%A9"


@pytest.mark.parametrize("path", [b"/open/..%2Fadmin", b"/open/%2e%2e/admin", b"/open/a%00b", b"/open/%252e"])
def test_ambiguous_paths_are_refused_with_400(make_proxy: MakeProxy, upstream: Upstream, path: bytes) -> None:
    proxy = make_proxy()
    before = len(upstream.seen)
    response = proxy.raw(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 400")
    assert b"www-authenticate" not in response.lower()
    assert b'"error":"invalid_request"' in response
    assert len(upstream.seen) == before
    assert proxy.wait_records()[0].error_kind == "bad_path"


def test_dot_segments_cannot_escape_an_exempt_prefix(make_proxy: MakeProxy, upstream: Upstream) -> None:
    # /open/../admin/x is /admin/x: the admin rule (token with scope) applies, not /open's.
    proxy = make_proxy()
    response = proxy.raw(b"GET /open/../admin/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 401")
    assert proxy.wait_records()[0].rule == "/admin/**"


def test_routes_pick_their_upstream_and_base_path(make_proxy: MakeProxy, issuer: IssuerServer) -> None:
    with Upstream() as other:
        proxy = make_proxy(routes=(UpstreamRoute("/open/svc/**", UpstreamSettings(other.url + "/base/")),))
        response = proxy.get("/open/svc/x?q=1")
        assert response.json()["path"] == "/base/open/svc/x"
        assert len(other.seen) == 1
        assert proxy.get("/open/elsewhere").json()["path"] == "/open/elsewhere"
        assert len(other.seen) == 1


# -- upstream failures -----------------------------------------------------------------------


def test_refused_connection_is_502(make_proxy: MakeProxy) -> None:
    proxy = make_proxy(upstream_url=f"http://127.0.0.1:{free_port()}")
    response = proxy.get("/open/x")
    assert response.status_code == 502
    assert response.json()["error"] == "upstream_unreachable"
    assert proxy.wait_records()[0].decision == "error"


def test_dns_failure_is_502(make_proxy: MakeProxy) -> None:
    response = make_proxy(upstream_url="http://gatekeeper-test-upstream.invalid").get("/open/x")
    assert response.status_code == 502
    assert response.json()["error"] == "upstream_unreachable"


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 2OO OK\r\n\r\n",  # malformed status line
        b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * 200_000 + b"\r\n\r\n",  # a huge header block
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",  # ambiguous framing
    ],
)
def test_a_malformed_upstream_response_is_502(make_proxy: MakeProxy, reply: bytes) -> None:
    with RawUpstream(lambda *_: reply) as raw:
        proxy = make_proxy(upstream_url=raw.url)
        response = proxy.get("/open/x")
        assert response.status_code == 502
        assert response.json()["error"] == "upstream_unreachable"
        assert proxy.app.transport.open_connections == 0


def test_a_request_header_the_upstream_request_cannot_carry_is_400(
    make_proxy: MakeProxy, upstream: Upstream
) -> None:
    # The server in front refuses CR/LF in headers already; the proxy does not rely on it.
    proxy = make_proxy()
    before = len(upstream.seen)
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/open/x",
        "raw_path": b"/open/x",
        "query_string": b"",
        "headers": [(b"host", b"gk"), (b"x-split", b"1\r\nx-injected: 1")],
        "client": ("127.0.0.1", 1),
        "scheme": "http",
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(proxy.app(scope, receive, send))
    assert sent[0]["status"] == 400
    assert len(upstream.seen) == before


def test_read_timeout_is_504(make_proxy: MakeProxy) -> None:
    proxy = make_proxy(read_timeout=0.2)
    response = proxy.get("/open/slow?delay=3")
    assert response.status_code == 504
    assert response.json()["error"] == "upstream_timeout"
    assert proxy.wait_records()[0].error_kind == "upstream_timeout"


def test_total_timeout_is_504(make_proxy: MakeProxy) -> None:
    response = make_proxy(total_timeout=0.2).get("/open/slow?delay=3")
    assert response.status_code == 504


def test_upstream_failure_mid_body_aborts_the_client_connection(make_proxy: MakeProxy) -> None:
    # A cut-off body must not look complete: the client sees a broken response, not a short one.
    proxy = make_proxy(total_timeout=0.5)
    with pytest.raises(httpx.HTTPError):
        proxy.get("/open/sse?n=5&interval=0.3")


# -- limits ------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["rfc6750", "addressfinder"])
def test_content_length_over_the_limit_is_413_in_the_profile_shape(
    make_proxy: MakeProxy, upstream: Upstream, profile: str
) -> None:
    proxy = make_proxy(profile=profile, max_request_body=1000)
    before = len(upstream.seen)
    response = httpx.post(proxy.url + "/open/up", content=b"x" * 1001, timeout=10)
    assert response.status_code == 413
    rendered = get_profile(profile).render(_error("invalid_request"))
    assert set(response.json()) == set(json.loads(rendered.body))
    assert "www-authenticate" not in response.headers
    assert len(upstream.seen) == before
    assert proxy.wait_records()[0].error_kind == "body_too_large"


def test_chunked_body_over_the_limit_is_413(make_proxy: MakeProxy) -> None:
    proxy = make_proxy(max_request_body=100_000)

    def body() -> Iterator[bytes]:
        for _ in range(20):
            yield b"x" * 10_000

    response = httpx.post(proxy.url + "/open/up", content=body(), timeout=10)
    assert response.status_code == 413


def test_body_at_the_limit_passes(make_proxy: MakeProxy) -> None:
    proxy = make_proxy(max_request_body=1000)
    response = httpx.post(proxy.url + "/open/up", content=b"x" * 1000, timeout=10)
    assert response.status_code == 200
    assert response.json()["body_bytes"] == 1000


def test_max_in_flight_is_503(make_proxy: MakeProxy) -> None:
    proxy = make_proxy(max_in_flight=1)
    slow: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: slow.append(proxy.get("/open/slow?delay=1")))
    thread.start()
    deadline = time.monotonic() + 5
    while proxy.app.in_flight < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    response = proxy.get("/open/x")
    thread.join()
    assert response.status_code == 503
    assert response.json()["error"] == "upstream_busy"
    assert response.headers["retry-after"] == "1"
    assert slow[0].status_code == 200
    proxy.wait_records(2)  # both reported: the slow one has released its slot
    assert proxy.app.in_flight == 0
    assert proxy.get("/open/x").status_code == 200


def test_settings_are_plain_frozen_dataclasses() -> None:
    settings = UpstreamSettings("http://127.0.0.1:1")
    assert replace(settings, host="forward").host == "forward"
    with pytest.raises(AttributeError):
        settings.host = "forward"  # type: ignore[misc]


# -- TLS upstreams -------------------------------------------------------------------------------


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that no default trust store knows."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


def test_a_tls_upstream_with_an_untrusted_certificate_is_502(make_proxy: MakeProxy, tmp_path: Path) -> None:
    # The upstream's certificate is verified: one no trust store knows is refused, never used.
    cert_file, key_file = self_signed(tmp_path)
    with Upstream(ssl_certfile=str(cert_file), ssl_keyfile=str(key_file)) as tls:
        proxy = make_proxy(upstream_url=f"https://127.0.0.1:{tls.port}")
        response = proxy.get("/open/echo")
        assert response.status_code == 502
        assert response.json()["error"] == "upstream_unreachable"
        assert tls.seen == []
