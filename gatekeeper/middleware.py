"""ASGI middleware: verify every request's bearer token in front of a Starlette/FastAPI app.

Pure ASGI (no ``BaseHTTPMiddleware``), for http and websocket scopes; lifespan passes through,
with the verifier's first key fetch at startup and its HTTP clients closed at shutdown.
On success it follows Starlette's conventions: ``scope["auth"]`` is an ``AuthCredentials``
carrying the claims and scopes, and ``scope["user"]`` an authenticated user whose identity is
``sub``, so ``request.user``, ``request.auth`` and Starlette's ``requires()`` work unchanged.

A request with a cached token allocates only those two small objects here: the state left for
decorators is one object per middleware, and ``request.auth.scopes`` is built when first read.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.authentication import AuthCredentials, BaseUser
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from .accesslog import log_rejection
from .bearer import BearerSource
from .claims import Claims, ScopeMode
from .decision import Deny, Gate, PrincipalHook
from .errors import AuthError
from .responses import ErrorProfile, ErrorResponse, ProfileSpec, get_profile
from .rules import Rule, RuleSet
from .verifier import Verifier

SCOPE_KEY = "gatekeeper"


class TokenAuth(AuthCredentials):
    """``request.auth``: Starlette's credentials (``scopes``, a sorted list) plus the claims."""

    def __init__(self, claims: Claims) -> None:
        # No super().__init__(): the scopes list is made when first read, not per request.
        self.claims = claims
        self._scopes: list[str] | None = None

    @property
    def scopes(self) -> list[str]:
        if self._scopes is None:
            self._scopes = sorted(self.claims.scopes)
        return self._scopes

    @scopes.setter
    def scopes(self, value: list[str]) -> None:
        self._scopes = list(value)


class TokenUser(BaseUser):
    """``request.user`` for a verified token: identity is ``sub``; ``principal`` is what the
    principal hook returned (None without a hook)."""

    def __init__(self, claims: Claims, principal: Any = None) -> None:
        self.claims = claims
        self.principal = principal

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.claims.subject or ""

    @property
    def identity(self) -> str:
        return self.claims.subject or ""


class AnonymousUser(BaseUser):
    """``request.user`` when authentication is optional and no token was sent."""

    @property
    def is_authenticated(self) -> bool:
        return False

    @property
    def display_name(self) -> str:
        return ""

    @property
    def identity(self) -> str:
        return ""


_ANONYMOUS = AnonymousUser()


@dataclass(frozen=True, slots=True)
class GatekeeperState:
    """What the middleware leaves in ``scope["gatekeeper"]`` (the same object for every
    request) when it has looked at a request: its error profile and where tokens come from
    (to fingerprint the token when a decorator rejects the request). The verified claims are
    ``request.auth.claims`` (see :func:`verified_claims`)."""

    profile: ErrorProfile
    source: BearerSource


def verified_claims(scope: Scope) -> Claims | None:
    """The claims the middleware verified for this request, None when it has none."""
    auth = scope.get("auth")
    return auth.claims if isinstance(auth, TokenAuth) else None


def to_starlette(rendered: ErrorResponse) -> Response:
    """An error profile's rendering as a Starlette response, headers exactly as rendered (plus
    ``content-length``)."""
    return Response(rendered.body, rendered.status, headers=dict(rendered.headers))


class GatekeeperMiddleware:
    """Verify bearer tokens for an ASGI app and answer failures in an error profile.

    ``errors`` names a built-in profile or gives your own (dict, callable or profile object);
    ``query_param`` also accepts tokens from that query parameter (``"bearer_token"`` for
    PlaceOS, ``"access_token"`` for RFC 6750 2.3). ``rules``, ``exempt``, ``optional`` and
    ``scopes`` set per-route requirements (see :class:`Rule`). ``principal`` maps claims to
    the app's principal. ``prefetch_keys`` fetches keys at lifespan startup.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        verifier: Verifier,
        errors: ProfileSpec = "rfc6750",
        realm: str = "api",
        query_param: str | Sequence[str] | None = None,
        rules: Iterable[Rule] = (),
        exempt: Iterable[str] = (),
        optional: bool = False,
        scopes: str | Sequence[str] = (),
        principal: PrincipalHook | None = None,
        prefetch_keys: bool = True,
    ) -> None:
        self.app = app
        self.verifier = verifier
        self.profile = get_profile(errors, realm)
        self.source = BearerSource.of(query_param)
        self.rules = RuleSet.build(rules, exempt=exempt, optional=optional, scopes=scopes)
        self.principal = principal
        self.prefetch_keys = prefetch_keys
        self._state = GatekeeperState(self.profile, self.source)
        self.gate = Gate(verifier, rules=self.rules, source=self.source, principal=principal)
        # Per-middleware constants the hot path would otherwise recompute per request.
        self._has_rules = bool(self.rules.rules)
        self._default = self.rules.default
        self._fast = principal is None and self.source.header

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            if kind == "lifespan":
                await self._lifespan(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        rule = self.rules.match_scope(scope) if self._has_rules else self._default
        headers = scope.get("headers", ())
        query = scope.get("query_string", b"")
        if self._fast and rule.access != "exempt":
            # The hot path: a cached token, nothing to refuse, no principal hook to run.
            claims = self.gate.cached(rule, headers, query)
            if claims is not None:
                scope["auth"] = TokenAuth(claims)
                scope["user"] = TokenUser(claims)
                scope[SCOPE_KEY] = self._state
                await self.app(scope, receive, send)
                return
        decision = await self.gate.decide_rule(rule, headers, query)
        if isinstance(decision, Deny):
            log_rejection(decision.error, scope, decision.token, self.source.query_params)
            await self._deny(decision.error, scope, receive, send)
            return
        # The app runs outside the decision: an AuthError it raises is its own, not a rejection.
        claims = decision.claims
        if rule.access == "exempt":
            # Not looked at, but request.user / request.auth work (anonymous) as they would
            # behind Starlette's AuthenticationMiddleware, unless something outside set them.
            if "user" not in scope:
                scope["user"] = _ANONYMOUS
                scope["auth"] = AuthCredentials()
            await self.app(scope, receive, send)
            return
        if claims is None:  # an optional route, and no token came
            scope["auth"] = AuthCredentials()
            scope["user"] = _ANONYMOUS
        else:
            scope["auth"] = TokenAuth(claims)
            scope["user"] = TokenUser(claims, decision.principal)
        scope[SCOPE_KEY] = self._state
        await self.app(scope, receive, send)

    async def _deny(self, error: AuthError, scope: Scope, receive: Receive, send: Send) -> None:
        rendered = self.profile.render(error)
        if scope["type"] == "http":
            await to_starlette(rendered)(scope, receive, send)
            return
        await deny_websocket(rendered, scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def receive_wrapper() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup" and self.prefetch_keys:
                await self.verifier.prefetch()
            return message

        async def send_wrapper(message: Message) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await self.verifier.aclose()
            await send(message)

        await self.app(scope, receive_wrapper, send_wrapper)


async def deny_websocket(rendered: ErrorResponse, scope: Scope, receive: Receive, send: Send) -> None:
    """Refuse a websocket before accept: the profile's HTTP response through the ASGI
    websocket denial-response extension where the server offers it, else close code 1008."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return  # the client went away first
    if "websocket.http.response" in (scope.get("extensions") or {}):
        # Starlette's Response sends it as websocket.http.response.* with a content-length.
        await to_starlette(rendered)(scope, receive, send)
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": ""})


def _connection(args: tuple[Any, ...], kwargs: dict[str, Any]) -> HTTPConnection:
    # The Request/WebSocket argument: first for functions, second for HTTPEndpoint methods.
    for value in (*args, *kwargs.values()):
        if isinstance(value, HTTPConnection):
            return value
    raise TypeError("requires_scopes() needs an endpoint taking a Request or WebSocket")


def requires_scopes(*scopes: str | Iterable[str], mode: ScopeMode = "all") -> Callable[[Any], Any]:
    """Decorate a Starlette endpoint (function or endpoint method taking a ``Request`` or
    ``WebSocket``, sync or async) so that it runs only with a token carrying the scopes, and
    otherwise answers in the middleware's error profile (``missing_token`` for an anonymous
    request on an optional route); a websocket is refused before accept.

    Scopes are given as arguments, lists or space-separated strings: ``requires_scopes("a",
    "b")``, ``requires_scopes(["a", "b"])`` and ``requires_scopes("a b")`` are the same.
    """
    if mode not in ("all", "any"):
        raise ValueError("mode must be 'all' or 'any'")
    wanted = tuple(name for item in scopes for name in (item.split() if isinstance(item, str) else item))

    def decorator(endpoint: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
        is_async = inspect.iscoroutinefunction(endpoint)

        @functools.wraps(endpoint)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            conn = _connection(args, kwargs)
            state = conn.scope.get(SCOPE_KEY)
            if not isinstance(state, GatekeeperState):
                raise RuntimeError(
                    "requires_scopes() needs GatekeeperMiddleware in front of the app, "
                    "on a path it does not exempt"
                )
            claims = verified_claims(conn.scope)
            try:
                if claims is None:
                    raise AuthError("missing_token")
                claims.require(*wanted, mode=mode)
            except AuthError as error:
                return await _refuse(conn, state, claims, error)
            if is_async:
                return await endpoint(*args, **kwargs)
            result = await run_in_threadpool(endpoint, *args, **kwargs)
            return await result if inspect.isawaitable(result) else result

        return wrapper

    return decorator


async def _refuse(
    conn: HTTPConnection, state: GatekeeperState, claims: Claims | None, error: AuthError
) -> Response | None:
    if claims is not None:
        error.issuer, error.kid = claims.issuer, claims.kid
    try:
        token = state.source.extract(conn.scope)
    except AuthError:
        token = None
    log_rejection(error, conn.scope, token, state.source.query_params)
    rendered = state.profile.render(error)
    if isinstance(conn, WebSocket):
        if "websocket.http.response" in (conn.scope.get("extensions") or {}):
            await conn.send_denial_response(to_starlette(rendered))
        else:
            await conn.close(code=1008)
        return None
    return to_starlette(rendered)
