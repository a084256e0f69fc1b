"""The development issuer's token and revocation endpoints, without the HTTP: grants, refresh-token
families, revocation and provider error shapes. :mod:`gatekeeper.devserver` serves it.

Grants: ``client_credentials`` (RFC 6749 section 4.4), ``password`` (section 4.3, PlaceOS
server-to-server; enabled once a user is added) and ``refresh_token`` (section 6) with rotation and
reuse detection: every refresh hands out a new refresh token and spends the old one; presenting a
spent one revokes the whole family (OAuth 2.0 Security BCP, RFC 9700 section 4.14.2). Revocation
follows RFC 7009. Errors come out in the configured provider's shape (:data:`ERROR_SHAPES`).

For tests and demos only: client secrets and refresh tokens live in memory, in plain text.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import secrets
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal
from urllib.parse import unquote_plus

from .issuer import DevIssuer
from .redact import fingerprint

__all__ = ["ERROR_SHAPES", "DevClient", "ErrorShape", "OAuthError", "TokenService"]

#: How token-endpoint errors look: RFC 6749 section 5.2 ``{"error": "invalid_client", ...}``,
#: Placepoint ``{"error": {"code": 401, "message": ...}}``, or Placewise (``{"error": "..."}``, and
#: HTTP 462 ``{"error": "Invalid refresh token"}`` for a refused refresh token).
ErrorShape = Literal["rfc6749", "placepoint", "placewise"]
ERROR_SHAPES: Final = ("rfc6749", "placepoint", "placewise")
ALL_GRANTS: Final = frozenset({"client_credentials", "password", "refresh_token"})
_UNKNOWN_SECRET: Final = "\0no client\0"  # contains NUL, so no form or Basic secret can match it


class OAuthError(Exception):
    """A token-endpoint error; ``refresh`` marks a refused refresh token (Placewise answers 462)."""

    def __init__(self, status: int, error: str, description: str, *, refresh: bool = False) -> None:
        super().__init__(description)
        self.status, self.error, self.description, self.refresh = status, error, description, refresh

    def render(self, shape: ErrorShape) -> tuple[int, dict[str, Any]]:
        """Status and JSON body in ``shape``."""
        if shape == "placepoint":
            return self.status, {"error": {"code": self.status, "message": self.description}}
        if shape == "placewise":
            if self.refresh:
                return 462, {"error": "Invalid refresh token"}
            return self.status, {"error": self.description}
        return self.status, {"error": self.error, "error_description": self.description}


@dataclass(frozen=True, repr=False)
class DevClient:
    """A registered client: its secret, allowed scopes and audiences, token lifetime and grants."""

    secret: str
    scopes: frozenset[str] = frozenset()
    #: Lifetime of its access tokens; ``None``: the server's ``token_lifetime``.
    expires_in: int | None = None
    #: Audiences it may ask for (``audience``/``resource`` parameter); empty: any.
    audiences: frozenset[str] = frozenset()
    grants: frozenset[str] = ALL_GRANTS
    #: Also hand out a refresh token with client credentials (RFC 6749 says SHOULD NOT; some do).
    refresh_tokens: bool = False

    def __repr__(self) -> str:
        return f"DevClient(secret=fp:{fingerprint(self.secret)}, scopes={sorted(self.scopes)})"


@dataclass(frozen=True, repr=False)
class _User:
    password: str
    scopes: frozenset[str]


@dataclass
class _Refresh:
    """A refresh token's grant. One family per original grant; ``used`` once it has been rotated."""

    client_id: str
    subject: str
    scope: str
    audience: str | None
    family: str
    used: bool = False


@dataclass
class _Family:
    revoked: bool = False
    access_jtis: set[str] = field(default_factory=set)


class TokenService:
    """Clients, users and refresh tokens of one development issuer; thread-safe."""

    def __init__(self, *, error_shape: ErrorShape = "rfc6749") -> None:
        if error_shape not in ERROR_SHAPES:
            raise ValueError(f"unknown error shape {error_shape!r}; expected one of {ERROR_SHAPES}")
        self.error_shape: ErrorShape = error_shape
        self._lock = threading.Lock()
        self._clients: dict[str, DevClient] = {}
        self._users: dict[str, _User] = {}
        self._refresh: dict[str, _Refresh] = {}
        self._families: dict[str, _Family] = {}
        self._revoked_jtis: set[str] = set()
        #: Successful token responses per grant type.
        self.grants: Counter[str] = Counter()

    def add_client(self, client_id: str, client: DevClient) -> None:
        with self._lock:
            self._clients[client_id] = client

    def add_user(self, username: str, password: str, scopes: Sequence[str] = ()) -> None:
        with self._lock:
            self._users[username] = _User(password, frozenset(scopes))

    # -- token endpoint ---------------------------------------------------------------------------

    def token(self, issuer: DevIssuer, lifetime: int, form: dict[str, str], authorization: str | None) -> Any:
        """Run a grant; returns the RFC 6749 section 5.1 response or raises :class:`OAuthError`."""
        client_id, client = self._authenticate(form, authorization)
        grant = form.get("grant_type")
        if grant is None:
            raise OAuthError(400, "invalid_request", "grant_type is required")
        if grant not in ALL_GRANTS or (grant == "password" and not self._users):
            raise OAuthError(400, "unsupported_grant_type", f"grant_type {grant[:40]!r} is not supported")
        if grant not in client.grants:
            raise OAuthError(400, "unauthorized_client", f"client may not use the {grant} grant")
        audience = self._audience(client, form)
        if grant == "refresh_token":
            body = self._refresh_grant(issuer, lifetime, client_id, client, form, audience)
        elif grant == "password":
            user = self._check_user(form)
            scope = self._scope(form, client.scopes & user.scopes if client.scopes else user.scopes)
            body = self._issue(issuer, lifetime, client_id, client, form["username"], scope, audience, True)
        else:
            scope = self._scope(form, client.scopes)
            body = self._issue(
                issuer, lifetime, client_id, client, client_id, scope, audience, client.refresh_tokens
            )
        with self._lock:
            self.grants[grant] += 1
        return body

    def _authenticate(self, form: dict[str, str], authorization: str | None) -> tuple[str, DevClient]:
        client_id, secret = _client_credentials(form, authorization)
        with self._lock:
            client = self._clients.get(client_id)
        # Constant-time comparison, also done for unknown clients so both failures look alike.
        expected = client.secret if client else _UNKNOWN_SECRET
        if not hmac.compare_digest(secret.encode(), expected.encode()) or client is None:
            raise OAuthError(401, "invalid_client", "client authentication failed")
        return client_id, client

    def _check_user(self, form: dict[str, str]) -> _User:
        username, password = form.get("username"), form.get("password")
        if username is None or password is None:
            raise OAuthError(400, "invalid_request", "username and password are required")
        with self._lock:
            user = self._users.get(username)
        expected = user.password if user else _UNKNOWN_SECRET
        if not hmac.compare_digest(password.encode(), expected.encode()) or user is None:
            raise OAuthError(400, "invalid_grant", "invalid username or password")
        return user

    @staticmethod
    def _scope(form: dict[str, str], allowed: frozenset[str]) -> str:
        requested = set(form["scope"].split()) if "scope" in form else set(allowed)
        if not requested <= allowed:
            raise OAuthError(400, "invalid_scope", "scope not permitted for this client")
        return " ".join(sorted(requested))

    @staticmethod
    def _audience(client: DevClient, form: dict[str, str]) -> str | None:
        audience = form.get("audience") or form.get("resource")
        if audience is not None and client.audiences and audience not in client.audiences:
            raise OAuthError(400, "invalid_target", "audience not permitted for this client")  # RFC 8707
        return audience

    def _issue(
        self,
        issuer: DevIssuer,
        lifetime: int,
        client_id: str,
        client: DevClient,
        subject: str,
        scope: str,
        audience: str | None,
        with_refresh: bool,
        family: str | None = None,
    ) -> dict[str, Any]:
        expires_in = client.expires_in if client.expires_in is not None else lifetime
        jti = secrets.token_urlsafe(16)
        claims: dict[str, Any] = {"client_id": client_id, "jti": jti}
        kwargs: dict[str, Any] = {} if audience is None else {"audience": audience}
        token = issuer.mint(claims, subject=subject, scope=scope, expires_in=expires_in, **kwargs)
        body: dict[str, Any] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": expires_in,
            "scope": scope,
        }
        with self._lock:
            if with_refresh:
                family = family or secrets.token_urlsafe(8)
                refresh = secrets.token_urlsafe(32)
                self._refresh[refresh] = _Refresh(client_id, subject, scope, audience, family)
                self._families.setdefault(family, _Family()).access_jtis.add(jti)
                body["refresh_token"] = refresh
        return body

    def _refresh_grant(
        self,
        issuer: DevIssuer,
        lifetime: int,
        client_id: str,
        client: DevClient,
        form: dict[str, str],
        audience: str | None,
    ) -> dict[str, Any]:
        presented = form.get("refresh_token")
        if not presented:
            raise OAuthError(400, "invalid_request", "refresh_token is required")
        with self._lock:
            record = self._refresh.get(presented)
            if record is None or record.client_id != client_id:
                raise OAuthError(400, "invalid_grant", "unknown refresh token", refresh=True)
            family = self._families[record.family]
            if family.revoked:
                raise OAuthError(400, "invalid_grant", "refresh token revoked", refresh=True)
            if record.used:
                # Reuse: either the client or a thief holds a copy. Revoke the whole family.
                family.revoked = True
                self._revoked_jtis |= family.access_jtis
                raise OAuthError(400, "invalid_grant", "refresh token reused; session revoked", refresh=True)
            record.used = True
        granted = frozenset(record.scope.split())
        scope = self._scope(form, granted) if "scope" in form else record.scope
        return self._issue(
            issuer,
            lifetime,
            client_id,
            client,
            record.subject,
            scope,
            audience if audience is not None else record.audience,
            True,
            record.family,
        )

    # -- revocation (RFC 7009) --------------------------------------------------------------------

    def revoke(self, form: dict[str, str], authorization: str | None) -> None:
        """Revoke a refresh token (its whole family) or an access token (by ``jti``).

        Unknown tokens and tokens of other clients succeed silently (RFC 7009 section 2.2).
        """
        client_id, _ = self._authenticate(form, authorization)
        token = form.get("token")
        if not token:
            raise OAuthError(400, "invalid_request", "token is required")
        self._revoke(token, client_id)

    def revoke_token(self, token: str) -> None:
        """Revoke a refresh or access token directly (a test's or demo's "admin" revocation)."""
        self._revoke(token, None)

    def _revoke(self, token: str, client_id: str | None) -> None:
        with self._lock:
            record = self._refresh.get(token)
            if record is not None:
                if client_id is None or record.client_id == client_id:
                    family = self._families[record.family]
                    family.revoked = True
                    self._revoked_jtis |= family.access_jtis
                return
        jti = _jti(token)
        if jti is not None:
            with self._lock:
                self._revoked_jtis.add(jti)

    def is_revoked(self, token: str) -> bool:
        """Whether an access token minted here has been revoked (directly or with its family)."""
        jti = _jti(token)
        with self._lock:
            return jti is not None and jti in self._revoked_jtis

    def refresh_tokens(self) -> int:
        """How many live (unused, unrevoked) refresh tokens there are."""
        with self._lock:
            return sum(
                1 for r in self._refresh.values() if not r.used and not self._families[r.family].revoked
            )


def _jti(token: str) -> str | None:
    """The ``jti`` of a JWT we minted (read without verifying: revocation needs no proof)."""

    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    jti = payload.get("jti") if isinstance(payload, dict) else None
    return jti if isinstance(jti, str) else None


def _client_credentials(form: dict[str, str], authorization: str | None) -> tuple[str, str]:
    """Extract client_id/secret from HTTP Basic (RFC 6749 section 2.3.1) or the form body."""
    if authorization is None:
        if "client_id" not in form or "client_secret" not in form:
            raise OAuthError(401, "invalid_client", "client credentials are missing")
        return form["client_id"], form["client_secret"]
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic" or "client_secret" in form:
        raise OAuthError(401, "invalid_client", "use exactly one client authentication method")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise OAuthError(401, "invalid_client", "malformed Basic credentials") from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise OAuthError(401, "invalid_client", "malformed Basic credentials")
    # RFC 6749 has both halves form-urlencoded before they are joined and base64-encoded.
    return unquote_plus(client_id), unquote_plus(secret)
