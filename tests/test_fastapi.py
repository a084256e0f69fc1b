"""The FastAPI dependency (gatekeeper.fastapi): claims through ``Security(gk, scopes=[...])``,
failures in the configured profile, the OpenAPI security schemes, reuse of the middleware's
verification, the principal hook and the rejection log; through real ASGI calls."""

# No "from __future__ import annotations": FastAPI must evaluate the endpoints' Annotated[...]
# parameters, which name the dependency defined locally in build().
import logging
from collections.abc import Iterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request, Security

from gatekeeper.claims import Claims
from gatekeeper.devserver import IssuerServer
from gatekeeper.errors import AuthError
from gatekeeper.fastapi import GatekeeperSecurity
from gatekeeper.issuer import DevIssuer
from gatekeeper.middleware import GatekeeperMiddleware
from gatekeeper.redact import fingerprint
from gatekeeper.rules import Rule
from gatekeeper.verifier import Verifier

NOW = 1_700_000_000.0
SCOPES = {"read": "Read plots", "write": "Change plots"}


def clock() -> float:
    return NOW


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def start_server(status: int = 200) -> IssuerServer:
    srv = IssuerServer()
    srv.issuer = DevIssuer(srv.url, algorithms=("ES256",), clock=clock)
    srv.status = status
    return srv.start()


@pytest.fixture(scope="module")
def server() -> Iterator[IssuerServer]:
    srv = start_server()
    yield srv
    srv.stop()


def loaded_verifier(srv: IssuerServer) -> Verifier:
    """Keys fetched (or failed) once, synchronously: on the frozen clock no async fetch follows."""
    verifier = Verifier(srv.url, jwks_url=srv.jwks_url, audience="api", clock=clock)
    verifier.prefetch_sync()
    return verifier


@pytest.fixture(scope="module")
def verifier(server: IssuerServer) -> Iterator[Verifier]:
    v = loaded_verifier(server)
    yield v
    v.close()


class Counting:
    """Counts verify_async calls on a verifier, passing them through."""

    def __init__(self, verifier: Verifier) -> None:
        self.calls = 0
        real = verifier.verify_async

        async def verify_async(token: str | None) -> Claims:
            self.calls += 1
            return await real(token)

        verifier.verify_async = verify_async  # type: ignore[method-assign]


def build(gk: GatekeeperSecurity, *, install: bool = True) -> FastAPI:
    app = FastAPI()
    if install:
        gk.install(app)

    @app.get("/plots")
    async def plots(
        request: Request, claims: Annotated[Claims, Security(gk, scopes=["read"])]
    ) -> dict[str, Any]:
        principal = getattr(request.user, "principal", None)
        return {
            "sub": claims["sub"],
            "scopes": sorted(claims.scopes),
            "user": request.user.identity,
            "auth": request.auth.scopes,
            "principal": None if principal is None else str(principal),
        }

    @app.post("/plots")
    async def change(claims: Annotated[Claims, Security(gk, scopes=["read", "write"])]) -> dict[str, Any]:
        return {"sub": claims["sub"]}

    @app.get("/open")
    async def open_(claims: Annotated[Claims, Depends(gk)]) -> dict[str, Any]:
        return {"sub": claims["sub"]}

    @app.get("/public")
    async def public() -> dict[str, Any]:
        return {"ok": True}

    return app


async def call(
    app: Any,
    path: str,
    *,
    method: str = "GET",
    token: str | None = None,
    params: dict[str, str] | None = None,
) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return await client.request(method, path, headers=headers, params=params)


def access_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.gatekeeper for r in caplog.records if r.name == "gatekeeper.access"]  # type: ignore[attr-defined]


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="gatekeeper")
    return caplog


# -- the dependency ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_returns_claims_and_sets_user(
    server: IssuerServer, verifier: Verifier, log: pytest.LogCaptureFixture
) -> None:
    app = build(GatekeeperSecurity(verifier, errors="placepoint", token_url="/oauth/token", scopes=SCOPES))
    response = await call(app, "/plots", token=server.issuer.mint(subject="plotter", scope="read extra"))
    assert response.status_code == 200
    assert response.json() == {
        "sub": "plotter",
        "scopes": ["extra", "read"],
        "user": "plotter",
        "auth": ["extra", "read"],
        "principal": None,
    }
    assert (await call(app, "/open", token=server.issuer.mint(scope=""))).json() == {"sub": "client-123"}
    assert access_records(log) == []


@pytest.mark.anyio
async def test_failures_in_the_profile_with_install(
    server: IssuerServer, verifier: Verifier, log: pytest.LogCaptureFixture
) -> None:
    app = build(GatekeeperSecurity(verifier, errors="placepoint", token_url="/oauth/token", scopes=SCOPES))
    missing = await call(app, "/plots")
    assert missing.status_code == 401
    assert missing.content == b'{"error":{"code":401,"message":"A bearer token is required"}}'
    assert missing.headers["www-authenticate"] == 'Bearer realm="api"'
    assert missing.headers["cache-control"] == "no-store"
    assert missing.headers["content-type"] == "application/json"

    reader = server.issuer.mint(scope="read")
    denied = await call(app, "/plots", method="POST", token=reader)
    assert denied.status_code == 401
    assert denied.json() == {"error": {"code": 401, "message": "The access token lacks the required scope"}}
    assert denied.headers["www-authenticate"] == (
        'Bearer realm="api", error="insufficient_scope", '
        'error_description="The access token lacks the required scope", scope="read write"'
    )
    expired = await call(app, "/open", token=server.issuer.mint(expires_in=-3600))
    assert expired.json() == {"error": {"code": 401, "message": "The access token has expired"}}
    # One record per rejection, with the token's fingerprint, never the token.
    records = access_records(log)
    assert [r["kind"] for r in records] == ["missing_token", "insufficient_scope", "expired_token"]
    assert records[1]["token"] == fingerprint(reader)
    assert records[1]["path"] == "/plots"
    assert records[1]["method"] == "POST"
    for record in log.records:
        if not record.name.startswith(("httpx", "httpcore")):
            assert reader not in repr(vars(record))


@pytest.mark.anyio
async def test_failures_without_install_have_status_and_headers(server: IssuerServer) -> None:
    """FastAPI's own HTTPException handler answers: status and headers are the profile's,
    the body is FastAPI's ``{"detail": ...}`` carrying the profile's body."""
    down = start_server(status=500)
    verifier = loaded_verifier(down)
    try:
        gk = GatekeeperSecurity(verifier, errors="placepoint")
        app = build(gk, install=False)
        unavailable = await call(app, "/open", token=down.issuer.mint())
        assert unavailable.status_code == 500
        assert unavailable.headers["retry-after"] == "5"
        assert unavailable.headers["cache-control"] == "no-store"
        assert unavailable.json() == {
            "detail": {
                "error": {"code": 500, "message": "The token signing keys are temporarily unavailable"}
            }
        }
        missing = await call(app, "/open")
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == 'Bearer realm="api"'
        assert missing.json() == {"detail": {"error": {"code": 401, "message": "A bearer token is required"}}}
        rfc = build(GatekeeperSecurity(loaded_verifier(server)), install=False)
        denied = await call(rfc, "/plots", token=server.issuer.mint(scope="write"))
        assert denied.status_code == 403
        assert denied.headers["www-authenticate"].startswith('Bearer realm="api", error="insufficient_scope"')
    finally:
        verifier.close()
        down.stop()


@pytest.mark.anyio
async def test_mode_any_and_query_param(server: IssuerServer, verifier: Verifier) -> None:
    app = build(GatekeeperSecurity(verifier, mode="any", query_param="bearer_token"))
    writer = server.issuer.mint(scope="write")
    assert (await call(app, "/plots", method="POST", token=writer)).status_code == 200
    assert (await call(app, "/plots", params={"bearer_token": writer})).status_code == 403
    other = server.issuer.mint(scope="other")
    assert (await call(app, "/plots", method="POST", params={"bearer_token": other})).status_code == 403
    with pytest.raises(ValueError, match="mode"):
        GatekeeperSecurity(verifier, mode="some")  # type: ignore[arg-type]


# -- OpenAPI -------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_openapi_security_schemes(verifier: Verifier) -> None:
    app = build(GatekeeperSecurity(verifier, errors="placepoint", token_url="/oauth/token", scopes=SCOPES))
    document = (await call(app, "/openapi.json")).json()
    assert document["components"]["securitySchemes"] == {
        "gatekeeperBearer": {"type": "http", "scheme": "bearer", "description": "A JWT access token"},
        "gatekeeperOAuth2": {
            "type": "oauth2",
            "flows": {
                "clientCredentials": {
                    "tokenUrl": "/oauth/token",
                    "scopes": {"read": "Read plots", "write": "Change plots"},
                }
            },
        },
    }
    paths = document["paths"]
    # Either scheme satisfies an operation (a list of requirements is an OR); the operation's
    # scopes are listed on both (OpenAPI 3.1 allows role names on non-OAuth2 schemes).
    assert paths["/plots"]["get"]["security"] == [
        {"gatekeeperBearer": ["read"]},
        {"gatekeeperOAuth2": ["read"]},
    ]
    assert paths["/plots"]["post"]["security"] == [
        {"gatekeeperBearer": ["read", "write"]},
        {"gatekeeperOAuth2": ["read", "write"]},
    ]
    assert paths["/open"]["get"]["security"] == [{"gatekeeperBearer": []}, {"gatekeeperOAuth2": []}]
    assert "security" not in paths["/public"]["get"]
    for operation in (paths["/plots"]["get"], paths["/plots"]["post"], paths["/open"]["get"]):
        assert "parameters" not in operation  # request / security_scopes are not API parameters
        assert "requestBody" not in operation
    # Without a token URL there is only the bearer scheme.
    bare = (await call(build(GatekeeperSecurity(verifier, scheme_name="jwt")), "/openapi.json")).json()
    assert bare["components"]["securitySchemes"] == {
        "jwtBearer": {"type": "http", "scheme": "bearer", "description": "A JWT access token"}
    }
    assert bare["paths"]["/plots"]["get"]["security"] == [{"jwtBearer": ["read"]}]


# -- behind the middleware -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_reuses_the_middleware_verification(
    server: IssuerServer, log: pytest.LogCaptureFixture
) -> None:
    verifier = loaded_verifier(server)
    counter = Counting(verifier)
    try:
        gk = GatekeeperSecurity(verifier)
        app = GatekeeperMiddleware(
            build(gk), verifier=verifier, errors="placewise", rules=[Rule("/public", access="optional")]
        )
        response = await call(app, "/plots", token=server.issuer.mint(scope="read"))
        assert response.status_code == 200
        assert counter.calls == 1  # the middleware verified; the dependency took its claims
        # The dependency's own failure answers in the middleware's profile (no errors= given).
        denied = await call(app, "/plots", method="POST", token=server.issuer.mint(scope="read"))
        assert (denied.status_code, denied.json()) == (460, {"error": "Member not authorized"})
        assert counter.calls == 2
        [record] = access_records(log)
        assert record["kind"] == "insufficient_scope"
        assert record["issuer"] == server.url
    finally:
        verifier.close()


@pytest.mark.anyio
async def test_behind_the_middleware_on_its_hot_path(server: IssuerServer, verifier: Verifier) -> None:
    # A token the middleware has seen takes its hot path (no scope["gatekeeper"] stored): the
    # dependency must still find the middleware, its claims and its profile.
    app = GatekeeperMiddleware(build(GatekeeperSecurity()), verifier=verifier, errors="placewise")
    reader = server.issuer.mint(scope="read")
    answers = [await call(app, "/plots", token=reader) for _ in range(2)]
    denials = [await call(app, "/plots", method="POST", token=reader) for _ in range(2)]
    header = [(b"authorization", f"Bearer {reader}".encode())]
    assert app.gate.cached(app.rules.default, header) is not None  # the hot path answered
    for response in answers:
        assert (response.status_code, response.json()) == (answers[0].status_code, answers[0].json())
        assert response.status_code == 200
    for response in denials:
        assert (response.status_code, response.json()) == (460, {"error": "Member not authorized"})


@pytest.mark.anyio
async def test_behind_the_middleware_without_a_verifier(server: IssuerServer, verifier: Verifier) -> None:
    gk = GatekeeperSecurity(errors="addressfinder")
    inner = build(gk)

    @inner.get("/maybe")
    async def maybe(claims: Annotated[Claims, Depends(gk)]) -> dict[str, Any]:
        return {"sub": claims["sub"]}

    app = GatekeeperMiddleware(inner, verifier=verifier, rules=[Rule("/maybe", access="optional")])
    assert (await call(app, "/maybe", token=server.issuer.mint())).json() == {"sub": "client-123"}
    # Optional route, no token: the middleware lets it through, the dependency asks for one.
    anonymous = await call(app, "/maybe")
    assert anonymous.status_code == 400
    assert anonymous.json()["error_code"] == "1024"
    # Without the middleware and without a verifier it is a configuration error.
    with pytest.raises(RuntimeError, match="needs a verifier"):
        await call(inner, "/open", token=server.issuer.mint())


# -- principal hook -----------------------------------------------------------------------------------


class Project:
    def __init__(self, name: str) -> None:
        self.name = name

    def __str__(self) -> str:
        return f"project:{self.name}"


def sync_hook(claims: Claims) -> Project | None:
    if claims["sub"] == "revoked":
        raise AuthError("revoked_token")
    return Project(claims["sub"]) if claims["sub"].startswith("client") else None


async def async_hook(claims: Claims) -> Project | None:
    return sync_hook(claims)


@pytest.mark.anyio
@pytest.mark.parametrize("hook", [sync_hook, async_hook], ids=["sync", "async"])
async def test_principal_hook(
    server: IssuerServer, verifier: Verifier, log: pytest.LogCaptureFixture, hook: Any
) -> None:
    app = build(GatekeeperSecurity(verifier, errors="addressfinder", principal=hook))
    known = await call(app, "/plots", token=server.issuer.mint(subject="client-9", scope="read"))
    assert known.json()["principal"] == "project:client-9"  # request.user.principal
    unknown = await call(app, "/plots", token=server.issuer.mint(subject="stranger", scope="read"))
    assert unknown.status_code == 400
    assert unknown.content == (
        b'{"completions":[],"message":"Project not found for bearer token",'
        b'"error_code":"1025","success":false}'
    )
    revoked = await call(app, "/plots", token=server.issuer.mint(subject="revoked", scope="read"))
    assert revoked.json()["error_code"] == "1024"
    records = access_records(log)
    assert [r["kind"] for r in records] == ["unknown_principal", "revoked_token"]
    assert records[1]["issuer"] == server.url
