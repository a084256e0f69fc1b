"""ASGI middleware: verify every request's bearer token in front of a Starlette/FastAPI app.

Pure ASGI (no ``BaseHTTPMiddleware``), for http and websocket scopes; lifespan passes through,
with the verifier's first key fetch at startup and its HTTP clients closed at shutdown.
On success it follows Starlette's conventions: ``scope["auth"]`` is an ``AuthCredentials``
carrying the claims and scopes, and ``scope["user"]`` an authenticated user whose identity is
``sub``, so ``request.user``, ``request.auth`` and Starlette's ``requires()`` work unchanged.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.authentication import AuthCredentials, BaseUser
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from .accesslog import log_rejection
from .bearer import BearerSource
from .claims import Claims, ScopeMode
from .errors import AuthError
from .responses import ErrorProfile, ErrorResponse, ProfileSpec, get_profile
from .rules import Rule, RuleSet
from .verifier import Verifier

#: Maps verified claims to the app's principal (a project, a member). Returning None, or
#: raising ``AuthError("unknown_principal")``, rejects the request (Addressfinder's 1025).
PrincipalHook = Callable[[Claims], Any]
SCOPE_KEY = "gatekeeper"


class TokenAuth(AuthCredentials):
    """``request.auth``: Starlette's credentials (``scopes`` as a list) plus the claims."""

    def __init__(self, claims: Claims) -> None:
        super().__init__(sorted(claims.scopes))
        self.claims = claims


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


@dataclass(frozen=True, slots=True)
class GatekeeperState:
    """What the middleware leaves in ``scope["gatekeeper"]`` for endpoints and decorators."""

    profile: ErrorProfile
    claims: Claims | None


def to_starlette(rendered: ErrorResponse) -> Response:
    """An error profile's rendering as a Starlette response."""
    headers = {name: value for name, value in rendered.headers if name != "content-type"}
    media_type = rendered.header("content-type")
    return Response(rendered.body, rendered.status, headers=headers, media_type=media_type)


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
        scopes: Sequence[str] = (),
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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        rule = self.rules.match(scope.get("method", "GET"), scope["path"])
        if rule.access == "exempt":
            await self.app(scope, receive, send)
            return
        token: str | None = None
        try:
            token = self.source.extract(scope)
            if token is None and rule.access == "optional":
                scope["auth"] = AuthCredentials()
                scope["user"] = AnonymousUser()
                scope[SCOPE_KEY] = GatekeeperState(self.profile, None)
                await self.app(scope, receive, send)
                return
            claims = await self.verifier.verify_async(token)
            if rule.scopes:
                claims.require(*rule.scopes, mode=rule.mode)
            principal = await self._principal(claims) if self.principal is not None else None
        except AuthError as error:
            log_rejection(error, scope, token, self.source.query_params)
            await self._deny(error, scope, receive, send)
            return
        scope["auth"] = TokenAuth(claims)
        scope["user"] = TokenUser(claims, principal)
        scope[SCOPE_KEY] = GatekeeperState(self.profile, claims)
        await self.app(scope, receive, send)

    async def _principal(self, claims: Claims) -> Any:
        assert self.principal is not None
        principal = self.principal(claims)
        if inspect.isawaitable(principal):
            principal = await principal
        if principal is None:
            raise AuthError("unknown_principal", issuer=claims.issuer, kid=claims.kid)
        return principal

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
            if message["type"] == "lifespan.shutdown.complete":
                await self.verifier.aclose()
            await send(message)

        await self.app(scope, receive_wrapper, send_wrapper)


async def deny_websocket(rendered: ErrorResponse, scope: Scope, receive: Receive, send: Send) -> None:
    """Refuse a websocket before accept: the profile's HTTP response through the ASGI
    websocket denial-response extension where the server offers it, else close code 1008."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return  # the client went away first
    if "websocket.http.response" in scope.get("extensions", {}):
        headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in rendered.headers]
        await send({"type": "websocket.http.response.start", "status": rendered.status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": rendered.body})
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": ""})


def _state(conn: HTTPConnection) -> GatekeeperState:
    state = conn.scope.get(SCOPE_KEY)
    if not isinstance(state, GatekeeperState):
        raise RuntimeError("requires_scopes() needs GatekeeperMiddleware in front of the app")
    return state


def requires_scopes(*scopes: str, mode: ScopeMode = "all") -> Callable[[Any], Any]:
    """Decorate a Starlette endpoint (function taking a ``Request`` or ``WebSocket``) so that it
    runs only with a token carrying the scopes, and otherwise answers in the middleware's
    error profile (``missing_token`` for an anonymous request on an optional route)."""

    def decorator(endpoint: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(endpoint)
        async def wrapper(conn: HTTPConnection, *args: Any, **kwargs: Any) -> Any:
            state = _state(conn)
            try:
                if state.claims is None:
                    raise AuthError("missing_token")
                state.claims.require(*scopes, mode=mode)
            except AuthError as error:
                rendered = state.profile.render(error)
                if isinstance(conn, WebSocket):
                    if "websocket.http.response" in conn.scope.get("extensions", {}):
                        await conn.send_denial_response(to_starlette(rendered))
                    else:
                        await conn.close(code=1008)
                    return None
                return to_starlette(rendered)
            return await endpoint(conn, *args, **kwargs)

        return wrapper

    return decorator
