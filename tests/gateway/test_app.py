"""Assembly: which front door a request reaches, and what the doors are built with."""

from __future__ import annotations

import tomllib
from typing import Any

import httpx
import pytest

from gatekeeper.gateway.app import build_gateway
from gatekeeper.gateway.config import GatewayConfig, read_config
from gatekeeper.gateway.forward_auth import ForwardAuth
from gatekeeper.gateway.record import RequestRecord
from gatekeeper.gateway.schema import Table
from gatekeeper.issuer import DevIssuer

pytestmark = pytest.mark.anyio


class StandIn:
    """A front door that answers with its own name and records what it was built with; as the
    forward-auth door it claims the paths the real one would (its ``handles``)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.built: tuple[Any, ...] = ()

    def __call__(self, *args: Any) -> Any:
        self.built = args
        real = ForwardAuth(*args) if self.name == "forward-auth" else None

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": self.name.encode()})

        app.handles = real.handles if real is not None else None  # type: ignore[attr-defined]
        return app


def _config(dev_issuer: DevIssuer, extra: str) -> GatewayConfig:
    text = (
        f"""
[[issuers]]
issuer = "{dev_issuer.issuer}"
audience = "api"
jwks = {{ keys = [] }}
"""
        + extra
    )
    data = tomllib.loads(text)
    data["issuers"][0]["jwks"] = dev_issuer.jwks()
    return read_config(Table(data, file="test.toml"))


UPSTREAM = (
    '[upstreams.app]\nurl = "http://127.0.0.1:9"\n[proxy]\nupstream = "app"\n[forward_auth]\npath = "/auth"\n'
)


async def test_forward_auth_at_its_path_and_below_the_proxy_for_everything_else(
    dev_issuer: DevIssuer,
) -> None:
    forward, proxy = StandIn("forward-auth"), StandIn("proxy")
    config = _config(dev_issuer, UPSTREAM)
    gateway = build_gateway(config, forward_auth=forward, proxy=proxy, access_log=None)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway), base_url="http://gk") as client:
        for path, door in [
            ("/auth", "forward-auth"),
            ("/auth/render", "forward-auth"),  # nginx's render endpoint
            ("/auth/api/items", "proxy"),  # below the endpoint: only Envoy's prefix form owns it
            ("/authz", "proxy"),  # a longer name is not the endpoint
            ("/auth-other", "proxy"),
            ("/api/auth", "proxy"),
            ("/", "proxy"),
            ("/metrics", "proxy"),  # ops paths are just paths here
            ("/healthz", "proxy"),
        ]:
            assert (await client.get(path)).text == door, path
    # Both doors got the one gate, the profile, their settings, the identity and the reporter.
    gate, profile, settings, identity, reporter = forward.built
    assert proxy.built[0] is gate
    assert gate.verifier is gateway.verifier
    assert profile is config.profile
    assert settings is config.forward_auth
    assert proxy.built[2] is config.proxy
    assert identity is config.identity
    assert reporter == gateway.report


async def test_envoy_owns_every_path_below_its_prefix(dev_issuer: DevIssuer) -> None:
    forward, proxy = StandIn("forward-auth"), StandIn("proxy")
    config = _config(dev_issuer, UPSTREAM + 'proxy = "envoy"\n')
    gateway = build_gateway(config, forward_auth=forward, proxy=proxy, access_log=None)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway), base_url="http://gk") as client:
        assert (await client.get("/auth/api/items")).text == "forward-auth"
        assert (await client.get("/auth")).text == "forward-auth"
        assert (await client.get("/authz")).text == "proxy"


async def test_without_an_upstream_only_forward_auth_answers(dev_issuer: DevIssuer) -> None:
    gateway = build_gateway(_config(dev_issuer, ""), forward_auth=StandIn("forward-auth"), access_log=None)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gateway), base_url="http://gk") as client:
        assert (await client.get("/auth")).text == "forward-auth"
        missing = await client.get("/anything")
        assert missing.status_code == 404
        assert missing.json() == {"error": "not_found"}


def test_the_reporter_feeds_metrics_and_log_and_never_raises(dev_issuer: DevIssuer) -> None:
    lines: list[RequestRecord] = []

    class Log:
        def __call__(self, record: RequestRecord) -> None:
            lines.append(record)
            raise RuntimeError("disk on fire")

        def close(self) -> None:
            pass

    gateway = build_gateway(_config(dev_issuer, ""), access_log=Log())  # type: ignore[arg-type]
    record = RequestRecord("proxy", "GET", "/x", 200, "allow", 0.0, 0.0, rule="/**")
    gateway.report(record)  # the log's exception is contained
    assert lines == [record]
    assert gateway.metrics is not None
    assert b'gatekeeper_decisions_total{door="proxy"' in gateway.metrics.render()[0]
