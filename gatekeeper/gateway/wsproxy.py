"""Websocket proxying: the handshake is decided like any request, then frames flow both ways.

The client's handshake goes through the same path normalisation, gate and identity-header
rules as an HTTP request (a websocket counts as ``GET``). A denial is the error profile's HTTP
response where the server offers the ASGI websocket denial-response extension, else close code
1008 before accept. Allowed, the proxy opens the upstream connection with the ``websockets``
package first and accepts the client only once the upstream has (with the subprotocol the
upstream chose); then messages are relayed both ways until one side closes, and that side's
close code and reason are passed to the other.

An upstream that cannot be reached answers 502 (denial response) or closes with 1014 ("bad
gateway"); one that refuses the handshake has its status passed on (or 1014).
"""

from __future__ import annotations

import ssl
import time
from typing import TYPE_CHECKING, Any

import anyio
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from ..errors import AuthError
from ..redact import fingerprint
from .paths import PathRejected, normalise_path
from .record import RequestRecord
from .upstream_tls import UpstreamTLS

if TYPE_CHECKING:
    from .proxy import Receive, ReverseProxy, _Upstream
    from .respond import Send

#: "Bad Gateway" close code (RFC 6455 registry): the upstream could not be reached.
BAD_GATEWAY_CLOSE = 1014
#: "Try Again Later" (RFC 6455 registry): max_websockets connections are already open.
TRY_AGAIN_LATER = 1013
# Handshake headers the websockets client writes itself.
_HANDSHAKE: frozenset[bytes] = frozenset(
    {
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
        b"sec-websocket-accept",
        b"host",
        b"user-agent",
    }
)


async def _refuse(
    scope: dict[str, Any], send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]], code: int
) -> None:
    """Refuse before accept: an HTTP response if the server can send one, else a close code."""
    if "websocket.http.response" in (scope.get("extensions") or {}):
        headers = [*headers, (b"content-length", str(len(body)).encode())]
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": code, "reason": ""})


async def proxy_websocket(proxy: ReverseProxy, scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """Decide a websocket handshake with the proxy's gate and relay the allowed connection."""
    from .proxy import failure_body

    started = time.perf_counter()
    record = RequestRecord("proxy", "WEBSOCKET", proxy.logged_path(scope), 0, "error", 0.0, 0.0)
    try:
        message = await receive()
        if message["type"] != "websocket.connect":
            return  # the client went away first
        await _handle(proxy, scope, receive, send, record, started, failure_body)
    finally:
        record.latency = time.perf_counter() - started
        proxy.reporter(record)


async def _handle(
    proxy: ReverseProxy,
    scope: dict[str, Any],
    receive: Receive,
    send: Send,
    record: RequestRecord,
    started: float,
    failure_body: Any,
) -> None:
    json_headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
    raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
    try:
        path = normalise_path(raw_path)
    except PathRejected as rejected:
        record.error_kind = "bad_path"
        rendered = proxy.profile.render(AuthError("invalid_request", rejected.reason))
        record.status = 400
        headers = [(k.encode(), v.encode()) for k, v in rendered.headers if k != "www-authenticate"]
        await _refuse(scope, send, 400, rendered.body, headers, 1008)
        return
    record.path = proxy.logged_path(scope, path)
    result = await proxy.gate.decide("GET", path, scope["headers"], scope.get("query_string", b""))
    record.decision_latency = time.perf_counter() - started
    record.rule = result.rule.path
    if result.token is not None:
        record.token = fingerprint(result.token)
    from ..decision import Deny

    if isinstance(result, Deny):
        record.decision = "deny"
        record.error_kind = result.error.kind
        rendered = proxy.profile.render(result.error)
        record.status = rendered.status
        headers = [(k.encode(), v.encode()) for k, v in rendered.headers]
        await _refuse(scope, send, rendered.status, rendered.body, headers, 1008)
        return
    proxy._fill_identity(record, result)
    upstream = proxy.upstream_for(path)
    if upstream is None or not proxy.settings.websockets:
        record.decision, record.status, record.error_kind = "error", 404, "no_upstream"
        await _refuse(
            scope, send, 404, failure_body("no_upstream", "No upstream serves this path"), json_headers, 1008
        )
        return
    additional = [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in proxy.upstream_headers(scope, result, upstream)
        if name not in _HANDSHAKE
    ]
    if proxy.websockets_open >= proxy.settings.max_websockets:
        record.decision, record.status, record.error_kind = "error", 503, "upstream_busy"
        busy = failure_body("upstream_busy", "Too many websocket connections")
        await _refuse(scope, send, 503, busy, [*json_headers, (b"retry-after", b"1")], TRY_AGAIN_LATER)
        return
    proxy.websockets_open += 1
    try:
        await _connect_and_relay(
            proxy, scope, receive, send, record, upstream, path, additional, failure_body
        )
    finally:
        proxy.websockets_open -= 1


async def _connect_and_relay(
    proxy: ReverseProxy,
    scope: dict[str, Any],
    receive: Receive,
    send: Send,
    record: RequestRecord,
    upstream: _Upstream,
    path: str,
    additional: list[tuple[str, str]],
    failure_body: Any,
) -> None:
    json_headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
    target = proxy.upstream_target(upstream, path, scope.get("query_string", b"")).decode("ascii")
    settings = upstream.settings
    subprotocols = scope.get("subprotocols") or None
    sent = time.perf_counter()
    try:
        connection = await connect(
            upstream.ws_url + target,
            additional_headers=additional,
            subprotocols=subprotocols,
            compression=None,  # frames are relayed as messages; no need to inflate and deflate twice
            user_agent_header=None,
            proxy=None,
            open_timeout=settings.connect_timeout,
            max_size=None,
            ping_interval=None,  # liveness is the client's business, end to end
            ssl=_tls(upstream.ws_url, settings.tls),
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        record.decision, record.status, record.upstream_status = "allow", status, status
        body = bytes(exc.response.body or b"")
        await _refuse(
            scope, send, status, body, json_headers if body.startswith(b"{") else [], BAD_GATEWAY_CLOSE
        )
        return
    except (OSError, InvalidHandshake, TimeoutError) as exc:
        timeout = isinstance(exc, TimeoutError)
        status, kind = (504, "upstream_timeout") if timeout else (502, "upstream_unreachable")
        record.decision, record.status, record.error_kind = "error", status, kind
        await _refuse(
            scope,
            send,
            status,
            failure_body(kind, "The upstream websocket could not be opened"),
            json_headers,
            BAD_GATEWAY_CLOSE,
        )
        return
    record.upstream_latency = time.perf_counter() - sent
    record.status = record.upstream_status = 101
    async with connection:
        await send({"type": "websocket.accept", "subprotocol": connection.subprotocol})
        await _relay(connection, receive, send)


async def _relay(upstream: ClientConnection, receive: Receive, send: Send) -> None:
    async with anyio.create_task_group() as group:

        async def client_to_upstream() -> None:
            while True:
                message = await receive()
                if message["type"] == "websocket.receive":
                    data = message.get("text")
                    try:
                        await upstream.send(data if data is not None else message.get("bytes") or b"")
                    except ConnectionClosed:
                        return  # upstream_to_client passes the upstream's close on
                elif message["type"] == "websocket.disconnect":
                    code = int(message.get("code", 1000))
                    # 1005/1006 cannot be sent in a close frame; the client left without one.
                    await upstream.close(
                        code if code not in (1005, 1006) else 1000, message.get("reason") or ""
                    )
                    group.cancel_scope.cancel()
                    return

        async def upstream_to_client() -> None:
            try:
                async for data in upstream:
                    if isinstance(data, str):
                        await send({"type": "websocket.send", "text": data})
                    else:
                        await send({"type": "websocket.send", "bytes": data})
            except ConnectionClosed:
                pass
            code = upstream.close_code or 1000
            reason = upstream.close_reason or ""
            if code in (1005, 1006):  # no close frame came: tell the client it went away
                code, reason = 1001 if code == 1006 else 1000, reason
            await send({"type": "websocket.close", "code": code, "reason": reason})
            group.cancel_scope.cancel()

        group.start_soon(client_to_upstream)
        await upstream_to_client()


def _tls(url: str, tls: UpstreamTLS | None) -> ssl.SSLContext | bool | None:
    """``connect``'s ``ssl`` argument: the upstream's own context for ``wss`` where it has TLS
    settings, else True (websockets' default context, the system's trust store); None for ``ws``."""
    if not url.startswith("wss:"):
        return None
    return tls.context if tls is not None else True
