"""The reverse proxy under ``gatekeeper serve`` (a real subprocess): the shipped example
configuration works as documented, and SIGTERM lets an in-flight streaming response finish."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_process import GatewayProcess
from upstream import Upstream

from gatekeeper.devserver import IssuerServer
from gatekeeper.issuer import DevIssuer

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "gateway" / "reverse-proxy.toml"
AUDIENCE = "https://api.example.com"


@pytest.fixture(scope="module")
def issuer() -> Iterator[IssuerServer]:
    server = IssuerServer()
    server.issuer = DevIssuer(server.url, algorithms=("ES256",), audience=AUDIENCE)
    with server:
        yield server


def example_config(issuer: IssuerServer, orders: Upstream, reports: Upstream) -> str:
    """The shipped example with its addresses pointed at this test's servers."""
    # GatewayProcess fills {listen}, {ops} and {access_log} with str.format: escape the rest.
    text = EXAMPLE.read_text().replace("{", "{{").replace("}", "}}")
    replacements = {
        '"0.0.0.0:8080"': '"{listen}"',
        '"127.0.0.1:9180"': '"{ops}"',
        "workers = 2": "workers = 1",
        '"https://auth.example.com/"': f'"{issuer.url}"',
        '"https://auth.example.com/.well-known/jwks.json"': f'"{issuer.jwks_url}"',
        '"http://127.0.0.1:8081"': f'"{orders.url}"',
        '"http://127.0.0.1:8082"': f'"{reports.url}"',
        'access_log = "stdout"': 'access_log = "{access_log}"',
    }
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


def headers_of(response: httpx.Response) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in response.json()["headers"]:
        out.setdefault(name, []).append(value)
    return out


def test_the_reverse_proxy_example_works_as_documented(issuer: IssuerServer, tmp_path: Path) -> None:
    token = issuer.issuer.mint(
        {"sub": "alice", "client_id": "app-1", "tenant": {"id": "t-42"}}, scope="orders:read reports:read"
    )
    with (
        Upstream() as orders,
        Upstream() as reports,
        GatewayProcess(example_config(issuer, orders, reports), tmp_path) as gateway,
    ):
        assert gateway.wait_for("/readyz", 200).status_code == 200
        # exempt: proxied without a token, and without a forged identity
        health = httpx.get(gateway.url + "/health", headers={"X-Auth-Subject": "admin"})
        assert health.status_code == 200
        assert "x-auth-subject" not in headers_of(health)
        # required: the profile's 401 without a token; the service never sees the request
        before = len(orders.seen)
        denied = httpx.get(gateway.url + "/orders/1")
        assert denied.status_code == 401
        assert denied.headers["www-authenticate"].startswith('Bearer realm="api"')
        assert len(orders.seen) == before
        # allowed, token in the query: identity headers set, token gone from the URL
        allowed = httpx.get(gateway.url + f"/orders//1/./items?bearer_token={token}&page=2")
        assert allowed.status_code == 200
        seen = allowed.json()
        assert (seen["path"], seen["query"]) == ("/orders/1/items", "page=2")
        headers = headers_of(allowed)
        assert headers["x-auth-subject"] == ["alice"]
        assert headers["x-auth-client-id"] == ["app-1"]
        assert headers["x-auth-tenant"] == ["t-42"]
        assert headers["x-forwarded-for"] == ["127.0.0.1"]
        assert headers["host"] == [orders.url.removeprefix("http://")]
        assert token not in json.dumps(seen)
        # a route with its own upstream
        report = httpx.get(gateway.url + "/reports/q1", headers={"Authorization": f"Bearer {token}"})
        assert report.status_code == 200
        assert "authorization" not in headers_of(report)
        assert reports.seen[-1]["path"] == "/reports/q1"
        # the access log has the proxy's lines, never the token
        deadline = time.monotonic() + 5
        while len(gateway.log_lines()) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        lines = gateway.log_lines()
        assert {line["door"] for line in lines} == {"proxy"}
        assert token not in gateway.access_log.read_text()
        assert gateway.stop() == 0


def test_sigterm_lets_an_in_flight_stream_finish(issuer: IssuerServer, tmp_path: Path) -> None:
    token = issuer.issuer.mint({"sub": "alice"}, scope="orders:read")
    with (
        Upstream() as orders,
        Upstream() as reports,
        GatewayProcess(example_config(issuer, orders, reports), tmp_path) as gateway,
    ):
        gateway.wait_for("/readyz", 200)
        events: list[dict[str, Any]] = []
        first = threading.Event()
        failure: list[BaseException] = []

        def read_stream() -> None:
            try:
                url = gateway.url + "/orders/sse?n=8&interval=0.2"
                with httpx.stream("GET", url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as r:
                    for line in r.iter_lines():
                        if line.startswith("data: "):
                            events.append(json.loads(line[6:]))
                            first.set()
            except BaseException as exc:  # reported below
                failure.append(exc)
                first.set()

        reader = threading.Thread(target=read_stream)
        reader.start()
        assert first.wait(20), gateway.stderr()
        gateway.process.send_signal(signal.SIGTERM)  # mid-stream
        reader.join(30)
        assert not failure, failure
        assert [event["i"] for event in events] == list(range(8))
        assert gateway.process.wait(30) == 0
