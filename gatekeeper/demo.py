"""``gatekeeper demo``: the whole flow over real HTTP on 127.0.0.1, with nothing to configure.

A development issuer (:class:`~gatekeeper.devserver.IssuerServer`) publishes a freshly generated
key as a JWKS; an example API sits behind :class:`~gatekeeper.middleware.GatekeeperMiddleware`
once per error profile, served by uvicorn; the verifier fetches the keys over HTTP like it would
from a real identity provider. :func:`run` then sends a set of scenarios to every profile with
httpx, prints what came back and checks each status, so the demo doubles as an end-to-end test.
:func:`serve` keeps everything running and prints curl commands instead.

Tokens are never printed by :func:`run` (only their fingerprints). :func:`serve` prints throwaway
tokens minted by its own short-lived dev issuer, because pasting them is the point.
"""

from __future__ import annotations

import json
import logging
import re
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from types import FrameType
from typing import Final, Literal, TextIO

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starlette.types import ASGIApp

from .devserver import IssuerServer
from .issuer import DevIssuer
from .middleware import GatekeeperMiddleware
from .redact import fingerprint
from .verifier import Verifier

__all__ = ["PROFILES", "SCENARIOS", "build_app", "run", "serve"]

HOST: Final = "127.0.0.1"
AUDIENCE: Final = "demo-api"
SCOPE: Final = "places:read"
QUERY_PARAM: Final = "bearer_token"
PROFILES: Final = ("rfc6750", "placepoint", "addressfinder", "placewise")
HEADERS_SHOWN: Final = ("www-authenticate", "retry-after", "content-type")
BODY_WIDTH: Final = 160
REVOKED_JTI: Final = "demo-revoked-token"
_JWT: Final = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]*")


# -- the example API -----------------------------------------------------------------------------


async def places(request: Request) -> JSONResponse:
    """The protected endpoint: answers with what the middleware told it about the caller."""
    claims = request.auth.claims
    return JSONResponse(
        {"sub": request.user.identity, "scopes": request.auth.scopes, "aud": claims.get("aud")},
    )


def build_app(verifier: Verifier) -> Starlette:
    """The example API mounted once per error profile: ``/<profile>/places``, scope ``places:read``.

    The mounts share one verifier (and so one key fetch and one token cache); mounted apps get
    no lifespan events, so the outer app prefetches the keys and closes the verifier itself.
    """
    api = Starlette(routes=[Route("/places", places)])
    mounts = [
        Mount(
            f"/{profile}",
            GatekeeperMiddleware(
                api,
                verifier=verifier,
                errors=profile,
                query_param=QUERY_PARAM,
                scopes=[SCOPE],
                prefetch_keys=False,
            ),
        )
        for profile in PROFILES
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await verifier.prefetch()
        yield
        await verifier.aclose()

    return Starlette(routes=mounts, lifespan=lifespan)


class BackgroundServer:
    """uvicorn serving an ASGI app on ``host:port`` (0: a free port) in a daemon thread."""

    def __init__(self, app: ASGIApp, host: str = HOST, port: int = 0) -> None:
        # Binding here, not in uvicorn, makes the port known (and a busy port an error) up front.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind((host, port))
        except OSError:
            self._sock.close()
            raise
        self.url = f"http://{host}:{self._sock.getsockname()[1]}"
        # No access log: it would print request lines, and bearer_token query strings with them.
        # log_config=None leaves the process's logging configuration alone (warnings still show).
        config = uvicorn.Config(app, log_config=None, log_level="warning", access_log=False, lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True, name="gatekeeper-demo"
        )

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the example API failed to start")
            if time.monotonic() > deadline:
                raise RuntimeError("the example API did not start in time")
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._sock.close()


@dataclass(frozen=True)
class Stack:
    """The running demo: the dev issuer's server and the example API."""

    issuer: IssuerServer
    api_url: str

    @property
    def dev_issuer(self) -> DevIssuer:
        return self.issuer.issuer


@contextmanager
def quiet_http_logs() -> Iterator[None]:
    """Keep httpx's request log off whatever the logging config: it prints request URLs at INFO,
    ``?bearer_token=`` values included."""
    loggers = [logging.getLogger(name) for name in ("httpx", "httpcore")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@contextmanager
def running(port: int = 0) -> Iterator[Stack]:
    """Start the issuer and the example API on 127.0.0.1; stop both on exit."""
    issuer = IssuerServer(host=HOST).start()
    try:
        issuer.issuer.audience = AUDIENCE
        verifier = Verifier(issuer.url, jwks_url=issuer.jwks_url, audience=AUDIENCE, typ="at+jwt")
        verifier.revoke(jti=REVOKED_JTI, issuer=issuer.url)  # the revoked-token scenario
        api = BackgroundServer(build_app(verifier), port=port)
        try:
            api.start()
            yield Stack(issuer, api.url)
        finally:
            api.stop()
    finally:
        issuer.stop()


# -- the scenarios ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One request sent to every profile, and the status each profile must answer with."""

    name: str
    title: str
    via: Literal["header", "query", "none"]
    expected: Mapping[str, int]


def _expect(rfc6750: int, placepoint: int, addressfinder: int, placewise: int) -> dict[str, int]:
    return dict(zip(PROFILES, (rfc6750, placepoint, addressfinder, placewise), strict=True))


# Written out rather than derived from gatekeeper.responses, so that the demo checks the profiles.
SCENARIOS: Final = (
    Scenario("good-token", f"a valid token with {SCOPE}", "header", _expect(200, 200, 200, 200)),
    Scenario("no-token", "no credentials at all", "none", _expect(401, 401, 400, 460)),
    Scenario("expired-token", "a token that expired an hour ago", "header", _expect(401, 401, 400, 460)),
    Scenario("missing-scope", f"a valid token without {SCOPE}", "header", _expect(403, 401, 400, 460)),
    Scenario(
        "forged-signature",
        "the real key id, signed with another key",
        "header",
        _expect(401, 401, 400, 460),
    ),
    Scenario(
        "query-param", f"the valid token in ?{QUERY_PARAM}= (PlaceOS)", "query", _expect(200, 200, 200, 200)
    ),
    Scenario("revoked-token", "a valid token whose jti was revoked", "header", _expect(401, 401, 400, 460)),
)


def mint_tokens(issuer: DevIssuer, expires_in: float = 300) -> dict[str, str]:
    """A token per scenario that sends one (the same good token for header and query)."""
    good = issuer.mint(subject="demo-client", scope=[SCOPE, "profile:read"], expires_in=expires_in)
    # An attacker's key that claims the published key's id: only the signature gives it away.
    [published] = issuer.jwks()["keys"]
    attacker = DevIssuer(issuer.issuer, audience=issuer.audience)
    return {
        "good-token": good,
        "expired-token": issuer.mint(subject="demo-client", scope=[SCOPE], expires_in=-3600),
        "missing-scope": issuer.mint(subject="demo-client", scope="profile:read", expires_in=expires_in),
        "forged-signature": attacker.mint(
            subject="demo-client", scope=[SCOPE], headers={"kid": published["kid"]}
        ),
        "query-param": good,
        "revoked-token": issuer.mint(subject="demo-client", scope=[SCOPE], claims={"jti": REVOKED_JTI}),
    }


@dataclass(frozen=True)
class Result:
    scenario: Scenario
    profile: str
    status: int | None  # None: the request itself failed
    headers: tuple[tuple[str, str], ...]
    body: str
    problem: str | None  # None when the check passed

    @property
    def ok(self) -> bool:
        return self.problem is None


def request(client: httpx.Client, scenario: Scenario, profile: str, token: str | None) -> Result:
    path = f"/{profile}/places"
    headers, params = {}, {}
    if token is not None and scenario.via == "header":
        headers["authorization"] = f"Bearer {token}"
    elif token is not None and scenario.via == "query":
        params[QUERY_PARAM] = token
    try:
        response = client.get(path, headers=headers, params=params)
    except httpx.HTTPError as exc:
        # The class only: an exception's message may quote the URL, query token included.
        return Result(scenario, profile, None, (), "", f"request failed: {type(exc).__name__}")
    shown = tuple((name, response.headers[name]) for name in HEADERS_SHOWN if name in response.headers)
    body = response.content.decode("utf-8", "replace")
    expected = scenario.expected[profile]
    problem = None
    if response.status_code != expected:
        problem = f"expected {expected}"
    elif token is not None and (token in body or any(token in v for v in response.headers.values())):
        problem = "the response echoes the token"
    return Result(scenario, profile, response.status_code, shown, body, problem)


def run_scenarios(stack: Stack) -> list[tuple[Scenario, str | None, list[Result]]]:
    """Send every scenario to every profile; returns (scenario, token fingerprint, results)."""
    tokens = mint_tokens(stack.dev_issuer)
    outcomes = []
    with httpx.Client(base_url=stack.api_url, timeout=10.0, follow_redirects=False) as client:
        for scenario in SCENARIOS:
            token = tokens.get(scenario.name)
            results = [request(client, scenario, profile, token) for profile in PROFILES]
            outcomes.append((scenario, fingerprint(token) if token else None, results))
    return outcomes


# -- output ----------------------------------------------------------------------------------------


def _printable(text: str) -> str:
    text = _JWT.sub("[token]", text)  # belt and braces: never let a token through to the terminal
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def _shorten(text: str, width: int = BODY_WIDTH) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _body(text: str) -> str:
    with suppress(ValueError):  # not JSON: shown as it came
        text = json.dumps(json.loads(text), separators=(",", ":"), ensure_ascii=False)
    return _shorten(_printable(text))


def _request_line(scenario: Scenario, fp: str | None) -> str:
    if scenario.via == "header":
        return f"GET /<profile>/places   Authorization: Bearer <token {fp}>"
    if scenario.via == "query":
        return f"GET /<profile>/places?{QUERY_PARAM}=<token {fp}>"
    return "GET /<profile>/places"


def report(outcomes: Sequence[tuple[Scenario, str | None, list[Result]]], out: TextIO) -> None:
    for number, (scenario, fp, results) in enumerate(outcomes, 1):
        out.write(f"\n[{number}/{len(outcomes)}] {scenario.name}: {scenario.title}\n")
        out.write(f"      {_request_line(scenario, fp)}\n")
        out.write(f"  {'profile':<15}{'status':<8}check\n")
        for result in results:
            status = "---" if result.status is None else str(result.status)
            check = "ok" if result.ok else f"FAIL ({result.problem})"
            out.write(f"  {result.profile:<15}{status:<8}{check}\n")
            for name, value in result.headers:
                out.write(f"      {name}: {_printable(value)}\n")
            if result.status is not None:
                out.write(f"      body ({len(result.body.encode())} bytes): {_body(result.body)}\n")

    out.write(f"\n{'summary':<18}" + "".join(f"{p:<15}" for p in PROFILES).rstrip() + "\n")
    for scenario, _, results in outcomes:
        cells = [("---" if r.status is None else str(r.status)) + ("" if r.ok else "!") for r in results]
        out.write(f"{scenario.name:<18}" + "".join(f"{c:<15}" for c in cells).rstrip() + "\n")


def run(out: TextIO, port: int = 0) -> int:
    """Run every scenario against every profile and print the table; 0 if all checks passed."""
    with quiet_http_logs(), running(port) as stack:
        out.write("gatekeeper demo: real HTTP on 127.0.0.1, nothing leaves this machine\n")
        out.write(f"  issuer  {stack.issuer.url}  (JWKS {stack.issuer.jwks_url}, a fresh RS256 key)\n")
        out.write(
            f"  API     {stack.api_url}/<profile>/places  (uvicorn, a GatekeeperMiddleware per profile)\n"
        )
        out.write(f"          needs scope {SCOPE}; takes the token from the header or ?{QUERY_PARAM}=\n")
        out.write("  tokens  minted locally and shown only by fingerprint\n")
        outcomes = run_scenarios(stack)
    report(outcomes, out)
    failures = [r for _, _, results in outcomes for r in results if not r.ok]
    total = sum(len(results) for _, _, results in outcomes)
    if failures:
        out.write(f"\nFAILED: {len(failures)} of {total} checks\n")
        for r in failures:
            out.write(f"  {r.scenario.name} / {r.profile}: got {r.status}, {r.problem}\n")
        return 1
    out.write(f"\nall {total} checks passed\n")
    from . import demo_gateway  # the same verifier as a gateway: forward-auth and the proxy

    with quiet_http_logs():
        status = demo_gateway.run(out)
    from . import demo_client  # the other half: a worker getting tokens with client credentials

    with quiet_http_logs():
        return demo_client.run(out) or status


def serve(out: TextIO, port: int = 0) -> int:
    """Keep the issuer and the example API running until SIGINT/SIGTERM; print curl commands."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with quiet_http_logs(), running(port) as stack:
            tokens = mint_tokens(stack.dev_issuer, expires_in=3600)
            base = stack.api_url
            out.write("gatekeeper demo: serving on 127.0.0.1 until Ctrl-C\n")
            out.write(f"  issuer  {stack.issuer.url}  (JWKS {stack.issuer.jwks_url})\n")
            out.write(f"  API     {base}/{{{','.join(PROFILES)}}}/places  (needs scope {SCOPE})\n\n")
            out.write(
                "The tokens below are throwaway development tokens, minted locally by this process's\n"
                "dev issuer and valid for one hour; nothing but this demo trusts them, and its key is\n"
                "gone when it exits.\n\n"
            )
            good, no_scope = tokens["good-token"], tokens["missing-scope"]
            commands = [
                ("a good token (200)", f'curl -i -H "Authorization: Bearer {good}" {base}/rfc6750/places'),
                (
                    f"the same token in the {QUERY_PARAM} query parameter (200)",
                    f'curl -i "{base}/placepoint/places?{QUERY_PARAM}={good}"',
                ),
                (
                    f"a token without {SCOPE} (403 under rfc6750; try the other profiles)",
                    f'curl -i -H "Authorization: Bearer {no_scope}" {base}/rfc6750/places',
                ),
                ("no token (Placewise answers 460)", f"curl -i {base}/placewise/places"),
            ]
            for comment, command in commands:
                out.write(f"# {comment}\n{command}\n\n")
            out.flush()
            while not stop.wait(0.2):
                pass
            out.write("stopping\n")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
