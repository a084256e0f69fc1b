"""A Starlette API behind GatekeeperMiddleware.

    python examples/starlette_app.py

With GATEKEEPER_ISSUER and GATEKEEPER_AUDIENCE set (and GATEKEEPER_JWKS_URL, else the issuer's
discovery document is used) it trusts that issuer. Without them it starts a local development
issuer and writes throwaway tokens to files, printing curl commands that read them, so that no
token shows up on the terminal. GATEKEEPER_PORT sets the port (default 8000).

What it shows:
- ``/health`` is exempt: no token needed.
- every other route needs a valid token, from the Authorization header or ``?bearer_token=``;
- ``/admin/**`` needs the ``admin`` scope (a rule in the middleware);
- ``GET /places`` and ``POST /places`` need ``places:read`` / ``places:write`` (the
  ``requires_scopes`` decorator, answering in the middleware's error profile);
- endpoints read the caller from ``request.user`` and ``request.auth``.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gatekeeper import GatekeeperMiddleware, Rule, Verifier, requires_scopes
from gatekeeper.devserver import IssuerServer

DEV_AUDIENCE = "places-api"
PLACES = [{"id": 1, "name": "Oslo S"}, {"id": 2, "name": "Bergen"}]


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def me(request: Request) -> JSONResponse:
    # request.user / request.auth follow Starlette's authentication conventions.
    return JSONResponse(
        {
            "sub": request.user.identity,
            "scopes": request.auth.scopes,
            "client_id": request.auth.claims.get("client_id"),
        }
    )


@requires_scopes("places:read")
async def list_places(request: Request) -> JSONResponse:
    return JSONResponse(PLACES)


@requires_scopes("places:write")
async def add_place(request: Request) -> JSONResponse:
    place = await request.json()
    return JSONResponse({"created": place, "by": request.user.identity}, status_code=201)


async def admin_stats(request: Request) -> JSONResponse:
    return JSONResponse({"places": len(PLACES), "admin": request.user.identity})


def create_app(verifier: Verifier, *, errors: str = "rfc6750") -> Starlette:
    """The example API, trusting ``verifier``, answering failures in the ``errors`` profile."""
    routes = [
        Route("/health", health),
        Route("/me", me),
        Route("/places", list_places, methods=["GET"]),
        Route("/places", add_place, methods=["POST"]),
        Route("/admin/stats", admin_stats),
    ]
    gatekeeper = Middleware(
        GatekeeperMiddleware,
        verifier=verifier,
        errors=errors,
        query_param="bearer_token",
        exempt=["/health"],
        rules=[Rule("/admin/**", scopes=["admin"])],
    )
    return Starlette(routes=routes, middleware=[gatekeeper])


# -- running it as a script ----------------------------------------------------------------------


@contextmanager
def dev_tokens(server: IssuerServer, tokens: Mapping[str, Sequence[str]]) -> Iterator[Path]:
    """Throwaway tokens (name -> scopes) in a private temporary folder, removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="gatekeeper-example-"))  # mode 0700
    try:
        for name, scopes in tokens.items():
            token = server.issuer.mint(subject=f"example-{name}", scope=list(scopes), expires_in=3600)
            (folder / f"{name}.jwt").write_text(token)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    port = int(os.environ.get("GATEKEEPER_PORT", "8000"))
    base = f"http://127.0.0.1:{port}"
    # uvicorn re-raises SIGTERM after its graceful shutdown; make that a normal exit so that
    # the token folder is cleaned up.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    verifier = Verifier.from_env()
    if verifier is not None:
        print(f"trusting {', '.join(verifier.issuers)}; serving on {base}", flush=True)
        # No access log: request lines would carry ?bearer_token= values.
        uvicorn.run(create_app(verifier), host="127.0.0.1", port=port, access_log=False)
        return
    with IssuerServer() as server:
        server.issuer.audience = DEV_AUDIENCE
        verifier = Verifier(server.url, jwks_url=server.jwks_url, audience=DEV_AUDIENCE)
        scopes = {"reader": ["places:read"], "admin": ["places:read", "places:write", "admin"]}
        with dev_tokens(server, scopes) as folder:
            reader, admin = folder / "reader.jwt", folder / "admin.jwt"
            print(f"dev issuer {server.url}; throwaway tokens (1 hour) in {folder}", flush=True)
            print(
                f"  curl -i {base}/health\n"
                f'  curl -i -H "Authorization: Bearer $(cat {reader})" {base}/me\n'
                f'  curl -i "{base}/places?bearer_token=$(cat {reader})"\n'
                f'  curl -i -H "Authorization: Bearer $(cat {reader})" {base}/admin/stats   # 403\n'
                f'  curl -i -H "Authorization: Bearer $(cat {admin})" {base}/admin/stats\n'
                f"serving on {base}",
                flush=True,
            )
            uvicorn.run(create_app(verifier), host="127.0.0.1", port=port, access_log=False)


if __name__ == "__main__":
    main()
