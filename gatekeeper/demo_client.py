"""The client half of ``gatekeeper demo``: a worker calling an API with client-credentials tokens.

Everything runs on 127.0.0.1: a development issuer (:class:`~gatekeeper.devserver.IssuerServer`),
an API behind :class:`~gatekeeper.middleware.GatekeeperMiddleware` (uvicorn) and a worker using
:class:`~gatekeeper.client.ClientCredentialsAuth`. The worker's clock is moved by hand, never slept.
Each step is checked (status, token requests made, which grant) and printed with fingerprints only.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final, TextIO

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .client import ClientCredentialsAuth, Credentials, InvalidRefreshToken, TokenManager
from .demo import HOST, BackgroundServer
from .devserver import IssuerServer
from .issuer import DevIssuer
from .middleware import GatekeeperMiddleware
from .redact import fingerprint
from .rules import Rule
from .verifier import Verifier

__all__ = ["run"]

AUDIENCE: Final = "inventory-api"
SCOPE: Final = "inventory:read"


class DemoClock:
    """The worker's clock: moved by the demo to show renewal without waiting."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Step:
    title: str
    detail: str
    ok: bool


async def inventory(request: Request) -> JSONResponse:
    return JSONResponse({"items": 3, "caller": request.user.identity})


@contextmanager
def _quiet_client_log() -> Iterator[None]:
    """The demo prints its own account; the client's warnings (fingerprints only) would repeat it."""
    logger = logging.getLogger("gatekeeper.client")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _fp(token: str | None) -> str:
    return f"fp:{fingerprint(token)}" if token else "none"


def run(out: TextIO) -> int:
    """Run the worker's story, print it, and return 0 when every step behaved as expected."""
    issuer = IssuerServer(DevIssuer(audience=AUDIENCE, algorithms=("ES256",)), host=HOST)
    issuer.issuer.issuer = issuer.url
    secret, other_secret = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    member_password = secrets.token_urlsafe(12)
    issuer.add_client("inventory-worker", secret, scopes=[SCOPE], refresh_tokens=True)
    issuer.add_client("billing-worker", other_secret, scopes=[SCOPE])
    issuer.add_user("member-42", member_password, scopes=[SCOPE])
    verifier = Verifier(issuer.url, jwks_url=issuer.jwks_url, audience=AUDIENCE)
    app = Starlette(
        routes=[Route("/inventory", inventory)],
        middleware=[
            Middleware(GatekeeperMiddleware, verifier=verifier, rules=[Rule("/inventory", scopes=SCOPE)])
        ],
    )
    api = BackgroundServer(app)
    with issuer, _quiet_client_log():
        api.start()
        try:
            steps = _story(out, issuer, api.url + "/inventory", (secret, other_secret, member_password))
        finally:
            api.stop()
    failed = [s for s in steps if not s.ok]
    if failed:
        out.write(f"\nFAILED: {len(failed)} of {len(steps)} client checks\n")
        return 1
    out.write(f"\nall {len(steps)} client checks passed\n")
    return 0


def _story(out: TextIO, issuer: IssuerServer, url: str, passwords: tuple[str, str, str]) -> list[Step]:
    secret, other_secret, member_password = passwords
    out.write("\ngatekeeper demo, client side: a worker calls the API with client-credentials tokens\n")
    out.write(f"  issuer  {issuer.token_url}  (client inventory-worker, scope {SCOPE})\n")
    out.write(f"  API     {url}  (GatekeeperMiddleware, needs {SCOPE})\n")
    out.write("  worker  httpx.Client(auth=ClientCredentialsAuth(...)); its clock is moved, never slept\n\n")
    steps: list[Step] = []

    def step(title: str, detail: str, ok: bool) -> None:
        steps.append(Step(title, detail, ok))
        out.write(f"  {'ok  ' if ok else 'FAIL'} {title:<22} {detail}\n")

    def token_requests() -> int:
        return issuer.requests(issuer.token_path)

    clock = DemoClock()
    manager = TokenManager(clock=clock)
    creds = Credentials(issuer.token_url, "inventory-worker", client_secret=secret, scope=SCOPE)
    auth = ClientCredentialsAuth(creds, manager=manager)
    slot = manager.slot(creds)
    with httpx.Client(auth=auth) as client:
        # 1. The first call obtains a token with client credentials.
        status = client.get(url).status_code
        first = slot.token.access_token if slot.token else None
        step(
            "obtain and call",
            f"GET /inventory -> {status}, token {_fp(first)} by client_credentials, "
            f"token requests: {token_requests()}",
            status == 200 and token_requests() == 1 and issuer.tokens.grants["client_credentials"] == 1,
        )

        # 2. Cached: more calls, no more token requests.
        statuses = {client.get(url).status_code for _ in range(10)}
        step(
            "reuse the cached token",
            f"10 more calls -> {sorted(statuses)}, token requests: {token_requests()}",
            statuses == {200} and token_requests() == 1,
        )

        # 3. Renewal 60 s ahead of expires_in (300 s): the clock is moved, not slept.
        clock.now += 239
        client.get(url)
        before = token_requests()
        clock.now += 1
        old_refresh = slot.refresh_token
        status = client.get(url).status_code
        second = slot.token.access_token if slot.token else None
        step(
            "renew ahead of expiry",
            f"clock +239 s: same token (requests {before}); +240 s -> {status}, token {_fp(second)} "
            f"by refresh_token, refresh rotated {_fp(old_refresh)} -> {_fp(slot.refresh_token)}",
            status == 200
            and before == 1
            and second not in (None, first)
            and issuer.tokens.grants["refresh_token"] == 1
            and slot.refresh_token not in (None, old_refresh),
        )

        # 4. The issuer rotates its signing key. The API learns the new key set from the first
        # token signed by the new key (another worker's); our cached token, signed by the retired
        # key, is then refused: renewed once and replayed.
        old_kids = [key["kid"] for key in issuer.issuer.jwks()["keys"]]
        issuer.issuer.add_key("ES256")
        for kid in old_kids:
            issuer.issuer.remove_key(kid)
        other = Credentials(issuer.token_url, "billing-worker", client_secret=other_secret, scope=SCOPE)
        with httpx.Client(auth=ClientCredentialsAuth(other)) as billing:
            other_status = billing.get(url).status_code
        requests_before = token_requests()
        response = client.get(url)
        history = [r.status_code for r in response.history]
        third = slot.token.access_token if slot.token else None
        step(
            "API keys rotate",
            f"another worker's new-key token -> {other_status}; ours -> {history} then renewed once "
            f"and replayed -> {response.status_code}, token {_fp(third)}",
            other_status == 200
            and history == [401]
            and response.status_code == 200
            and token_requests() == requests_before + 1,
        )

    # 5. A session that only has a refresh token (a PlaceOS/Placewise member session) is revoked
    # by an administrator: the worker cannot renew it and says so.
    member = httpx.post(
        issuer.token_url,
        data={"grant_type": "password", "username": "member-42", "password": member_password},
        auth=("inventory-worker", secret),
    ).json()
    session = Credentials(
        issuer.token_url,
        "inventory-worker",
        client_secret=secret,
        grant="refresh_token",
        refresh_token=member["refresh_token"],
    )
    session_clock = DemoClock()
    session_auth = ClientCredentialsAuth(session, clock=session_clock)
    session_slot = session_auth.manager.slot(session)
    with httpx.Client(auth=session_auth) as client:
        status = client.get(url).status_code
        issuer.revoke(session_slot.refresh_token or "")
        session_clock.now += 241
        try:
            client.get(url)
            error = "no error"
            clear = False
        except InvalidRefreshToken as exc:
            error = f"{type(exc).__name__}: {exc}"
            clear = exc.error == "invalid_grant" and issuer.token_url in str(exc)
    step(
        "revoked refresh token",
        f"member session -> {status}; revoked, at renewal: {error}",
        status == 200 and clear,
    )
    return steps
