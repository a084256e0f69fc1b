"""The pytest plugin of gatekeeper-jwt (entry point ``pytest11``): fixtures for testing your own app.

This module is deliberately tiny and lives outside the ``gatekeeper`` package: pytest loads every
plugin at start-up, and importing ``gatekeeper`` (and with it joserfc, httpx and Starlette) would
add a few hundred milliseconds to every test session, including those that never use a fixture.
Here only pytest and the standard library are imported; gatekeeper is imported, and the issuer
started, the first time a test asks for one of these fixtures.

Fixtures (override ``gatekeeper_audience`` in your conftest.py to change the audience):

- ``gatekeeper_issuer`` (session): a running :class:`gatekeeper.testing.TestIssuer` on 127.0.0.1;
- ``mint_token(scope=..., sub=..., expires_in=..., **claims)``: a signed access token for it;
- ``gatekeeper_verifier``: a fresh :class:`gatekeeper.Verifier` trusting it, for your app factory;
- ``gatekeeper_env``: ``GATEKEEPER_ISSUER``/``_AUDIENCE``/``_JWKS_URL`` set for ``Verifier.from_env()``;
- ``gatekeeper_keys``: ``rotate()``, ``fail(status)``, ``slow(seconds)``, ``drop_next()`` on its JWKS.

Disable it with ``-p no:gatekeeper``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from gatekeeper import Verifier
    from gatekeeper.testing import KeyControl, TestIssuer


@pytest.fixture(scope="session")
def gatekeeper_audience() -> str:
    """The ``aud`` of minted tokens and of ``gatekeeper_verifier`` (override to change it)."""
    return "api"


@pytest.fixture(scope="session")
def gatekeeper_issuer(gatekeeper_audience: str) -> Iterator[TestIssuer]:
    """A development issuer on 127.0.0.1 for the whole session, started when first needed."""
    from gatekeeper.testing import TestIssuer

    with TestIssuer(audience=gatekeeper_audience) as issuer:
        yield issuer


@pytest.fixture
def mint_token(gatekeeper_issuer: TestIssuer) -> Callable[..., str]:
    """``mint_token(scope="plots:read", sub="client-1", expires_in=300, **claims) -> str``."""
    return gatekeeper_issuer.mint


@pytest.fixture
def gatekeeper_verifier(gatekeeper_issuer: TestIssuer) -> Verifier:
    """A new Verifier trusting the session's issuer (fresh per test: no keys cached across tests)."""
    return gatekeeper_issuer.verifier()


@pytest.fixture
def gatekeeper_env(gatekeeper_issuer: TestIssuer, monkeypatch: pytest.MonkeyPatch) -> Mapping[str, str]:
    """Point ``Verifier.from_env()`` at the session's issuer for this test; returns the variables."""
    env = gatekeeper_issuer.env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def gatekeeper_keys(gatekeeper_issuer: TestIssuer) -> Iterator[KeyControl]:
    """Rotate the issuer's keys or break its JWKS endpoint; the endpoint is healthy again after."""
    keys = gatekeeper_issuer.keys
    try:
        yield keys
    finally:
        keys.restore()
