"""Test support for apps behind gatekeeper: a loopback development issuer and what tests need of it.

The pytest plugin (:mod:`gatekeeper_pytest`, registered through the ``pytest11`` entry point) wraps
:class:`TestIssuer` in fixtures: ``gatekeeper_issuer`` (one per session, started on first use),
``mint_token``, ``gatekeeper_verifier``, ``gatekeeper_env`` and ``gatekeeper_keys``. The class can
also be used directly, without pytest.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from .devserver import IssuerServer
from .issuer import DevIssuer
from .redact import fingerprint
from .verifier import Verifier

__all__ = ["KeyControl", "TestIssuer"]


class KeyControl:
    """Rotate the issuer's signing keys or make its JWKS endpoint misbehave, to test an app's
    behaviour under key rotation and identity-provider outages. :meth:`restore` undoes the faults."""

    def __init__(self, server: IssuerServer) -> None:
        self._server = server

    def rotate(self, *, keep_old: bool = False) -> str:
        """Publish a new signing key (new tokens are signed with it) and, unless ``keep_old``,
        unpublish the others: tokens they signed then fail verification. Returns the new kid."""
        issuer = self._server.issuer
        old = [key["kid"] for key in issuer.jwks()["keys"]]
        kid = issuer.add_key("ES256")
        if not keep_old:
            for old_kid in old:
                issuer.remove_key(old_kid)
        return kid

    def fail(self, status: int = 503) -> None:
        """Answer every JWKS request with ``status`` (and no keys) until :meth:`restore`."""
        self._server.status = status
        self._server.body = b'{"error": "unavailable"}'

    def slow(self, seconds: float) -> None:
        """Delay every JWKS answer by ``seconds`` until :meth:`restore`."""
        self._server.delay = seconds

    def drop_next(self) -> None:
        """Close the next JWKS connection without answering."""
        self._server.drop = True

    def hang(self) -> None:
        """Take every JWKS request and never answer it (the connection stays open) until
        :meth:`restore`: the outage a fetch timeout exists for."""
        self._server.hang = True

    def restore(self) -> None:
        """A healthy JWKS endpoint again (rotated keys stay rotated); held requests are answered."""
        server = self._server
        server.status, server.body, server.delay, server.drop = 200, None, 0.0, False
        server.headers = {}
        server.hang = False

    @property
    def jwks_requests(self) -> int:
        """How many JWKS requests the issuer has answered (or refused)."""
        return self._server.requests(self._server.jwks_url.removeprefix(self._server.url))


class TestIssuer:
    """A development issuer on 127.0.0.1 with one ES256 key and one registered client.

    ``TestIssuer(audience="plots-api")``; ``start()``/``stop()`` or ``with``. Tokens carry
    ``iss`` = :attr:`url` and ``aud`` = ``audience``; a client (:attr:`client_id`,
    :attr:`client_secret`) may get tokens from :attr:`token_url` with client credentials.
    """

    __test__ = False  # not a test class, despite its name

    def __init__(self, *, audience: str = "api", client_id: str = "test-client") -> None:
        self.server = IssuerServer(DevIssuer(audience=audience, algorithms=("ES256",)))
        self.server.issuer.issuer = self.server.url
        self.audience = audience
        self.client_id = client_id
        #: A throwaway secret for client-credentials tests (``ClientCredentialsAuth``).
        self.client_secret = secrets.token_urlsafe(24)
        self.server.add_client(client_id, self.client_secret, refresh_tokens=False)
        self.keys = KeyControl(self.server)

    @property
    def url(self) -> str:
        """The issuer URL (the ``iss`` of its tokens)."""
        return self.server.url

    @property
    def jwks_url(self) -> str:
        return self.server.jwks_url

    @property
    def token_url(self) -> str:
        return self.server.token_url

    def start(self) -> TestIssuer:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self) -> TestIssuer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def mint(
        self,
        scope: str | list[str] | None = None,
        sub: str = "test-client",
        expires_in: float = 300,
        **claims: Any,
    ) -> str:
        """A signed access token for this issuer's audience. ``claims`` add or override claims
        (``aud="other-api"``, ``tenant="t1"``); a ``None`` value removes one (``exp=None``)."""
        return self.server.issuer.mint(claims, scope=scope, subject=sub, expires_in=expires_in)

    def verifier(self, **options: Any) -> Verifier:
        """A new :class:`Verifier` trusting this issuer (``options`` go to its constructor)."""
        return Verifier(self.url, jwks_url=self.jwks_url, audience=self.audience, **options)

    def env(self) -> Mapping[str, str]:
        """The variables :meth:`Verifier.from_env` reads, pointing at this issuer."""
        return {
            "GATEKEEPER_ISSUER": self.url,
            "GATEKEEPER_AUDIENCE": self.audience,
            "GATEKEEPER_JWKS_URL": self.jwks_url,
        }

    def __repr__(self) -> str:
        return (
            f"TestIssuer({self.url}, audience={self.audience!r}, client_id={self.client_id!r}, "
            f"client_secret=fp:{fingerprint(self.client_secret)})"
        )
