"""The forward-auth decision endpoint over real HTTP (uvicorn on 127.0.0.1, httpx client):
original method and URI from each proxy's headers, rules on the original path, allow with
identity headers, deny in the profile's shape, nginx's 401/403 + render protocol, bad input."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from conftest import Clock
from hypothesis import example, given
from hypothesis import strategies as st
from upstream import ServerThread

from gatekeeper.bearer import BearerSource
from gatekeeper.decision import Gate
from gatekeeper.gateway import forward_auth
from gatekeeper.gateway.forward_auth import ForwardAuth, ForwardAuthSettings
from gatekeeper.gateway.identity import IdentityHeaders
from gatekeeper.gateway.record import RequestRecord
from gatekeeper.issuer import DevIssuer
from gatekeeper.redact import fingerprint
from gatekeeper.responses import get_profile
from gatekeeper.revocation import Revocation, Revocations
from gatekeeper.rules import Rule, RuleSet
from gatekeeper.verifier import Verifier

RULES = RuleSet.build(
    [
        Rule("/admin/**", scopes="admin"),
        Rule("/open/**", access="optional"),
        Rule("/items/{id}", methods="DELETE", scopes="items:delete"),
    ],
    exempt=["/public/**"],
)

Serve = Callable[..., Any]


class Endpoint:
    def __init__(self, server: ServerThread, records: list[RequestRecord]) -> None:
        self.server = server
        self.records = records
        self.client = httpx.Client(base_url=server.url, timeout=10)

    def ask(
        self,
        uri: str | None,
        method: str | None = "GET",
        token: str | None = None,
        *,
        path: str = "/auth",
        names: tuple[str, str] = ("X-Original-Method", "X-Original-URI"),
        extra: list[tuple[str, str]] | None = None,
        verb: str = "GET",
    ) -> httpx.Response:
        headers: list[tuple[str, str]] = []
        if method is not None:
            headers.append((names[0], method))
        if uri is not None:
            headers.append((names[1], uri))
        if token is not None:
            headers.append(("Authorization", f"Bearer {token}"))
        headers.extend(extra or [])
        return self.client.request(verb, path, headers=headers)


@pytest.fixture
def verifier(dev_issuer: DevIssuer, clock: Clock) -> Verifier:
    return Verifier(dev_issuer.issuer, jwks=dev_issuer.jwks(), audience="api", clock=clock)


@pytest.fixture
def serve(verifier: Verifier, clock: Clock) -> Iterator[Serve]:
    started: list[Endpoint] = []

    def make(proxy: str = "nginx", profile: str = "rfc6750", **settings: Any) -> Endpoint:
        records: list[RequestRecord] = []
        gate = Gate(verifier, rules=RULES, source=BearerSource.of("bearer_token"))
        app = ForwardAuth(
            gate,
            get_profile(profile),
            ForwardAuthSettings(proxy=proxy, **settings),  # type: ignore[arg-type]
            IdentityHeaders(),
            records.append,
            clock=clock,
        )
        endpoint = Endpoint(ServerThread(app).start(), records)
        started.append(endpoint)
        return endpoint

    yield make
    for endpoint in started:
        endpoint.client.close()
        endpoint.server.stop()


# -- allow --------------------------------------------------------------------------------------


def test_allow_answers_200_with_identity_headers_and_the_upstream_uri(
    serve: Serve, dev_issuer: DevIssuer
) -> None:
    fa = serve()
    token = dev_issuer.mint(subject="alice", scope="read admin", claims={"client_id": "app-1"})
    response = fa.ask(f"/admin/./x//y?a=1&bearer_token={token}&b=%20", token=None)
    assert response.status_code == 200
    assert response.content == b""
    assert response.headers["x-auth-subject"] == "alice"
    assert response.headers["x-auth-client-id"] == "app-1"
    assert response.headers["x-auth-scopes"] == "admin read"
    assert response.headers["x-auth-issuer"] == dev_issuer.issuer
    assert response.headers["cache-control"] == "no-store"
    # the upstream is to see the path the rules saw, without the query token; nginx's
    # configuration reads the URI, so the path alone is not sent
    assert response.headers["x-gatekeeper-uri"] == "/admin/x/y?a=1&b=%20"
    assert "x-gatekeeper-path" not in response.headers
    sent = [name for name, _ in response.headers.multi_items() if name not in ("date", "server")]
    identity = ["x-auth-subject", "x-auth-client-id", "x-auth-scopes", "x-auth-issuer"]
    assert sorted(sent) == sorted([*identity, "x-gatekeeper-uri", "cache-control", "content-length"])
    [record] = fa.records
    assert (record.decision, record.status, record.rule, record.subject) == (
        "allow",
        200,
        "/admin/**",
        "alice",
    )
    assert record.token == fingerprint(token)
    assert token not in repr(record)
    assert record.path == "/admin/x/y?a=1&bearer_token=[redacted]&b=%20"


@pytest.mark.parametrize(
    ("proxy", "sent", "value"),
    [
        ("nginx", "x-gatekeeper-uri", "/admin/x?a=1"),
        ("ingress-nginx", "x-gatekeeper-uri", "/admin/x?a=1"),
        ("traefik", "x-gatekeeper-uri", "/admin/x?a=1"),
        ("envoy", "x-gatekeeper-uri", "/admin/x?a=1"),
        ("caddy", "x-gatekeeper-path", "/admin/x"),
    ],
)
@pytest.mark.parametrize("cache", [0, 60])
def test_an_allow_carries_only_the_upstream_header_its_proxy_uses(
    serve: Serve, dev_issuer: DevIssuer, proxy: str, sent: str, value: str, cache: int
) -> None:
    fa = serve(proxy, decision_cache_seconds=cache)
    token = dev_issuer.mint(scope="admin")
    target = "/admin/./x?a=1&access_token=zzz"  # a token parameter name: never forwarded
    if proxy == "envoy":
        response = fa.ask(None, None, token, path="/auth" + target)
    elif proxy == "ingress-nginx":
        response = fa.ask(
            "https://api.example" + target, token=token, names=("X-Original-Method", "X-Original-URL")
        )
    elif proxy == "nginx":
        response = fa.ask(target, token=token)
    else:
        response = fa.ask(target, token=token, names=("X-Forwarded-Method", "X-Forwarded-Uri"))
    assert response.status_code == 200, response.text
    assert response.headers[sent] == value
    other = ({"x-gatekeeper-uri", "x-gatekeeper-path"} - {sent}).pop()
    assert other not in response.headers
    assert response.headers["cache-control"] == ("no-store" if not cache else "private, max-age=60")
    assert response.headers["content-length"] == "0"
    assert [name for name, _ in response.headers.multi_items()].count(sent) == 1


def test_exempt_route_allows_without_a_token_and_sends_no_identity(serve: Serve) -> None:
    response = serve().ask("/public/x", extra=[("X-Auth-Subject", "admin")])
    assert response.status_code == 200
    # every identity header is there, empty, so a proxy copying it overwrites the client's
    assert response.headers["x-auth-subject"] == ""
    assert response.headers["x-auth-scopes"] == ""


def test_rules_apply_to_the_original_method(serve: Serve, dev_issuer: DevIssuer) -> None:
    fa = serve()
    token = dev_issuer.mint(scope="read")
    assert fa.ask("/items/7", "GET", token).status_code == 200
    denied = fa.ask("/items/7", "DELETE", token)
    assert denied.status_code == 403
    assert denied.headers["x-gatekeeper-status"] == "403"
    # the auth request's own method does not count in nginx mode
    assert fa.ask("/items/7", "GET", token, verb="DELETE").status_code == 200


def test_decision_caching_is_opt_in_and_bounded_by_exp(serve: Serve, dev_issuer: DevIssuer) -> None:
    fa = serve(decision_cache_seconds=600)
    token = dev_issuer.mint(expires_in=120)
    assert fa.ask("/x", token=token).headers["cache-control"] == "private, max-age=120"
    assert fa.ask("/x").headers["cache-control"] == "no-store"  # refusals never cached
    assert fa.ask("/open/x").headers["cache-control"] == "no-store"  # anonymous optional


# -- deny ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("proxy", ["traefik", "caddy"])
def test_deny_is_the_profiles_exact_response(serve: Serve, dev_issuer: DevIssuer, proxy: str) -> None:
    names = ("X-Forwarded-Method", "X-Forwarded-Uri")
    rfc = serve(proxy)
    missing = rfc.ask("/x", names=names)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == 'Bearer realm="api"'
    assert missing.headers["cache-control"] == "no-store"
    scope = rfc.ask("/admin/x", token=dev_issuer.mint(scope="read"), names=names)
    assert scope.status_code == 403
    assert scope.json() == {
        "error": "insufficient_scope",
        "error_description": "The access token lacks the required scope",
        "scope": "admin",
    }
    assert 'error="insufficient_scope"' in scope.headers["www-authenticate"]

    af = serve(proxy, "addressfinder").ask("/x", token="not.a.token", names=names)
    assert af.status_code == 400
    assert af.json()["error_code"] == "1024"
    pw = serve(proxy, "placewise").ask("/x", token=dev_issuer.mint(expires_in=-3600), names=names)
    assert pw.status_code == 460
    assert pw.json() == {"error": "Member not authorized"}


def test_nginx_mode_answers_401_or_403_and_render_gives_the_real_response(
    serve: Serve, dev_issuer: DevIssuer
) -> None:
    fa = serve("nginx", "placewise")
    expired = dev_issuer.mint(expires_in=-3600)
    first = fa.ask("/x", token=expired)
    assert first.status_code == 401  # auth_request passes 401/403 only
    assert first.headers["x-gatekeeper-status"] == "460"
    assert first.content == b""
    rendered = fa.ask("/x", token=expired, path="/auth/render")
    assert rendered.status_code == 460
    assert rendered.json() == {"error": "Member not authorized"}
    assert rendered.headers["cache-control"] == "no-store"
    # the question was reported once, with the status the client ends up with
    assert [(r.decision, r.status, r.error_kind) for r in fa.records] == [("deny", 460, "expired_token")]


def test_render_never_answers_2xx(serve: Serve, dev_issuer: DevIssuer) -> None:
    # The decision changed between the two calls (keys came back): ask the client to retry.
    response = serve().ask("/x", token=dev_issuer.mint(), path="/auth/render")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"


# -- bad input -----------------------------------------------------------------------------------

BYPASS_SHAPES = [
    "/admin%2Fx",
    "/public/..%2Fadmin",
    "/public/%2e%2e/admin",
    "/public/%2E%2E/admin",
    "/public/..%5Cadmin",
    "/public\\..\\admin",
    "/admin%00",
    "/admin;x",
    "/public/%252e%252e/admin",
    "/../admin",
    "admin",
    "/public/x#frag",
    "/admin%ff",
]


@pytest.mark.parametrize("uri", BYPASS_SHAPES)
def test_ambiguous_paths_are_400_in_the_profiles_shape(serve: Serve, uri: str) -> None:
    fa = serve("traefik")
    response = fa.ask(uri, names=("X-Forwarded-Method", "X-Forwarded-Uri"))
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid_request"
    assert body["error_description"].startswith("The request path is ambiguous: ")
    assert 'error="invalid_request"' in response.headers["www-authenticate"]
    [record] = fa.records
    assert (record.decision, record.error_kind, record.status) == ("error", "bad_path", 400)


@pytest.mark.parametrize(
    "uri", ["/admin/../admin/x", "//admin", "/%61dmin", "/admin/./x", "/public/../admin"]
)
def test_normalised_bypass_shapes_land_on_the_admin_rule(
    serve: Serve, dev_issuer: DevIssuer, uri: str
) -> None:
    fa = serve("caddy")
    response = fa.ask(
        uri, token=dev_issuer.mint(scope="read"), names=("X-Forwarded-Method", "X-Forwarded-Uri")
    )
    assert response.status_code == 403
    assert response.json()["scope"] == "admin"


def test_nginx_mode_bad_path_goes_through_render(serve: Serve) -> None:
    fa = serve("nginx", "addressfinder")
    first = fa.ask("/public/..%2Fadmin")
    assert first.status_code == 401
    assert first.headers["x-gatekeeper-status"] == "400"
    rendered = fa.ask("/public/..%2Fadmin", path="/auth/render")
    assert rendered.status_code == 400
    assert rendered.json()["error_code"] == "1024"


def test_missing_original_headers_are_a_clear_400(serve: Serve) -> None:
    fa = serve("traefik")
    response = fa.ask(None, names=("X-Forwarded-Method", "X-Forwarded-Uri"))
    assert response.status_code == 400
    assert response.json() == {
        "error": "missing_original_uri",
        "error_description": "The X-Forwarded-Uri header is missing: "
        "configure the proxy to send it (traefik mode)",
    }
    no_method = fa.ask("/x", None, names=("X-Forwarded-Method", "X-Forwarded-Uri"))
    assert no_method.json()["error"] == "missing_original_method"
    # only the configured proxy's headers are trusted: nginx's are ignored in traefik mode
    assert fa.ask("/x").json()["error"] == "missing_original_uri"


def test_repeated_or_odd_original_headers_are_refused(serve: Serve) -> None:
    fa = serve("traefik")
    names = ("X-Forwarded-Method", "X-Forwarded-Uri")
    repeated = fa.ask("/public/x", names=names, extra=[("X-Forwarded-Uri", "/admin")])
    assert repeated.status_code == 400
    assert "repeated" in repeated.json()["error_description"]
    assert fa.ask("/public/x", "get", names=names).status_code == 400
    assert fa.records[-1].error_kind == "bad_method"
    assert fa.ask("/public/x", "GET /x", names=names).status_code == 400


def test_other_paths_are_404(serve: Serve) -> None:
    fa = serve("traefik")
    assert fa.ask("/x", path="/other").status_code == 404
    assert fa.ask("/x", path="/auth/render").status_code == 404  # render is nginx's only


# -- envoy and ingress-nginx ----------------------------------------------------------------------


def test_envoy_mode_uses_the_path_after_the_prefix_and_its_own_method(
    serve: Serve, dev_issuer: DevIssuer
) -> None:
    fa = serve("envoy", path="/ext-authz")
    token = dev_issuer.mint(scope="read")
    assert fa.ask(None, None, token, path="/ext-authz/admin/x").status_code == 403
    assert fa.ask(None, None, token, path="/ext-authz/items/1", verb="DELETE").status_code == 403
    assert fa.ask(None, None, token, path="/ext-authz/items/1", verb="POST").status_code == 200
    query = fa.ask(None, None, None, path=f"/ext-authz/x?bearer_token={token}")
    assert query.status_code == 200
    assert query.headers["x-gatekeeper-uri"] == "/x"
    assert fa.ask(None, None, None, path="/ext-authz").status_code == 401  # the root, "/"
    bad = fa.ask(None, None, token, path="/ext-authz/public/..%2Fadmin")
    assert bad.status_code == 400


def test_ingress_nginx_mode_reads_the_absolute_original_url(serve: Serve, dev_issuer: DevIssuer) -> None:
    fa = serve("ingress-nginx")
    names = ("X-Original-Method", "X-Original-URL")
    token = dev_issuer.mint(scope="read")
    assert fa.ask("https://api.example/admin/x", token=token, names=names).status_code == 403
    allowed = fa.ask("http://api.example:8080/x?y=1", token=token, names=names)
    assert allowed.status_code == 200
    assert allowed.headers["x-gatekeeper-uri"] == "/x?y=1"
    assert fa.ask("/x", token=token, names=names).headers["x-gatekeeper-status"] == "400"


def test_settings_validation() -> None:
    with pytest.raises(ValueError, match="normal absolute path"):
        ForwardAuthSettings(path="auth")
    with pytest.raises(ValueError, match="proxy must be one of"):
        ForwardAuthSettings(proxy="haproxy")  # type: ignore[arg-type]
    assert ForwardAuthSettings(path="/gk/").render_path == "/gk/render"
    assert json.dumps(ForwardAuthSettings().path) == '"/auth"'


# -- the per-request shortcuts change nothing ---------------------------------------------------

_QUERY_PIECE = st.sampled_from(
    [
        b"a",
        b"x1",
        b"",
        b"%41",
        b"%2",
        b"+",
        b"=",
        b"&",
        b"bearer_token",
        b"%62earer_token",
        b"tok",
        b"\xc3\xa9",
        b" ",
    ]
)


@given(
    query=st.lists(_QUERY_PIECE, max_size=8).map(b"".join),
    names=st.sampled_from([frozenset({"bearer_token"}), frozenset({"bearer_token", "tok"}), frozenset({""})]),
)
@example(query=b"a=1&tok=2", names=frozenset({"bearer_token", "tok"}))
@example(query=b"a=1&b=%41", names=frozenset({"bearer_token"}))
def test_the_kept_query_shortcut_is_exactly_the_full_split(query: bytes, names: frozenset[str]) -> None:
    assert forward_auth._kept_query(query, names) == forward_auth._without_params(query, names)


def test_alternating_cached_tokens_each_get_their_own_identity(serve: Serve, dev_issuer: DevIssuer) -> None:
    fa = serve()
    tokens = {
        name: dev_issuer.mint(subject=name, claims={"client_id": f"app-{name}"}) for name in ("ann", "bob")
    }
    for _ in range(3):  # the second and third rounds are answered from the verified-token cache
        for name, token in tokens.items():
            response = fa.ask("/items/1?x=1", token=token)
            assert response.headers["x-auth-subject"] == name
            assert response.headers["x-auth-client-id"] == f"app-{name}"
            assert fa.records[-1].token == fingerprint(token)
            assert fa.records[-1].client_id == f"app-{name}"
    assert [r.cached for r in fa.records[-2:]] == [True, True]


def test_a_cached_token_is_refused_once_revoked_or_expired(dev_issuer: DevIssuer, clock: Clock) -> None:
    revocations = Revocations(clock=clock)
    verifier = Verifier(
        dev_issuer.issuer, jwks=dev_issuer.jwks(), audience="api", clock=clock, revocations=revocations
    )
    gate = Gate(verifier, rules=RULES, source=BearerSource.of("bearer_token"))
    records: list[RequestRecord] = []
    app = ForwardAuth(gate, get_profile("rfc6750"), ForwardAuthSettings(), IdentityHeaders(), records.append)
    server = ServerThread(app).start()
    try:
        fa = Endpoint(server, records)
        revoked, expiring = dev_issuer.mint(subject="eve"), dev_issuer.mint(subject="kim", expires_in=60)
        for token in (revoked, expiring, revoked, expiring):
            assert fa.ask("/items/1", token=token).status_code == 200
        assert records[-1].cached is True
        revocations.add(Revocation("sub", "eve", None, until=clock() + 3600, before=clock() + 1))
        denied = fa.ask("/items/1", token=revoked)
        assert denied.status_code == 401
        assert "x-auth-subject" not in denied.headers
        assert fa.ask("/items/1", token=expiring).headers["x-auth-subject"] == "kim"
        clock.advance(3600)
        assert fa.ask("/items/1", token=expiring).status_code == 401
        fa.client.close()
    finally:
        server.stop()


def _answer(endpoint: Endpoint, response: httpx.Response) -> tuple[Any, ...]:
    headers = sorted((k, v) for k, v in response.headers.items() if k not in ("date", "server"))
    record = endpoint.records[-1] if endpoint.records else None
    logged = (
        None
        if record is None
        else (record.method, record.path, record.status, record.rule, record.error_kind)
    )
    return response.status_code, headers, response.content, logged


def test_repeated_original_requests_get_the_answers_a_fresh_endpoint_gives(
    serve: Serve, dev_issuer: DevIssuer
) -> None:
    # The parsed original request is remembered per exact (method, URI) input: asking again, in
    # another order, must answer (and log) exactly what an endpoint that remembers nothing does.
    token = dev_issuer.mint(subject="ann", scope="admin items:delete")
    questions = [
        ("GET", "/admin/x?a=1"),
        ("GET", "/admin/x?a=1&bearer_token=zzz&b=%20"),
        ("GET", "/admin/./x//"),
        ("DELETE", "/items/1"),
        ("GET", "/items/1"),
        ("GET", "/admin/%2e%2e/x"),  # refused: never remembered
        ("GET", "/public/%41b?b=+"),
        ("get", "/admin/x"),  # refused method
    ]
    memo = serve()
    first = [_answer(memo, memo.ask(uri, method, token)) for method, uri in questions]
    again = [_answer(memo, memo.ask(uri, method, token)) for method, uri in reversed(questions)][::-1]
    fresh = []
    for method, uri in questions:
        endpoint = serve()
        fresh.append(_answer(endpoint, endpoint.ask(uri, method, token)))
    assert first == again == fresh
    statuses = [answer[0] for answer in first]
    # nginx mode: refusals are 401; two tokens (header and query) are refused
    assert statuses == [200, 401, 200, 200, 200, 401, 200, 401]


def test_remembered_original_requests_are_bounded(
    verifier: Verifier, dev_issuer: DevIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    monkeypatch.setattr(forward_auth, "_MEMO_SIZE", 8)
    gate = Gate(verifier, rules=RULES, source=BearerSource.of("bearer_token"))
    app = ForwardAuth(gate, get_profile("rfc6750"), ForwardAuthSettings(), IdentityHeaders(), lambda r: None)
    token = dev_issuer.mint(subject="ann")

    async def ask(uri: str) -> int:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        headers = [
            (b"x-original-method", b"GET"),
            (b"x-original-uri", uri.encode()),
            (b"authorization", f"Bearer {token}".encode()),
        ]
        await app({"type": "http", "method": "GET", "path": "/auth", "headers": headers}, receive, send)
        status: int = sent[0]["status"]
        return status

    async def scenario() -> None:
        for i in range(20):
            assert await ask(f"/items/{i}") == 200
            assert len(app._seen) <= 8
        app._seen.clear()
        long_uri = "/items/" + "x" * forward_auth._MEMO_TARGET_MAX
        assert await ask(long_uri) == 200
        assert app._seen == {}  # too long to be remembered

    asyncio.run(scenario())


def test_every_record_field_for_allow_anonymous_allow_and_deny(serve: Serve, dev_issuer: DevIssuer) -> None:
    # The records are built positionally on the hot path: each field must land where it belongs.
    from dataclasses import asdict

    fa = serve()
    token = dev_issuer.mint(subject="ann", scope="read", claims={"client_id": "app-9"})
    fa.ask("/open/x?q=1", token=token)  # verified (optional route)
    fa.ask("/open/x?q=1", token=token)  # cached
    fa.ask("/public/y", method="POST")  # exempt: anonymous
    fa.ask("/admin/z", token=token)  # deny: insufficient_scope
    base = {"door": "forward_auth", "upstream_status": None, "upstream_latency": None}
    verified = {
        **base, "method": "GET", "path": "/open/x?q=1", "status": 200, "decision": "allow",
        "rule": "/open/**", "error_kind": None, "issuer": dev_issuer.issuer, "subject": "ann",
        "client_id": "app-9", "token": fingerprint(token), "cached": False,
    }  # fmt: skip
    expected = [
        verified,
        {**verified, "cached": True},
        {
            **base, "method": "POST", "path": "/public/y", "status": 200, "decision": "allow",
            "rule": "/public/**", "error_kind": None, "issuer": None, "subject": None,
            "client_id": None, "token": None, "cached": False,
        },
        {
            **base, "method": "GET", "path": "/admin/z", "status": 403, "decision": "deny",
            "rule": "/admin/**", "error_kind": "insufficient_scope", "issuer": dev_issuer.issuer,
            "subject": None, "client_id": None, "token": fingerprint(token), "cached": None,
        },
    ]  # fmt: skip
    got = [asdict(record) for record in fa.records]
    for record in got:
        assert record.pop("latency") >= record.pop("decision_latency") >= 0
    assert got == expected
