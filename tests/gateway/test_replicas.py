"""Several ``gatekeeper serve`` processes sharing one real redis-server: a revocation made through
one reaches all, and the faults (Redis down at start, killed mid-run, restarted empty) behave as
the README says. Requests go through the forward-auth endpoint (Envoy style: ``/auth/<path>``).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from gateway_process import GatewayProcess, metric_samples
from redis_server import REDIS_BINARY, SKIP_REASON, RedisServer, free_port

from gatekeeper.issuer import DevIssuer

ISS = "https://issuer.example"
CONFIG = """
[server]
listen = "{{listen}}"
ops_listen = "{{ops}}"

[[issuers]]
issuer = "{iss}"
audience = "api"
jwks = "{jwks}"
max_lifetime = 3600

[forward_auth]
proxy = "envoy"

[default]
access = "required"

[logging]
access_log = "off"

[revocation]
store = "redis"

[revocation.redis]
url = "{url}"
prefix = "replicas"
timeout = 0.5
block = 0.5
"""

pytestmark = pytest.mark.skipif(REDIS_BINARY is None, reason=SKIP_REASON)


@pytest.fixture
def issuer() -> DevIssuer:
    return DevIssuer(ISS, audience="api", algorithms=("ES256",))


class Cluster:
    def __init__(self, tmp_path: Path, issuer: DevIssuer, url: str) -> None:
        self.tmp_path = tmp_path
        jwks = tmp_path / "jwks.json"
        jwks.write_text(json.dumps(issuer.jwks()))
        self.config = CONFIG.format(iss=ISS, jwks=jwks, url=url)
        self.stack = ExitStack()
        self.count = 0

    def start(self) -> GatewayProcess:
        self.count += 1
        directory = self.tmp_path / f"replica{self.count}"
        directory.mkdir()
        return self.stack.enter_context(GatewayProcess(self.config, directory))

    def close(self) -> None:
        self.stack.close()


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def cluster(tmp_path: Path, issuer: DevIssuer, redis: RedisServer) -> Iterator[Cluster]:
    group = Cluster(tmp_path, issuer, redis.url)
    yield group
    group.close()


def ask(replica: GatewayProcess, token: str, timeout: float = 5.0) -> httpx.Response:
    return httpx.get(
        f"{replica.url}/auth/orders", headers={"authorization": f"Bearer {token}"}, timeout=timeout
    )


def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def cache_hits(replica: GatewayProcess) -> float:
    text = httpx.get(replica.ops_url + "/metrics", timeout=5).text
    return metric_samples(text, "gatekeeper_token_cache_total").get((("result", "hit"),), 0.0)


def revoke(replica: GatewayProcess, body: dict[str, object]) -> httpx.Response:
    return httpx.post(replica.ops_url + "/revocations", json=body, timeout=10)


def wait_ready(replica: GatewayProcess) -> dict[str, object]:
    assert eventually(
        lambda: (
            httpx.get(replica.ops_url + "/readyz", timeout=5).json().get("revocation", {}).get("status")
            == "ok"
        )
    ), replica.stderr()
    body: dict[str, object] = httpx.get(replica.ops_url + "/readyz", timeout=5).json()
    return body


def test_three_replicas_refuse_a_token_revoked_through_one(cluster: Cluster, issuer: DevIssuer) -> None:
    replicas = [cluster.start() for _ in range(3)]
    for replica in replicas:
        wait_ready(replica)
    token = issuer.mint(subject="alice")
    other = issuer.mint(subject="bob")
    jti = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "==").decode())["jti"]
    for replica in replicas:
        assert ask(replica, token).status_code == 200
        assert ask(replica, token).status_code == 200
        assert cache_hits(replica) >= 1  # cached in each
    assert revoke(replicas[0], {"jti": jti, "iss": ISS}).status_code == 201
    for replica in replicas:
        assert eventually(lambda replica=replica: ask(replica, token).status_code == 401), replica.stderr()
        refused = ask(replica, token)
        assert refused.json()["error_description"] == "The access token has been revoked"
        assert ask(replica, other).status_code == 200
    text = httpx.get(replicas[2].ops_url + "/metrics", timeout=5).text
    assert metric_samples(text, "gatekeeper_revocations").get((("kind", "jti"),)) == 1.0
    denied = metric_samples(text, "gatekeeper_decisions_total")
    assert any(dict(labels).get("kind") == "revoked_token" for labels in denied)


def test_redis_down_at_startup(tmp_path: Path, issuer: DevIssuer) -> None:
    port = free_port()
    group = Cluster(tmp_path, issuer, f"redis://127.0.0.1:{port}/0")
    try:
        replica = group.start()  # starts although Redis is not there
        ready = httpx.get(replica.ops_url + "/readyz", timeout=5)
        assert ready.status_code == 200
        assert ready.json()["revocation"]["status"] == "degraded"
        token = issuer.mint()
        assert ask(replica, token).status_code == 200
        started = time.monotonic()
        assert revoke(replica, {"sub": "alice"}).status_code == 503
        assert time.monotonic() - started < 3.0
        with RedisServer(port=port):
            wait_ready(replica)
            assert revoke(replica, {"sub": "alice"}).status_code == 201
    finally:
        group.close()


def test_redis_killed_mid_run(cluster: Cluster, issuer: DevIssuer, redis: RedisServer) -> None:
    one, two = cluster.start(), cluster.start()
    for replica in (one, two):
        wait_ready(replica)
    revoked, good = issuer.mint(subject="mallory"), issuer.mint(subject="alice")
    assert revoke(one, {"sub": "mallory"}).status_code == 201
    assert eventually(lambda: ask(two, revoked).status_code == 401)
    redis.kill()
    for replica in (one, two):
        started = time.monotonic()
        assert ask(replica, revoked).status_code == 401  # the mirror still applies
        assert ask(replica, good).status_code == 200
        assert time.monotonic() - started < 2.0  # no request waits on the dead store
        started = time.monotonic()
        refused = revoke(replica, {"sub": "alice"})
        assert refused.status_code == 503
        assert time.monotonic() - started < 3.0
        assert ask(replica, good).status_code == 200  # and nothing was revoked

    def age(replica: GatewayProcess) -> float:
        text = httpx.get(replica.ops_url + "/metrics", timeout=5).text
        return metric_samples(text, "gatekeeper_revocation_mirror_age_seconds")[()]

    first = age(two)
    assert eventually(lambda: age(two) > first + 1.0)  # the mirror's age grows
    assert httpx.get(two.ops_url + "/readyz", timeout=5).json()["revocation"]["status"] == "degraded"
    assert one.process.poll() is None
    assert two.process.poll() is None


def test_redis_restarted_empty_loses_nothing(cluster: Cluster, issuer: DevIssuer, redis: RedisServer) -> None:
    one, two = cluster.start(), cluster.start()
    for replica in (one, two):
        wait_ready(replica)
    token = issuer.mint(subject="mallory")
    by_client = issuer.mint(subject="svc", claims={"client_id": "leaky", "jti": None})
    assert revoke(one, {"sub": "mallory"}).status_code == 201
    assert revoke(two, {"client_id": "leaky"}).status_code == 201
    assert eventually(lambda: ask(one, by_client).status_code == 401 and ask(two, token).status_code == 401)
    redis.restart_empty()
    for replica in (one, two):
        wait_ready(replica)
    # A replica started after the restart knows both: they were restored from the mirrors.
    three = cluster.start()
    wait_ready(three)
    assert ask(three, token).status_code == 401
    assert ask(three, by_client).status_code == 401
    assert ask(three, issuer.mint(subject="alice")).status_code == 200
