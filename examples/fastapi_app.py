"""A FastAPI API with scopes per route, visible in the OpenAPI docs (``/docs``).

    python examples/fastapi_app.py

With GATEKEEPER_ISSUER and GATEKEEPER_AUDIENCE set (and GATEKEEPER_JWKS_URL, else the issuer's
discovery document is used; GATEKEEPER_TOKEN_URL for the docs) it trusts that issuer. Without
them it starts a local development issuer and writes throwaway tokens to files, printing curl
commands that read them, so that no token shows up on the terminal. GATEKEEPER_PORT sets the
port (default 8000).

Each route states its scopes with ``Annotated[Claims, Security(gk, scopes=[...])]``; the
dependency registers HTTP bearer and OAuth2 client-credentials security schemes, so the docs
show the locks and scopes.
``gk.install(app)`` makes failures answer in the error profile's exact shape (Placepoint here).
"""

# No ``from __future__ import annotations`` here: FastAPI reads the Annotated[...] parameters of
# the route functions at runtime, and as strings they could not see the local ``gk``.

import os
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Annotated, Any

import uvicorn
from fastapi import FastAPI, Security
from pydantic import BaseModel

from gatekeeper import Claims, Verifier
from gatekeeper.devserver import IssuerServer
from gatekeeper.fastapi import GatekeeperSecurity

DEV_AUDIENCE = "places-api"
SCOPES = {"places:read": "Read places", "places:write": "Add places"}


class Place(BaseModel):
    name: str


def create_app(verifier: Verifier, *, token_url: str | None = None, errors: str = "placepoint") -> FastAPI:
    """The example API, trusting ``verifier``; ``token_url`` is shown in the docs' OAuth2 flow."""
    gk = GatekeeperSecurity(verifier, errors=errors, token_url=token_url, scopes=SCOPES)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await verifier.prefetch()  # keys fetched at startup, not on the first request
        yield
        await verifier.aclose()

    app = FastAPI(title="Places API (gatekeeper example)", lifespan=lifespan)
    gk.install(app)
    places: list[dict[str, Any]] = [{"id": 1, "name": "Oslo S"}, {"id": 2, "name": "Bergen"}]

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/me")
    async def me(claims: Annotated[Claims, Security(gk)]) -> dict[str, Any]:
        """Any valid token: the claims the API sees."""
        return {"sub": claims.subject, "scopes": sorted(claims.scopes), "issuer": claims.issuer}

    @app.get("/places")
    async def list_places(
        claims: Annotated[Claims, Security(gk, scopes=["places:read"])],
    ) -> list[dict[str, Any]]:
        return places

    @app.post("/places", status_code=201)
    async def add_place(
        place: Place, claims: Annotated[Claims, Security(gk, scopes=["places:write"])]
    ) -> dict[str, Any]:
        created = {"id": len(places) + 1, "name": place.name}
        places.append(created)
        return {"created": created, "by": claims.subject}

    return app


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
        app = create_app(verifier, token_url=os.environ.get("GATEKEEPER_TOKEN_URL"))
        print(f"trusting {', '.join(verifier.issuers)}; serving on {base} (docs: {base}/docs)", flush=True)
        uvicorn.run(app, host="127.0.0.1", port=port, access_log=False)
        return
    with IssuerServer() as server:
        server.issuer.audience = DEV_AUDIENCE
        verifier = Verifier(server.url, jwks_url=server.jwks_url, audience=DEV_AUDIENCE)
        app = create_app(verifier, token_url=server.token_url)
        with dev_tokens(server, {"reader": ["places:read"], "writer": list(SCOPES)}) as folder:
            reader, writer = folder / "reader.jwt", folder / "writer.jwt"
            print(f"dev issuer {server.url}; throwaway tokens (1 hour) in {folder}", flush=True)
            print(
                f'  curl -i -H "Authorization: Bearer $(cat {reader})" {base}/places\n'
                f"  curl -i -H \"Authorization: Bearer $(cat {reader})\" -H 'content-type: application/json'"
                f' -d \'{{"name": "Tromsø"}}\' {base}/places   # 401, Placepoint shape\n'
                f"  curl -i -H \"Authorization: Bearer $(cat {writer})\" -H 'content-type: application/json'"
                f' -d \'{{"name": "Tromsø"}}\' {base}/places\n'
                f"serving on {base} (docs: {base}/docs)",
                flush=True,
            )
            uvicorn.run(app, host="127.0.0.1", port=port, access_log=False)


if __name__ == "__main__":
    main()
