"""A real HTTP server for a :class:`~gatekeeper.issuer.DevIssuer`, for tests, the demo and benchmarks.

It listens on a loopback port in a background thread and serves the JWKS, discovery documents, an
OAuth2 token endpoint (client credentials, password and refresh-token grants, see
:mod:`gatekeeper.devtokens`) and an RFC 7009 revocation endpoint. The JWKS endpoint has knobs
(status, delay, body, headers, drop, hang) that tests and benchmarks flip at any time to simulate a
misbehaving identity provider; the token endpoint has a queue of one-shot faults (:class:`TokenFault`).
"""

from __future__ import annotations

import json
import sys
import threading
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

from gatekeeper.devtokens import ALL_GRANTS, DevClient, ErrorShape, OAuthError, TokenService
from gatekeeper.issuer import DevIssuer

__all__ = ["IssuerServer", "TokenFault"]

JWKS_PATH = "/.well-known/jwks.json"
TOKEN_PATH = "/oauth/token"
REVOCATION_PATH = "/oauth/revoke"
_DISCOVERY_PATHS = ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server")
_MAX_FORM_BYTES = 64 * 1024


@dataclass(frozen=True)
class TokenFault:
    """One token request answered badly: after ``delay`` seconds, ``status`` with ``body`` (default:
    a JSON error), or the connection closed without an answer (``drop``)."""

    status: int = 500
    body: bytes | None = None
    delay: float = 0.0
    drop: bool = False


class IssuerServer:
    """Serve a :class:`DevIssuer` over HTTP on an IPv4 ``host:port`` (port 0 picks a free one).

    The socket is bound in the constructor, so ``url`` is known before ``start()``. Without an explicit
    ``issuer`` a ``DevIssuer(issuer=self.url)`` is created so that minted ``iss`` values match the URL.
    """

    #: Lifetime in seconds of tokens issued by the token endpoint.
    token_lifetime: int = 300

    def __init__(
        self,
        issuer: DevIssuer | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        error_shape: ErrorShape = "rfc6749",
        token_path: str = TOKEN_PATH,
    ) -> None:
        #: Clients, users, refresh tokens and the error shape of the token endpoint.
        self.tokens = TokenService(error_shape=error_shape)
        self._httpd = _Server((host, port), _Handler)
        self._httpd.owner = self
        bound_host, bound_port = self._httpd.server_address[:2]
        #: Base URL, e.g. ``http://127.0.0.1:54321``.
        self.url = f"http://{bound_host!s}:{bound_port}"
        self.jwks_url = self.url + JWKS_PATH
        #: The token endpoint's path (``/auth`` to look like Placepoint's per-API endpoints).
        self.token_path = token_path
        self.token_url = self.url + token_path
        self.revocation_url = self.url + REVOCATION_PATH
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
        self._hang = False
        self._releases = 0  # bumped whenever hang is cleared: the held requests' wake-up call
        self._held = 0

        #: Seconds every token request waits before it is answered (to make concurrency visible).
        self.token_delay: float = 0.0
        #: Token endpoint faults, consumed one per token request (see :meth:`fail_token_requests`).
        self.token_faults: deque[TokenFault] = deque()

        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # held requests wait on it (see _hold)
        self._counts: Counter[str] = Counter()
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
        """Stop serving and close the socket; wakes up delayed and held requests, which go away
        unanswered (idempotent)."""
        self._stopping.set()
        with self._wake:
            self._wake.notify_all()
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

    def add_client(
        self,
        client_id: str,
        secret: str,
        *,
        scopes: Sequence[str] = (),
        expires_in: int | None = None,
        audiences: Sequence[str] = (),
        grants: Sequence[str] | None = None,
        refresh_tokens: bool = False,
    ) -> None:
        """Register a confidential client for the token endpoint, allowed to request ``scopes``.

        ``expires_in``: its tokens' lifetime (default :attr:`token_lifetime`); ``audiences``: the
        ``audience``/``resource`` values it may ask for (empty: any); ``grants``: the grant types it
        may use (default all); ``refresh_tokens``: also issue refresh tokens with client credentials.
        """
        client = DevClient(
            secret,
            frozenset(scopes),
            expires_in,
            frozenset(audiences),
            frozenset(grants) if grants is not None else ALL_GRANTS,
            refresh_tokens,
        )
        self.tokens.add_client(client_id, client)

    def add_user(self, username: str, password: str, *, scopes: Sequence[str] = ()) -> None:
        """Register a user for the password grant (which is enabled once a user exists)."""
        self.tokens.add_user(username, password, scopes)

    def revoke(self, token: str) -> None:
        """Revoke a refresh token (and its family) or an access token, as an administrator would."""
        self.tokens.revoke_token(token)

    @property
    def hang(self) -> bool:
        """While true, the JWKS endpoint reads each request and holds its connection without a byte
        of answer (a stuck identity provider, a firewall swallowing packets). Clearing it answers
        the requests held so far; ``stop()`` abandons them (closes their connections)."""
        return self._hang

    @hang.setter
    def hang(self, value: bool) -> None:
        with self._wake:
            if self._hang and not value:
                # A generation, not the flag, wakes them: hang cleared and set again at once still
                # releases every request held before.
                self._releases += 1
                self._wake.notify_all()
            self._hang = value

    def held(self) -> int:
        """Return how many JWKS requests :attr:`hang` has held so far (released or not)."""
        with self._lock:
            return self._held

    def fail_token_requests(self, *faults: TokenFault) -> None:
        """Queue faults: the next ``len(faults)`` token requests get them, in order."""
        self.token_faults.extend(faults)

    def requests(self, path: str = JWKS_PATH) -> int:
        """Return how many requests (of any method and outcome) were received for ``path``."""
        with self._lock:
            return self._counts[path]

    def reset_counts(self) -> None:
        """Forget all request counts (and the count of held requests)."""
        with self._lock:
            self._counts.clear()
            self._held = 0

    # -- called from handler threads -------------------------------------------------------------

    def _count(self, path: str) -> None:
        with self._lock:
            self._counts[path] += 1

    def _take_drop(self) -> bool:
        # Read-and-clear under the lock so that exactly one concurrent request is dropped.
        with self._lock:
            drop, self.drop = self.drop, False
            return drop

    def _hold(self) -> bool:
        """Hold a JWKS request while :attr:`hang` is set; True when ``stop()`` ended the wait."""
        with self._wake:
            if not self._hang:
                return False
            self._held += 1
            release = self._releases
            self._wake.wait_for(lambda: self._releases != release or self._stopping.is_set())
            return self._stopping.is_set()

    def _take_token_fault(self) -> TokenFault | None:
        with self._lock:
            return self.token_faults.popleft() if self.token_faults else None


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck or delayed request must never keep the process alive
    request_queue_size = 128  # tests and benchmarks open many connections at once
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
            doc["grant_types_supported"] = ["client_credentials", "refresh_token", "password"]
            doc["revocation_endpoint"] = owner.revocation_url
            doc["revocation_endpoint_auth_methods_supported"] = ["client_secret_basic", "client_secret_post"]
            self._json(200, doc)
        else:
            self._not_found(path)

    def do_POST(self) -> None:
        path = self._path()
        owner = self.owner
        if path not in (owner.token_path, REVOCATION_PATH):
            self._not_found(path)
            return
        extra = {"Cache-Control": "no-store", "Pragma": "no-cache"}  # RFC 6749 section 5.1
        if path == owner.token_path:
            if owner.token_delay > 0 and owner._stopping.wait(owner.token_delay):
                return
            fault = owner._take_token_fault()
            if fault is not None:
                self._fault(fault)
                return
        try:
            form = self._read_form()
            authorization = self.headers.get("Authorization")
            if path == REVOCATION_PATH:
                owner.tokens.revoke(form, authorization)
                result: Any = {}
            else:
                result = owner.tokens.token(owner.issuer, owner.token_lifetime, form, authorization)
        except OAuthError as e:
            if e.status == 401:
                extra["WWW-Authenticate"] = 'Basic realm="gatekeeper-dev"'
            status, body = e.render(owner.tokens.error_shape)
            self._json(status, body, extra)
            return
        self._json(200, result, extra)

    def _fault(self, fault: TokenFault) -> None:
        owner = self.owner
        if fault.delay > 0 and owner._stopping.wait(fault.delay):
            return
        if fault.drop:
            self.close_connection = True
            return
        body = fault.body if fault.body is not None else json.dumps({"error": "server_error"}).encode()
        self._send(fault.status, body, {})

    def _path(self) -> str:
        path = urlsplit(self.path).path
        self.owner._count(path)
        return path

    def _not_found(self, path: str) -> None:
        known = path in (JWKS_PATH, self.owner.token_path, REVOCATION_PATH, *_DISCOVERY_PATHS)
        status = 405 if known else 404
        self._json(status, {"error": "method_not_allowed" if known else "not_found"})

    def _jwks(self) -> None:
        owner = self.owner
        if owner._hold():
            return  # stop() was called while the request was held: go away without answering
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
            raise OAuthError(400, "invalid_request", "expected application/x-www-form-urlencoded")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= _MAX_FORM_BYTES:
            raise OAuthError(400, "invalid_request", "missing, invalid or too large Content-Length")
        raw = self.rfile.read(length).decode("utf-8", errors="replace")
        parsed = parse_qs(raw, keep_blank_values=True)
        if any(len(values) > 1 for values in parsed.values()):
            raise OAuthError(400, "invalid_request", "repeated parameter")  # RFC 6749 section 3.2
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
