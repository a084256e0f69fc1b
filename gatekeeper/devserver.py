"""A real HTTP server for a :class:`~gatekeeper.issuer.DevIssuer`, for tests, the demo and benchmarks.

It listens on a loopback port in a background thread and serves the JWKS, discovery documents and an
OAuth2 client-credentials token endpoint. The JWKS endpoint has knobs (status, delay, body, headers,
drop) that tests flip at any time to simulate a misbehaving identity provider.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import sys
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, cast
from urllib.parse import parse_qs, unquote_plus, urlsplit

from gatekeeper.issuer import DevIssuer

__all__ = ["IssuerServer"]

JWKS_PATH = "/.well-known/jwks.json"
TOKEN_PATH = "/oauth/token"
_DISCOVERY_PATHS = ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server")
_MAX_FORM_BYTES = 64 * 1024
_UNKNOWN_CLIENT_SECRET = "\0no client\0"  # contains NUL, so no form or Basic secret can match it


@dataclass(frozen=True)
class _Client:
    secret: str
    scopes: frozenset[str]


class _OAuthError(Exception):
    """An RFC 6749 section 5.2 error response."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status, self.error, self.description = status, error, description


class IssuerServer:
    """Serve a :class:`DevIssuer` over HTTP on an IPv4 ``host:port`` (port 0 picks a free one).

    The socket is bound in the constructor, so ``url`` is known before ``start()``. Without an explicit
    ``issuer`` a ``DevIssuer(issuer=self.url)`` is created so that minted ``iss`` values match the URL.
    """

    #: Lifetime in seconds of tokens issued by the token endpoint.
    token_lifetime: int = 300

    def __init__(self, issuer: DevIssuer | None = None, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._httpd = _Server((host, port), _Handler)
        self._httpd.owner = self
        bound_host, bound_port = self._httpd.server_address[:2]
        #: Base URL, e.g. ``http://127.0.0.1:54321``.
        self.url = f"http://{bound_host!s}:{bound_port}"
        self.jwks_url = self.url + JWKS_PATH
        self.token_url = self.url + TOKEN_PATH
        self.issuer = issuer if issuer is not None else DevIssuer(issuer=self.url)

        # JWKS knobs. Handlers read each one once per request; plain attribute assignment is atomic.
        #: HTTP status of JWKS responses.
        self.status: int = 200
        #: Seconds to wait before answering the JWKS (cut short by ``stop()``).
        self.delay: float = 0.0
        #: Raw JWKS body to send instead of the issuer's key set.
        self.body: bytes | None = None
        #: Extra JWKS response headers; they replace default headers of the same name.
        self.headers: dict[str, str] = {}
        #: One-shot: the next JWKS request gets its connection closed without any response.
        self.drop: bool = False

        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._clients: dict[str, _Client] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> IssuerServer:
        """Start serving in a daemon thread (idempotent); returns ``self`` for chaining."""
        if self._stopping.is_set():
            raise RuntimeError("a stopped IssuerServer cannot be restarted")
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; wakes up delayed requests (idempotent)."""
        self._stopping.set()
        if self._thread is not None:
            # shutdown() waits for serve_forever() to exit, so it must only be called once it runs.
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> IssuerServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def add_client(self, client_id: str, secret: str, *, scopes: Sequence[str] = ()) -> None:
        """Register a confidential client for the token endpoint, allowed to request ``scopes``."""
        self._clients[client_id] = _Client(secret, frozenset(scopes))

    def requests(self, path: str = JWKS_PATH) -> int:
        """Return how many requests (of any method and outcome) were received for ``path``."""
        with self._lock:
            return self._counts[path]

    def reset_counts(self) -> None:
        """Forget all request counts."""
        with self._lock:
            self._counts.clear()

    # -- called from handler threads -------------------------------------------------------------

    def _count(self, path: str) -> None:
        with self._lock:
            self._counts[path] += 1

    def _take_drop(self) -> bool:
        # Read-and-clear under the lock so that exactly one concurrent request is dropped.
        with self._lock:
            drop, self.drop = self.drop, False
            return drop

    def _issue_token(self, form: dict[str, str], authorization: str | None) -> dict[str, Any]:
        """Run the client-credentials grant (RFC 6749 section 4.4); raises ``_OAuthError``."""
        client_id, secret = _client_credentials(form, authorization)
        client = self._clients.get(client_id)
        # Constant-time comparison, also done for unknown clients so both failures look alike.
        expected = client.secret if client else _UNKNOWN_CLIENT_SECRET
        if not hmac.compare_digest(secret.encode(), expected.encode()) or client is None:
            raise _OAuthError(401, "invalid_client", "client authentication failed")
        grant_type = form.get("grant_type")
        if grant_type is None:
            raise _OAuthError(400, "invalid_request", "grant_type is required")
        if grant_type != "client_credentials":
            raise _OAuthError(400, "unsupported_grant_type", "only client_credentials is supported")
        requested = set(form["scope"].split()) if "scope" in form else set(client.scopes)
        if not requested <= client.scopes:
            raise _OAuthError(400, "invalid_scope", "scope not permitted for this client")
        scope = " ".join(sorted(requested))
        token = self.issuer.mint(subject=client_id, scope=scope, expires_in=self.token_lifetime)
        return {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": self.token_lifetime,
            "scope": scope,
        }


def _client_credentials(form: dict[str, str], authorization: str | None) -> tuple[str, str]:
    """Extract client_id/secret from HTTP Basic (RFC 6749 section 2.3.1) or the form body."""
    if authorization is None:
        if "client_id" not in form or "client_secret" not in form:
            raise _OAuthError(401, "invalid_client", "client credentials are missing")
        return form["client_id"], form["client_secret"]
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic" or "client_secret" in form:
        raise _OAuthError(401, "invalid_client", "use exactly one client authentication method")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise _OAuthError(401, "invalid_client", "malformed Basic credentials") from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise _OAuthError(401, "invalid_client", "malformed Basic credentials")
    # RFC 6749 has both halves form-urlencoded before they are joined and base64-encoded.
    return unquote_plus(client_id), unquote_plus(secret)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck or delayed request must never keep the process alive
    owner: IssuerServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (timeout, dropped connection) is routine in tests, not an error.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    timeout = 30  # a client that connects and never sends must not pin a thread forever

    @property
    def owner(self) -> IssuerServer:
        return cast(_Server, self.server).owner

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: request lines and errors may carry tokens or client secrets."""

    def do_GET(self) -> None:
        path = self._path()
        if path == JWKS_PATH:
            self._jwks()
        elif path in _DISCOVERY_PATHS:
            owner = self.owner
            doc = owner.issuer.discovery(owner.jwks_url, token_endpoint=owner.token_url)
            self._json(200, doc)
        else:
            self._not_found(path)

    def do_POST(self) -> None:
        path = self._path()
        if path != TOKEN_PATH:
            self._not_found(path)
            return
        extra = {"Cache-Control": "no-store", "Pragma": "no-cache"}  # RFC 6749 section 5.1
        try:
            form = self._read_form()
            result = self.owner._issue_token(form, self.headers.get("Authorization"))
        except _OAuthError as e:
            if e.status == 401:
                extra["WWW-Authenticate"] = 'Basic realm="gatekeeper-dev"'
            self._json(e.status, {"error": e.error, "error_description": e.description}, extra)
            return
        self._json(200, result, extra)

    def _path(self) -> str:
        path = urlsplit(self.path).path
        self.owner._count(path)
        return path

    def _not_found(self, path: str) -> None:
        known = path in (JWKS_PATH, TOKEN_PATH, *_DISCOVERY_PATHS)
        status = 405 if known else 404
        self._json(status, {"error": "method_not_allowed" if known else "not_found"})

    def _jwks(self) -> None:
        owner = self.owner
        if owner.delay > 0 and owner._stopping.wait(owner.delay):
            return  # stop() was called while we slept: go away without answering
        if owner._take_drop():
            self.close_connection = True
            return
        body = owner.body if owner.body is not None else json.dumps(owner.issuer.jwks()).encode()
        self._send(owner.status, body, dict(owner.headers))

    def _read_form(self) -> dict[str, str]:
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            raise _OAuthError(400, "invalid_request", "expected application/x-www-form-urlencoded")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= _MAX_FORM_BYTES:
            raise _OAuthError(400, "invalid_request", "missing, invalid or too large Content-Length")
        raw = self.rfile.read(length).decode("utf-8", errors="replace")
        parsed = parse_qs(raw, keep_blank_values=True)
        if any(len(values) > 1 for values in parsed.values()):
            raise _OAuthError(400, "invalid_request", "repeated parameter")  # RFC 6749 section 3.2
        return {name: values[0] for name, values in parsed.items()}

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers or {})

    def _send(self, status: int, body: bytes, extra: dict[str, str]) -> None:
        if status in (204, 304):
            body = b""  # these statuses must not carry a body (RFC 9110 sections 15.3.5, 15.4.5)
        headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
        # Extra headers win, matched case-insensitively, so tests can override even Content-Type.
        overridden = {name.lower() for name in extra}
        headers = {k: v for k, v in headers.items() if k.lower() not in overridden} | extra
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
