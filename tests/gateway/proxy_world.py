"""What the reverse-proxy tests share: a fixed clock, a development issuer minting with it (ES256
keys are quick to make) served on 127.0.0.1, the upstream service, a token, and a running proxy's
handle."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from upstream import ServerThread, Upstream

from gatekeeper.devserver import IssuerServer
from gatekeeper.gateway.proxy import ReverseProxy
from gatekeeper.gateway.record import RequestRecord
from gatekeeper.issuer import DevIssuer

NOW = 1_700_000_000.0


def clock() -> float:
    return NOW


@contextmanager
def fixed_issuer() -> Iterator[IssuerServer]:
    """An issuer server whose tokens are minted at :data:`NOW` (verify them with :func:`clock`)."""
    server = IssuerServer()
    server.issuer = DevIssuer(server.url, algorithms=("ES256",), clock=clock)
    with server:
        yield server


class Proxy:
    """A running ReverseProxy; ``records`` are what it reported."""

    def __init__(self, server: ServerThread, app: ReverseProxy, records: list[RequestRecord]) -> None:
        self.server = server
        self.app = app
        self.url = server.url
        self.port = server.port
        self.records = records

    def wait_records(self, n: int = 1) -> list[RequestRecord]:
        """The records, once ``n`` are there (a record is reported after the response is sent)."""
        deadline = time.monotonic() + 5
        while len(self.records) < n and time.monotonic() < deadline:
            time.sleep(0.005)
        return self.records

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10, **kwargs)

    def raw(self, request: bytes) -> bytes:
        """Send a hand-written request, return the whole response (the proxy closes after it)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(request)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


# Fixtures, taken into a test module by assignment (``issuer = proxy_world.issuer``).


@pytest.fixture(scope="module")
def issuer() -> Iterator[IssuerServer]:
    with fixed_issuer() as server:
        yield server


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream() as up:
        yield up


@pytest.fixture
def token(issuer: IssuerServer) -> str:
    """Alice's token from client app-1, scope ``read``."""
    return issuer.issuer.mint({"sub": "alice", "client_id": "app-1", "aud": "api"}, scope="read")
