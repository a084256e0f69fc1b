"""ASGI middleware: verify every request's bearer token in front of a Starlette/FastAPI app.

Pure ASGI (no ``BaseHTTPMiddleware``), for http and websocket scopes; lifespan passes through,
with the verifier's first key fetch at startup and its HTTP clients closed at shutdown.
On success it follows Starlette's conventions: ``scope["auth"]`` is an ``AuthCredentials``
carrying the claims and scopes, and ``scope["user"]`` an authenticated user whose identity is
``sub``, so ``request.user``, ``request.auth`` and Starlette's ``requires()`` work unchanged.

The hot path (a cached token, no principal hook) is a plain call that returns the app's own
coroutine, so the middleware adds no coroutine of its own (where the C extension is built and
tokens come from the header only, that call is ``gatekeeper._speedups.Dispatch``, the same
logic in C, with no Python frame at all); it allocates one small object,
which is both ``request.user`` and ``request.auth`` (a :class:`TokenUser` is a
:class:`TokenAuth`). The middleware's state, for decorators, is a class attribute of that user
(see :func:`middleware_state`), and ``request.auth.scopes`` is built when first read.
"""

from __future__ import annotations

import asyncio.coroutines
import functools
import inspect
import sys
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

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

try:
    from . import _speedups
except ImportError:  # built without a C compiler: the Python closure serves every request
    _speedups = None  # type: ignore[assignment]

SCOPE_KEY = "gatekeeper"


class TokenAuth(AuthCredentials):
    """``request.auth``: Starlette's credentials (``scopes``, a sorted list) plus the claims."""

    # A slot: set per request on the hot path, where a slot is cheaper than an instance dict.
    __slots__ = ("claims",)
    claims: Claims
    _scopes: list[str] | None = None  # a class default: nothing to store per request

    def __init__(self, claims: Claims) -> None:
        # No super().__init__(): the scopes list is made when first read, not per request.
        self.claims = claims

    @property
    def scopes(self) -> list[str]:
        if self._scopes is None:
            self._scopes = sorted(self.claims.scopes)
        return self._scopes

    @scopes.setter
    def scopes(self, value: list[str]) -> None:
        self._scopes = list(value)


class TokenUser(TokenAuth, BaseUser):
    """``request.user`` for a verified token: identity is ``sub``; ``principal`` is what the
    principal hook returned (None without a hook).

    It is a :class:`TokenAuth` too: the middleware's hot path sets one object as both
    ``request.user`` and ``request.auth``, one allocation per request instead of two.
    """

    principal: Any = None
    #: The middleware that verified the token (its error profile and token sources), for
    #: ``requires_scopes``; see :func:`middleware_state`.
    gatekeeper: GatekeeperState | None = None

    def __init__(self, claims: Claims, principal: Any = None) -> None:
        self.claims = claims
        if principal is not None:
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


def _mark_coroutine_function(func: Callable[..., Any]) -> None:
    """Make a plain function that returns an awaitable pass for a coroutine function, as
    ``inspect.markcoroutinefunction`` (3.12+) does, and as asgiref does on 3.11: uvicorn (and
    others) tell ASGI 3 apps from ASGI 2 by ``asyncio.iscoroutinefunction(app.__call__)``."""
    if sys.version_info >= (3, 12):
        inspect.markcoroutinefunction(func)
    else:
        func._is_coroutine = asyncio.coroutines._is_coroutine  # type: ignore[attr-defined]


_new_user = object.__new__
_M = TypeVar("_M")


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
    """What the middleware leaves for a request it has looked at (the same object for every
    request): its error profile and where tokens come from (to fingerprint the token when a
    decorator rejects the request). Read it with :func:`middleware_state`. The verified
    claims are ``request.auth.claims`` (see :func:`verified_claims`)."""

    profile: ErrorProfile
    source: BearerSource


def middleware_state(scope: Scope) -> GatekeeperState | None:
    """The state of the middleware that looked at this request, None when none did.

    It is ``scope["gatekeeper"]``, or on the hot path (where the middleware stores as little
    as it can) an attribute of the user it set.
    """
    state = scope.get(SCOPE_KEY)
    if state is None:
        state = getattr(scope.get("user"), "gatekeeper", None)
    return state if isinstance(state, GatekeeperState) else None


def _bind_call(cls: type[_M], call: Callable[[Scope, Receive, Send], Awaitable[None]]) -> type[_M]:
    # Calling an instance goes through its type's __call__: a method costs a lookup, a bound
    # self and an argument copy more than a staticmethod (~0.1 us of the ~1 us budget), so
    # each middleware gets a subclass whose __call__ is its own closure (as each gets a
    # user class carrying its state).
    return type(
        cls.__name__,
        (cls,),
        {
            "__slots__": (),
            "__call__": call if _is_c_call(call) else staticmethod(call),
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
        },
    )


def _is_c_call(call: object) -> bool:
    # A Dispatch has no __get__: the type's lookup finds it and calls it as it is.
    return _speedups is not None and type(call) is _speedups.Dispatch


def _user_class(state: GatekeeperState) -> type[TokenUser]:
    # A TokenUser subclass per middleware, carrying its state as a class attribute: the hot
    # path then stores nothing but the user in the scope.
    class BoundTokenUser(TokenUser):
        __slots__ = ()
        gatekeeper = state

    return BoundTokenUser


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
        self._user = _user_class(self._state)
        self.gate = Gate(verifier, rules=self.rules, source=self.source, principal=principal)
        # Per-middleware constants the hot path would otherwise recompute per request.
        self._fast = principal is None and self.source.header
        default = self.rules.default
        fast_default = self._fast and not self.rules.rules and default.access != "exempt"
        self._fast_rule: Rule | None = default if fast_default else None
        self._query = bool(self.source.query_params)
        self._probe = self.gate.probe
        # The hot path is a closure served as this instance's __call__ (see _bind_call).
        self.__class__ = _bind_call(type(self), self._make_call())

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Replaced per instance by the closure _make_call builds; kept for type checkers and
        # in case a subclass's __init__ never reaches the end of ours.
        return self._make_call()(scope, receive, send)

    def _make_call(self) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
        """The middleware's ASGI callable: a plain function returning the coroutine to await.
        On the hot path that is the app's own, so the middleware costs no coroutine frame of
        its own; what it reads per request is in closure cells, not instance attributes.
        Settings are read here, once: changing an attribute later has no effect."""
        app = self.app
        decide = self._decide
        lifespan = self._lifespan
        match_scope = self.rules.match_scope
        probe = self._probe
        user_class = self._user
        fast = self._fast
        fast_rule = self._fast_rule  # set when no rules: the default applies to every request
        query = self._query
        # Gate.probe without its query check, called directly (see Gate.memo).
        header_probe, memo = self.gate.fast_probe, self.gate.memo
        clock, revocations = self.verifier.clock, self.verifier.revocations

        def call(scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
            kind = scope["type"]
            if kind == "http" or kind == "websocket":
                rule = fast_rule
                if rule is None:
                    rule = match_scope(scope)
                    if not fast or rule.access == "exempt":
                        return decide(rule, scope, receive, send)
                # The hot path: a cached token, nothing to refuse, no principal hook to run.
                try:
                    headers = scope["headers"]  # a subscript is cheaper than .get(); ASGI requires it
                except KeyError:
                    return decide(rule, scope, receive, send)
                if query:
                    hit = probe(rule, headers, scope.get("query_string", b""))
                else:
                    hit = header_probe(headers, memo, clock(), revocations, rule)
                if hit is not None:
                    user = _new_user(user_class)  # no __init__ frame: claims is all it needs
                    user.claims = hit[3]
                    scope["user"] = scope["auth"] = user
                    return app(scope, receive, send)
                return decide(rule, scope, receive, send)
            if kind == "lifespan":
                return lifespan(scope, receive, send)
            return app(scope, receive, send)

        _mark_coroutine_function(call)  # servers tell ASGI 3 apps by it
        if fast and not query and _speedups is not None and header_probe is _speedups.probe:
            # The same call in C (gatekeeper._speedups.Dispatch): no Python frame at all for a
            # cached token. It calls ``decide`` on a miss and this closure for anything else.
            dispatch = _speedups.Dispatch(
                app=app,
                decide=decide,
                fallback=call,
                memo=memo,
                clock=clock,
                revocations=revocations,
                user_class=user_class,
                rule=fast_rule,
                match_scope=match_scope,
            )
            _mark_coroutine_function(dispatch)
            return dispatch
        return call

    async def _decide(self, rule: Rule, scope: Scope, receive: Receive, send: Send) -> None:
        decision = await self.gate.decide_rule(rule, scope.get("headers", ()), scope.get("query_string", b""))
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
            scope["user"] = scope["auth"] = self._user(claims, decision.principal)
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
            state = middleware_state(conn.scope)
            if state is None:
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
