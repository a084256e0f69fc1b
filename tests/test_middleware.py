"""GatekeeperMiddleware over HTTP, through real ASGI calls (httpx.ASGITransport, hand-driven
ASGI messages and Starlette's TestClient for lifespan): Starlette's auth conventions, route
rules, principal hooks, every error profile's responses, the rejection log and bad input."""

from __future__ import annotations

import json
import logging
import random
import warnings
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from conftest import Clock
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, BaseUser, requires
from starlette.endpoints import HTTPEndpoint
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gatekeeper.claims import Claims
from gatekeeper.devserver import IssuerServer
from gatekeeper.errors import AuthError
from gatekeeper.issuer import DevIssuer
from gatekeeper.middleware import GatekeeperMiddleware, TokenAuth, TokenUser, requires_scopes
from gatekeeper.redact import fingerprint
from gatekeeper.rules import Rule
from gatekeeper.verifier import Verifier

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Starlette deprecates TestClient-on-httpx at import
    from starlette.testclient import TestClient

NOW = 1_700_000_000.0
PROFILES = ["rfc6750", "placepoint", "addressfinder", "placewise"]
CLIENT = "127.0.0.1:123"  # what httpx.ASGITransport puts in scope["client"]

pytestmark = pytest.mark.usefixtures("fast_path_implementation")


def clock() -> float:
    return NOW  # tests never wait: expired tokens are minted expired


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def start_server(*, status: int = 200) -> IssuerServer:
    server = IssuerServer()
    server.issuer = DevIssuer(server.url, algorithms=("ES256",), clock=clock)
    server.status = status
    return server.start()


@pytest.fixture(scope="module")
def server() -> Iterator[IssuerServer]:
    """The identity provider: a real JWKS server on 127.0.0.1 with an ES256 issuer."""
    srv = start_server()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def down_server() -> Iterator[IssuerServer]:
    """An identity provider whose JWKS endpoint answers 500: no keys can be had."""
    srv = start_server(status=500)
    yield srv
    srv.stop()


def remote_verifier(srv: IssuerServer) -> Verifier:
    return Verifier(srv.url, jwks_url=srv.jwks_url, audience="api", clock=clock)


@pytest.fixture(scope="module")
def loaded_verifiers(server: IssuerServer, down_server: IssuerServer) -> Iterator[dict[str, Verifier]]:
    """Verifiers whose keys were fetched (or failed to be) once, up front, for the many-case
    tests: on the frozen clock they never fetch again, so each case costs no HTTP client."""
    verifiers = {"up": remote_verifier(server), "down": remote_verifier(down_server)}
    for v in verifiers.values():
        v.prefetch_sync()
    assert verifiers["up"].status()[0]["usable"]
    assert not verifiers["down"].status()[0]["usable"]
    yield verifiers
    for v in verifiers.values():
        v.close()


@pytest.fixture
async def verifier(server: IssuerServer) -> AsyncIterator[Verifier]:
    v = remote_verifier(server)
    yield v
    await v.aclose()


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


# -- the app behind the middleware ---------------------------------------------------------------


async def whoami(request: Request) -> JSONResponse:
    user, auth = request.user, request.auth
    claims = getattr(auth, "claims", None)
    principal = getattr(user, "principal", None)
    return JSONResponse(
        {
            "authenticated": user.is_authenticated,
            "identity": user.identity,
            "display_name": user.display_name,
            "scopes": auth.scopes,
            "sub": None if claims is None else claims["sub"],
            "principal": None if principal is None else str(principal),
        }
    )


@requires("admin")
async def starlette_admin(request: Request) -> PlainTextResponse:
    return PlainTextResponse("admin ok")


@requires_scopes("write")
async def scoped(request: Request) -> PlainTextResponse:
    return PlainTextResponse("write ok")


@requires_scopes(["read", "admin"], mode="any")
def scoped_sync(request: Request) -> PlainTextResponse:
    return PlainTextResponse("sync ok")


class ScopedEndpoint(HTTPEndpoint):
    @requires_scopes("write read")
    async def get(self, request: Request) -> PlainTextResponse:
        return PlainTextResponse("endpoint ok")


ROUTES = [
    Route("/starlette-admin", starlette_admin),
    Route("/scoped", scoped),
    Route("/public/scoped", scoped),
    Route("/scoped-sync", scoped_sync),
    Route("/scoped-endpoint", ScopedEndpoint),
    Route("/{path:path}", whoami, methods=["GET", "POST", "DELETE"]),
]


def make_app(verifier: Verifier, **options: Any) -> GatekeeperMiddleware:
    return GatekeeperMiddleware(Starlette(routes=ROUTES), verifier=verifier, **options)


async def call(
    app: ASGIApp,
    path: str = "/",
    *,
    method: str = "GET",
    headers: Sequence[tuple[str, str]] = (),
    params: dict[str, str] | None = None,
) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return await client.request(method, path, headers=list(headers), params=params)


# -- the log ---------------------------------------------------------------------------------------


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "gatekeeper.access"]


def assert_no_token_in_logs(caplog: pytest.LogCaptureFixture, *tokens: str | None) -> None:
    """No record (message, args or extra fields) carries a token or its payload segment.

    The test's own httpx client logs the URLs it requests (with any query token): those
    records are the test harness, not gatekeeper, and are left out.
    """
    secrets = []
    for token in tokens:
        if token:
            secrets.append(token)
            secrets.extend(part for part in token.split(".")[:2] if len(part) >= 8)
    for record in caplog.records:
        if record.name.startswith(("httpx", "httpcore")):
            continue
        text = record.getMessage() + repr(record.args) + repr(vars(record))
        for secret in secrets:
            assert secret not in text, f"token material in a {record.name} record"


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="gatekeeper")
    return caplog


# -- Starlette's conventions -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_user_and_auth_follow_starlette_conventions(
    server: IssuerServer, verifier: Verifier, log: pytest.LogCaptureFixture
) -> None:
    token = server.issuer.mint(subject="svc-7", scope="read write")
    response = await call(make_app(verifier), "/me", headers=bearer(token))
    assert response.status_code == 200
    assert response.json() == {
        "authenticated": True,
        "identity": "svc-7",
        "display_name": "svc-7",
        "scopes": ["read", "write"],
        "sub": "svc-7",
        "principal": None,
    }
    assert access_records(log) == []  # accepted requests are not logged


@pytest.mark.anyio
async def test_default_profile_is_rfc6750(verifier: Verifier) -> None:
    response = await call(make_app(verifier), "/me")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="api"'
    assert response.json() == {"error_description": "A bearer token is required"}


@pytest.mark.anyio
async def test_starlette_requires_allows_and_denies(server: IssuerServer, verifier: Verifier) -> None:
    app = make_app(verifier)
    allowed = await call(app, "/starlette-admin", headers=bearer(server.issuer.mint(scope="admin")))
    assert (allowed.status_code, allowed.text) == (200, "admin ok")
    denied = await call(app, "/starlette-admin", headers=bearer(server.issuer.mint(scope="read")))
    # requires() without redirect raises HTTPException(403): Starlette's own plain response.
    assert denied.status_code == 403
    assert denied.text == "Forbidden"
    assert "location" not in denied.headers


@pytest.mark.anyio
async def test_middleware_class_form_with_addressfinder_and_query_param(server: IssuerServer) -> None:
    verifier = remote_verifier(server)
    app = Starlette(
        routes=ROUTES,
        middleware=[
            Middleware(
                GatekeeperMiddleware, verifier=verifier, errors="addressfinder", query_param="bearer_token"
            )
        ],
    )
    try:
        token = server.issuer.mint(subject="project-1", scope="read")
        ok = await call(app, "/me", params={"bearer_token": token})
        assert ok.status_code == 200
        assert ok.json()["identity"] == "project-1"
        denied = await call(app, "/me")
        assert denied.status_code == 400
        assert denied.json() == {
            "completions": [],
            "message": "Invalid or expired bearer token",
            "error_code": "1024",
            "success": False,
        }
    finally:
        await verifier.aclose()


# -- route requirements ----------------------------------------------------------------------------


ITEM_RULES = [
    Rule("/items/**", scopes=["items:write", "admin"], methods=["POST", "DELETE"]),
    Rule("/items/**", scopes=["items:read", "admin"], mode="any"),
    Rule("/public/**", access="optional"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("method", "path", "scope", "status"),
    [
        ("POST", "/items/1", "items:write admin", 200),
        ("POST", "/items/1", "items:write", 403),  # mode all: both needed
        ("DELETE", "/items", "admin", 403),  # "/items/**" covers "/items" itself
        ("GET", "/items/1", "admin", 200),  # mode any: one is enough
        ("GET", "/items/1", "items:read", 200),
        ("GET", "/items/1", "other", 403),
        ("HEAD", "/items/1", "other", 403),  # HEAD is held to the GET rule
        ("GET", "/elsewhere", "", 200),  # the default: any good token
        ("GET", "/health", "", 200),
    ],
)
async def test_rules_by_path_and_method(
    server: IssuerServer, verifier: Verifier, method: str, path: str, scope: str, status: int
) -> None:
    app = make_app(verifier, rules=ITEM_RULES, exempt=["/health"])
    response = await call(app, path, method=method, headers=bearer(server.issuer.mint(scope=scope)))
    assert response.status_code == status
    if status == 403:
        assert 'error="insufficient_scope"' in response.headers["www-authenticate"]


@pytest.mark.anyio
async def test_insufficient_scope_names_the_rule_scopes(server: IssuerServer, verifier: Verifier) -> None:
    app = make_app(verifier, rules=ITEM_RULES)
    response = await call(app, "/items/1", headers=bearer(server.issuer.mint(scope="other")))
    assert response.json() == {
        "error": "insufficient_scope",
        "error_description": "The access token lacks the required scope",
        "scope": "items:read admin",
    }


@pytest.mark.anyio
async def test_default_scopes(server: IssuerServer, verifier: Verifier) -> None:
    app = make_app(verifier, scopes=["api"], exempt=["/health"])
    assert (await call(app, "/x", headers=bearer(server.issuer.mint(scope="api")))).status_code == 200
    assert (await call(app, "/x", headers=bearer(server.issuer.mint(scope="read")))).status_code == 403


@pytest.mark.anyio
async def test_exempt_paths_are_not_looked_at(verifier: Verifier, log: pytest.LogCaptureFixture) -> None:
    app = make_app(verifier, exempt=["/health", "/status/*"])
    for headers in (
        [],
        [("authorization", "Bearer garbage!")],
        [("authorization", "x"), ("authorization", "y")],
    ):
        response = await call(app, "/health", headers=headers)
        assert response.status_code == 200
        assert response.json()["authenticated"] is False  # request.user works: anonymous
        assert response.json()["scopes"] == []
    assert (await call(app, "/status/db")).status_code == 200
    assert (await call(app, "/status/db/x")).status_code == 401
    assert (await call(app, "/healthz")).status_code == 401
    assert len(access_records(log)) == 2


@pytest.mark.anyio
async def test_optional_authentication(server: IssuerServer, verifier: Verifier) -> None:
    app = make_app(verifier, rules=ITEM_RULES)
    anonymous = await call(app, "/public/page")
    assert anonymous.status_code == 200
    assert anonymous.json() == {
        "authenticated": False,
        "identity": "",
        "display_name": "",
        "scopes": [],
        "sub": None,
        "principal": None,
    }
    token = server.issuer.mint(subject="reader", scope="read")
    known = await call(app, "/public/page", headers=bearer(token))
    assert known.status_code == 200
    assert known.json()["sub"] == "reader"
    assert known.json()["authenticated"] is True
    # A bad token on an optional route is still rejected, not treated as anonymous.
    expired = await call(app, "/public/page", headers=bearer(server.issuer.mint(expires_in=-3600)))
    assert expired.status_code == 401
    assert 'error="invalid_token"' in expired.headers["www-authenticate"]
    malformed = await call(app, "/public/page", headers=[("authorization", "Bearer a b")])
    assert malformed.status_code == 400
    # Optional for the whole app:
    everywhere = make_app(verifier, optional=True)
    assert (await call(everywhere, "/anything")).json()["authenticated"] is False


@pytest.mark.anyio
async def test_an_auth_error_from_the_app_is_not_a_rejection(
    verifier: Verifier, log: pytest.LogCaptureFixture
) -> None:
    """The middleware answers only for its own checks: an AuthError the app raises (here after
    starting its response, on an optional route) propagates, unlogged and unanswered."""

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise AuthError("insufficient_scope")

    app = GatekeeperMiddleware(endpoint, verifier=verifier, optional=True)
    with pytest.raises(AuthError):
        await call(app, "/stream")
    assert access_records(log) == []


@pytest.mark.anyio
async def test_rules_see_the_path_under_root_path(server: IssuerServer, verifier: Verifier) -> None:
    """Mounted under /api, rules are written as the mounted app routes: "/health", "/admin/**"."""
    inner = make_app(verifier, exempt=["/health"], rules=[Rule("/admin/**", scopes=["admin"])])
    outer = Starlette(routes=[Mount("/api", app=inner)])
    assert (await call(outer, "/api/health")).status_code == 200
    reader = bearer(server.issuer.mint(scope="read"))
    assert (await call(outer, "/api/admin/users", headers=reader)).status_code == 403
    admin = bearer(server.issuer.mint(scope="admin"))
    assert (await call(outer, "/api/admin/users", headers=admin)).status_code == 200


# -- requires_scopes ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_requires_scopes_answers_in_the_configured_profile(
    server: IssuerServer, verifier: Verifier, log: pytest.LogCaptureFixture
) -> None:
    app = make_app(verifier, errors="placepoint", rules=[Rule("/public/**", access="optional")])
    writer = server.issuer.mint(scope="write")
    ok = await call(app, "/scoped", headers=bearer(writer))
    assert (ok.status_code, ok.text) == (200, "write ok")
    reader = server.issuer.mint(scope="read")
    denied = await call(app, "/scoped", headers=bearer(reader))
    assert denied.status_code == 401  # Placepoint has no 403
    assert denied.json() == {"error": {"code": 401, "message": "The access token lacks the required scope"}}
    assert denied.headers["www-authenticate"] == (
        'Bearer realm="api", error="insufficient_scope", '
        'error_description="The access token lacks the required scope", scope="write"'
    )
    # On an optional route without a token the decorator asks for one.
    anonymous = await call(app, "/public/scoped")
    assert anonymous.json() == {"error": {"code": 401, "message": "A bearer token is required"}}
    [first, second] = access_records(log)
    assert first.gatekeeper["kind"] == "insufficient_scope"  # type: ignore[attr-defined]
    assert first.gatekeeper["token"] == fingerprint(reader)  # type: ignore[attr-defined]
    assert first.gatekeeper["issuer"] == server.url  # type: ignore[attr-defined]
    assert second.gatekeeper["kind"] == "missing_token"  # type: ignore[attr-defined]
    assert_no_token_in_logs(log, reader, writer)


@pytest.mark.anyio
async def test_requires_scopes_on_sync_endpoints_and_endpoint_methods(
    server: IssuerServer, verifier: Verifier
) -> None:
    app = make_app(verifier)
    admin, other = bearer(server.issuer.mint(scope="admin")), bearer(server.issuer.mint(scope="other"))
    assert (await call(app, "/scoped-sync", headers=admin)).text == "sync ok"
    assert (await call(app, "/scoped-sync", headers=other)).status_code == 403
    both = bearer(server.issuer.mint(scope="read write"))
    assert (await call(app, "/scoped-endpoint", headers=both)).text == "endpoint ok"
    write_only = bearer(server.issuer.mint(scope="write"))
    assert (await call(app, "/scoped-endpoint", headers=write_only)).status_code == 403
    assert (await call(app, "/scoped-endpoint", headers=other)).status_code == 403


@pytest.mark.anyio
async def test_requires_scopes_without_the_middleware_is_a_configuration_error() -> None:
    app = Starlette(routes=ROUTES)
    with pytest.raises(RuntimeError, match="GatekeeperMiddleware"):
        await call(app, "/scoped")


# -- principal hook -------------------------------------------------------------------------------


class Project:
    def __init__(self, name: str) -> None:
        self.name = name

    def __str__(self) -> str:
        return f"project:{self.name}"


PROJECTS = {"client-a": Project("a")}


def sync_hook(claims: Claims) -> Project | None:
    return PROJECTS.get(claims["sub"])


async def async_hook(claims: Claims) -> Project | None:
    return PROJECTS.get(claims["sub"])


@pytest.mark.anyio
@pytest.mark.parametrize("hook", [sync_hook, async_hook], ids=["sync", "async"])
async def test_principal_hook(
    server: IssuerServer,
    verifier: Verifier,
    log: pytest.LogCaptureFixture,
    hook: Callable[[Claims], Any],
) -> None:
    app = make_app(verifier, errors="addressfinder", principal=hook)
    known = await call(app, "/me", headers=bearer(server.issuer.mint(subject="client-a")))
    assert known.status_code == 200
    assert known.json()["principal"] == "project:a"  # request.user.principal
    stranger = server.issuer.mint(subject="client-z")
    unknown = await call(app, "/me", headers=bearer(stranger))
    assert unknown.status_code == 400
    assert unknown.content == (
        b'{"completions":[],"message":"Project not found for bearer token",'
        b'"error_code":"1025","success":false}'
    )
    [record] = access_records(log)
    fields = record.gatekeeper  # type: ignore[attr-defined]
    assert fields["kind"] == "unknown_principal"
    assert fields["issuer"] == server.url
    assert fields["kid"] == server.issuer.jwks()["keys"][0]["kid"]


@pytest.mark.anyio
async def test_principal_hook_errors_get_issuer_and_kid(
    server: IssuerServer, verifier: Verifier, log: pytest.LogCaptureFixture
) -> None:
    def revoked(claims: Claims) -> Any:
        raise AuthError("revoked_token")

    app = make_app(verifier, principal=revoked)
    response = await call(app, "/me", headers=bearer(server.issuer.mint()))
    assert response.status_code == 401
    assert response.json() == {
        "error": "invalid_token",
        "error_description": "The access token has been revoked",
    }
    [record] = access_records(log)
    assert record.gatekeeper["kind"] == "revoked_token"  # type: ignore[attr-defined]
    assert record.gatekeeper["issuer"] == server.url  # type: ignore[attr-defined]
    assert record.gatekeeper["kid"] is not None  # type: ignore[attr-defined]


def test_token_auth_scopes_are_a_list_like_starlettes() -> None:
    claims = Claims({"sub": "abc", "exp": 1}, frozenset({"b", "a"}), issuer="i", kid=None)
    auth = TokenAuth(claims)
    assert isinstance(auth, AuthCredentials)
    assert auth.scopes == ["a", "b"]
    auth.scopes.append("c")  # a list, kept: as mutable as Starlette's own
    assert auth.scopes == ["a", "b", "c"]
    auth.scopes = ["x"]
    assert auth.scopes == ["x"]
    assert auth.claims is claims


def test_token_user_identity() -> None:
    claims = Claims({"sub": "abc", "exp": 1}, frozenset(), issuer="i", kid=None)
    user = TokenUser(claims, principal="p")
    assert (user.is_authenticated, user.identity, user.display_name, user.principal) == (
        True,
        "abc",
        "abc",
        "p",
    )


@pytest.mark.anyio
async def test_cached_requests_each_get_their_own_user_and_auth(
    server: IssuerServer, verifier: Verifier
) -> None:
    seen: list[tuple[Any, Any]] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((scope["user"], scope["auth"]))
        scope["auth"].scopes.append("added-by-app")  # must not leak into the next request
        await PlainTextResponse("ok")(scope, receive, send)

    app = GatekeeperMiddleware(inner, verifier=verifier)
    token = server.issuer.mint(subject="u1", scope="read")
    for _ in range(3):
        assert (await call(app, "/x", headers=bearer(token))).status_code == 200
    # The second and third requests took the hot path.
    assert app.gate.cached(app.rules.default, [(b"authorization", f"Bearer {token}".encode())]) is not None
    assert len({id(user) for user, _ in seen}) == 3
    for user, auth in seen:
        assert user is auth  # one object serves as both
        assert isinstance(user, TokenUser)
        assert isinstance(user, BaseUser)
        assert isinstance(auth, TokenAuth)
        assert isinstance(auth, AuthCredentials)
        assert (user.is_authenticated, user.identity, user.principal) == (True, "u1", None)
        assert auth.claims["sub"] == "u1"
        assert auth.scopes == ["read", "added-by-app"]


@pytest.mark.anyio
async def test_requires_scopes_on_the_hot_path(server: IssuerServer, verifier: Verifier) -> None:
    # The first request with a token takes the slow path, the next ones the hot path (which
    # stores no scope["gatekeeper"]): the decorator answers both the same way.
    app = make_app(verifier, errors="placepoint")
    writer, reader = server.issuer.mint(scope="write"), server.issuer.mint(scope="read")
    allowed = [await call(app, "/scoped", headers=bearer(writer)) for _ in range(3)]
    refused = [await call(app, "/scoped", headers=bearer(reader)) for _ in range(3)]
    assert app.gate.cached(app.rules.default, [(b"authorization", f"Bearer {reader}".encode())]) is not None
    assert [(r.status_code, r.text) for r in allowed] == [(200, "write ok")] * 3
    first = refused[0]
    assert first.status_code == 401  # Placepoint has no 403
    for response in refused:
        assert (response.status_code, response.content) == (first.status_code, first.content)
        assert response.headers.get("www-authenticate") == first.headers.get("www-authenticate")


def test_uvicorn_serves_it_as_an_asgi3_app(dev_issuer: DevIssuer) -> None:
    # __call__ is a plain function returning the coroutine to await; uvicorn must still tell
    # it from an ASGI 2 app (which it would call with the scope alone).
    uvicorn = pytest.importorskip("uvicorn")
    verifier = Verifier(dev_issuer.issuer, jwks=dev_issuer.jwks(), audience="api")
    config = uvicorn.Config(GatekeeperMiddleware(Starlette(), verifier=verifier))
    config.load()
    assert config.interface == "asgi3"


@pytest.mark.anyio
async def test_each_middleware_serves_its_own_call_and_subclasses_still_work(
    dev_issuer: DevIssuer, clock: Clock
) -> None:
    # __call__ is a closure per instance (a per-instance subclass's staticmethod): two
    # middlewares keep their own settings, and a subclass with its own __init__ still works.
    verifier = Verifier(dev_issuer.issuer, jwks=dev_issuer.jwks(), audience="api", clock=clock)

    class Audited(GatekeeperMiddleware):
        def __init__(self, app: ASGIApp, **options: Any) -> None:
            self.audited = True
            super().__init__(app, **options)

    strict = Audited(Starlette(routes=ROUTES), verifier=verifier, scopes="admin")
    lenient = make_app(verifier)
    assert isinstance(strict, Audited)
    assert isinstance(strict, GatekeeperMiddleware)
    assert type(strict).__name__ == "Audited"
    assert strict.audited
    assert type(strict).__call__ is not type(lenient).__call__
    token = bearer(dev_issuer.mint(subject="u1", scope="read"))
    for _ in range(2):  # the second request is the hot path
        assert (await call(lenient, "/x", headers=token)).status_code == 200
        assert (await call(strict, "/x", headers=token)).status_code == 403


# -- every profile, every kind ---------------------------------------------------------------------

STATUS = {
    "rfc6750": {"invalid_request": 400, "insufficient_scope": 403, "keys_unavailable": 503},
    "placepoint": {"invalid_request": 400, "keys_unavailable": 500},
    "addressfinder": {"keys_unavailable": 503},
    "placewise": {"invalid_request": 400, "keys_unavailable": 503},
}
DEFAULT_STATUS = {"rfc6750": 401, "placepoint": 401, "addressfinder": 400, "placewise": 460}
# Statuses that carry the RFC 6750 challenge; RFC 6750's own 400 (invalid_request) does too.
CHALLENGED = {"rfc6750": {400, 401, 403}}
RFC6750_CODE = {
    "missing_token": None,
    "invalid_request": "invalid_request",
    "insufficient_scope": "insufficient_scope",
    "keys_unavailable": None,
}
DESCRIPTION = {
    "missing_token": "A bearer token is required",
    "invalid_token": "The token signature is invalid",
    "expired_token": "The access token has expired",
    "insufficient_scope": "The access token lacks the required scope",
    "unknown_principal": "The access token does not belong to a known principal",
    "revoked_token": "The access token has been revoked",
    "keys_unavailable": "The token signing keys are temporarily unavailable",
}


def expected_status(profile: str, kind: str) -> int:
    return STATUS[profile].get(kind, DEFAULT_STATUS[profile])


def expected_body(profile: str, kind: str, description: str) -> dict[str, Any]:
    status = expected_status(profile, kind)
    if profile == "rfc6750":
        if kind == "keys_unavailable":
            return {"error": "temporarily_unavailable", "error_description": description}
        code = RFC6750_CODE.get(kind, "invalid_token")
        body: dict[str, Any] = {} if code is None else {"error": code}
        body["error_description"] = description
        if kind == "insufficient_scope":
            body["scope"] = "write"
        return body
    if profile == "placepoint":
        return {"error": {"code": status, "message": description}}
    if profile == "addressfinder":
        if kind == "keys_unavailable":
            return {
                "completions": [],
                "message": "Token verification is temporarily unavailable",
                "success": False,
            }
        if kind == "unknown_principal":
            return {
                "completions": [],
                "message": "Project not found for bearer token",
                "error_code": "1025",
                "success": False,
            }
        message = "Invalid or expired bearer token"
        if kind == "insufficient_scope":
            message = "Bearer token lacks the required scope: write"
        return {"completions": [], "message": message, "error_code": "1024", "success": False}
    return {
        "keys_unavailable": {"error": "Service unavailable"},
        "invalid_request": {"error": "Invalid request"},
    }.get(kind, {"error": "Member not authorized"})


def expected_challenge(kind: str, description: str) -> str:
    code = RFC6750_CODE.get(kind, "invalid_token")
    if code is None:
        return 'Bearer realm="api"'
    challenge = f'Bearer realm="api", error="{code}", error_description="{description}"'
    return challenge + (', scope="write"' if kind == "insufficient_scope" else "")


def hook(claims: Claims) -> Any:
    if claims["sub"] == "revoked":
        raise AuthError("revoked_token")
    return None if claims["sub"] == "nobody" else claims["sub"]


def forged(server: IssuerServer) -> str:
    """A token naming the issuer's real key id, signed by another key."""
    kid = server.issuer.jwks()["keys"][0]["kid"]
    impostor = DevIssuer(server.url, algorithms=(), clock=clock)
    impostor.add_key("ES256", kid=kid)
    return impostor.mint(kid=kid)


# (case, kind, transport-sensitive, description of invalid_request)
CASES: list[tuple[str, str, bool, str | None]] = [
    ("missing", "missing_token", False, None),
    ("two-ways", "invalid_request", False, "The token was sent in more than one way"),
    ("two-headers", "invalid_request", False, "Only one Authorization header is allowed"),
    ("malformed-header", "invalid_request", False, "The Authorization header is malformed"),
    ("forged", "invalid_token", True, None),
    ("expired", "expired_token", True, None),
    ("insufficient", "insufficient_scope", True, None),
    ("unknown-principal", "unknown_principal", True, None),
    ("revoked", "revoked_token", True, None),
    ("keys-down", "keys_unavailable", True, None),
]
MATRIX = [
    pytest.param(case, kind, transport, description, id=f"{case}-{transport}")
    for case, kind, by_transport, description in CASES
    for transport in (["header", "query"] if by_transport else ["-"])
]


@pytest.mark.anyio
@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize(("case", "kind", "transport", "description"), MATRIX)
async def test_every_profile_every_kind(
    server: IssuerServer,
    down_server: IssuerServer,
    loaded_verifiers: dict[str, Verifier],
    log: pytest.LogCaptureFixture,
    profile: str,
    case: str,
    kind: str,
    transport: str,
    description: str | None,
) -> None:
    idp = down_server if case == "keys-down" else server
    path = "/write" if case == "insufficient" else "/me"
    token: str | None = {
        "forged": lambda: forged(server),
        "expired": lambda: server.issuer.mint(expires_in=-3600),
        "insufficient": lambda: server.issuer.mint(scope="read"),
        "unknown-principal": lambda: server.issuer.mint(subject="nobody"),
        "revoked": lambda: server.issuer.mint(subject="revoked"),
        "keys-down": lambda: down_server.issuer.mint(),
        "two-ways": lambda: server.issuer.mint(),
    }.get(case, lambda: None)()
    headers: list[tuple[str, str]] = []
    params: dict[str, str] = {}
    if case == "two-ways":
        assert token is not None
        headers, params = bearer(token), {"bearer_token": token}
    elif case == "two-headers":
        headers = bearer(server.issuer.mint()) + bearer(server.issuer.mint())
    elif case == "malformed-header":
        headers = [("authorization", "Bearer not a token")]
    elif token is not None and transport == "header":
        headers = bearer(token)
    elif token is not None:
        params = {"bearer_token": token}

    app = make_app(
        loaded_verifiers["down" if case == "keys-down" else "up"],
        errors=profile,
        query_param="bearer_token",
        rules=[Rule("/write", scopes=["write"])],
        principal=hook,
    )
    response = await call(app, path, headers=headers, params=params or None)

    description = description or DESCRIPTION[kind]
    status = expected_status(profile, kind)
    assert response.status_code == status
    assert response.json() == expected_body(profile, kind, description)
    names = {"content-type", "content-length", "cache-control"}
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["content-length"] == str(len(response.content))
    if status in CHALLENGED.get(profile, {401, 403}):
        names.add("www-authenticate")
        assert response.headers["www-authenticate"] == expected_challenge(kind, description)
    if kind == "keys_unavailable":
        names.add("retry-after")
        assert response.headers["retry-after"] == "5"  # the fetch policy's retry interval
    assert set(response.headers) == names

    [record] = access_records(log)  # exactly one record per rejected request
    fields = record.gatekeeper  # type: ignore[attr-defined]
    assert fields["kind"] == kind
    assert fields["client"] == CLIENT
    assert fields["method"] == "GET"
    assert record.levelno == (logging.WARNING if kind == "keys_unavailable" else logging.INFO)
    if case == "two-ways":
        assert fields["path"] == "/me?bearer_token=[redacted]"
    elif params:
        assert fields["path"] == f"{path}?bearer_token=[redacted]"
    else:
        assert fields["path"] == path
    if transport != "-":
        assert fields["token"] == fingerprint(token or "")
        assert fields["issuer"] == idp.url
    if kind in ("invalid_token", "insufficient_scope", "unknown_principal", "revoked_token"):
        assert fields["kid"] == server.issuer.jwks()["keys"][0]["kid"]
    assert_no_token_in_logs(log, token, *(value for _, value in headers))


# -- the rejection log ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_log_redacts_query_tokens_and_escapes_the_path(
    server: IssuerServer, verifier: Verifier, log: pytest.LogCaptureFixture
) -> None:
    app = make_app(verifier, query_param="bearer_token")
    token = server.issuer.mint(expires_in=-3600)
    # A token in a parameter the middleware does not read (access_token) is redacted too.
    await call(app, "/x", params={"access_token": token, "page": "2"})
    await call(app, "/a%0D%0Aforged%20log%20line", params={"bearer_token": token})  # path: CR LF
    await call(app, "/" + "p" * 5000)
    first, second, third = (r.gatekeeper for r in access_records(log))  # type: ignore[attr-defined]
    assert first["path"] == "/x?access_token=[redacted]&page=2"
    assert first["kind"] == "missing_token"
    assert first["token"] is None
    assert second["path"] == "/a\\x0d\\x0aforged log line?bearer_token=[redacted]"
    assert second["token"] == fingerprint(token)
    assert len(third["path"]) < 600
    for record in access_records(log):
        assert "\n" not in record.getMessage()
    assert_no_token_in_logs(log, token)


@pytest.mark.anyio
async def test_log_message_and_ipv6_client(verifier: Verifier, log: pytest.LogCaptureFixture) -> None:
    app = make_app(verifier)
    status, _, _ = await raw_http(app, path="/v", client=("::1", 4000))
    assert status == 401
    [record] = access_records(log)
    assert record.getMessage() == (
        "rejected GET /v: missing_token (issuer=None kid=None token=None client=[::1]:4000)"
    )


# -- lifespan --------------------------------------------------------------------------------------


class Lifecycle:
    """An inner app's own lifespan, noting what it saw; and counting the verifier's closes."""

    def __init__(self, idp: IssuerServer, verifier: Verifier) -> None:
        self.events: list[str] = []
        self.closes = 0
        self.idp = idp
        real_aclose = verifier.aclose

        async def aclose() -> None:
            self.closes += 1
            await real_aclose()

        verifier.aclose = aclose  # type: ignore[method-assign]

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.events.append(f"startup: jwks fetched {self.idp.requests()}x")
        yield
        self.events.append(f"shutdown: closes {self.closes}")


@pytest.mark.parametrize("form", ["wrapped", "Middleware()"])
def test_lifespan_loads_keys_at_startup_and_closes_at_shutdown(form: str) -> None:
    idp = start_server()
    try:
        verifier = remote_verifier(idp)
        life = Lifecycle(idp, verifier)
        app: ASGIApp
        if form == "wrapped":
            app = GatekeeperMiddleware(Starlette(routes=ROUTES, lifespan=life.lifespan), verifier=verifier)
        else:
            app = Starlette(
                routes=ROUTES,
                lifespan=life.lifespan,
                middleware=[Middleware(GatekeeperMiddleware, verifier=verifier)],
            )
        with TestClient(app) as client:
            # Keys were fetched once, during startup and before the app's own startup code.
            assert life.events == ["startup: jwks fetched 1x"]
            assert idp.requests() == 1
            for _ in range(3):
                response = client.get("/me", headers=dict(bearer(idp.issuer.mint())))
                assert response.status_code == 200
            assert idp.requests() == 1
            assert life.closes == 0
        # The app's shutdown ran, then the verifier's clients were closed.
        assert life.events == ["startup: jwks fetched 1x", "shutdown: closes 0"]
        assert life.closes == 1
    finally:
        idp.stop()


def test_lifespan_without_prefetch_and_with_keys_down(down_server: IssuerServer) -> None:
    verifier = remote_verifier(down_server)
    before = down_server.requests()
    app = GatekeeperMiddleware(Starlette(routes=ROUTES), verifier=verifier, prefetch_keys=False)
    with TestClient(app) as client:
        assert down_server.requests() == before
        assert client.get("/me", headers=dict(bearer(down_server.issuer.mint()))).status_code == 503
    # A failing fetch at startup does not fail the startup: requests get keys_unavailable.
    app = GatekeeperMiddleware(Starlette(routes=ROUTES), verifier=remote_verifier(down_server))
    with TestClient(app) as client:
        assert client.get("/me", headers=dict(bearer(down_server.issuer.mint()))).status_code == 503


@pytest.mark.anyio
async def test_lifespan_messages_pass_through(server: IssuerServer) -> None:
    """Hand-driven lifespan: the inner app sees startup and shutdown; the server sees its
    completions; other scope types pass through untouched."""
    seen: list[str] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])
        if scope["type"] != "lifespan":
            return
        while True:
            message = await receive()
            seen.append(message["type"])
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return

    verifier = remote_verifier(server)
    app = GatekeeperMiddleware(inner, verifier=verifier)
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)
    await app({"type": "custom"}, receive, send)
    assert seen == ["lifespan", "lifespan.startup", "lifespan.shutdown", "custom"]
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert verifier.status()[0]["usable"] is True  # keys were loaded at startup


# -- bad input never gives a 500 -------------------------------------------------------------------


async def raw_http(
    app: ASGIApp,
    *,
    path: str = "/",
    query: bytes = b"",
    headers: Sequence[tuple[bytes, bytes]] = (),
    client: tuple[str, int] = ("127.0.0.1", 5000),
) -> tuple[int, dict[bytes, bytes], bytes]:
    """One HTTP request as raw ASGI messages, so any bytes can be sent."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode("utf-8", "surrogateescape"),
        "query_string": query,
        "root_path": "",
        "headers": list(headers),
        "client": client,
        "server": ("testserver", 80),
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start, body = sent[0], sent[1]
    assert start["type"] == "http.response.start"
    return start["status"], dict(start["headers"]), body["body"]


B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
QUERY_BITS = [b"bearer_token", b"bearer%5Ftoken", b"=", b"&", b";", b"%", b"%%", b"%zz", b"%E2%82", b"%FF%FE"]
QUERY_BITS += [b"+", b"\xff", b"\x00", b"%00", b"\xc3\xa9", b"a", b"eyJ", b".", b"access_token", b" "]


def fuzz_headers(rng: random.Random, token: str) -> list[tuple[bytes, bytes]]:
    choice = rng.randrange(9)
    if choice == 0:
        value = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
    elif choice == 1:
        value = b"Bearer " + bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
    elif choice == 2:
        value = b"Bearer " + bytes(rng.choice(B64 + b".") for _ in range(rng.randrange(1, 400)))
    elif choice == 3:  # huge
        size = rng.choice([9000, 70_000, 1_000_000])
        value = b"Bearer " + (B64 * (size // len(B64) + 1))[rng.randrange(64) :][:size]
    elif choice == 4:  # a real token, one character changed
        at = rng.randrange(len(token))
        value = f"Bearer {token[:at]}{chr(rng.choice(B64))}{token[at + 1 :]}".encode()
        if value == f"Bearer {token}".encode():
            value += b"A"
    elif choice == 5:  # a real token with non-ASCII or control bytes in it
        at = rng.randrange(len(token))
        value = f"Bearer {token[:at]}".encode() + rng.choice([b"\xe9", b"\x00", b"\xff\xfe", b"\t"]) + b"x"
    elif choice == 6:
        value = rng.choice([b"Bearer", b"Bearer ", b"bearer\t", b"BEARER  ", b"Bearerx", b" Bearer x", b""])
    elif choice == 7:  # segments of base64-encoded garbage
        value = b"Bearer " + b".".join(
            bytes(rng.choice(B64) for _ in range(rng.randrange(1, 40))) for _ in range(rng.choice([2, 3, 4]))
        )
    else:
        value = (
            b"Bearer eyJhbGciOiJub25lIn0."
            + bytes(rng.choice(B64) for _ in range(rng.randrange(1, 50)))
            + b"."
        )
    headers = [(rng.choice([b"authorization", b"Authorization", b"AUTHORIZATION"]), value)]
    if rng.random() < 0.3:
        headers.append((b"x-junk-\xff", bytes(rng.randrange(256) for _ in range(rng.randrange(200)))))
    return headers


def fuzz_query(rng: random.Random) -> bytes:
    return b"".join(rng.choice(QUERY_BITS) for _ in range(rng.randrange(1, 16)))


@pytest.mark.anyio
@pytest.mark.parametrize("profile", PROFILES)
async def test_fuzzed_requests_get_4xx_never_500(
    server: IssuerServer, log: pytest.LogCaptureFixture, profile: str
) -> None:
    # Static keys: the fuzz is about input handling, and needs no network.
    verifier = Verifier(server.url, jwks=server.issuer.jwks(), audience="api", clock=clock)
    app = make_app(verifier, errors=profile, query_param="bearer_token")
    token = server.issuer.mint()
    rng = random.Random(f"gatekeeper-{profile}")
    count = 300
    for _ in range(count):
        headers = fuzz_headers(rng, token) if rng.random() < 0.7 else []
        query = fuzz_query(rng) if rng.random() < 0.5 or not headers else b""
        path = rng.choice(["/", "/me", "/é/%ff", "/\x00\udcff", "/" + "x" * 10_000])
        status, response_headers, body = await raw_http(app, path=path, query=query, headers=headers)
        assert 400 <= status < 500, (headers, query)
        assert response_headers[b"content-type"] == b"application/json"
        assert isinstance(json.loads(body), dict)
    assert len(access_records(log)) == count
    assert_no_token_in_logs(log, token)


@pytest.mark.anyio
async def test_encoded_query_tokens(server: IssuerServer, verifier: Verifier) -> None:
    app = make_app(verifier, query_param="bearer_token")
    token = server.issuer.mint(subject="q")
    status, _, body = await raw_http(app, path="/me", query=f"bearer%5Ftoken={token}".encode())
    assert (status, json.loads(body)["sub"]) == (200, "q")
    status, _, _ = await raw_http(app, query=f"bearer_token={token}&bearer_token={token}".encode())
    assert status == 400
    status, _, _ = await raw_http(app, query=b"bearer_token=")
    assert status == 400


def test_error_responses_are_starlette_responses() -> None:
    from gatekeeper.middleware import to_starlette
    from gatekeeper.responses import ErrorResponse

    response = to_starlette(ErrorResponse(460, (("content-type", "text/plain"), ("x-a", "1")), b"no"))
    assert isinstance(response, Response)
    assert response.status_code == 460
    assert response.headers["content-type"] == "text/plain"  # exactly as the profile said
    assert response.headers["content-length"] == "2"
    assert response.headers["x-a"] == "1"
