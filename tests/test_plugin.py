"""The pytest plugin (entry point ``pytest11`` -> ``gatekeeper_pytest``), tested the way a user meets
it: pytester writes a user's app and tests to a temporary project and runs pytest on them."""

from __future__ import annotations

import time

# Imported here, before any inline run: pytester removes the modules a run imported when it ends,
# and importing Starlette/FastAPI afresh in the next run while the old classes live on (in
# caches of modules that stay) breaks their routing.
import fastapi.testclient  # noqa: F401
import pytest
import starlette.testclient  # noqa: F401

import gatekeeper.fastapi
import gatekeeper.testing  # noqa: F401
from gatekeeper.errors import AuthError
from gatekeeper.keystore import FetchPolicy
from gatekeeper.testing import TestIssuer

pytest_plugins = ["pytester"]

STARLETTE_APP = """
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gatekeeper import GatekeeperMiddleware, Rule, Verifier


async def plots(request: Request) -> JSONResponse:
    return JSONResponse({"sub": request.user.identity})


def create_app(verifier: Verifier | None = None) -> Starlette:
    verifier = verifier or Verifier.from_env()
    return Starlette(
        routes=[Route("/plots", plots)],
        middleware=[
            Middleware(GatekeeperMiddleware, verifier=verifier, rules=[Rule("/plots", scopes="plots:read")])
        ],
    )
"""

STARLETTE_CONFTEST = """
import pytest
from starlette.testclient import TestClient

from user_starlette_app import create_app


@pytest.fixture
def client(gatekeeper_verifier):
    with TestClient(create_app(gatekeeper_verifier)) as client:
        yield client
"""

STARLETTE_TESTS = """
def test_with_a_token(client, mint_token):
    response = client.get("/plots", headers={"Authorization": f"Bearer {mint_token(scope='plots:read')}"})
    assert response.status_code == 200
    assert response.json() == {"sub": "test-client"}


def test_subject_and_claims(client, mint_token):
    token = mint_token(scope="plots:read", sub="worker-7", tenant="t1")
    assert client.get("/plots", headers={"Authorization": f"Bearer {token}"}).json() == {"sub": "worker-7"}


def test_without_a_token(client):
    assert client.get("/plots").status_code == 401


def test_wrong_scope(client, mint_token):
    response = client.get("/plots", headers={"Authorization": f"Bearer {mint_token(scope='other')}"})
    assert response.status_code == 403


def test_expired(client, mint_token):
    token = mint_token(scope="plots:read", expires_in=-60)
    assert client.get("/plots", headers={"Authorization": f"Bearer {token}"}).status_code == 401


def test_other_audience(client, mint_token):
    token = mint_token(scope="plots:read", aud="someone-else")
    assert client.get("/plots", headers={"Authorization": f"Bearer {token}"}).status_code == 401
"""


def test_starlette_app(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        user_starlette_app=STARLETTE_APP, conftest=STARLETTE_CONFTEST, test_plots=STARLETTE_TESTS
    )
    result = pytester.runpytest("-q")
    result.assert_outcomes(passed=6)


FASTAPI_APP = """
from fastapi import FastAPI, Security

from gatekeeper import Claims, Verifier
from gatekeeper.fastapi import GatekeeperSecurity


def create_app(verifier: Verifier) -> FastAPI:
    app = FastAPI()
    gk = GatekeeperSecurity(verifier)
    gk.install(app)

    @app.get("/plots")
    async def plots(claims: Claims = Security(gk, scopes=["plots:read"])) -> dict:
        return {"sub": claims["sub"]}

    return app
"""

FASTAPI_TESTS = """
import pytest
from fastapi.testclient import TestClient

from user_fastapi_app import create_app


@pytest.fixture
def client(gatekeeper_verifier):
    return TestClient(create_app(gatekeeper_verifier))


def test_with_a_token(client, mint_token):
    response = client.get("/plots", headers={"Authorization": f"Bearer {mint_token(scope='plots:read')}"})
    assert response.status_code == 200
    assert response.json() == {"sub": "test-client"}


def test_missing_scope(client, mint_token):
    assert client.get("/plots", headers={"Authorization": f"Bearer {mint_token()}"}).status_code == 403


def test_key_rotation(client, mint_token, gatekeeper_keys):
    before = mint_token(scope="plots:read")
    assert client.get("/plots", headers={"Authorization": f"Bearer {before}"}).status_code == 200
    gatekeeper_keys.rotate()
    after = mint_token(scope="plots:read")
    assert client.get("/plots", headers={"Authorization": f"Bearer {after}"}).status_code == 200
    # The old key left the JWKS: its tokens no longer verify (the cached verdict is dropped too).
    assert client.get("/plots", headers={"Authorization": f"Bearer {before}"}).status_code == 401


def test_identity_provider_outage(gatekeeper_keys, gatekeeper_issuer, mint_token):
    gatekeeper_keys.fail(503)
    client = TestClient(create_app(gatekeeper_issuer.verifier()))  # a verifier with no keys yet
    response = client.get("/plots", headers={"Authorization": f"Bearer {mint_token(scope='plots:read')}"})
    assert response.status_code == 503
    assert gatekeeper_keys.jwks_requests >= 1


def test_outage_is_over_in_the_next_test(client, mint_token):
    token = mint_token(scope="plots:read")
    assert client.get("/plots", headers={"Authorization": f"Bearer {token}"}).status_code == 200
"""


def test_fastapi_app_with_rotation_and_outage(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(user_fastapi_app=FASTAPI_APP, test_plots=FASTAPI_TESTS)
    result = pytester.runpytest("-q", "-p", "no:randomly")
    result.assert_outcomes(passed=5)


def test_app_configured_from_the_environment(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        app=STARLETTE_APP,
        test_env="""
        import os
        from starlette.testclient import TestClient
        from app import create_app


        def test_from_env(gatekeeper_env, mint_token, gatekeeper_issuer):
            assert os.environ["GATEKEEPER_ISSUER"] == gatekeeper_env["GATEKEEPER_ISSUER"]
            assert gatekeeper_env["GATEKEEPER_ISSUER"] == gatekeeper_issuer.url
            client = TestClient(create_app())  # Verifier.from_env()
            headers = {"Authorization": f"Bearer {mint_token(scope='plots:read')}"}
            assert client.get("/plots", headers=headers).status_code == 200


        def test_env_is_restored():
            assert "GATEKEEPER_ISSUER" not in os.environ
        """,
    )
    result = pytester.runpytest("-q", "-p", "no:randomly")
    result.assert_outcomes(passed=2)


def test_audience_is_overridable(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture(scope="session")
        def gatekeeper_audience():
            return "plots-api"
        """
    )
    pytester.makepyfile(
        """
        def test_audience(mint_token, gatekeeper_verifier):
            assert gatekeeper_verifier.verify(mint_token(scope="x"))["aud"] == "plots-api"
        """
    )
    pytester.runpytest("-q").assert_outcomes(passed=1)


def test_client_credentials_against_the_issuer(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import httpx
        from gatekeeper.client import ClientCredentialsAuth, Credentials

        def test_worker(gatekeeper_issuer, gatekeeper_verifier):
            issuer = gatekeeper_issuer
            creds = Credentials(issuer.token_url, issuer.client_id, client_secret=issuer.client_secret)
            seen = []
            def api(request):
                seen.append(request.headers["authorization"].removeprefix("Bearer "))
                return httpx.Response(200)
            auth = ClientCredentialsAuth(creds)
            with httpx.Client(auth=auth, transport=httpx.MockTransport(api)) as client:
                client.get("https://api.test/x")
            assert gatekeeper_verifier.verify(seen[0])["sub"] == issuer.client_id
            assert issuer.client_secret not in repr(issuer)
        """
    )
    pytester.runpytest("-q").assert_outcomes(passed=1)


def test_a_session_that_uses_no_fixture_pays_nothing(pytester: pytest.Pytester) -> None:
    # In a fresh interpreter: the plugin is loaded, yet nothing of gatekeeper is imported and no
    # server thread runs until a fixture asks.
    pytester.makepyfile(
        """
        import sys, threading

        def test_untouched(pytestconfig):
            assert pytestconfig.pluginmanager.has_plugin("gatekeeper")
            assert not [m for m in sys.modules if m == "gatekeeper" or m.startswith("gatekeeper.")]
            assert threading.active_count() == 1

        def test_then_used(mint_token):
            assert mint_token().count(".") == 2
            assert "gatekeeper.devserver" in sys.modules
        """
    )
    result = pytester.runpytest_subprocess("-q", "-p", "no:randomly")
    result.assert_outcomes(passed=2)


def test_plugin_can_be_disabled(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(mint_token):\n    pass\n")
    result = pytester.runpytest_subprocess("-q", "-p", "no:gatekeeper")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'mint_token' not found*"])


def _readme_files() -> dict[str, str]:
    """The README's "Testing your app" files: code blocks whose first line names the file."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = text.split("<!-- section:client -->", 1)[1].split("<!-- /section:client -->", 1)[0]
    files = {}
    for block in re.findall(r"```python\n(.*?)```", section, re.DOTALL):
        first, _, body = block.partition("\n")
        if re.fullmatch(r"# \w+\.py", first):
            files[first[2:-3]] = body
    return files


def test_readme_examples_pass_as_written(pytester: pytest.Pytester) -> None:
    files = _readme_files()
    assert set(files) == {"app", "test_app", "main", "test_main"}
    # Unique module names (see the imports at the top): the README's "app"/"main" become ours.
    renamed = {
        "readme_app": files["app"],
        "test_readme_app": files["test_app"].replace("from app import", "from readme_app import"),
        "readme_main": files["main"],
        "test_readme_main": files["test_main"].replace("from main import", "from readme_main import"),
    }
    pytester.makepyfile(**renamed)
    pytester.runpytest("-q", "-p", "no:randomly").assert_outcomes(passed=5)


def test_key_control_hang_holds_the_jwks_endpoint_until_restore() -> None:
    with TestIssuer() as issuer:
        token = issuer.mint()
        issuer.keys.hang()
        verifier = issuer.verifier(fetch=FetchPolicy(timeout=0.3))
        started = time.monotonic()
        with pytest.raises(AuthError) as caught:
            verifier.verify(token)  # a cold start: it must wait for keys, at most the timeout
        assert caught.value.kind == "keys_unavailable"
        assert time.monotonic() - started < 3
        issuer.keys.restore()  # (the first verifier waits its retry interval before asking again)
        assert issuer.verifier(fetch=FetchPolicy(timeout=0.3)).verify(token)["sub"]
