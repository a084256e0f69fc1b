"""The revocation admin endpoints on the ops app, the ``[revocation]`` table, the readiness
entry and the metrics: through the assembled gateway (``build_gateway``) and real ASGI calls."""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_server import RedisServer, free_port, redis_server  # noqa: F401 (the fixture)

from gatekeeper import AuthError
from gatekeeper.gateway.app import Gateway, build_gateway
from gatekeeper.gateway.config import load_config
from gatekeeper.gateway.revocation_config import RevocationSettings, is_loopback
from gatekeeper.gateway.schema import ConfigError
from gatekeeper.issuer import DevIssuer

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Starlette deprecates TestClient-on-httpx at import
    from starlette.testclient import TestClient

ISS = "https://issuer.example"


@pytest.fixture
def issuer() -> DevIssuer:
    return DevIssuer(ISS, audience="api", algorithms=("ES256",))


def config_text(jwks: Path, revocation: str = "", ops: str = "127.0.0.1:9180") -> str:
    return f"""
[server]
ops_listen = "{ops}"

[[issuers]]
issuer = "{ISS}"
audience = "api"
jwks = "{jwks}"
max_lifetime = 3600

[logging]
access_log = "off"

{revocation}
"""


def make_gateway(tmp_path: Path, issuer: DevIssuer, revocation: str = "[revocation]", **kw: str) -> Gateway:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(issuer.jwks()))
    path = tmp_path / "gatekeeper.toml"
    path.write_text(config_text(jwks, revocation, **kw))
    return build_gateway(load_config(path), access_log=False)


@pytest.fixture
def gateway(tmp_path: Path, issuer: DevIssuer) -> Iterator[Gateway]:
    gw = make_gateway(tmp_path, issuer)
    yield gw
    stop_runtimes(gw)


def stop_runtimes(gw: Gateway) -> None:
    settings = gw.config.revocation
    if isinstance(settings, RevocationSettings):
        for runtime in settings._runtimes:
            runtime.stop()


def kind_of(gw: Gateway, token: str) -> str | None:
    try:
        gw.verifier.verify(token)
    except AuthError as error:
        return error.kind
    return None


def test_post_revokes_and_delete_undoes(gateway: Gateway, issuer: DevIssuer) -> None:
    token = issuer.mint(subject="alice")
    claims = gateway.verifier.verify(token)
    with TestClient(gateway.ops) as client:
        response = client.post("/revocations", json={"jti": claims["jti"], "iss": ISS, "exp": claims["exp"]})
        assert response.status_code == 201
        assert response.json()["revoked"]["kind"] == "jti"
        assert response.json()["revoked"]["until"] == claims["exp"]
        assert kind_of(gateway, token) == "revoked_token"
        undo = client.request("DELETE", "/revocations", json={"jti": claims["jti"], "iss": ISS})
        assert (undo.status_code, undo.json()) == (200, {"removed": True})
        assert kind_of(gateway, token) is None
        again = client.request("DELETE", "/revocations", json={"jti": claims["jti"], "iss": ISS})
        assert (again.status_code, again.json()) == (404, {"removed": False})


def test_subject_and_client_revocations(gateway: Gateway, issuer: DevIssuer) -> None:
    by_sub = issuer.mint(subject="alice")
    by_client = issuer.mint(subject="svc", claims={"client_id": "billing", "jti": None})
    with TestClient(gateway.ops) as client:
        assert client.post("/revocations", json={"sub": "alice"}).status_code == 201
        assert client.post("/revocations", json={"client_id": "billing", "iss": ISS}).status_code == 201
        future = client.post("/revocations", json={"sub": "bob", "before": 4_000_000_000})
        assert future.status_code == 201
        assert future.json()["revoked"]["until"] == 4_000_000_000 + 3600 + 30  # max_lifetime + leeway
    assert kind_of(gateway, by_sub) == "revoked_token"
    assert kind_of(gateway, by_client) == "revoked_token"


def test_get_shows_counts_never_identities(gateway: Gateway) -> None:
    with TestClient(gateway.ops) as client:
        client.post("/revocations", json={"sub": "alice-the-secret-subject"})
        client.post("/revocations", json={"jti": "jti-value-1", "iss": ISS})
        client.post("/revocations", json={"jti": "jti-value-2", "iss": ISS})
        response = client.get("/revocations")
    assert response.status_code == 200
    body = response.json()
    assert body["entries"] == {"jti": 2, "sub": 1, "client_id": 0}
    assert body["store"] == "memory"
    assert "alice" not in response.text
    assert "jti-value" not in response.text


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"not json", 400, "JSON object"),
        (b"[1, 2]", 400, "JSON object"),
        (b"\xff\xfe", 400, "JSON object"),
        (b"{}", 400, "exactly one"),
        (b'{"jti": "a", "sub": "b"}', 400, "exactly one"),
        (b'{"jti": "a"}', 400, "iss"),
        (b'{"jti": "a", "iss": "https://evil.example"}', 400, "trusted"),
        (b'{"sub": ""}', 400, "non-empty"),
        (b'{"sub": 7}', 400, "non-empty"),
        (b'{"sub": "a", "before": "yesterday"}', 400, "number"),
        (b'{"sub": "a", "before": true}', 400, "number"),
        (b'{"sub": "a", "before": 1e999}', 400, "number"),
        (b'{"jti": "a", "iss": "https://issuer.example", "before": 5}', 400, "before applies"),
        (b'{"sub": "a", "exp": 5}', 400, "expires_at applies"),
        (b'{"sub": "a", "admin": true}', 400, "unknown field"),
        (json.dumps({"sub": "x" * 2000}).encode(), 400, "at most"),
        (json.dumps({"sub": "x" * 9000}).encode(), 413, "at most"),
    ],
)
def test_bad_requests_are_clear_4xx(gateway: Gateway, body: bytes, status: int, message: str) -> None:
    with TestClient(gateway.ops) as client:
        for method in ("POST", "DELETE"):
            response = client.request(method, "/revocations", content=body)
            assert response.status_code == status, response.text
            assert message in response.json()["error_description"]
    assert len(gateway.verifier.revocations) == 0


def test_full_list_is_507(tmp_path: Path, issuer: DevIssuer) -> None:
    gw = make_gateway(tmp_path, issuer, "[revocation]\nmax_entries = 1")
    with TestClient(gw.ops) as client:
        assert client.post("/revocations", json={"sub": "a"}).status_code == 201
        full = client.post("/revocations", json={"sub": "b"})
    assert full.status_code == 507
    assert "max_entries=1" in full.json()["error_description"]


def test_exposed_ops_listener_requires_an_admin_token(tmp_path: Path, issuer: DevIssuer) -> None:
    gw = make_gateway(tmp_path, issuer, ops="0.0.0.0:9180")
    admin = issuer.mint(subject="operator", scope="gatekeeper:admin")
    plain = issuer.mint(subject="someone", scope="orders:read")
    with TestClient(gw.ops) as client:
        missing = client.post("/revocations", json={"sub": "alice"})
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert client.get("/revocations").status_code == 401
        bad = client.post("/revocations", json={"sub": "alice"}, headers={"authorization": "Bearer nope"})
        assert bad.status_code == 401
        weak = client.post(
            "/revocations", json={"sub": "alice"}, headers={"authorization": f"Bearer {plain}"}
        )
        assert weak.status_code == 403
        assert 'scope="gatekeeper:admin"' in weak.headers["www-authenticate"]
        assert len(gw.verifier.revocations) == 0
        ok = client.post("/revocations", json={"sub": "alice"}, headers={"authorization": f"Bearer {admin}"})
        assert ok.status_code == 201
        # The admin token is checked like any other: revoking it locks it out.
        client.post("/revocations", json={"sub": "operator"}, headers={"authorization": f"Bearer {admin}"})
        assert client.get("/revocations", headers={"authorization": f"Bearer {admin}"}).status_code == 401
        # Health endpoints stay open.
        assert client.get("/healthz").status_code == 200


def test_admin_token_always_and_custom_scope(tmp_path: Path, issuer: DevIssuer) -> None:
    gw = make_gateway(tmp_path, issuer, '[revocation]\nadmin_token = "always"\nadmin_scope = "ops:revoke"')
    token = issuer.mint(scope="ops:revoke")
    with TestClient(gw.ops) as client:
        assert client.get("/revocations").status_code == 401
        assert client.get("/revocations", headers={"authorization": f"Bearer {token}"}).status_code == 200


def test_admin_off_mounts_nothing(tmp_path: Path, issuer: DevIssuer) -> None:
    gw = make_gateway(tmp_path, issuer, "[revocation]\nadmin = false")
    with TestClient(gw.ops) as client:
        assert client.post("/revocations", json={"sub": "a"}).status_code in (404, 405)


def test_metrics_show_counts_and_store_state(gateway: Gateway, issuer: DevIssuer) -> None:
    with TestClient(gateway.ops) as client:
        client.post("/revocations", json={"sub": "alice"})
        client.post("/revocations", json={"jti": "j", "iss": ISS})
        text = client.get("/metrics").text
    assert 'gatekeeper_revocations{kind="sub"} 1.0' in text
    assert 'gatekeeper_revocations{kind="jti"} 1.0' in text
    assert "gatekeeper_revocation_mirror_age_seconds 0.0" in text
    assert "gatekeeper_revocation_blocked 0.0" in text


def test_redis_down_gateway_starts_degraded_and_refuses_writes(tmp_path: Path, issuer: DevIssuer) -> None:
    port = free_port()
    gw = make_gateway(
        tmp_path,
        issuer,
        '[revocation]\nstore = "redis"\n[revocation.redis]\n'
        f'url = "redis://127.0.0.1:{port}/0"\ntimeout = 0.3',
    )
    try:
        with TestClient(gw.ops) as client:
            ready = client.get("/readyz")
            assert ready.json()["revocation"]["status"] == "degraded"
            assert ready.json()["revocation"]["connected"] is False
            assert ready.status_code == 200  # fail-open: still serving from the mirror
            refused = client.post("/revocations", json={"sub": "alice"})
            assert refused.status_code == 503
            assert refused.json()["error"] == "store_unavailable"
            assert len(gw.verifier.revocations) == 0  # not silently applied here either
            metrics = client.get("/metrics").text
            assert 'gatekeeper_revocation_store_errors_total{operation="publish"} 1.0' in metrics
    finally:
        stop_runtimes(gw)


def test_redis_store_through_the_admin_endpoint(
    tmp_path: Path,
    issuer: DevIssuer,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    revocation = (
        f'[revocation]\nstore = "redis"\n[revocation.redis]\nurl = "{redis_server.url}"\nprefix = "adm"'
    )
    first = make_gateway(tmp_path, issuer, revocation)
    second = make_gateway(tmp_path, issuer, revocation)
    try:
        token = issuer.mint(subject="alice")
        second.verifier.verify(token)
        with TestClient(first.ops) as client:
            assert client.post("/revocations", json={"sub": "alice"}).status_code == 201
            assert client.get("/readyz").json()["revocation"]["status"] == "ok"
        assert second.config.revocation is not None
        store = second.config.revocation.runtime_for(second.verifier).store
        deadline = time.monotonic() + 10
        while kind_of(second, token) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert kind_of(second, token) == "revoked_token"
        assert store.synced
    finally:
        stop_runtimes(first)
        stop_runtimes(second)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('[revocation]\nstore = "disk"', "'disk' is not one of"),
        ("[revocation]\nmax_entries = 0", "at least 1"),
        ("[revocation]\nmax_entrie = 5", "did you mean 'max_entries'"),
        ('[revocation]\n[revocation.redis]\nurl = "redis://x"', 'needs store = "redis"'),
        ('[revocation]\nstore = "redis"\n[revocation.redis]\nurl = "http://x"', "redis://"),
        ('[revocation]\nstore = "redis"\n[revocation.redis]\npassword = "hunter2"', "inline secret"),
        ('[revocation]\nstore = "redis"\n[revocation.redis]\non_stale = "sometimes"', "'open', 'closed'"),
        ('[revocation]\nstore = "redis"\n[revocation.redis]\nprefix = "a b"', "glob"),
        ('[revocation]\nstore = "redis"\n[revocation.redis]\ntimeout = 0', "greater than 0"),
        ('[revocation]\nadmin_token = "sometimes"', "'auto', 'always', 'never'"),
    ],
)
def test_config_mistakes_are_one_line_errors(
    tmp_path: Path, issuer: DevIssuer, table: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        make_gateway(tmp_path, issuer, table)
    assert message in str(info.value)
    assert "hunter2" not in str(info.value)


def test_redis_password_from_env(tmp_path: Path, issuer: DevIssuer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GK_TEST_REDIS_PW", "pw-from-env")
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(issuer.jwks()))
    path = tmp_path / "g.toml"
    path.write_text(
        config_text(
            jwks,
            '[revocation]\nstore = "redis"\n[revocation.redis]\npassword = "env:GK_TEST_REDIS_PW"\n'
            'url = "rediss://cache.internal:6380/2"',
        )
    )
    config = load_config(path)
    assert config.revocation is not None
    assert config.revocation.redis is not None
    assert config.revocation.redis.password == "pw-from-env"
    assert config.revocation.redis.url == "rediss://cache.internal:6380/2"
    assert "pw-from-env" not in repr(config.revocation)
    assert "pw-from-env" not in json.dumps(config.resolved, default=str)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("10.0.0.5", False),
        (None, False),
    ],
)
def test_is_loopback(host: str | None, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_every_redis_key_reaches_the_store(tmp_path: Path, issuer: DevIssuer) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(issuer.jwks()))
    path = tmp_path / "g.toml"
    (tmp_path / "redis.pw").write_text("pw-from-file\n")
    path.write_text(
        config_text(
            jwks,
            '[revocation]\nstore = "redis"\nmax_entries = 500\n[revocation.redis]\nurl = "redis://127.0.0.1:1/3"\n'
            'password = "file:redis.pw"\nusername = "gk"\nprefix = "tenant-a"\ntimeout = 0.25\n'
            'stale_after = 12\non_stale = "closed"\nstream_length = 500\nblock = 2\ncoalesce = 0.05',
        )
    )
    settings = load_config(path).revocation
    assert settings is not None
    runtime = settings.open(start=False)
    try:
        store = runtime.store
        assert runtime.revocations.max_entries == 500
        assert store.settings.password == "pw-from-file"
        assert (store.settings.url, store.settings.username, store.settings.prefix) == (
            "redis://127.0.0.1:1/3",
            "gk",
            "tenant-a",
        )
        assert (store.settings.timeout, store.settings.stale_after, store.settings.on_stale) == (
            0.25,
            12,
            "closed",
        )
        assert (store.settings.stream_length, store.settings.block, store.settings.coalesce) == (500, 2, 0.05)
    finally:
        runtime.stop()


def test_fail_closed_stale_mirror_makes_readyz_503(tmp_path: Path, issuer: DevIssuer) -> None:
    gw = make_gateway(
        tmp_path,
        issuer,
        '[revocation]\nstore = "redis"\n[revocation.redis]\n'
        f'url = "redis://127.0.0.1:{free_port()}/0"\ntimeout = 0.2\nstale_after = 30\non_stale = "closed"',
    )
    assert gw.config.revocation is not None
    runtime = gw.config.revocation.runtime_for(gw.verifier)
    store = runtime.store
    token = issuer.mint()
    try:
        with TestClient(gw.ops) as client:
            assert client.get("/readyz").status_code == 200  # degraded, not yet stale
            assert gw.verifier.verify(token)
            now = [store._monotonic()]
            store._monotonic = lambda: now[0]  # the mirror's age, moved by hand
            now[0] += 31
            deadline = time.monotonic() + 10
            while not runtime.revocations.blocked and time.monotonic() < deadline:
                time.sleep(0.01)  # the follower applies the policy on its next retry
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["revocation"]["blocked"] is True
            with pytest.raises(AuthError) as info:
                gw.verifier.verify(token)
            assert info.value.kind == "keys_unavailable"
            assert "gatekeeper_revocation_blocked 1.0" in client.get("/metrics").text
    finally:
        stop_runtimes(gw)
