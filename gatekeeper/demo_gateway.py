"""The gateway part of ``gatekeeper demo``: one request path through nginx-style forward-auth and
one through the reverse proxy, all in this process on 127.0.0.1.

The gateway is built from a TOML configuration (the same text ``gatekeeper serve`` would read)
and served by uvicorn next to a small upstream that reports what it received. An nginx stand-in
(:func:`nginx_auth_request`) does what the shipped ``examples/gateway/nginx.conf`` does: asks
``/auth`` with ``X-Original-Method`` / ``X-Original-URI``, copies the identity headers of an
allow onto the upstream request (overwriting any client copy), and on a 401/403 asks
``/auth/render`` for the profile's exact status and body. Nothing needs installing: uvicorn and
httpx only. Tokens appear as fingerprints.
"""

from __future__ import annotations

import io
import json
import tomllib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final, TextIO

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .demo import HOST, BackgroundServer
from .devserver import IssuerServer
from .gateway.access_log import AccessLog
from .gateway.app import build_gateway
from .gateway.config import read_config
from .gateway.schema import Table
from .redact import fingerprint

AUDIENCE: Final = "demo-api"
SCOPE: Final = "places:read"
IDENTITY: Final = ("x-auth-subject", "x-auth-client-id", "x-auth-scopes", "x-auth-issuer")

CONFIG: Final = """\
error_profile = "addressfinder"      # denials in Addressfinder's shape: 400, error_code 1024

[tokens]
query_params = ["bearer_token"]

[[issuers]]
issuer = "{issuer}"
audience = "demo-api"
jwks_url = "{jwks_url}"

[[routes]]
path = "/public/**"
access = "exempt"

[[routes]]
path = "/places/**"
scopes = ["places:read"]

[forward_auth]
path = "/auth"
proxy = "nginx"

[upstreams.api]
url = "{upstream}"

[proxy]
upstream = "api"
"""


async def _report(request: Request) -> JSONResponse:
    """The upstream: says what reached it (path, query, identity headers, Authorization)."""
    return JSONResponse(
        {
            "path": request.url.path,
            "query": request.url.query,
            "identity": {name: request.headers.getlist(name) for name in IDENTITY if name in request.headers},
            "authorization": "authorization" in request.headers,
        }
    )


upstream_app = Starlette(routes=[Route("/{path:path}", _report, methods=["GET", "POST"])])


def nginx_auth_request(
    client: httpx.Client, gatekeeper: str, upstream: str, uri: str, headers: Mapping[str, str]
) -> httpx.Response:
    """What nginx's ``auth_request`` + ``error_page`` configuration does with one GET."""
    asked = {**headers, "x-original-method": "GET", "x-original-uri": uri}
    auth = client.get(gatekeeper + "/auth", headers=asked)
    if auth.status_code in (401, 403):
        # error_page 401 403 = @gatekeeper_denied: the client gets the profile's real answer.
        return client.get(gatekeeper + "/auth/render", headers=asked)
    if not 200 <= auth.status_code < 300:
        return httpx.Response(500)  # what nginx does with any other auth status
    # proxy_set_header: the identity headers come from gatekeeper's answer only.
    forwarded = {k: v for k, v in headers.items() if k.lower() not in (*IDENTITY, "authorization")}
    forwarded.update({name: auth.headers[name] for name in IDENTITY if name in auth.headers})
    return client.get(upstream + auth.headers.get("x-gatekeeper-uri", uri), headers=forwarded)


@dataclass(frozen=True)
class Step:
    """One request of the gateway demo and what must come back."""

    door: str  # "forward-auth" or "proxy"
    title: str
    uri: str
    headers: Mapping[str, str]
    status: int
    check: Callable[[httpx.Response], str | None]  # a problem, or None


def _upstream_saw(expect: Mapping[str, object]) -> Callable[[httpx.Response], str | None]:
    def check(response: httpx.Response) -> str | None:
        seen = response.json()
        wrong = {k: seen.get(k) for k, v in expect.items() if seen.get(k) != v}
        return f"the upstream saw {wrong}" if wrong else None

    return check


def _error_code(code: int) -> Callable[[httpx.Response], str | None]:
    def check(response: httpx.Response) -> str | None:
        body = response.json()
        # Addressfinder sends the code as a string ("1024").
        return None if str(body.get("error_code")) == str(code) else f"expected error_code {code}"

    return check


def steps(tokens: Mapping[str, str], issuer: str) -> list[Step]:
    """The requests, in order: forward-auth first, then the proxy."""
    good, no_scope = tokens["good"], tokens["no-scope"]
    identity = {
        "x-auth-subject": ["demo-client"],
        "x-auth-client-id": ["demo-client"],
        "x-auth-scopes": ["places:read profile:read"],
        "x-auth-issuer": [issuer],
    }
    forged = {"x-auth-subject": "admin"}
    return [
        Step(
            "forward-auth", "a valid token: the upstream gets gatekeeper's identity headers", "/places/1",
            {"authorization": f"Bearer {good}"}, 200,
            _upstream_saw({"identity": identity, "authorization": False}),
        ),
        Step(
            "forward-auth", "a client-sent X-Auth-Subject: admin is replaced, never forwarded", "/places/1",
            {"authorization": f"Bearer {good}", **forged}, 200, _upstream_saw({"identity": identity}),
        ),
        Step(
            "forward-auth", "no token: nginx passes the profile's own 400 and body through", "/places/1",
            {}, 400, _error_code(1024),
        ),
        Step(
            "forward-auth", "a token without places:read: refused in the profile's shape", "/places/1",
            {"authorization": f"Bearer {no_scope}"}, 400, _error_code(1024),
        ),
        Step(
            "proxy", "a valid token: proxied with identity headers, Authorization removed", "/places/1",
            {"authorization": f"Bearer {good}"}, 200,
            _upstream_saw({"identity": identity, "authorization": False}),
        ),
        Step(
            "proxy", "the token in ?bearer_token=: it never reaches the upstream URL",
            f"/places/1?bearer_token={good}&q=x", {}, 200,
            _upstream_saw({"query": "q=x", "identity": identity}),
        ),
        Step(
            "proxy", "an exempt route: a client's X-Auth-Subject is stripped there too", "/public/status",
            forged, 200, _upstream_saw({"identity": {}}),
        ),
        Step(
            "proxy", "no token: the profile's 400 with error_code 1024", "/places/1",
            {}, 400, _error_code(1024),
        ),
    ]  # fmt: skip


@contextmanager
def running(issuer: IssuerServer, log: AccessLog) -> Iterator[tuple[str, str]]:
    """The upstream and the gateway (built from :data:`CONFIG`) on 127.0.0.1: their URLs."""
    upstream = BackgroundServer(upstream_app)
    upstream.start()
    try:
        text = CONFIG.format(issuer=issuer.url, jwks_url=issuer.jwks_url, upstream=upstream.url)
        config = read_config(Table(tomllib.loads(text), file="<demo gateway.toml>"))
        gateway = build_gateway(config, access_log=log)
        server = BackgroundServer(gateway)
        server.start()
        try:
            yield server.url, upstream.url
        finally:
            server.stop()
    finally:
        upstream.stop()


def run(out: TextIO) -> int:
    """Run the gateway steps, print what came back; 0 when every check passed."""
    buffer = io.StringIO()
    issuer = IssuerServer(host=HOST).start()
    try:
        issuer.issuer.audience = AUDIENCE
        tokens = {
            "good": issuer.issuer.mint(subject="demo-client", scope=[SCOPE, "profile:read"]),
            "no-scope": issuer.issuer.mint(subject="demo-client", scope="profile:read"),
        }
        with running(issuer, AccessLog(buffer)) as (gateway, upstream), httpx.Client(timeout=10) as client:
            out.write("\ngatekeeper demo, gateway part: the same verifier as a standalone gateway\n")
            out.write(f"  gateway   {gateway}  (built from a TOML config; Addressfinder error profile)\n")
            out.write(f"  upstream  {upstream}  (reports the path, query and identity headers it got)\n")
            out.write("  nginx     an in-process stand-in doing auth_request + error_page like nginx.conf\n")
            failures = 0
            all_steps = steps(tokens, issuer.url)
            for number, step in enumerate(all_steps, 1):
                if step.door == "forward-auth":
                    response = nginx_auth_request(client, gateway, upstream, step.uri, step.headers)
                else:
                    response = client.get(gateway + step.uri, headers=dict(step.headers))
                problem = None if response.status_code == step.status else f"expected {step.status}"
                problem = problem or step.check(response)
                if any(token in response.text for token in tokens.values()):
                    problem = "the response echoes a token"
                failures += problem is not None
                shown = _hide(step.uri, tokens)
                out.write(f"[g{number}/{len(all_steps)}] {step.door}: {step.title}\n")
                out.write(
                    f"      GET {shown}  -> {response.status_code} {'ok' if problem is None else problem}\n"
                )
                out.write(f"      body: {_hide(response.text, tokens)[:150]}\n")
        lines = buffer.getvalue().splitlines()
        out.write(f"access log: {len(lines)} JSON lines, tokens only as fingerprints; the first:\n")
        if lines:
            out.write(f"  {lines[0]}\n")
    finally:
        issuer.stop()
    if failures:
        out.write(f"gateway: FAILED {failures} of {len(all_steps)} checks\n")
        return 1
    out.write(f"gateway: all {len(all_steps)} checks passed\n")
    return 0


def _hide(text: str, tokens: Mapping[str, str]) -> str:
    for token in tokens.values():
        text = text.replace(token, f"<token {fingerprint(token)}>")
    return json.dumps(text)[1:-1] if "\n" in text else text
