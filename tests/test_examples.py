"""The examples: their apps through real ASGI calls, and each of them run as a script."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from gatekeeper import Verifier
from gatekeeper.devserver import IssuerServer
from gatekeeper.issuer import DevIssuer

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
JWT = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]*")
AUDIENCE = "places-api"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"gatekeeper_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


starlette_app = load("starlette_app")
fastapi_app = load("fastapi_app")
worker = load("worker")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def server() -> Iterator[IssuerServer]:
    with IssuerServer() as running:
        running.issuer.audience = AUDIENCE
        yield running


@pytest.fixture
def issuer(server: IssuerServer) -> DevIssuer:
    return server.issuer


@pytest.fixture
async def verifier(server: IssuerServer) -> AsyncIterator[Verifier]:
    # One per test: its async HTTP client belongs to the test's event loop.
    verifier = Verifier(server.url, jwks_url=server.jwks_url, audience=AUDIENCE)
    yield verifier
    await verifier.aclose()


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


# -- examples/starlette_app.py ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_starlette_health_is_exempt(verifier: Verifier) -> None:
    async with client(starlette_app.create_app(verifier)) as http:
        response = await http.get("/health")
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}
        # Exempt means not looked at: even a malformed header passes.
        assert (await http.get("/health", headers={"authorization": "Bearer"})).status_code == 200


@pytest.mark.anyio
async def test_starlette_needs_a_token_elsewhere(verifier: Verifier, issuer: DevIssuer) -> None:
    async with client(starlette_app.create_app(verifier)) as http:
        response = await http.get("/me")
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == 'Bearer realm="api"'
        expired = issuer.mint(scope="places:read", expires_in=-3600)
        response = await http.get("/me", headers=bearer(expired))
        assert response.status_code == 401
        assert 'error="invalid_token"' in response.headers["www-authenticate"]


@pytest.mark.anyio
async def test_starlette_endpoint_reads_request_user_and_auth(verifier: Verifier, issuer: DevIssuer) -> None:
    token = issuer.mint(subject="ann", scope=["places:read", "extra"])
    async with client(starlette_app.create_app(verifier)) as http:
        response = await http.get("/me", headers=bearer(token))
        assert response.status_code == 200
        assert response.json() == {"sub": "ann", "scopes": ["extra", "places:read"], "client_id": "ann"}
        # The same token in PlaceOS's query parameter.
        response = await http.get("/me", params={"bearer_token": token})
        assert response.status_code == 200
        assert response.json()["sub"] == "ann"


@pytest.mark.anyio
async def test_starlette_requires_scopes_decorator(verifier: Verifier, issuer: DevIssuer) -> None:
    reader = issuer.mint(subject="ann", scope="places:read")
    writer = issuer.mint(subject="bo", scope="places:read places:write")
    async with client(starlette_app.create_app(verifier)) as http:
        assert (await http.get("/places", headers=bearer(reader))).status_code == 200
        response = await http.post("/places", headers=bearer(reader), json={"name": "Tromsø"})
        assert response.status_code == 403
        assert 'scope="places:write"' in response.headers["www-authenticate"]
        assert response.json()["error"] == "insufficient_scope"
        response = await http.post("/places", headers=bearer(writer), json={"name": "Tromsø"})
        assert response.status_code == 201
        assert response.json() == {"created": {"name": "Tromsø"}, "by": "bo"}


@pytest.mark.anyio
async def test_starlette_admin_rule(verifier: Verifier, issuer: DevIssuer) -> None:
    reader = issuer.mint(subject="ann", scope="places:read")
    admin = issuer.mint(subject="root", scope="admin")
    async with client(starlette_app.create_app(verifier)) as http:
        response = await http.get("/admin/stats", headers=bearer(reader))
        assert response.status_code == 403
        assert response.json()["scope"] == "admin"
        response = await http.get("/admin/stats", headers=bearer(admin))
        assert response.status_code == 200
        assert response.json() == {"places": 2, "admin": "root"}


@pytest.mark.anyio
async def test_starlette_other_profile(verifier: Verifier, issuer: DevIssuer) -> None:
    async with client(starlette_app.create_app(verifier, errors="placewise")) as http:
        response = await http.get("/places", headers=bearer(issuer.mint(scope="nothing")))
        assert response.status_code == 460
        assert response.json() == {"error": "Member not authorized"}


# -- examples/fastapi_app.py -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_fastapi_scopes_per_route(verifier: Verifier, issuer: DevIssuer) -> None:
    reader = issuer.mint(subject="ann", scope="places:read")
    writer = issuer.mint(subject="bo", scope="places:read places:write")
    async with client(fastapi_app.create_app(verifier)) as http:
        assert (await http.get("/health")).status_code == 200
        response = await http.get("/places", headers=bearer(reader))
        assert response.status_code == 200
        assert response.json()[0] == {"id": 1, "name": "Oslo S"}
        response = await http.post("/places", headers=bearer(reader), json={"name": "Tromsø"})
        assert response.status_code == 401  # Placepoint has no 403
        assert response.json() == {
            "error": {"code": 401, "message": "The access token lacks the required scope"}
        }
        assert 'scope="places:write"' in response.headers["www-authenticate"]
        response = await http.post("/places", headers=bearer(writer), json={"name": "Tromsø"})
        assert response.status_code == 201
        assert response.json() == {"created": {"id": 3, "name": "Tromsø"}, "by": "bo"}


@pytest.mark.anyio
async def test_fastapi_no_token_and_claims(verifier: Verifier, issuer: DevIssuer) -> None:
    async with client(fastapi_app.create_app(verifier)) as http:
        response = await http.get("/me")
        assert response.status_code == 401
        assert response.json() == {"error": {"code": 401, "message": "A bearer token is required"}}
        response = await http.get("/me", headers=bearer(issuer.mint(subject="cy", scope="x y")))
        assert response.status_code == 200
        assert response.json() == {"sub": "cy", "scopes": ["x", "y"], "issuer": issuer.issuer}


@pytest.mark.anyio
async def test_fastapi_openapi_shows_schemes_and_scopes(verifier: Verifier) -> None:
    app = fastapi_app.create_app(verifier, token_url="https://issuer.example/oauth/token")
    async with client(app) as http:
        document = (await http.get("/openapi.json")).json()
    schemes = document["components"]["securitySchemes"]
    assert schemes["gatekeeperBearer"]["type"] == "http"
    assert schemes["gatekeeperBearer"]["scheme"] == "bearer"
    flow = schemes["gatekeeperOAuth2"]["flows"]["clientCredentials"]
    assert flow["tokenUrl"] == "https://issuer.example/oauth/token"
    assert flow["scopes"] == {"places:read": "Read places", "places:write": "Add places"}
    paths = document["paths"]
    assert {"gatekeeperOAuth2": ["places:read"]} in paths["/places"]["get"]["security"]
    assert {"gatekeeperOAuth2": ["places:write"]} in paths["/places"]["post"]["security"]
    assert {"gatekeeperBearer": []} in paths["/me"]["get"]["security"]
    assert "security" not in paths["/health"]["get"]


def test_verifier_from_env() -> None:
    assert Verifier.from_env({}) is None
    env = {
        "GATEKEEPER_ISSUER": "https://id.example",
        "GATEKEEPER_AUDIENCE": "api",
        "GATEKEEPER_JWKS_URL": "https://id.example/jwks",
    }
    verifier = Verifier.from_env(env)
    assert verifier is not None
    config = verifier.issuers["https://id.example"]
    assert (config.jwks_url, config.audience, config.discovery) == ("https://id.example/jwks", "api", False)
    del env["GATEKEEPER_JWKS_URL"]
    discovered = Verifier.from_env(env)
    assert discovered is not None
    assert discovered.issuers["https://id.example"].discovery is True
    with pytest.raises(ValueError, match="GATEKEEPER_AUDIENCE"):
        Verifier.from_env({"GATEKEEPER_ISSUER": "https://id.example"})


# -- the examples as scripts -----------------------------------------------------------------------


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("GATEKEEPER_")}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.parametrize(("script", "expected"), [("starlette_app", 200), ("fastapi_app", 200)])
def test_app_runs_as_a_script(script: str, expected: int) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / f"{script}.py")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**clean_env(), "GATEKEEPER_PORT": str(port)},
    )
    try:
        assert process.stdout is not None
        head = [process.stdout.readline()]
        while not head[-1].startswith("serving on") and head[-1]:
            head.append(process.stdout.readline())
        text = "".join(head)
        folder = re.search(r"tokens \(1 hour\) in (\S+)", text)
        assert folder is not None, text
        token = (Path(folder.group(1)) / "reader.jwt").read_text()
        deadline = time.monotonic() + 20
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/places", headers=bearer(token))
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert response.status_code == expected
        assert (httpx.get(f"http://127.0.0.1:{port}/places")).status_code == 401
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=10)
        assert process.returncode == 0
        assert not Path(folder.group(1)).exists()  # the throwaway tokens are removed
        assert not JWT.search(text + out + err)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


# -- examples/worker.py ----------------------------------------------------------------------------


def test_worker_script_checks_a_batch() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "worker.py")],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert not JWT.search(out + result.stderr)
    outcomes = {
        match.group(1): (match.group(2), match.group(3))
        for match in re.finditer(r"^(.+?)\s{2,}(?:[0-9a-f]{12}|-)\s+(accepted|rejected)\s+(.*)$", out, re.M)
    }
    assert outcomes["good (ann)"] == ("accepted", "sub=ann scopes=jobs:run")
    assert outcomes["good (cy)"][0] == "accepted"
    assert outcomes["expired"] == ("rejected", "expired_token: The access token has expired")
    assert outcomes["missing scope"][1].startswith("insufficient_scope:")
    assert outcomes["wrong audience"] == ("rejected", "invalid_token: The token is not for this audience")
    assert outcomes["forged signature"] == ("rejected", "invalid_token: The token signature is invalid")
    assert outcomes["unsigned (alg none)"][1].startswith("invalid_token:")
    assert outcomes["not a JWT"][1].startswith("invalid_token:")
    assert outcomes["empty"] == ("rejected", "missing_token: A bearer token is required")
    assert "11 tokens: 4 accepted, 7 rejected" in out
    assert "JWKS fetched 1 time(s)" in out  # the threads shared one key fetch


def test_worker_reads_tokens_from_stdin_with_env_config(server: IssuerServer, issuer: DevIssuer) -> None:
    good = issuer.mint(subject="ann", scope="jobs:run", audience="jobs")
    no_scope = issuer.mint(subject="bo", scope="jobs:read", audience="jobs")
    env = {
        **clean_env(),
        "GATEKEEPER_ISSUER": server.url,
        "GATEKEEPER_JWKS_URL": server.jwks_url,
        "GATEKEEPER_AUDIENCE": "jobs",
    }
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "worker.py")],
        input=f"{good}\n\n{no_scope}\ngarbage\n",
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert not JWT.search(result.stdout + result.stderr)
    lines = result.stdout.splitlines()
    assert re.match(r"line 1\s+[0-9a-f]{12}\s+accepted\s+sub=ann", lines[1])
    assert re.match(r"line 3\s+[0-9a-f]{12}\s+rejected\s+insufficient_scope", lines[2])
    assert re.match(r"line 4\s+[0-9a-f]{12}\s+rejected\s+invalid_token", lines[3])
    assert lines[-1] == "3 tokens: 1 accepted, 2 rejected"


def test_verify_batch_keeps_order(server: IssuerServer, issuer: DevIssuer) -> None:
    verifier = Verifier(server.url, jwks_url=server.jwks_url, audience=AUDIENCE)
    try:
        batch = [(f"t{n}", issuer.mint(subject=f"s{n}", scope="jobs:run")) for n in range(20)]
        outcomes = worker.verify_batch(verifier, [*batch, ("bad", "x.y.z")], workers=8)
    finally:
        verifier.close()
    assert [o.label for o in outcomes] == [*(f"t{n}" for n in range(20)), "bad"]
    assert all(o.accepted for o in outcomes[:20])
    assert outcomes[5].detail == "sub=s5 scopes=jobs:run"
    assert not outcomes[-1].accepted
