"""The forward-auth decision endpoint for nginx ``auth_request``, Caddy ``forward_auth``,
Traefik ``ForwardAuth`` and Envoy ``ext_authz`` (HTTP service).

The proxy asks ``GET /auth`` (path configurable) about a client request; the answer is 200 with
the identity headers (allow) or the error profile's status, headers and body (deny). The rules
apply to the *original* method and path, which come from the headers the configured proxy sends
(and only those: a header another proxy would send is ignored, a repeated one refused):

============== ======================================= ==========================================
``proxy``      method from                             target (path and query) from
============== ======================================= ==========================================
nginx          ``X-Original-Method``                   ``X-Original-URI`` (``$request_uri``)
ingress-nginx  ``X-Original-Method``                   ``X-Original-URL`` (absolute URL)
traefik        ``X-Forwarded-Method``                  ``X-Forwarded-Uri``
caddy          ``X-Forwarded-Method``                  ``X-Forwarded-Uri``
envoy          the auth request's own method           the auth request's path after ``path``
============== ======================================= ==========================================

The path is normalised by :func:`gatekeeper.gateway.paths.normalise_path`; a path that cannot be
normalised unambiguously is refused with 400 in the profile's ``invalid_request`` shape.

An allow also carries the path the rules saw, in the one header the configured proxy's shipped
configuration uses: ``X-Gatekeeper-Path`` (the normalised path alone) with ``proxy = "caddy"``,
whose rewrite takes a path; ``X-Gatekeeper-Uri`` (the normalised path plus the query without
token parameters) with every other proxy. The shipped nginx configuration sends the upstream
exactly that URI, the Caddy one that path, so the upstream sees the path the rules saw (and,
through nginx, never the query token). Only one is sent because each response header is work
for the proxy and for a pure-Python server stack (h11 validates every one).

nginx's ``auth_request`` passes only 401 and 403 through (any other status becomes 500) and
drops the body. With ``proxy = "nginx"`` every refusal is therefore answered with 401 (403 when
the profile's status is 403) and ``X-Gatekeeper-Status`` carrying the real status; nginx's
``error_page 401 403 = @gatekeeper_denied`` then asks ``{path}/render`` the same question, and
that endpoint answers with the profile's exact status, headers and body, which nginx hands to
the client. The render endpoint decides again rather than trusting anything the first answer
carried (nothing a client sends can choose what is rendered); if the second decision allows (the
keys came back in between), it answers the profile's ``keys_unavailable`` (retry) rather than a
2xx that would reach the client with no upstream response.
"""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import unquote_plus

from ..decision import Allow, Deny, Gate
from ..errors import AuthError
from ..responses import ErrorProfile, ErrorResponse
from .identity import IdentityHeaders, client_id_of
from .paths import PathRejected, normalise_path, split_target
from .record import Decision, Reporter, RequestRecord, logged_query, token_fingerprint
from .respond import send_whole

__all__ = [
    "PROXIES",
    "UPSTREAM_HEADERS",
    "UPSTREAM_PATH_HEADER",
    "UPSTREAM_URI_HEADER",
    "ForwardAuth",
    "ForwardAuthSettings",
    "ProxyKind",
]

ProxyKind = Literal["nginx", "ingress-nginx", "traefik", "caddy", "envoy"]
PROXIES: Final[tuple[ProxyKind, ...]] = ("nginx", "ingress-nginx", "traefik", "caddy", "envoy")

#: The allow answer's header with the URI the upstream should be sent (normalised path, query
#: without token parameters), and one with the normalised path alone (for Caddy's rewrite, which
#: escapes a placeholder's value in the query).
UPSTREAM_URI_HEADER: Final = "x-gatekeeper-uri"
UPSTREAM_PATH_HEADER: Final = "x-gatekeeper-path"
#: The real status of a refusal that nginx mode answered with 401/403.
STATUS_HEADER: Final = "x-gatekeeper-status"
#: Which of the two an allow carries, per proxy: the one its shipped configuration reads
#: (Caddy's ``rewrite`` takes the path, nginx's ``proxy_pass`` the URI; Traefik and Envoy
#: cannot rewrite from an auth answer, so theirs is informational and the URI says more).
UPSTREAM_HEADERS: Final[dict[ProxyKind, str]] = {
    "nginx": UPSTREAM_URI_HEADER,
    "ingress-nginx": UPSTREAM_URI_HEADER,
    "traefik": UPSTREAM_URI_HEADER,
    "caddy": UPSTREAM_PATH_HEADER,
    "envoy": UPSTREAM_URI_HEADER,
}

# (method header, target header) per proxy; None: the auth request's own method / path.
_CONVENTIONS: Final[dict[ProxyKind, tuple[bytes | None, bytes | None]]] = {
    "nginx": (b"x-original-method", b"x-original-uri"),
    "ingress-nginx": (b"x-original-method", b"x-original-url"),
    "traefik": (b"x-forwarded-method", b"x-forwarded-uri"),
    "caddy": (b"x-forwarded-method", b"x-forwarded-uri"),
    "envoy": (None, None),
}
# Methods are case-sensitive (RFC 9110 9.1); rules name them in upper case. A lower-case or
# odd method is refused rather than matched against no method-specific rule.
_METHOD: Final = re.compile(rb"[A-Z][A-Z0-9_-]{0,31}")
_ABSOLUTE_URL: Final = re.compile(rb"https?://[^/?#\s]+", re.IGNORECASE)
# Methods _METHOD matches, tested first without encoding and matching.
_COMMON_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
#: How many verified claims objects' allow headers are kept (the memo is then emptied); the
#: same for parsed original requests.
_MEMO_SIZE: Final = 4096
#: Original requests are remembered only when their method and target are this short in all
#: (the memo's memory stays bounded: at most _MEMO_SIZE entries of this size).
_MEMO_TARGET_MAX: Final = 1024
_NO_STORE: Final = (b"cache-control", b"no-store")
_NO_BODY: Final = (b"content-length", b"0")


@dataclass(frozen=True, slots=True)
class ForwardAuthSettings:
    """The decision endpoint.

    - ``path``: where the proxy asks (default ``/auth``); for Envoy, the ``path_prefix`` its
      ``ext_authz`` HTTP service puts before the original path.
    - ``proxy``: whose headers carry the original method and URI (table in the module doc).
      Only that proxy's headers are trusted; the shipped configurations make each proxy
      overwrite any client copy of them.
    - ``decision_cache_seconds``: 0 (default) sends ``Cache-Control: no-store`` on every
      answer; N > 0 lets the proxy cache an *allow* for up to N seconds (never past the
      token's ``exp``) with ``Cache-Control: private, max-age=...``. Refusals are never cached.
    - ``allow_semicolon``: see :func:`~gatekeeper.gateway.paths.normalise_path`.
    """

    path: str = "/auth"
    proxy: ProxyKind = "nginx"
    decision_cache_seconds: int = 0
    allow_semicolon: bool = False

    def __post_init__(self) -> None:
        if not self.path.startswith("/") or self.path != normalise_path(self.path):
            raise ValueError(f"forward-auth path must be a normal absolute path: {self.path!r}")
        if self.proxy not in PROXIES:
            raise ValueError(f"proxy must be one of {', '.join(PROXIES)}")
        if self.decision_cache_seconds < 0:
            raise ValueError("decision_cache_seconds must be >= 0")

    @property
    def render_path(self) -> str:
        """nginx's render endpoint: ``{path}/render``."""
        return self.path.rstrip("/") + "/render"


class _BadRequest(Exception):
    """The auth request cannot be decided: ``slug`` for logs and metrics, ``description`` for
    the client, ``profile``: render it in the error profile's shape (a bad path is the client's
    doing) or as plain JSON (a proxy that sends no original URI is the operator's)."""

    def __init__(self, slug: str, description: str, *, profile: bool) -> None:
        super().__init__(description)
        self.slug = slug
        self.description = description
        self.profile = profile


_Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


@dataclass(frozen=True, slots=True)
class _Original:
    """The original request, parsed and normalised, with what every answer about it repeats:
    the allow's ``X-Gatekeeper-Uri`` or ``-Path`` header (``upstream``), the allow's headers
    after the identity headers when decisions are not cached (``allow_tail``: that header,
    ``no-store``, ``content-length: 0``) and the path as the access log shows it (query token
    parameters redacted). Remembered per exact (method, target) input."""

    method: str
    raw_path: str
    path: str  # normalised
    query: bytes
    upstream: tuple[bytes, bytes]
    allow_tail: tuple[tuple[bytes, bytes], ...]
    logged_path: str


class ForwardAuth:
    """ASGI app answering forward-auth questions with ``gate``'s decision.

    Answers on ``settings.path`` (and, for nginx, ``settings.render_path``; for Envoy, every
    path under ``settings.path``); anything else is 404. One record per question goes to
    ``reporter`` (the render call is not reported: its question was, once).
    """

    def __init__(
        self,
        gate: Gate,
        profile: ErrorProfile,
        settings: ForwardAuthSettings,
        identity: IdentityHeaders,
        reporter: Reporter,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.gate = gate
        self.profile = profile
        self.settings = settings
        self.identity = identity
        self.reporter = reporter
        self._clock = clock
        self._method_header, self._target_header = _CONVENTIONS[settings.proxy]
        self._nginx = settings.proxy in ("nginx", "ingress-nginx")
        self._envoy = settings.proxy == "envoy"
        self._render_path = settings.render_path
        # What handles() compares a path with: the exact paths, and Envoy's prefix.
        self._paths = frozenset({settings.path, settings.render_path} if self._nginx else {settings.path})
        self._prefix = settings.path.rstrip("/") + "/" if self._envoy else None
        self._upstream_name = UPSTREAM_HEADERS[settings.proxy].encode("ascii")
        self._uri_upstream = self._upstream_name == UPSTREAM_URI_HEADER.encode("ascii")
        self._token_params = frozenset(gate.source.query_params) | {"bearer_token", "access_token"}
        self._identity_names = [name.lower().encode("ascii") for name in identity.names]
        # An anonymous allow sends every identity header empty.
        self._anonymous: tuple[tuple[bytes, bytes], ...] = tuple((name, b"") for name in self._identity_names)
        # id(claims) -> (claims, every identity header, client id): rendered once per verified
        # Claims object (the cache hands back the same one); the entry holds the claims, so
        # their id cannot be reused meanwhile, and `is` checks it.
        self._memo: dict[int, tuple[Any, tuple[tuple[bytes, bytes], ...], str | None]] = {}
        # (method, target) inputs -> the parsed original request (see _original).
        self._seen: dict[tuple[Any, ...], _Original] = {}

    def handles(self, path: str) -> bool:
        """Whether a request for ``path`` (the listener's path) is for this endpoint."""
        if path in self._paths:
            return True
        return self._prefix is not None and path.startswith(self._prefix)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # websockets are not asked about here; the handshake is closed unanswered
        path: str = scope["path"]
        if not self.handles(path):
            await _send(
                send, 404, [(b"content-type", b"application/json"), _NO_STORE], b'{"error":"not_found"}'
            )
            return
        render = self._nginx and path == self._render_path
        started = time.perf_counter()
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        try:
            original = self._original(scope, headers)
        except _BadRequest as bad:
            await _send(send, *self._refuse_bad(scope, headers, bad, render, started))
            return
        decided = time.perf_counter()
        result = await self.gate.decide(original.method, original.path, headers, original.query)
        decision_latency = time.perf_counter() - decided
        if isinstance(result, Allow):
            if render:
                # The decision changed between the two calls; never answer 2xx to a client
                # here (nginx would send it with no upstream response): ask them to retry.
                rendered = self.profile.render(AuthError("keys_unavailable", retry_after=1))
                await _send(send, *self._deny(rendered, render))
                return
            allow_headers = self._allow(result, original)
            self._report(original, 200, "allow", started, decision_latency, result)
            # The allow's headers already end with its content-length (an empty body).
            await send_whole(send, 200, allow_headers, b"")
            return
        rendered = self.profile.render(result.error)
        answer = self._deny(rendered, render)
        if not render:
            self._report(original, rendered.status, "deny", started, decision_latency, result)
        # Reported before sending: when the client has its answer, the record exists.
        await _send(send, *answer)

    # -- the original request ---------------------------------------------------------------

    def _original(self, scope: dict[str, Any], headers: Sequence[tuple[bytes, bytes]]) -> _Original:
        """The original request, from the memo when the same exact inputs were parsed before
        (a proxy asks about the same URIs over and over); only a success is remembered."""
        if self._envoy:
            raw: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
            key: tuple[Any, ...] = (scope["method"], raw, scope.get("query_string", b""))
            size = len(raw) + len(key[2])
        else:
            target_value, method_value = self._originals(headers)
            key = (method_value, target_value)
            size = len(target_value) + len(method_value)
        found = self._seen.get(key)
        if found is not None:
            return found
        original = self._parse(key)
        if size <= _MEMO_TARGET_MAX:
            if len(self._seen) >= _MEMO_SIZE:
                self._seen.clear()
            self._seen[key] = original
        return original

    def _parse(self, key: tuple[Any, ...]) -> _Original:
        """The original request from the memo key's inputs: (scope method, raw path, query
        string) for Envoy, (method header, target header) for the others."""
        if self._envoy:
            method, raw, query = key
            raw = raw.partition(b"?")[0]  # some ASGI servers leave the query on raw_path
            prefix = self.settings.path.rstrip("/").encode("ascii")
            if raw != prefix and not raw.startswith(prefix + b"/"):
                # The listener decoded its way to the prefix (``/%61uth/x``): not what Envoy sends.
                raise _BadRequest("bad_path", "The request path does not start with the prefix", profile=True)
            target = raw[len(prefix) :] or b"/"
            text = _ascii(target, "path")
        else:
            method_value, target_value = key
            method = _ascii(method_value, "method")
            if self.settings.proxy == "ingress-nginx":
                prefix_match = _ABSOLUTE_URL.match(target_value)
                if prefix_match is None:
                    raise _BadRequest(
                        "bad_original_uri", "X-Original-URL is not an absolute http(s) URL", profile=True
                    )
                target_value = target_value[prefix_match.end() :] or b"/"
            raw_path, query_text = _split_or_refuse(_ascii(target_value, "URI"))
            text = raw_path
            query = query_text.encode("ascii")
        if method not in _COMMON_METHODS and not _METHOD.fullmatch(method.encode("ascii")):
            raise _BadRequest(
                "bad_method", "The original request method is not an upper-case token", profile=True
            )
        try:
            path = normalise_path(text, allow_semicolon=self.settings.allow_semicolon)
        except PathRejected as rejected:
            raise _BadRequest(
                "bad_path", f"The request path is ambiguous: {rejected.reason}", profile=True
            ) from None
        logged = logged_query(query, self._token_params)
        encoded = path.encode("ascii")
        if self._uri_upstream:
            kept = _kept_query(query, self._token_params)
            encoded += b"?" + kept if kept else b""
        upstream = (self._upstream_name, encoded)
        return _Original(
            method,
            text,
            path,
            query,
            upstream,
            (upstream, _NO_STORE, _NO_BODY),
            path + ("?" + logged if logged else ""),
        )

    def _originals(self, headers: Sequence[tuple[bytes, bytes]]) -> tuple[bytes, bytes]:
        """The target and method headers in one scan, refused as two :meth:`_required` calls
        (target first) would refuse them."""
        target_name = self._target_header
        method_name = self._method_header
        assert target_name is not None
        assert method_name is not None
        target: bytes | None = None
        method: bytes | None = None
        target_repeated = method_repeated = False
        target_length, method_length = len(target_name), len(method_name)
        for key, value in headers:
            if key != target_name and key != method_name:
                length = len(key)
                if length != target_length and length != method_length:
                    continue
                key = key.lower()  # ASGI servers send lower case; anything else is compared so
            if key == target_name:
                target_repeated = target_repeated or target is not None
                target = value
            elif key == method_name:
                method_repeated = method_repeated or method is not None
                method = value
        target = self._checked(target, target_repeated, target_name, "missing_original_uri")
        method = self._checked(method, method_repeated, method_name, "missing_original_method")
        return target, method

    def _checked(self, value: bytes | None, repeated: bool, name: bytes, slug: str) -> bytes:
        if repeated:
            title = name.decode("ascii").title()
            raise _BadRequest("repeated_header", f"The {title} header is repeated", profile=True)
        if value is None:
            title = name.decode("ascii").title()
            mode = self.settings.proxy
            description = f"The {title} header is missing: configure the proxy to send it ({mode} mode)"
            raise _BadRequest(slug, description, profile=False)
        return value

    # -- answers ------------------------------------------------------------------------------

    def _allow(self, allow: Allow, original: _Original) -> tuple[tuple[bytes, bytes], ...]:
        """The allow's headers (status 200, empty body)."""
        # Every configured identity header, empty when the claim is absent (or the request is
        # anonymous): proxies that copy named headers (Caddy's copy_headers, Envoy's
        # allowed_upstream_headers) then overwrite a client's copy instead of keeping it, and
        # Caddy 2.6 would otherwise send its unexpanded placeholder. nginx sends no empty header.
        identity = self._anonymous if allow.claims is None else self._facts(allow.claims)[1]
        if not self.settings.decision_cache_seconds:
            return identity + original.allow_tail  # both prebuilt: one tuple concatenation
        return (*identity, original.upstream, self._cache_control(allow), _NO_BODY)

    def _facts(self, claims: Any) -> tuple[Any, tuple[tuple[bytes, bytes], ...], str | None]:
        """(claims, every identity header in configured order, client id), once per verified
        Claims object."""
        entry = self._memo.get(id(claims))
        if entry is not None and entry[0] is claims:
            return entry
        values = dict(self.identity.rendered(claims))
        identity = tuple((name, values.get(name, b"")) for name in self._identity_names)
        entry = (claims, identity, client_id_of(claims))
        if len(self._memo) >= _MEMO_SIZE:
            self._memo.clear()
        self._memo[id(claims)] = entry
        return entry

    def _cache_control(self, allow: Allow) -> tuple[bytes, bytes]:
        seconds = self.settings.decision_cache_seconds
        if not seconds or (allow.claims is None and allow.rule.access != "exempt"):
            return _NO_STORE  # an anonymous allow on an optional route depends on "no token"
        if allow.claims is not None:
            seconds = min(seconds, int(allow.claims.expires_at - self._clock()))
        if seconds <= 0:
            return _NO_STORE
        return (b"cache-control", f"private, max-age={seconds}".encode("ascii"))

    def _deny(self, rendered: ErrorResponse, render: bool) -> _Answer:
        if not self._nginx or render:
            return rendered.status, _with_no_store(rendered), rendered.body
        # auth_request: 401/403 only, no body; the error_page location fetches the rendering.
        status = 403 if rendered.status == 403 else 401
        out = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in rendered.headers]
        out = [pair for pair in out if pair[0] not in (b"content-type", b"cache-control")]
        out.append((STATUS_HEADER.encode("ascii"), str(rendered.status).encode("ascii")))
        out.append(_NO_STORE)
        return status, out, b""

    def _refuse_bad(
        self,
        scope: dict[str, Any],
        headers: Sequence[tuple[bytes, bytes]],
        bad: _BadRequest,
        render: bool,
        started: float,
    ) -> _Answer:
        if bad.profile:
            rendered = self.profile.render(AuthError("invalid_request", bad.description))
        else:
            body = _json_error(bad.slug, bad.description)
            rendered = ErrorResponse(400, (("content-type", "application/json"),), body)
        answer = self._deny(rendered, render)
        if render:
            return answer
        target = (
            _one_header_quiet(headers, self._target_header) if self._target_header else scope.get("raw_path")
        )
        self.reporter(
            RequestRecord(
                door="forward_auth",
                method=_loggable(_one_header_quiet(headers, self._method_header) or b"")
                if self._method_header
                else str(scope.get("method", "")),
                path=_loggable(target or b""),
                status=rendered.status,
                decision="error",
                latency=time.perf_counter() - started,
                decision_latency=0.0,
                error_kind=bad.slug,
            )
        )
        return answer

    def _report(
        self,
        original: _Original,
        status: int,
        decision: Decision,
        started: float,
        decision_latency: float,
        result: Allow | Deny,
    ) -> None:
        # Positional arguments, in RequestRecord's field order: a third of the cost of keywords
        # for a 14-field record, once per request.
        token = result.token
        if isinstance(result, Allow):
            claims = result.claims
            if claims is None:
                record = RequestRecord(
                    "forward_auth", original.method, original.logged_path, status, decision,
                    time.perf_counter() - started, decision_latency, result.rule.path, None, None, None,
                    None, token_fingerprint(token) if token else None, result.cached,
                )  # fmt: skip
            else:
                record = RequestRecord(
                    "forward_auth", original.method, original.logged_path, status, decision,
                    time.perf_counter() - started, decision_latency, result.rule.path, None,
                    claims.issuer, claims.subject, self._facts(claims)[2],
                    token_fingerprint(token, claims) if token else None, result.cached,
                )  # fmt: skip
        else:
            error = result.error
            record = RequestRecord(
                "forward_auth", original.method, original.logged_path, status, decision,
                time.perf_counter() - started, decision_latency, result.rule.path, error.kind,
                error.issuer, None, None, token_fingerprint(token) if token else None, None,
            )  # fmt: skip
        self.reporter(record)


def _split_or_refuse(target: str) -> tuple[str, str]:
    """:func:`split_target` with its refusal as a bad request in the profile's shape."""
    try:
        return split_target(target)
    except PathRejected as rejected:
        raise _BadRequest(
            "bad_path", f"The request path is ambiguous: {rejected.reason}", profile=True
        ) from None


def _ascii(value: bytes, what: str) -> str:
    slug = "bad_method" if what == "method" else "bad_path"
    try:
        text = value.decode("ascii")
    except UnicodeDecodeError:
        raise _BadRequest(slug, f"The original request {what} is not ASCII", profile=True) from None
    if _CONTROL.search(text) is not None:
        raise _BadRequest(slug, f"The original request {what} has a control character", profile=True)
    return text


def _one_header_quiet(headers: Sequence[tuple[bytes, bytes]], name: bytes | None) -> bytes | None:
    if name is None:
        return None
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _kept_query(query: bytes, names: frozenset[str]) -> bytes:
    """Exactly :func:`_without_params`, without splitting a query that has no escape and in
    which no token parameter name occurs (its keys are literal, so none is a token parameter
    and every pair is kept)."""
    if query and b"%" not in query and b"+" not in query:
        literal = _literal_names(names)
        if literal is not None:
            for name in literal:
                if name in query:
                    break
            else:
                return _safe_bytes(query)
    return _without_params(query, names)


@functools.lru_cache(maxsize=64)
def _literal_names(names: frozenset[str]) -> tuple[bytes, ...] | None:
    """The names as the bytes a literal key would be; None when one cannot be found that way
    (empty: an empty key matches it; non-ASCII: compared after latin-1 decoding)."""
    if not all(name and name.isascii() for name in names):
        return None
    return tuple(name.encode("ascii") for name in names)


def _without_params(query: bytes, names: frozenset[str]) -> bytes:
    """The query without token parameters (the rest byte for byte, bytes that cannot appear raw
    in a request line percent-encoded)."""
    if not query:
        return b""
    kept = []
    for pair in query.split(b"&"):
        key = pair.split(b"=", 1)[0]
        if unquote_plus(key.decode("latin-1")) in names:
            continue
        kept.append(pair)
    return _safe_bytes(b"&".join(kept))


def _safe_bytes(data: bytes) -> bytes:
    if all(0x21 <= b <= 0x7E for b in data):
        return data
    return b"".join(bytes([b]) if 0x21 <= b <= 0x7E else b"%%%02X" % b for b in data)


def _loggable(raw: bytes) -> str:
    """A raw header value for a log line: control and non-ASCII bytes escaped."""
    return "".join(chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}" for b in raw[:2048])


def _json_error(slug: str, description: str) -> bytes:
    return json.dumps({"error": slug, "error_description": description}, separators=(",", ":")).encode()


def _with_no_store(rendered: ErrorResponse) -> list[tuple[bytes, bytes]]:
    out = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in rendered.headers]
    if not any(name == b"cache-control" for name, _ in out):
        out.append(_NO_STORE)
    return out


async def _send(send: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode("ascii"))]
    await send_whole(send, status, headers, body)


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
