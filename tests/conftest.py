"""Shared fixtures: an injected clock, development issuers, a forger of raw tokens and a
loopback listener that counts the connections it receives.

Everything here is general: a test builds what it needs from these (``make_issuer(...)`` for a
fresh issuer, ``forge`` for a hand-made token) rather than reaching into another test module.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pytest
from joserfc.jwk import Key
from joserfc.jws import JWSRegistry

from gatekeeper import decision
from gatekeeper.decision import probe_py
from gatekeeper.devserver import IssuerServer
from gatekeeper.issuer import DevIssuer

#: The instant every test starts at (2023-11-14T22:13:20Z): far from any real "now", so a test
#: that reads the wall clock by mistake fails.
EPOCH = 1_700_000_000.0


try:
    from gatekeeper import _speedups
except ImportError:  # built without a C compiler
    _speedups = None  # type: ignore[assignment]
probe_c = None if _speedups is None else _speedups.probe


class Clock:
    """A clock tests move by hand; pass it as ``clock=`` to the verifier and the issuer."""

    def __init__(self, now: float = EPOCH) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now

    def set(self, now: float) -> None:
        self.now = now


@pytest.fixture
def clock() -> Clock:
    return Clock()


MakeIssuer = Callable[..., DevIssuer]


@pytest.fixture
def make_issuer(clock: Clock) -> MakeIssuer:
    """A factory of fresh :class:`DevIssuer` objects on the test's clock.

    ``make_issuer("https://a.example", algorithms=("RS256",), audience="api")``. ES256 is the
    default because its keys are generated in microseconds (RSA takes ~70 ms).
    """

    def make(
        issuer: str = "https://issuer.example",
        *,
        algorithms: Sequence[str] = ("ES256",),
        audience: str | list[str] | None = "api",
    ) -> DevIssuer:
        return DevIssuer(issuer, audience=audience, algorithms=algorithms, clock=clock)

    return make


@pytest.fixture
def dev_issuer(make_issuer: MakeIssuer) -> DevIssuer:
    """A fresh ES256 issuer ``https://issuer.example`` minting tokens for audience ``api``."""
    return make_issuer()


@pytest.fixture
def issuer_server(clock: Clock) -> Iterator[IssuerServer]:
    """A real JWKS/discovery server on 127.0.0.1 whose issuer (ES256, ``iss`` = its URL, on the
    test clock) is ``issuer_server.issuer``; stopped after the test."""
    server = IssuerServer()
    server.issuer = DevIssuer(server.url, algorithms=("ES256",), clock=clock)
    with server:
        yield server


def b64url(data: bytes | str | Mapping[str, Any] | list[Any]) -> str:
    """Unpadded base64url of bytes, a string (UTF-8) or a JSON value (compact)."""
    if isinstance(data, str):
        raw = data.encode("utf-8")
    elif isinstance(data, bytes):
        raw = data
    else:
        raw = json.dumps(data, separators=(",", ":")).encode("utf-8")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class Forge:
    """Hand-made compact tokens: any header, any payload, any signature, any key."""

    b64url = staticmethod(b64url)

    @staticmethod
    def compact(header: Any, payload: Any, signature: bytes = b"") -> str:
        """Join already chosen parts; ``header``/``payload`` may be JSON values, bytes or text."""
        return f"{b64url(header)}.{b64url(payload)}.{b64url(signature)}"

    @staticmethod
    def sign(header: Mapping[str, Any], payload: Any, key: Key | bytes, alg: str | None = None) -> str:
        """Sign with ``alg`` (default ``header["alg"]``) and ``key``: a joserfc key, or raw bytes
        used as an HMAC secret (the key-confusion attack)."""
        alg = alg or str(header["alg"])
        signing_input = f"{b64url(dict(header))}.{b64url(payload)}".encode("ascii")
        if isinstance(key, bytes):
            # Plain HMAC: joserfc (rightly) refuses to import a public key as an oct key.
            digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
            signature = hmac.new(key, signing_input, digest).digest()
        else:
            signature = JWSRegistry.algorithms[alg].sign(signing_input, key)
        return f"{signing_input.decode('ascii')}.{b64url(signature)}"


@pytest.fixture
def forge() -> type[Forge]:
    return Forge


class Listener:
    """A TCP listener on 127.0.0.1 that accepts connections, counts them and closes them."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.05)
        host, port = self._sock.getsockname()
        self.url = f"http://{host}:{port}"
        self._count = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def connections(self) -> int:
        with self._lock:
            return self._count

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._count += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    """A loopback listener counting connections (``listener.url``, ``listener.connections``)."""
    server = Listener()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


Rejected = Callable[..., Any]


@pytest.fixture
def rejected() -> Rejected:
    """``rejected(verifier, token, kind="invalid_token", reason=None)``: verify must raise an
    :class:`AuthError` of exactly that kind (whose description contains ``reason``), and the
    error must not carry the token or a chained exception. Returns the error."""
    from gatekeeper.errors import AuthError

    def check(verifier: Any, token: Any, kind: str = "invalid_token", reason: str | None = None) -> AuthError:
        with pytest.raises(AuthError) as info:
            verifier.verify(token)
        error = info.value
        assert error.kind == kind, f"expected {kind}, got {error.kind}: {error.description}"
        if reason is not None:
            assert reason in error.description, error.description
        assert_client_safe(error, token)
        return error

    return check


def assert_client_safe(error: Any, token: Any) -> None:
    """An AuthError shows a client nothing of the token and chains no exception."""
    text = f"{error} {error!r} {error.description}"
    if isinstance(token, str) and len(token) >= 8:
        assert token not in text
        for part in token.split("."):
            assert len(part) < 8 or part not in text
    assert len(error.description) <= 200
    assert error.__cause__ is None
    assert error.__suppress_context__ or error.__context__ is None


@pytest.fixture(
    params=[
        pytest.param(probe_py, id="python"),
        pytest.param(
            probe_c,
            id="c",
            marks=pytest.mark.skipif(probe_c is None, reason="gatekeeper._speedups not built"),
        ),
    ],
)
def fast_path_implementation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the test with the decision's fast path in C (gatekeeper._speedups, where built) and
    with its Python twin: a Gate binds the function when it is built, so a module using this
    (``pytestmark = pytest.mark.usefixtures("fast_path_implementation")``) gets both."""
    monkeypatch.setattr(decision, "fast_probe", request.param)
