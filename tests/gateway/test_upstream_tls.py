"""TLS settings for upstreams (gatekeeper.gateway.upstream_tls): trust an internal CA instead of
the system store, present a client certificate, and refuse unusable files when loaded."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from tlscerts import Pki, make_pki

from gatekeeper.gateway.upstream_tls import TLSFileError, UpstreamTLS


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def handshake(pki: Pki, client: ssl.SSLContext, *, require_client_cert: bool = False) -> str | None:
    """Connect to a loopback TLS server with the upstream's certificate: who it saw (None: the
    server dropped the connection, as it does under TLS 1.3 after refusing a client)."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(pki.server_cert, pki.server_key)
    if require_client_cert:
        server_context.verify_mode = ssl.CERT_REQUIRED
        server_context.load_verify_locations(pki.ca_file)

    async def run() -> str | None:
        peers: list[str] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            cert = writer.get_extra_info("peercert")
            peers.append(dict(x[0] for x in cert["subject"])["commonName"] if cert else "anonymous")
            writer.write(b"ok")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_context)
        port = server.sockets[0].getsockname()[1]
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
            try:
                answer = await reader.read()
            except (ssl.SSLError, ConnectionError):
                answer = b""
            writer.close()
        return peers[0] if answer == b"ok" else None

    return asyncio.run(run())


def test_the_default_is_the_system_trust_store_with_names_checked(pki: Pki) -> None:
    tls = UpstreamTLS()
    assert tls.default
    assert tls.context.verify_mode == ssl.CERT_REQUIRED
    assert tls.context.check_hostname
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(pki, tls.context)  # our test CA is in no system store


def test_ca_file_trusts_that_ca_instead_of_the_system_store(pki: Pki) -> None:
    tls = UpstreamTLS(ca_file=str(pki.ca_file))
    assert not tls.default
    assert handshake(pki, tls.context) == "anonymous"
    with pytest.raises(ssl.SSLCertVerificationError):  # another CA does not vouch for it
        handshake(pki, UpstreamTLS(ca_file=str(pki.other_ca_file)).context)
    assert tls.context.cert_store_stats()["x509_ca"] == 1  # the named CA, loaded


def test_client_certificate_for_mutual_tls(pki: Pki) -> None:
    mutual = UpstreamTLS(
        ca_file=str(pki.ca_file), client_cert=str(pki.client_cert), client_key=str(pki.client_key)
    )
    assert handshake(pki, mutual.context, require_client_cert=True) == "gatekeeper"
    # The upstream asks for a certificate, we have none: it refuses us.
    assert handshake(pki, UpstreamTLS(ca_file=str(pki.ca_file)).context, require_client_cert=True) is None


@pytest.mark.parametrize(
    ("files", "key", "reason"),
    [
        ({"ca_file": "missing.pem"}, "ca_file", "no such file"),
        ({"ca_file": "garbage.pem"}, "ca_file", "no PEM certificate"),
        ({"client_cert": "client.pem"}, "client_key", "given together"),
        ({"client_key": "client-key.pem"}, "client_cert", "given together"),
        (
            {"client_cert": "client.pem", "client_key": "server-key.pem"},
            "client_key",
            "cannot be used together",
        ),
        ({"client_cert": "client.pem", "client_key": "client-key-encrypted.pem"}, "client_key", "encrypted"),
        ({"client_cert": "garbage.pem", "client_key": "client-key.pem"}, "client_key", "cannot be used"),
        ({"client_cert": "client.pem", "client_key": "missing.pem"}, "client_key", "no such file"),
    ],
)
def test_unusable_files_are_refused_when_loaded(
    pki: Pki, files: dict[str, str], key: str, reason: str
) -> None:
    directory = pki.ca_file.parent
    (directory / "garbage.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"
    )
    with pytest.raises(TLSFileError, match=reason) as caught:
        UpstreamTLS(**{name: str(directory / value) for name, value in files.items()})
    assert caught.value.key == key


def test_settings_compare_by_files_not_contexts(pki: Pki, tmp_path: Path) -> None:
    assert UpstreamTLS(ca_file=str(pki.ca_file)) == UpstreamTLS(ca_file=str(pki.ca_file))
    assert UpstreamTLS(ca_file=str(pki.ca_file)) != UpstreamTLS()
    assert "context" not in repr(UpstreamTLS())
