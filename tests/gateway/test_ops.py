"""The ops app: health, readiness with per-issuer status, metrics, and its extension points."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
import pytest

from gatekeeper.gateway.metrics import GatewayMetrics
from gatekeeper.gateway.ops import ops_app
from gatekeeper.issuer import DevIssuer
from gatekeeper.policy import Issuer
from gatekeeper.verifier import Verifier

pytestmark = pytest.mark.anyio


def _client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ops")


def _verifier(dev_issuer: DevIssuer, listener_url: str) -> Verifier:
    jwks = dev_issuer.jwks()
    jwks["keys"].append({"kty": "XYZ", "kid": "mystery"})
    static = Issuer(dev_issuer.issuer, audience="api", jwks=jwks)
    remote = Issuer("https://down.example", audience="api", jwks_url=listener_url + "/jwks")
    return Verifier(issuers=[static, remote])


async def test_readyz_is_503_with_per_issuer_status_until_every_issuer_has_keys(
    dev_issuer: DevIssuer, listener: Any
) -> None:
    verifier = _verifier(dev_issuer, listener.url)
    async with _client(ops_app(verifier, None)) as client:
        await verifier.prefetch()  # the remote one fails: the listener closes every connection
        response = await client.get("/readyz")
        assert response.status_code == 503
        body = response.json()
        assert body["ready"] is False
        static, remote = body["issuers"]
        assert static["usable"] is True
        assert static["kids"] == [dev_issuer.jwks()["keys"][0]["kid"]]
        assert static["skipped"][0]["kid"] == "mystery"
        assert static["skipped"][0]["reason"]
        assert remote["usable"] is False
        assert remote["kids"] == []
        assert remote["last_error"]
        assert (await client.get("/healthz")).status_code == 200
    await verifier.aclose()


async def test_readyz_is_200_when_every_issuer_is_usable_and_checks_can_veto(dev_issuer: DevIssuer) -> None:
    verifier = Verifier(issuers=[Issuer(dev_issuer.issuer, audience="api", jwks=dev_issuer.jwks())])
    store: dict[str, Any] = {"ready": True, "mirror_age": 0.1}

    def revocations() -> Mapping[str, Any]:
        return store

    async with _client(ops_app(verifier, None, checks={"revocations": revocations})) as client:
        ok = await client.get("/readyz")
        assert ok.status_code == 200
        assert ok.json()["revocations"] == {"ready": True, "mirror_age": 0.1}
        store["ready"] = False
        vetoed = await client.get("/readyz")
        assert vetoed.status_code == 503
        assert vetoed.json()["ready"] is False


async def test_metrics_endpoint_renders_and_mirrors_first(dev_issuer: DevIssuer) -> None:
    verifier = Verifier(issuers=[Issuer(dev_issuer.issuer, audience="api", jwks=dev_issuer.jwks())])
    metrics = GatewayMetrics()
    calls: list[int] = []
    async with _client(ops_app(verifier, metrics, before_metrics=lambda: calls.append(1))) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "# TYPE gatekeeper_decisions_total counter" in response.text
    assert calls == [1]


async def test_metrics_disabled_is_404(dev_issuer: DevIssuer) -> None:
    verifier = Verifier(issuers=[Issuer(dev_issuer.issuer, audience="api", jwks=dev_issuer.jwks())])
    async with _client(ops_app(verifier, None)) as client:
        assert (await client.get("/metrics")).status_code == 404
