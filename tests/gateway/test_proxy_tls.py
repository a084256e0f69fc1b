"""The reverse proxy to https/wss upstreams with their own TLS settings: an internal CA's
certificate trusted through ``ca_file``, a client certificate for upstreams that require one
(mutual TLS), for HTTP and websockets alike; and the settings as the TOML file gives them."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tlscerts import Pki, make_pki
from upstream import ServerThread, Upstream
from websockets.asyncio.client import connect

from gatekeeper.bearer import BearerSource
from gatekeeper.decision import Gate
from gatekeeper.devserver import IssuerServer
from gatekeeper.gateway.config import load_config
from gatekeeper.gateway.identity import IdentityHeaders
from gatekeeper.gateway.proxy import ProxySettings, ReverseProxy, UpstreamRoute, UpstreamSettings
from gatekeeper.gateway.schema import ConfigError
from gatekeeper.gateway.upstream_tls import UpstreamTLS
from gatekeeper.issuer import DevIssuer
from gatekeeper.responses import get_profile
from gatekeeper.rules import Rule, RuleSet
from gatekeeper.verifier import Verifier


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def issuer() -> Iterator[IssuerServer]:
    server = IssuerServer()
    server.issuer = DevIssuer(server.url, algorithms=("ES256",))
    with server:
        yield server


@pytest.fixture(scope="module")
def mutual_upstream(pki: Pki) -> Iterator[Upstream]:
    """An https upstream with the CA's certificate that requires a client certificate from it."""
    with Upstream(
        ssl_certfile=str(pki.server_cert),
        ssl_keyfile=str(pki.server_key),
        ssl_ca_certs=str(pki.ca_file),
        ssl_cert_reqs=ssl.CERT_REQUIRED,
    ) as upstream:
        yield upstream


def start_proxy(issuer: IssuerServer, url: str, tls: UpstreamTLS | None) -> ServerThread:
    verifier = Verifier(issuer.url, jwks_url=issuer.jwks_url, audience="api")
    gate = Gate(verifier, rules=RuleSet((Rule("/open/**", access="exempt"),)), source=BearerSource.of(None))
    settings = ProxySettings(UpstreamSettings(url, tls=tls))
    app = ReverseProxy(gate, get_profile("rfc6750"), settings, IdentityHeaders(), lambda record: None)
    return ServerThread(app).start()


def through(issuer: IssuerServer, upstream: Upstream, tls: UpstreamTLS | None) -> httpx.Response:
    server = start_proxy(issuer, f"https://127.0.0.1:{upstream.port}", tls)
    try:
        return httpx.get(f"http://127.0.0.1:{server.port}/open/echo", timeout=10)
    finally:
        server.stop()


def test_an_upstream_with_an_internal_ca_is_trusted_through_ca_file(issuer: IssuerServer, pki: Pki) -> None:
    with Upstream(ssl_certfile=str(pki.server_cert), ssl_keyfile=str(pki.server_key)) as upstream:
        assert through(issuer, upstream, None).status_code == 502  # not in the system's store
        assert upstream.seen == []
        assert through(issuer, upstream, UpstreamTLS(ca_file=str(pki.other_ca_file))).status_code == 502
        response = through(issuer, upstream, UpstreamTLS(ca_file=str(pki.ca_file)))
        assert response.status_code == 200
        assert [seen["path"] for seen in upstream.seen] == ["/open/echo"]


def test_mutual_tls_presents_the_client_certificate(
    issuer: IssuerServer, pki: Pki, mutual_upstream: Upstream
) -> None:
    before = len(mutual_upstream.seen)
    refused = through(issuer, mutual_upstream, UpstreamTLS(ca_file=str(pki.ca_file)))
    assert refused.status_code == 502  # the upstream wants a certificate we do not have
    assert refused.json()["error"] == "upstream_unreachable"
    assert len(mutual_upstream.seen) == before
    mutual = UpstreamTLS(str(pki.ca_file), str(pki.client_cert), str(pki.client_key))
    assert through(issuer, mutual_upstream, mutual).status_code == 200
    assert len(mutual_upstream.seen) == before + 1


def test_websockets_to_a_wss_upstream_use_the_same_tls(
    issuer: IssuerServer, pki: Pki, mutual_upstream: Upstream
) -> None:
    mutual = UpstreamTLS(str(pki.ca_file), str(pki.client_cert), str(pki.client_key))
    server = start_proxy(issuer, f"https://127.0.0.1:{mutual_upstream.port}", mutual)
    try:

        async def scenario() -> tuple[str, str | bytes]:
            async with connect(f"ws://127.0.0.1:{server.port}/open/chat") as ws:
                handshake = json.loads(await ws.recv())
                await ws.send("over mutual TLS")
                return handshake["path"], await ws.recv()

        path, echoed = asyncio.run(asyncio.wait_for(scenario(), 15))
        assert (path, echoed) == ("/open/chat", "over mutual TLS")
    finally:
        server.stop()


def test_two_upstreams_on_one_origin_must_agree_on_tls(pki: Pki) -> None:
    url = "https://127.0.0.1:8443"
    internal = UpstreamTLS(ca_file=str(pki.ca_file))
    ProxySettings(
        UpstreamSettings(url, tls=internal), (UpstreamRoute("/a/**", UpstreamSettings(url, tls=internal)),)
    )
    with pytest.raises(ValueError, match="different tls settings"):
        ProxySettings(UpstreamSettings(url, tls=internal), (UpstreamRoute("/a/**", UpstreamSettings(url)),))


ISSUER = '[[issuers]]\nissuer = "https://issuer.example"\naudience = "api"\njwks_url = "https://issuer.example/jwks"\n'


def load(tmp_path: Path, upstream: str, extra: str = "") -> object:
    path = tmp_path / "gatekeeper.toml"
    path.write_text(ISSUER + f'[upstreams.api]\n{upstream}\n{extra}[proxy]\nupstream = "api"\n')
    return load_config(path)


def mistake(tmp_path: Path, upstream: str, extra: str = "") -> str:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, upstream, extra)
    return str(caught.value)


def test_the_toml_names_tls_files_relative_to_itself(tmp_path: Path, pki: Pki) -> None:
    for name in ("ca.pem", "client.pem", "client-key.pem"):
        (tmp_path / name).write_bytes((pki.ca_file.parent / name).read_bytes())
    config = load(
        tmp_path,
        'url = "https://api.internal"\nca_file = "ca.pem"\nclient_cert = "client.pem"\n'
        'client_key = "client-key.pem"',
    )
    upstream = config.proxy.upstream  # type: ignore[attr-defined]
    assert upstream.tls == UpstreamTLS(
        str(tmp_path / "ca.pem"), str(tmp_path / "client.pem"), str(tmp_path / "client-key.pem")
    )
    assert load(tmp_path, 'url = "https://api.internal"').proxy.upstream.tls is None  # type: ignore[attr-defined]


def test_tls_mistakes_name_the_key(tmp_path: Path, pki: Pki) -> None:
    assert "upstreams.api.ca_file: " in mistake(
        tmp_path, 'url = "https://api.internal"\nca_file = "nowhere.pem"'
    )
    assert "no such file" in mistake(tmp_path, 'url = "https://api.internal"\nca_file = "nowhere.pem"')
    http = mistake(tmp_path, f'url = "http://api.internal"\nca_file = "{pki.ca_file}"')
    assert "upstreams.api.ca_file: TLS files are for an https:// upstream" in http
    lonely = mistake(tmp_path, f'url = "https://api.internal"\nclient_cert = "{pki.client_cert}"')
    assert "upstreams.api.client_key: client_cert and client_key are given together" in lonely
    mismatched = mistake(
        tmp_path,
        f'url = "https://api.internal"\nclient_cert = "{pki.client_cert}"\nclient_key = "{pki.server_key}"',
    )
    assert "upstreams.api.client_key: the certificate and key cannot be used together" in mismatched
