"""The middleware's call in C (gatekeeper._speedups.Dispatch) against its Python closure.

Where the extension is built, a middleware that reads tokens from the header only and runs no
principal hook is called through a Dispatch; otherwise (or with the Python fast path, as
tests/test_middleware.py's "python" runs) through the closure. Both must do the same for every
scope: here each case runs through both, side by side, on one verifier. Also: the C object
holds and releases what it is given (no leak per request, the middleware is collected).
"""

from __future__ import annotations

import asyncio
import gc
import sys
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from gatekeeper import decision
from gatekeeper.issuer import DevIssuer
from gatekeeper.middleware import GatekeeperMiddleware, TokenUser
from gatekeeper.rules import Rule
from gatekeeper.verifier import Verifier

try:
    from gatekeeper import _speedups
except ImportError:  # no compiler where the package was installed
    _speedups = None  # type: ignore[assignment]

pytestmark = pytest.mark.skipif(_speedups is None, reason="gatekeeper._speedups not built (needs gcc)")

ASGICall = Callable[[Scope, Receive, Send], Awaitable[None]]


class Inner:
    """The app behind the middleware: remembers the user of each request it saw."""

    def __init__(self) -> None:
        self.users: list[Any] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.users.append(scope.get("user"))
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})


@pytest.fixture
def issuer() -> DevIssuer:
    return DevIssuer()


def build(issuer: DevIssuer, *, python: bool, **options: Any) -> tuple[GatekeeperMiddleware, Inner]:
    """A middleware on its own verifier; ``python``: with the Python fast path (the closure)."""
    inner = Inner()
    verifier = Verifier(issuer.issuer, jwks=issuer.jwks(), audience="api")
    saved = decision.fast_probe
    decision.fast_probe = decision.probe_py if python else saved
    try:
        return GatekeeperMiddleware(inner, verifier=verifier, **options), inner
    finally:
        decision.fast_probe = saved


def http_scope(*headers: tuple[bytes, bytes], path: str = "/", kind: str = "http") -> Scope:
    return {
        "type": kind, "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "headers": list(headers), "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 5000),
    }  # fmt: skip


def run(app: ASGICall, scope: Scope) -> tuple[list[Message], Scope]:
    """Call the app with a copy of the scope; what it sent and the scope it saw."""
    sent: list[Message] = []
    scope = dict(scope, headers=list(scope["headers"])) if "headers" in scope else dict(scope)

    asyncio.run(_await(app(scope, _receive, _append_to(sent))))
    return sent, scope


async def _await(awaitable: Awaitable[None]) -> None:
    await awaitable


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def _append_to(sent: list[Message]) -> Send:
    async def send(message: Message) -> None:
        sent.append(message)

    return send


def outcome(sent: list[Message], scope: Scope, inner: Inner) -> tuple[Any, ...]:
    """What a request came to, comparable across the two middlewares."""
    status = next((m["status"] for m in sent if m["type"] == "http.response.start"), None)
    user = inner.users[-1] if inner.users else None
    claims = getattr(user, "claims", None)
    return status, type(user).__name__, claims.subject if claims else None, scope.get("auth") is user


def both(issuer: DevIssuer, **options: Any) -> Iterator[tuple[GatekeeperMiddleware, Inner]]:
    c_app, c_inner = build(issuer, python=False, **options)
    py_app, py_inner = build(issuer, python=True, **options)
    assert type(vars(type(c_app))["__call__"]) is _speedups.Dispatch
    assert type(vars(type(py_app))["__call__"]) is not _speedups.Dispatch
    yield c_app, c_inner
    yield py_app, py_inner


def test_header_only_middlewares_are_called_through_the_c_dispatch(issuer: DevIssuer) -> None:
    app, _ = build(issuer, python=False)
    assert type(vars(type(app))["__call__"]) is _speedups.Dispatch
    assert asyncio.iscoroutinefunction(app.__call__)  # how uvicorn tells an ASGI 3 app
    query, _ = build(issuer, python=False, query_param="bearer_token")
    hooked, _ = build(issuer, python=False, principal=lambda claims: claims.subject)
    for closure in (query, hooked):  # the C call covers neither: the closure runs
        assert type(vars(type(closure))["__call__"]) is not _speedups.Dispatch
        assert asyncio.iscoroutinefunction(closure.__call__)


SCOPE_RULES = [Rule("/admin/**", scopes="admin"), Rule("/health", access="exempt"), Rule("/**")]


OPTIONS = [{}, {"scopes": "read"}, {"rules": SCOPE_RULES}]


@pytest.mark.parametrize("options", OPTIONS, ids=["plain", "scoped", "rules"])
def test_the_c_dispatch_decides_as_the_closure_does(issuer: DevIssuer, options: dict[str, Any]) -> None:
    token = issuer.mint({"sub": "alice", "scope": "read"})
    admin = issuer.mint({"sub": "root", "scope": "read admin"})
    auth = (b"authorization", f"Bearer {token}".encode())
    cases = [
        http_scope(auth),
        http_scope(auth),  # now from the memo
        http_scope((b"Authorization", f"Bearer {token}".encode())),  # any spelling of the name
        http_scope((b"authorization", f"Bearer {admin}".encode()), path="/admin/x"),
        http_scope(auth, path="/admin/x"),  # lacks the scope the rule wants
        http_scope(auth, path="/health"),
        http_scope(path="/health"),
        http_scope(),  # no token
        http_scope(auth, auth),  # two headers
        http_scope(auth, (b"AUTHORIZATION", b"Bearer x")),
        http_scope((b"authorization", f"Bearer {token}x".encode())),  # same tail, other value
        http_scope((b"authorization", b"Bearer not.a.token")),
        http_scope((b"authorization", f"Basic {token}".encode())),
        http_scope(auth, kind="websocket"),
        {k: v for k, v in http_scope(auth).items() if k != "headers"},  # no headers at all
    ]
    results = []
    for app, inner in both(issuer, **options):
        results.append([outcome(*run(app, scope), inner) for scope in cases])
    assert results[0] == results[1]
    assert results[0][1][:3] == (204, "BoundTokenUser", "alice")  # the memo served it
    assert {status for status, *_ in results[0]} >= {204, 400, 401}


def test_other_scope_types_and_odd_calls_go_to_the_closure(issuer: DevIssuer) -> None:
    for app, inner in both(issuer):
        sent, _ = run(app, {"type": "custom", "headers": []})  # passed through to the app
        assert (inner.users, sent) == ([None], [])
        with pytest.raises(KeyError):  # as the closure does: an ASGI scope has a type
            run(app, {"headers": []})
        with pytest.raises(TypeError):
            app({"type": "http"})  # type: ignore[call-arg]  # one argument only
        denied: list[Message] = []
        asyncio.run(_await(app(scope=http_scope(), receive=None, send=_append_to(denied))))  # type: ignore[arg-type]
        assert denied[0]["status"] == 401  # keywords work as they do with the closure


def test_a_clock_or_rule_that_raises_propagates(issuer: DevIssuer) -> None:
    token = issuer.mint({"sub": "alice"})
    auth = (b"authorization", f"Bearer {token}".encode())
    app, _ = build(issuer, python=False)
    run(app, http_scope(auth))  # verified and remembered

    def broken_clock() -> float:
        raise RuntimeError("clock")

    dispatch = vars(type(app))["__call__"]
    assert isinstance(dispatch, _speedups.Dispatch)
    fields: dict[str, Any] = dict(
        app=Inner(), decide=app._decide, fallback=lambda *a: None, memo=app.gate.memo, clock=broken_clock,
        revocations=app.verifier.revocations, user_class=TokenUser, rule=app.rules.default,
        match_scope=app.rules.match_scope,
    )  # fmt: skip
    send = _append_to([])
    with pytest.raises(RuntimeError, match="clock"):
        _speedups.Dispatch(**fields)(http_scope(auth), _receive, send)

    def broken_match(scope: Scope) -> Rule:
        raise LookupError("rules")

    by_route = _speedups.Dispatch(**{**fields, "rule": None, "match_scope": broken_match})
    with pytest.raises(LookupError, match="rules"):
        by_route(http_scope(auth), _receive, send)
    with pytest.raises(TypeError):
        _speedups.Dispatch(**{**fields, "memo": []})
    with pytest.raises(TypeError):
        _speedups.Dispatch(**{**fields, "user_class": "not a class"})


def test_no_reference_leaks_per_request(issuer: DevIssuer) -> None:
    token = issuer.mint({"sub": "alice"})
    auth = (b"authorization", f"Bearer {token}".encode())
    app, inner = build(issuer, python=False)
    run(app, http_scope(auth))
    claims = inner.users[-1].claims
    rule = app.rules.default
    scope = http_scope(auth)
    watched = (claims, rule, inner, scope, *app.gate.memo.values(), type(inner.users[-1]))
    inner.users.clear()

    async def receive() -> Message:
        raise AssertionError("not read")

    async def send(message: Message) -> None:
        pass

    async def many() -> None:
        for _ in range(2000):
            await app(scope, receive, send)
            inner.users.clear()

    before = [sys.getrefcount(obj) for obj in watched]
    asyncio.run(many())
    assert scope.pop("user") is scope.pop("auth")  # the last request's user holds claims and type
    assert [sys.getrefcount(obj) for obj in watched] == before


def test_the_middleware_and_its_dispatch_are_collected(issuer: DevIssuer) -> None:
    app, _ = build(issuer, python=False)
    # A cycle through C: the instance's class holds the Dispatch, which holds the bound _decide.
    gone, its_class = weakref.ref(app), weakref.ref(type(app))
    del app
    gc.collect()
    assert (gone(), its_class()) == (None, None)
