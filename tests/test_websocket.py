"""GatekeeperMiddleware for websockets: accepted with a good token (header or query), refused
before accept otherwise: the profile's HTTP response through the ASGI websocket denial-response
extension where the server offers it (Starlette's TestClient does), else close code 1008
(hand-driven ASGI without the extension)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.authentication import requires
from starlette.routing import WebSocketRoute
from starlette.types import Message
from starlette.websockets import WebSocket, WebSocketDisconnect

from gatekeeper.devserver import IssuerServer
from gatekeeper.issuer import DevIssuer
from gatekeeper.middleware import GatekeeperMiddleware, requires_scopes
from gatekeeper.redact import fingerprint
from gatekeeper.rules import Rule
from gatekeeper.verifier import Verifier

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Starlette deprecates TestClient-on-httpx at import
    from starlette.testclient import TestClient, WebSocketDenialResponse

NOW = 1_700_000_000.0


def clock() -> float:
    return NOW


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def server() -> Iterator[IssuerServer]:
    srv = IssuerServer()
    srv.issuer = DevIssuer(srv.url, algorithms=("ES256",), clock=clock)
    with srv:
        yield srv


def new_verifier(server: IssuerServer) -> Verifier:
    return Verifier(server.url, jwks_url=server.jwks_url, audience="api", clock=clock)


@pytest.fixture(scope="module")
def loaded(server: IssuerServer) -> Iterator[Verifier]:
    """Keys fetched once up front (sync), for the hand-driven ASGI tests."""
    verifier = new_verifier(server)
    verifier.prefetch_sync()
    yield verifier
    verifier.close()


async def hello(websocket: WebSocket) -> None:
    await websocket.accept()
    user = websocket.user
    await websocket.send_json(
        {"authenticated": user.is_authenticated, "identity": user.identity, "scopes": websocket.auth.scopes}
    )
    await websocket.close()


@requires("admin")
async def starlette_admin(websocket: WebSocket) -> None:
    await hello(websocket)


ROUTES = [
    WebSocketRoute("/ws", hello),
    WebSocketRoute("/public/ws", hello),
    WebSocketRoute("/ws/scoped", requires_scopes("write")(hello)),
    WebSocketRoute("/public/ws/scoped", requires_scopes("write")(hello)),
    WebSocketRoute("/ws/starlette-admin", starlette_admin),
]


def make_app(verifier: Verifier, **options: Any) -> GatekeeperMiddleware:
    options.setdefault("query_param", "bearer_token")
    options.setdefault("rules", [Rule("/public/**", access="optional"), Rule("/ws/admin", scopes=["admin"])])
    return GatekeeperMiddleware(Starlette(routes=ROUTES), verifier=verifier, **options)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


# -- through Starlette's TestClient (offers the denial-response extension) --------------------------


def test_accepted_with_header_or_query_token(server: IssuerServer) -> None:
    with TestClient(make_app(new_verifier(server))) as client:
        token = server.issuer.mint(subject="ws-user", scope="read write")
        with client.websocket_connect("/ws", headers=bearer(token)) as ws:
            assert ws.receive_json() == {
                "authenticated": True,
                "identity": "ws-user",
                "scopes": ["read", "write"],
            }
        with client.websocket_connect(f"/ws?bearer_token={token}") as ws:
            assert ws.receive_json()["identity"] == "ws-user"
        with client.websocket_connect("/ws/scoped", headers=bearer(token)) as ws:
            assert ws.receive_json()["identity"] == "ws-user"
        with client.websocket_connect("/public/ws") as ws:  # optional: anonymous allowed
            assert ws.receive_json() == {"authenticated": False, "identity": "", "scopes": []}


EXPECTED_MISSING = {
    "rfc6750": (401, {"error_description": "A bearer token is required"}),
    "placepoint": (401, {"error": {"code": 401, "message": "A bearer token is required"}}),
    "addressfinder": (
        400,
        {
            "completions": [],
            "message": "Invalid or expired bearer token",
            "error_code": "1024",
            "success": False,
        },
    ),
    "placewise": (460, {"error": "Member not authorized"}),
}


@pytest.mark.parametrize("profile", list(EXPECTED_MISSING))
def test_refused_with_the_profile_response(
    server: IssuerServer, caplog: pytest.LogCaptureFixture, profile: str
) -> None:
    caplog.set_level(logging.INFO, logger="gatekeeper")
    called = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        called.append(scope["type"])
        await Starlette(routes=ROUTES)(scope, receive, send)

    app = GatekeeperMiddleware(inner, verifier=new_verifier(server), errors=profile)
    with TestClient(app) as client:
        denial = refused(client, "/ws?page=1")
    status, body = EXPECTED_MISSING[profile]
    assert denial.status_code == status
    assert denial.json() == body
    assert denial.headers["content-type"] == "application/json"
    assert denial.headers["cache-control"] == "no-store"
    assert denial.headers["content-length"] == str(len(denial.content))
    if status == 401:
        assert denial.headers["www-authenticate"] == 'Bearer realm="api"'
    assert called == ["lifespan"]  # the app never saw the websocket
    [record] = [r for r in caplog.records if r.name == "gatekeeper.access"]
    fields = record.gatekeeper  # type: ignore[attr-defined]
    assert (fields["kind"], fields["method"], fields["path"]) == ("missing_token", "WEBSOCKET", "/ws?page=1")


def refused(client: TestClient, url: str, headers: dict[str, str] | None = None) -> WebSocketDenialResponse:
    with pytest.raises(WebSocketDenialResponse) as info, client.websocket_connect(url, headers=headers or {}):
        pass
    return info.value


def test_refusals_for_bad_tokens_and_scopes(server: IssuerServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gatekeeper")
    expired = server.issuer.mint(expires_in=-3600)
    reader = server.issuer.mint(scope="read")
    with TestClient(make_app(new_verifier(server), errors="placepoint")) as client:
        # A bad token on an optional route is refused, not taken as anonymous.
        denial = refused(client, f"/public/ws?bearer_token={expired}")
        assert denial.json() == {"error": {"code": 401, "message": "The access token has expired"}}
        denial = refused(client, "/ws/admin", bearer(reader))  # a rule's scope
        assert denial.status_code == 401
        assert 'scope="admin"' in denial.headers["www-authenticate"]
        # requires_scopes() refuses the same way, from inside the app.
        denial = refused(client, "/ws/scoped", bearer(reader))
        assert denial.json() == {
            "error": {"code": 401, "message": "The access token lacks the required scope"}
        }
        assert 'scope="write"' in denial.headers["www-authenticate"]
        denial = refused(client, "/public/ws/scoped")
        assert denial.json() == {"error": {"code": 401, "message": "A bearer token is required"}}
        assert refused(client, "/ws", {"authorization": "Bearer a b"}).status_code == 400
    records = [r.gatekeeper for r in caplog.records if r.name == "gatekeeper.access"]  # type: ignore[attr-defined]
    assert [r["kind"] for r in records] == [
        "expired_token",
        "insufficient_scope",
        "insufficient_scope",
        "missing_token",
        "invalid_request",
    ]
    assert records[0]["path"] == "/public/ws?bearer_token=[redacted]"
    assert records[0]["token"] == fingerprint(expired)
    assert records[2]["token"] == fingerprint(reader)
    for record in caplog.records:
        assert expired not in repr(vars(record))
        assert reader not in repr(vars(record))


def test_starlette_requires_closes_the_socket(server: IssuerServer) -> None:
    with TestClient(make_app(new_verifier(server))) as client:
        admin = server.issuer.mint(scope="admin")
        with client.websocket_connect("/ws/starlette-admin", headers=bearer(admin)) as ws:
            assert ws.receive_json()["scopes"] == ["admin"]
        reader = server.issuer.mint(scope="read")
        with (
            pytest.raises(WebSocketDisconnect),
            client.websocket_connect("/ws/starlette-admin", headers=bearer(reader)),
        ):
            pass


# -- hand-driven ASGI, without the extension ---------------------------------------------------------


def ws_scope(
    path: str, headers: list[tuple[bytes, bytes]], extensions: dict[str, Any] | None
) -> dict[str, Any]:
    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "ws",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
        "subprotocols": [],
    }
    if extensions is not None:
        scope["extensions"] = extensions
    return scope


async def drive(
    app: Any,
    path: str = "/ws",
    headers: list[tuple[bytes, bytes]] | None = None,
    extensions: dict[str, Any] | None = None,
    first: str = "websocket.connect",
) -> list[Message]:
    """Connect, then disconnect once the app has answered; return what the app sent."""
    incoming: list[Message] = [{"type": first}, {"type": "websocket.disconnect", "code": 1000}]
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    await app(ws_scope(path, headers or [], extensions), receive, send)
    return sent


@pytest.mark.anyio
@pytest.mark.parametrize("extensions", [None, {}, {"other": {}}])
async def test_without_the_extension_close_1008(loaded: Verifier, extensions: dict[str, Any] | None) -> None:
    called = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        called.append(scope)

    sent = await drive(GatekeeperMiddleware(inner, verifier=loaded), extensions=extensions)
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": ""}]
    assert called == []


@pytest.mark.anyio
async def test_requires_scopes_without_the_extension_close_1008(
    server: IssuerServer, loaded: Verifier
) -> None:
    reader = [(b"authorization", f"Bearer {server.issuer.mint(scope='read')}".encode())]
    sent = await drive(make_app(loaded), "/ws/scoped", reader)
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": ""}]
    writer = [(b"authorization", f"Bearer {server.issuer.mint(scope='write')}".encode())]
    sent = await drive(make_app(loaded), "/ws/scoped", writer)
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send", "websocket.close"]


@pytest.mark.anyio
async def test_with_the_extension_by_hand(loaded: Verifier) -> None:
    extensions: dict[str, Any] = {"websocket.http.response": {}}
    sent = await drive(GatekeeperMiddleware(make_app(loaded), verifier=loaded), extensions=extensions)
    body = b'{"error_description":"A bearer token is required"}'
    assert sent == [
        {
            "type": "websocket.http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"www-authenticate", b'Bearer realm="api"'),
                (b"cache-control", b"no-store"),
                (b"content-length", str(len(body)).encode()),
            ],
        },
        {"type": "websocket.http.response.body", "body": body},
    ]


@pytest.mark.anyio
async def test_client_gone_before_connect(loaded: Verifier) -> None:
    sent = await drive(GatekeeperMiddleware(make_app(loaded), verifier=loaded), first="websocket.disconnect")
    assert sent == []
