"""The streaming reverse proxy: decide each request with the gate, then forward it upstream.

Settings are plain frozen dataclasses (``config.py`` builds them from TOML). The app is
:class:`ReverseProxy`, ``ReverseProxy(gate, profile, settings, identity, reporter)``:

1. The path is normalised once (:func:`gatekeeper.gateway.paths.normalise_path`); what cannot
   be normalised unambiguously is refused with 400. The rules and the upstream see that path.
2. :meth:`gatekeeper.decision.Gate.decide` decides; a denial is the error profile's response.
3. The allowed request goes to its upstream through gatekeeper's own HTTP/1.1 client: a
   bounded pool of keep-alive connections (:mod:`.upstream_pool`), each an asyncio protocol
   parsing responses with httptools' C parser (:mod:`.upstream_conn`). ``httpx.AsyncClient``
   is **not** on this path: a proxy wants none of a client's session features (a cookie jar
   would replay one client's ``Set-Cookie`` to the next, default headers would be added,
   redirects are the upstream's answer to the client), and httpx's request/response objects
   plus h11's pure-Python parsing cost more CPU than the rest of the proxying (measured: the
   proxy's throughput rose from 0.20x to the upstream's to the figure in the README).
   Bodies stream both ways, chunk by chunk, never buffered whole, with backpressure both ways;
   each response chunk is sent on as it arrives, so server-sent events reach the client event
   by event.
4. Headers: hop-by-hop ones are removed both ways (:mod:`.hop`); every client copy of an
   identity header is removed on *every* route (exempt and optional ones too) before the
   verified values are added; ``Authorization`` is removed unless configured; configured token
   query parameters are removed from the upstream URL; ``X-Forwarded-*`` and ``Host`` as
   configured. The upstream's ``Date`` and ``Server`` are replaced by the serving stack's own,
   as nginx does (uvicorn stamps both on every response: passing the upstream's on as well
   would send each twice, and ``Date`` is a single-valued header).
5. Failures that are not the client's are small JSON bodies, not the auth profile: 502 when
   the upstream cannot be reached (refused, DNS, broken response), 504 on a timeout, 503 when
   ``max_in_flight`` exchanges are already running. The upstream's own responses (a 401
   included) pass through untouched; they are the upstream's answer, not a gatekeeper denial.
6. A body over ``max_request_body`` is refused with **413 in the error profile's shape**: the
   profile renders ``invalid_request`` ("The request body is too large") and the status becomes
   413 (any ``WWW-Authenticate`` challenge is dropped: it is not an authentication failure).
   A path the normaliser refuses is rendered the same way with status 400.

**The direct path.** Served by ``gatekeeper serve`` (the gateway's HTTP protocol, which offers
each request to :meth:`ReverseProxy.gatekeeper_direct` before starting an ASGI task), the common
request, a ``GET``/``HEAD`` without a body whose token is a verified-token cache hit on a path
seen before, is sent on an idle upstream connection at once and answered from that connection's
callback when the response comes (:meth:`ReverseProxy._answered`): no task, no coroutine, no
future, no loop turn in between. Everything else, and every turn that is not the plain case (a
streamed body, a failure, a retry), goes through the ASGI path above, so the outcome and the
record are the same either way (``tests/gateway/test_proxy_direct.py`` holds the two to the same
bytes). Other ASGI servers never offer it: the proxy stays a plain ASGI app.
"""

from __future__ import annotations

import functools
import json
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar
from urllib.parse import unquote_plus, urlsplit

import anyio

from ..accesslog import printable
from ..decision import Allow, Deny, Gate
from ..errors import AuthError
from ..responses import ErrorProfile, ErrorResponse
from ..rules import compile_pattern
from .hop import Headers
from .identity import MEMO_SIZE, IdentityHeaders, client_id_of
from .paths import PathRejected, normalise_path
from .record import Reporter, RequestRecord, logged_query, token_fingerprint
from .respond import DirectCycle, Send, send_whole
from .rewrite import BAD_LENGTH, RequestRewriter, ResponseRewriter
from .upstream_conn import UpstreamConnection
from .upstream_errors import PoolTimeout, UnsafeRequest, UpstreamBroken, UpstreamError, UpstreamTimeout
from .upstream_pool import Origin, Timeouts, UpstreamPool
from .upstream_tls import UpstreamTLS

T = TypeVar("T")
HostMode = Literal["rewrite", "forward"]
# What the proxy keeps per verified Claims object: (claims, token, its fingerprint, the
# identity headers, the client id, the issuer, the subject).
_Verified = tuple[
    Any, str | None, str | None, tuple[tuple[bytes, bytes], ...], str | None, str | None, str | None
]
ForwardedMode = Literal["set", "append", "off"]
# A raw path's route (ReverseProxy.route): (normalised path, it as logged, its upstream, the
# upstream's path for it).
_Route = tuple[str, str, "_Upstream | None", bytes]


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    """One upstream service.

    ``url`` is ``http(s)://host[:port][/base]``; the request's normalised path is appended to the
    base path. Websocket requests go to the same URL with ``ws(s)://``.

    - ``connect_timeout`` (TCP and TLS) / ``read_timeout`` (seconds, per wait for the next
      response bytes) / ``write_timeout`` (per wait for the upstream to take request bytes);
      ``total_timeout`` bounds the whole exchange until the last body byte (None: no bound, so
      long downloads and server-sent event streams are not cut off).
    - ``host``: ``"rewrite"`` sends the upstream's own host (nginx's default), ``"forward"``
      passes the client's ``Host`` on.
    - ``x_forwarded``: ``"set"`` replaces ``X-Forwarded-For``/``-Proto``/``-Host`` with what this
      proxy saw (the safe default at the edge: a client cannot choose its own address);
      ``"append"`` appends the peer to the client's ``X-Forwarded-For`` and keeps a client's
      ``-Proto``/``-Host`` (behind a trusted proxy); ``"off"`` removes all three and adds none.
    - ``forward_authorization``: pass the client's ``Authorization`` header upstream (default:
      removed, the token goes no further than it must).
    - ``tls``: for an ``https`` upstream, the CA file to trust instead of the system's store and
      the client certificate to present (:class:`~.upstream_tls.UpstreamTLS`; None: the
      system's trust store, no client certificate). Websockets to it use the same.
    """

    url: str
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    write_timeout: float = 60.0
    total_timeout: float | None = None
    host: HostMode = "rewrite"
    x_forwarded: ForwardedMode = "set"
    forward_authorization: bool = False
    tls: UpstreamTLS | None = None


@dataclass(frozen=True, slots=True)
class UpstreamRoute:
    """Requests whose (normalised) path matches ``path`` (a rule pattern: ``/api/**``) go to
    ``upstream``. The first matching route wins; the rest go to the default upstream."""

    path: str
    upstream: UpstreamSettings


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """The reverse proxy as a whole.

    - ``upstream``: the default upstream (None: only ``routes``; other paths get 404).
    - ``routes``: per-path upstreams, first match wins.
    - ``max_request_body``: bytes; a larger body is refused with 413 in the error profile's
      shape (None: no limit). Checked against ``Content-Length`` up front and counted while a
      chunked body streams.
    - ``max_in_flight``: upstream exchanges at once in this process; beyond it, 503.
    - ``pool_size``: upstream connections the proxy keeps (and opens at most) in total.
    - ``websockets``: proxy websocket upgrades (after the handshake is verified).
    - ``max_websockets``: websocket connections relayed at once in this process (each holds an
      upstream connection for as long as it lasts, outside the pool); beyond it, the handshake
      is refused with 503 (close code 1013, "try again later", where no response can be sent).
    """

    upstream: UpstreamSettings | None = None
    routes: tuple[UpstreamRoute, ...] = ()
    max_request_body: int | None = 10 * 1024 * 1024
    max_in_flight: int = 1024
    pool_size: int = 100
    websockets: bool = True
    max_websockets: int = 1024

    def __post_init__(self) -> None:
        for name in ("max_in_flight", "pool_size", "max_websockets"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        _tls_by_origin(self)  # upstreams sharing an origin agree on TLS, or this is refused


Receive = Callable[[], Any]

_JSON: Final = (b"content-type", b"application/json")
_NO_STORE: Final = (b"cache-control", b"no-store")
# Response headers the server in front stamps itself (uvicorn: on every response).
_STAMPED: Final = frozenset({b"date", b"server"})
#: Raw request paths whose normal form is remembered (:meth:`ReverseProxy.normalised`).
PATHS_KEPT: Final = 1024
# Response bodies up to this size (by Content-Length) are relayed without a disconnect
# watcher: they are done in a few writes, and the watcher is a task per request.
_SMALL_BODY: Final = 256 * 1024


class BodyTooLarge(Exception):
    """The request body grew past ``max_request_body`` while it streamed."""


class ClientGone(Exception):
    """The client disconnected while its request body was still streaming."""


class UpstreamAborted(Exception):
    """The upstream failed after the response started; the client connection is aborted so
    a cut-off body is never mistaken for a complete one (Go's ``http.ErrAbortHandler``)."""


def failure_body(error: str, description: str) -> bytes:
    """A gateway failure (not an auth denial) as a small JSON body."""
    return json.dumps({"error": error, "error_description": description}).encode()


def strip_query_params(query: bytes, names: frozenset[str]) -> bytes:
    """The query string without the named parameters (matched as ``parse_qsl`` decodes them,
    so ``bearer%5Ftoken`` is ``bearer_token``); the other parameters are kept byte for byte."""
    if not query or not names:
        return query
    kept = [
        part
        for part in query.split(b"&")
        if unquote_plus(part.split(b"=", 1)[0].decode("latin-1")) not in names
    ]
    return b"&".join(kept)


class _Upstream:
    """An upstream with what is derived from its settings once."""

    def __init__(self, settings: UpstreamSettings) -> None:
        parts = urlsplit(settings.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream url must be http(s)://host[:port][/path]: {settings.url!r}")
        if parts.query or parts.fragment:
            raise ValueError(f"upstream url cannot carry a query or fragment: {settings.url!r}")
        self.settings = settings
        # (scheme, host, port) as the pool keys connections; IPv6 hosts without brackets.
        self.origin = (parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
        self.base_path = parts.path.rstrip("/").encode("ascii")
        self.netloc = parts.netloc.encode("ascii")
        self.ws_url = ("wss" if parts.scheme == "https" else "ws") + "://" + parts.netloc
        self.timeouts = Timeouts(
            connect=settings.connect_timeout,
            read=settings.read_timeout,
            write=settings.write_timeout,
            pool=settings.connect_timeout,
        )


def _tls_by_origin(settings: ProxySettings) -> dict[Origin, ssl.SSLContext]:
    """Each https origin's TLS context, where its upstream configures one. The pool keeps
    connections per origin, so two upstreams on one origin must agree on TLS."""
    upstreams = [settings.upstream, *(route.upstream for route in settings.routes)]
    chosen: dict[Origin, UpstreamTLS | None] = {}
    for upstream in upstreams:
        if upstream is None or not upstream.url.startswith("https:"):
            continue
        origin = _Upstream(upstream).origin
        if chosen.setdefault(origin, upstream.tls) != upstream.tls:
            raise ValueError(f"two upstreams on {upstream.url!r}'s origin have different tls settings")
    return {origin: tls.context for origin, tls in chosen.items() if tls is not None}


class ReverseProxy:
    """ASGI app: decide each request with ``gate``; deny in ``profile``'s shape; forward the
    allowed ones to their upstream, streaming both ways, with ``identity`` headers set from the
    verified claims; one :class:`~gatekeeper.gateway.record.RequestRecord` per request goes to
    ``reporter``. Call :meth:`aclose` (or run its lifespan) to close the upstream pool."""

    def __init__(
        self,
        gate: Gate,
        profile: ErrorProfile,
        settings: ProxySettings,
        identity: IdentityHeaders,
        reporter: Reporter,
    ) -> None:
        self.gate = gate
        self.profile = profile
        self.settings = settings
        self.identity = identity
        self.reporter = reporter
        self._default = _Upstream(settings.upstream) if settings.upstream is not None else None
        self._routes = [(compile_pattern(route.path), _Upstream(route.upstream)) for route in settings.routes]
        self._token_params = frozenset(gate.source.query_params)
        self._paths: dict[bytes, _Route] = {}
        self._verified: dict[int, _Verified] = {}  # by id(claims)
        self._requests = RequestRewriter(identity)
        self._responses = ResponseRewriter(_STAMPED)
        self._in_flight = 0
        self.websockets_open = 0  # relayed now (see ProxySettings.max_websockets)
        self.transport = UpstreamPool(settings.pool_size, ssl_contexts=_tls_by_origin(settings))

    @property
    def in_flight(self) -> int:
        """Upstream exchanges running now."""
        return self._in_flight

    async def aclose(self) -> None:
        """Close the upstream connection pool."""
        await self.transport.aclose()

    def upstream_for(self, path: str) -> _Upstream | None:
        """The upstream for a normalised path: the first matching route's, else the default."""
        for pattern, upstream in self._routes:
            if pattern.fullmatch(path):
                return upstream
        return self._default

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._not_http(scope, receive, send)
            return
        started = time.perf_counter()
        record = RequestRecord("proxy", scope["method"], "", 0, "error", 0.0, 0.0)
        try:
            raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
            try:
                path, logged, upstream, target = self.route(raw_path)
            except PathRejected as rejected:
                record.path = self.logged_path(scope)
                record.error_kind = "bad_path"
                await self._render(send, record, AuthError("invalid_request", rejected.reason), 400)
                return
            headers: list[tuple[bytes, bytes]] = scope["headers"]
            query: bytes = scope.get("query_string", b"")
            record.path = self.logged_path(scope, path) if query else logged
            gate = self.gate
            rule = gate.match(scope["method"], path)
            result = gate.allow_cached(rule, headers, query) or await gate.decide_rule(rule, headers, query)
            record.decision_latency = time.perf_counter() - started
            record.rule = result.rule.path
            if isinstance(result, Deny):
                await self._deny(send, record, result)
                return
            identity = self._fill_identity(record, result)
            if upstream is None:
                await self._fail(send, record, 404, "no_upstream", "No upstream serves this path")
                return
            await self._forward(scope, receive, send, record, upstream, target, identity)
        finally:
            record.latency = time.perf_counter() - started
            self.reporter(record)

    # -- the direct path ----------------------------------------------------------------------

    def gatekeeper_direct(self, cycle: DirectCycle) -> bool:
        """Serve a request without a task, when it is the common case (the gateway's server
        offers each request here first: :data:`.respond.DIRECT`): a ``GET`` or ``HEAD``
        without a body, on a path seen before, its token a verified-token cache hit
        (:meth:`Gate.allow_cached <gatekeeper.decision.Gate.allow_cached>`), for an upstream
        without a total timeout that has an idle connection open. The request is sent on that
        connection, and :meth:`_answered` answers the client from the connection's callback.
        Anything else returns False having sent and recorded nothing: :meth:`__call__` serves
        it, with the same outcome and the same record."""
        started = time.perf_counter()
        scope = cycle.scope
        method: str = scope["method"]
        if method != "GET" and method != "HEAD":
            return False
        known = self._paths.get(scope["raw_path"])
        if known is None:
            return False  # (a new path: __call__ normalises it, or refuses it)
        path, logged, upstream, target = known
        if upstream is None or upstream.settings.total_timeout is not None:
            return False
        if self._in_flight >= self.settings.max_in_flight:
            return False
        query: bytes = scope["query_string"]
        gate = self.gate
        rule = gate.match(method, path)
        allow = gate.allow_cached(rule, scope["headers"], query)
        if allow is None:
            return False
        record = RequestRecord("proxy", method, logged, 0, "error", 0.0, 0.0)
        record.decision_latency = time.perf_counter() - started
        record.rule = rule.path
        headers, length, coded = self._rewrite(scope, self._fill_identity(record, allow), upstream)
        if length or coded:
            return False  # a body, or a malformed length
        if query:
            record.path = self.logged_path(scope, path)
            target = self._with_query(target, query)
        sent = time.perf_counter()
        answered = functools.partial(self._answered, cycle, record, started, sent)
        try:
            connection = self.transport.begin(
                method.encode("ascii"), upstream.origin, target, headers, upstream.timeouts, answered
            )
        except UnsafeRequest:
            return False
        if connection is None:
            return False  # no idle connection: __call__ opens one
        self._in_flight += 1
        return True

    def _answered(
        self,
        cycle: DirectCycle,
        record: RequestRecord,
        started: float,
        sent: float,
        response: UpstreamConnection,
    ) -> None:
        """The upstream connection's callback for a request :meth:`gatekeeper_direct` sent: a
        whole small response is written to the client now; a streamed one, or a failure, is
        handed to a task (:meth:`_respond`, :meth:`_exchange_failed`, as :meth:`__call__`
        would). An idle connection the upstream had closed before any answer came is the
        pool's retry case: the request goes through :meth:`__call__` again, from the start."""
        self._in_flight -= 1
        if not response.answered:
            self.transport.release(response)  # (failed: closed)
            error = response.error or UpstreamBroken("the upstream connection closed")
            if isinstance(error, UpstreamBroken) and response.received_nothing:
                cycle.gatekeeper_run(self)
                return

            async def failed(receive: Receive, send: Send) -> None:
                await self._exchange_failed(send, record, error)

            self._continue(cycle, record, started, failed)
            return
        record.upstream_latency = time.perf_counter() - sent
        record.upstream_status = record.status = response.status
        try:
            relayed, size = self._responses.rewrite(response.headers)
            whole = response.read_rest() if size is not None and 0 <= size <= _SMALL_BODY else None
        except Exception as exc:  # a bug: answered as the server answers an app's exception
            self.transport.release(response)
            self._continue(cycle, record, started, functools.partial(_reraise, exc))
            return
        if whole is None:  # a body still coming: relayed by a task, as __call__ does
            self._in_flight += 1  # (a relay is in flight, as in __call__)

            async def relay(receive: Receive, send: Send) -> None:
                try:
                    await self._respond(receive, send, record, response, None)
                finally:
                    self._in_flight -= 1

            self._continue(cycle, record, started, relay)
            return
        self.transport.release(response)
        try:
            cycle.gatekeeper_write(response.status, relayed, whole)
        except Exception as exc:  # (the response's framing: as the server answers an app's)
            self._continue(cycle, record, started, functools.partial(_reraise, exc))
            return
        record.latency = time.perf_counter() - started
        self.reporter(record)

    def _continue(
        self,
        cycle: DirectCycle,
        record: RequestRecord,
        started: float,
        step: Callable[[Receive, Send], Awaitable[None]],
    ) -> None:
        """Finish a directly served request in a task: ``step(receive, send)``, then the record."""

        async def app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
            try:
                await step(receive, send)
            finally:
                record.latency = time.perf_counter() - started
                self.reporter(record)

        cycle.gatekeeper_run(app)

    async def _not_http(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            from .wsproxy import proxy_websocket  # websockets is imported only when used

            await proxy_websocket(self, scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- the request ------------------------------------------------------------------------

    def logged_path(self, scope: dict[str, Any], path: str | None = None) -> str:
        """The request's path for the record: token parameters redacted, printable."""
        path = path if path is not None else scope.get("path", "")
        query = logged_query(scope.get("query_string", b""), self._token_params)
        return printable(f"{path}?{query}" if query else path)

    def route(self, raw_path: bytes) -> _Route:
        """``(the normalised path, it as logged, its upstream, the upstream's path for it)``
        (:func:`normalise_path`, which raises :class:`PathRejected`; :meth:`upstream_for`);
        remembered per raw path, at most :data:`PATHS_KEPT` (paths are the client's choice:
        past the bound they are worked out each time)."""
        known = self._paths.get(raw_path)
        if known is None:
            path = normalise_path(raw_path)
            upstream = self.upstream_for(path)
            target = upstream.base_path + path.encode("ascii") if upstream is not None else b""
            known = (path, printable(path), upstream, target)
            if len(self._paths) < PATHS_KEPT:
                self._paths[raw_path] = known
        return known

    async def _deny(self, send: Send, record: RequestRecord, deny: Deny) -> None:
        if deny.token is not None:
            record.token = token_fingerprint(deny.token)
        record.decision = "deny"
        record.error_kind = deny.error.kind
        record.issuer = deny.error.issuer
        rendered = self.profile.render(deny.error)
        record.status = rendered.status
        await send_rendered(send, rendered)

    def _fill_identity(self, record: RequestRecord, allow: Allow) -> tuple[tuple[bytes, bytes], ...]:
        """Record an allowed request's identity; returns the identity headers for the upstream.

        What a verified Claims object gives (the token's fingerprint, the identity headers, the
        client id, issuer and subject) is worked out once per object and token, and remembered
        (bounded, emptied wholesale when full; the entry holds the claims, so their id is not
        reused meanwhile)."""
        record.decision = "allow"
        claims, token = allow.claims, allow.token
        if claims is None:
            if token is not None:
                record.token = token_fingerprint(token)
            return ()
        verified = self._verified
        entry = verified.get(id(claims))
        if entry is None or entry[0] is not claims or entry[1] != token:
            entry = (
                claims,
                token,
                token_fingerprint(token) if token is not None else None,
                self.identity.rendered(claims),
                client_id_of(claims),
                claims.issuer,
                claims.subject,
            )
            if len(verified) >= MEMO_SIZE:
                verified.clear()
            verified[id(claims)] = entry
        record.cached = allow.cached
        _, _, record.token, identity, record.client_id, record.issuer, record.subject = entry
        return identity

    def upstream_headers(self, scope: dict[str, Any], allow: Allow, upstream: _Upstream) -> Headers:
        """The headers the upstream gets (:class:`~.rewrite.RequestRewriter`): hop-by-hop and
        client identity copies removed, then Host, X-Forwarded-* and the verified identity."""
        return self._rewrite(scope, self.identity.rendered(allow.claims), upstream)[0]

    def _rewrite(
        self, scope: dict[str, Any], identity: Sequence[tuple[bytes, bytes]], upstream: _Upstream
    ) -> tuple[Headers, int | None, bool]:
        client = scope.get("client")
        return self._requests.rewrite(
            scope["headers"],
            upstream.settings,
            upstream.netloc,
            str(client[0]).encode("latin-1") if client else b"unknown",
            str(scope.get("scheme", "http")).encode("latin-1"),
            identity,
        )

    def upstream_target(self, upstream: _Upstream, path: str, query: bytes) -> bytes:
        """Base path + normalised path + the query without token parameters."""
        return self._with_query(upstream.base_path + path.encode("ascii"), query)

    def _with_query(self, target: bytes, query: bytes) -> bytes:
        query = strip_query_params(query, self._token_params)
        return target + b"?" + query if query else target

    async def _forward(
        self,
        scope: dict[str, Any],
        receive: Receive,
        send: Send,
        record: RequestRecord,
        upstream: _Upstream,
        target: bytes,
        identity: Sequence[tuple[bytes, bytes]],
    ) -> None:
        """Send an allowed request to ``upstream`` (``target``: the path there) and relay its
        answer."""
        headers, length, coded = self._rewrite(scope, identity, upstream)
        if length == BAD_LENGTH:
            record.error_kind = "bad_request"
            await self._render(send, record, AuthError("invalid_request", "Bad Content-Length"), 400)
            return
        limit = self.settings.max_request_body
        if limit is not None and length is not None and length > limit:
            await self._too_large(send, record)
            return
        if self._in_flight >= self.settings.max_in_flight:
            await self._fail(send, record, 503, "upstream_busy", "Too many requests in flight", retry=True)
            return
        query: bytes = scope.get("query_string", b"")
        if query:
            target = self._with_query(target, query)
        # (a body without Content-Length is sent chunked: the connection frames it)
        has_body = coded or (length is not None and length > 0)
        content = self._request_body(receive, limit) if has_body else None
        total = upstream.settings.total_timeout
        deadline = anyio.current_time() + total if total is not None else None
        self._in_flight += 1
        try:
            sent = time.perf_counter()
            try:
                exchange = self.transport.exchange(
                    scope["method"].encode("ascii"), upstream.origin, target, headers, content, length,
                    upstream.timeouts,
                )  # fmt: skip
                response = await (exchange if deadline is None else _within(deadline, exchange))
            except (BodyTooLarge, ClientGone, UpstreamError, TimeoutError) as failed:
                await self._exchange_failed(send, record, failed)
                return
            record.upstream_latency = time.perf_counter() - sent
            record.upstream_status = record.status = response.status
            await self._respond(receive, send, record, response, deadline)
        finally:
            self._in_flight -= 1

    async def _respond(
        self,
        receive: Receive,
        send: Send,
        record: RequestRecord,
        response: UpstreamConnection,
        deadline: float | None,
    ) -> None:
        """Relay the upstream's response (its head is in) and hand its connection back."""
        try:
            relayed, size = self._responses.rewrite(response.headers)
            small = size is not None and 0 <= size <= _SMALL_BODY
            whole = response.read_rest() if small else None
            if whole is not None:  # the body came with the head: one write, no relay loop
                await send_whole(send, response.status, relayed, whole)
                return
            await send({"type": "http.response.start", "status": response.status, "headers": relayed})
            relay = _relay(response, send) if small else _relay_watching(response, receive, send)
            await (relay if deadline is None else _within(deadline, relay))
        except (UpstreamError, TimeoutError) as exc:
            record.error_kind = "upstream_aborted"
            raise UpstreamAborted(f"upstream failed mid-response: {type(exc).__name__}") from None
        finally:
            self.transport.release(response)

    async def _exchange_failed(self, send: Send, record: RequestRecord, failed: Exception) -> None:
        """The answer when a request could not be sent or answered (nothing was relayed yet)."""
        if isinstance(failed, BodyTooLarge):
            await self._too_large(send, record)
        elif isinstance(failed, ClientGone):
            record.error_kind = "client_gone"
            record.status = 499  # nginx's code for "client closed request"; nothing is sent
        elif isinstance(failed, PoolTimeout):
            await self._fail(send, record, 503, "upstream_busy", "No upstream connection free", retry=True)
        elif isinstance(failed, (UpstreamTimeout, TimeoutError)):
            await self._fail(send, record, 504, "upstream_timeout", "The upstream service timed out")
        elif isinstance(failed, UnsafeRequest):
            record.error_kind = "bad_request"
            await self._render(send, record, AuthError("invalid_request", "Malformed request"), 400)
        else:
            await self._fail(
                send, record, 502, "upstream_unreachable", "The upstream service could not be reached"
            )

    @staticmethod
    async def _request_body(receive: Receive, limit: int | None) -> AsyncIterator[bytes]:
        received = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk: bytes = message.get("body", b"")
            received += len(chunk)
            if limit is not None and received > limit:
                raise BodyTooLarge
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return

    # -- answers that are not the upstream's ------------------------------------------------

    async def _render(self, send: Send, record: RequestRecord, error: AuthError, status: int) -> None:
        """The profile's rendering of ``error`` with ``status`` (400, 413): the client's fault,
        in the shape it expects, without an authentication challenge."""
        rendered = self.profile.render(error)
        headers = tuple((k, v) for k, v in rendered.headers if k != "www-authenticate")
        record.status = status
        record.decision = "error"
        await send_rendered(send, ErrorResponse(status, headers, rendered.body))

    async def _too_large(self, send: Send, record: RequestRecord) -> None:
        record.error_kind = "body_too_large"
        await self._render(send, record, AuthError("invalid_request", "The request body is too large"), 413)

    @staticmethod
    async def _fail(
        send: Send, record: RequestRecord, status: int, error: str, description: str, *, retry: bool = False
    ) -> None:
        record.status = status
        record.decision = "error"
        record.error_kind = error
        headers = [_JSON, _NO_STORE]
        if retry:
            headers.append((b"retry-after", b"1"))
        await send_whole(send, status, headers, failure_body(error, description))


async def _reraise(exc: Exception, receive: Receive, send: Send) -> None:
    raise exc


async def _within(deadline: float, step: Awaitable[T]) -> T:
    """``await step``, cancelled and failed with ``TimeoutError`` at ``deadline`` (anyio's
    clock). Only used when an upstream has a total timeout: the default awaits the step as is."""
    with anyio.CancelScope(deadline=deadline):
        return await step
    raise TimeoutError  # the scope was cancelled at the deadline (and caught the cancellation)


async def send_rendered(send: Send, rendered: ErrorResponse) -> None:
    """Send an error profile's rendering as the response."""
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in rendered.headers]
    headers.append((b"content-length", str(len(rendered.body)).encode()))
    await send_whole(send, rendered.status, headers, rendered.body)


async def _relay(response: UpstreamConnection, send: Send) -> None:
    # The bytes as the upstream encoded them (gzip stays gzip), sent on as soon as they arrive,
    # which is what delivers server-sent events one by one.
    while chunk := await response.read():
        # (the last bytes go out with the end of the body: one ASGI send fewer per response)
        more = not response.complete
        await send({"type": "http.response.body", "body": chunk, "more_body": more})
        if not more:
            return
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _relay_watching(response: UpstreamConnection, receive: Receive, send: Send) -> None:
    """:func:`_relay`, stopped when the client disconnects (a server's ``send`` after a
    disconnect is silently dropped, so without this a gone client's 1 GiB download, or an
    endless event stream, would still be pulled from the upstream)."""
    async with anyio.create_task_group() as group:

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass  # the rest of a request body the upstream did not read
            group.cancel_scope.cancel()

        group.start_soon(watch)
        await _relay(response, send)
        group.cancel_scope.cancel()
