"""Several ``gatekeeper serve`` processes sharing one real redis-server (started by
tests/gateway/replicas.py): a revocation made through one reaches all, and the faults (Redis down
at start, killed mid-run, restarted empty) behave as the README says. Requests go through the
forward-auth endpoint (Envoy style: ``/auth/<path>``).
"""

from __future__ import annotations

import base64
import functools
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gateway_process import GatewayProcess, metric_samples
from polling import eventually
from redis_server import REDIS_BINARY, SKIP_REASON, RedisServer, free_port
from replicas import Replicas, wait_ready

from gatekeeper.issuer import DevIssuer

ISS = "https://issuer.example"
#: Short Redis timeouts: a dead store is noticed, and refused, quickly.
REDIS_OPTIONS = {"timeout": 0.5, "block": 0.5}

pytestmark = pytest.mark.skipif(REDIS_BINARY is None, reason=SKIP_REASON)


@pytest.fixture
def issuer() -> DevIssuer:
    return DevIssuer(ISS, audience="api", algorithms=("ES256",))


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
def cluster(tmp_path: Path, issuer: DevIssuer, redis: RedisServer) -> Iterator[Replicas]:
    with Replicas(tmp_path, issuer, redis.url, redis_options=REDIS_OPTIONS) as group:
        yield group


def ask(replica: GatewayProcess, token: str, timeout: float = 5.0) -> httpx.Response:
    return httpx.get(
        f"{replica.url}/auth/orders", headers={"authorization": f"Bearer {token}"}, timeout=timeout
    )


def refuses(replica: GatewayProcess, token: str) -> bool:
    return ask(replica, token).status_code == 401


def cache_hits(replica: GatewayProcess) -> float:
    text = httpx.get(replica.ops_url + "/metrics", timeout=5).text
    return metric_samples(text, "gatekeeper_token_cache_total").get((("result", "hit"),), 0.0)


def revoke(replica: GatewayProcess, body: dict[str, object]) -> httpx.Response:
    return httpx.post(replica.ops_url + "/revocations", json=body, timeout=10)


def test_three_replicas_refuse_a_token_revoked_through_one(cluster: Replicas, issuer: DevIssuer) -> None:
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
        assert eventually(functools.partial(refuses, replica, token)), replica.stderr()
        refused = ask(replica, token)
        assert refused.json()["error_description"] == "The access token has been revoked"
        assert ask(replica, other).status_code == 200
    text = httpx.get(replicas[2].ops_url + "/metrics", timeout=5).text
    assert metric_samples(text, "gatekeeper_revocations").get((("kind", "jti"),)) == 1.0
    denied = metric_samples(text, "gatekeeper_decisions_total")
    assert any(dict(labels).get("kind") == "revoked_token" for labels in denied)


def test_redis_down_at_startup(tmp_path: Path, issuer: DevIssuer) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    with Replicas(tmp_path, issuer, url, redis_options=REDIS_OPTIONS) as group:
        replica = group.start()  # starts although Redis is not there
        ready = httpx.get(replica.ops_url + "/readyz", timeout=5)
        assert ready.status_code == 200
        assert ready.json()["revocation"]["status"] == "degraded"
        with pytest.raises(RuntimeError, match="not ready"):
            wait_ready(replica, timeout=0.3)
        token = issuer.mint()
        assert ask(replica, token).status_code == 200
        started = time.monotonic()
        assert revoke(replica, {"sub": "alice"}).status_code == 503
        assert time.monotonic() - started < 3.0
        with RedisServer(port=port):
            wait_ready(replica)
            assert revoke(replica, {"sub": "alice"}).status_code == 201


def test_redis_killed_mid_run(cluster: Replicas, issuer: DevIssuer, redis: RedisServer) -> None:
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


def test_redis_restarted_empty_loses_nothing(
    cluster: Replicas, issuer: DevIssuer, redis: RedisServer
) -> None:
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
