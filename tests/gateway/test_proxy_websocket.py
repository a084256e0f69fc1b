"""Websockets through the reverse proxy: the handshake is decided like any request (denials in
the error profile's shape, identity headers stripped and set), then messages and close codes are
relayed both ways between a real client (``websockets``) and a real upstream (uvicorn)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import proxy_world
import pytest
from proxy_world import clock
from upstream import ServerThread, Upstream, free_port
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from gatekeeper.bearer import BearerSource
from gatekeeper.decision import Gate
from gatekeeper.devserver import IssuerServer
from gatekeeper.gateway.identity import IdentityHeaders
from gatekeeper.gateway.proxy import ProxySettings, ReverseProxy, UpstreamSettings
from gatekeeper.gateway.record import RequestRecord
from gatekeeper.responses import get_profile
from gatekeeper.rules import Rule, RuleSet
from gatekeeper.verifier import Verifier

issuer = proxy_world.issuer
upstream = proxy_world.upstream


def start_proxy(
    issuer: IssuerServer,
    upstream_url: str,
    records: list[RequestRecord],
    profile: str = "rfc6750",
    **settings: Any,
) -> ServerThread:
    verifier = Verifier(issuer.url, jwks_url=issuer.jwks_url, audience="api", clock=clock)
    gate = Gate(
        verifier, rules=RuleSet((Rule("/open/**", access="exempt"),)), source=BearerSource.of("bearer_token")
    )
    app = ReverseProxy(
        gate,
        get_profile(profile),
        ProxySettings(UpstreamSettings(upstream_url), **settings),
        IdentityHeaders(),
        records.append,
    )
    return ServerThread(app).start()


@pytest.fixture(scope="module")
def proxy(issuer: IssuerServer, upstream: Upstream) -> Iterator[tuple[ServerThread, list[RequestRecord]]]:
    records: list[RequestRecord] = []
    server = start_proxy(issuer, upstream.url, records)
    yield server, records
    server.stop()


@pytest.fixture
def token(issuer: IssuerServer) -> str:
    return issuer.issuer.mint({"sub": "alice", "aud": "api"}, scope="chat")


def ws_url(server: ServerThread, path: str) -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


def settled(records: list[RequestRecord]) -> list[RequestRecord]:
    """The records once the first is in (it is reported after the response is sent)."""
    deadline = time.monotonic() + 5
    while not records and time.monotonic() < deadline:
        time.sleep(0.005)
    return records


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 15))


def test_allowed_handshake_is_relayed_with_identity_and_messages_flow_both_ways(
    proxy: tuple[ServerThread, list[RequestRecord]], token: str
) -> None:
    server, _ = proxy

    async def scenario() -> tuple[dict[str, Any], list[Any], str | None]:
        async with connect(
            ws_url(server, "/chat/room?bearer_token=" + token + "&x=1"),
            additional_headers={"X-Auth-Subject": "admin", "X_Auth_Subject": "admin2"},
            subprotocols=[Subprotocol("chat.v1"), Subprotocol("chat.v2")],
        ) as ws:
            handshake = json.loads(await ws.recv())
            await ws.send("hello")
            echoed_text = await ws.recv()
            await ws.send(b"\x00\x01binary")
            echoed_bytes = await ws.recv()
            return handshake, [echoed_text, echoed_bytes], ws.subprotocol

    handshake, echoed, subprotocol = run(scenario())
    assert echoed == ["hello", b"\x00\x01binary"]
    assert subprotocol == "chat.v1"
    assert handshake["subprotocol"] == "chat.v1"
    assert handshake["path"] == "/chat/room"
    assert handshake["query"] == "x=1"  # the query token is removed
    headers: dict[str, list[str]] = {}
    for name, value in handshake["headers"]:
        headers.setdefault(name, []).append(value)
    assert headers["x-auth-subject"] == ["alice"]
    assert "x_auth_subject" not in headers
    assert "authorization" not in headers


def test_denied_handshake_gets_the_profile_response(issuer: IssuerServer, upstream: Upstream) -> None:
    records: list[RequestRecord] = []
    server = start_proxy(issuer, upstream.url, records, profile="placewise")
    try:

        async def scenario() -> InvalidStatus:
            with pytest.raises(InvalidStatus) as info:
                async with connect(ws_url(server, "/chat/room")):
                    pass
            return info.value

        refused = run(scenario())
        assert refused.response.status_code == 460
        assert json.loads(refused.response.body or b"") == {"error": "Member not authorized"}
        assert settled(records)[0].decision == "deny"
        assert settled(records)[0].error_kind == "missing_token"
    finally:
        server.stop()


@pytest.mark.parametrize(("code", "reason"), [(4001, "bye"), (1000, "")])
def test_upstream_close_code_reaches_the_client(
    proxy: tuple[ServerThread, list[RequestRecord]], code: int, reason: str
) -> None:
    server, _ = proxy

    async def scenario() -> tuple[int | None, str | None]:
        async with connect(ws_url(server, "/open/ws")) as ws:
            await ws.recv()
            await ws.send(f"close:{code}:{reason}")
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            return ws.close_code, ws.close_reason

    assert run(scenario()) == (code, reason)


def test_client_close_code_reaches_the_upstream(
    proxy: tuple[ServerThread, list[RequestRecord]], upstream: Upstream
) -> None:
    server, _ = proxy

    async def scenario() -> None:
        async with connect(ws_url(server, "/open/ws")) as ws:
            await ws.recv()
            await ws.close(4002, "leaving")

    run(scenario())

    deadline = time.monotonic() + 5
    while not any(seen.get("closed_by_client") == 4002 for seen in upstream.seen):
        assert time.monotonic() < deadline, upstream.seen[-3:]
        time.sleep(0.01)


def test_unreachable_upstream_refuses_the_handshake_with_502(issuer: IssuerServer) -> None:
    records: list[RequestRecord] = []
    server = start_proxy(issuer, f"http://127.0.0.1:{free_port()}", records)
    try:

        async def scenario() -> InvalidStatus:
            with pytest.raises(InvalidStatus) as info:
                async with connect(ws_url(server, "/open/ws")):
                    pass
            return info.value

        refused = run(scenario())
        assert refused.response.status_code == 502
        assert json.loads(refused.response.body or b"")["error"] == "upstream_unreachable"
        assert settled(records)[0].error_kind == "upstream_unreachable"
    finally:
        server.stop()


def test_max_websockets_refuses_more_with_503_and_frees_the_slot_on_close(
    issuer: IssuerServer, upstream: Upstream
) -> None:
    records: list[RequestRecord] = []
    server = start_proxy(issuer, upstream.url, records, max_websockets=1)
    try:

        async def scenario() -> tuple[InvalidStatus, str | bytes]:
            async with connect(ws_url(server, "/open/ws")) as first:
                await first.recv()
                with pytest.raises(InvalidStatus) as info:  # the one slot is taken
                    async with connect(ws_url(server, "/open/ws")):
                        pass
            # The slot is freed once the proxy has finished relaying the first (just after it
            # closed): retry a refused handshake for a moment.
            deadline = time.monotonic() + 5
            while True:
                try:
                    async with connect(ws_url(server, "/open/ws")) as again:
                        await again.recv()
                        await again.send("back")
                        return info.value, await again.recv()
                except InvalidStatus:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.02)

        refused, echoed = run(scenario())
        assert refused.response.status_code == 503
        assert refused.response.headers["retry-after"] == "1"
        assert json.loads(refused.response.body or b"")["error"] == "upstream_busy"
        assert echoed == "back"
        assert any(record.error_kind == "upstream_busy" for record in settled(records))
    finally:
        server.stop()


@pytest.mark.parametrize("name", ["max_websockets", "max_in_flight", "pool_size"])
def test_proxy_limits_must_be_positive(name: str) -> None:
    with pytest.raises(ValueError, match=f"{name} must be at least 1"):
        ProxySettings(UpstreamSettings("http://127.0.0.1:1"), **{name: 0})  # type: ignore[arg-type]
