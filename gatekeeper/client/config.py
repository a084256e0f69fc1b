"""How to ask one token endpoint for a token: :class:`Credentials` and the :class:`RetryPolicy`.

The client secret may come from the caller, an environment variable or a file. Environment and file
secrets are read each time a token is requested, so a rotated secret (a re-mounted Kubernetes secret,
say) is picked up without a restart. ``repr()`` shows a fingerprint of the secret, never the secret.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import quote_plus, urlsplit, urlunsplit

from ..redact import fingerprint

__all__ = ["AuthMethod", "Credentials", "Grant", "RetryPolicy", "SlotKey"]

#: RFC 6749 section 2.3.1: the secret in the form body (``client_secret_post``: Placepoint, Prisjakt,
#: Addressfinder) or in an HTTP Basic header (``client_secret_basic``).
AuthMethod = Literal["client_secret_post", "client_secret_basic"]
#: The grant that obtains a token from scratch. ``refresh_token`` means there is none: only the
#: refresh token given in :attr:`Credentials.refresh_token` (a Placewise member session, say).
Grant = Literal["client_credentials", "password", "refresh_token"]
#: What a token is cached under: (token URL, client id, scope, audience, resource).
SlotKey = tuple[str, str, str, str, str]


@dataclass(frozen=True, repr=False)
class Credentials:
    """One token endpoint and the client (and grant) that asks it for tokens.

    ``Credentials("https://v1-customer-api.placepoint.no/auth", "my-client", client_secret_env="PP_SECRET")``.
    Exactly one of ``client_secret``, ``client_secret_env`` and ``client_secret_file`` is given
    (or none, for a public client). ``scope`` is sent space-joined; ``audience`` and ``resource``
    (RFC 8707) are sent when set. ``password`` grant: ``username`` and ``password`` (PlaceOS).
    ``refresh_token``: a refresh token to start from (used before the grant, rotated as the issuer
    answers). ``extra`` adds form fields to every token request.
    """

    token_url: str
    client_id: str
    client_secret: str | None = None
    client_secret_env: str | None = None
    client_secret_file: str | os.PathLike[str] | None = None
    scope: str | Sequence[str] | None = None
    audience: str | None = None
    resource: str | None = None
    auth_method: AuthMethod = "client_secret_post"
    grant: Grant = "client_credentials"
    username: str | None = None
    password: str | None = None
    refresh_token: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        parts = urlsplit(self.token_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("token_url must be an absolute http(s) URL")
        if parts.username or parts.password:
            raise ValueError("token_url must not carry credentials; use client_id and a client secret")
        sources = [s for s in (self.client_secret, self.client_secret_env, self.client_secret_file) if s]
        if len(sources) > 1:
            raise ValueError("give at most one of client_secret, client_secret_env, client_secret_file")
        if self.auth_method not in ("client_secret_post", "client_secret_basic"):
            raise ValueError(f"unknown auth_method {self.auth_method!r}")
        if self.grant not in ("client_credentials", "password", "refresh_token"):
            raise ValueError(f"unknown grant {self.grant!r}")
        if self.grant == "password" and (self.username is None or self.password is None):
            raise ValueError("the password grant needs username and password")
        if self.grant == "refresh_token" and not self.refresh_token:
            raise ValueError("grant='refresh_token' needs a refresh_token to start from")
        if self.auth_method == "client_secret_basic" and not sources:
            raise ValueError("client_secret_basic needs a client secret")

    @property
    def scope_text(self) -> str:
        """The scope as sent: space-joined, or empty."""
        if self.scope is None:
            return ""
        return self.scope if isinstance(self.scope, str) else " ".join(self.scope)

    @property
    def key(self) -> SlotKey:
        """The cache key: one token per (token URL, client, scope, audience, resource)."""
        return (self.token_url, self.client_id, self.scope_text, self.audience or "", self.resource or "")

    @property
    def endpoint(self) -> str:
        """The token URL without query or fragment, for messages."""
        parts = urlsplit(self.token_url)
        return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))

    def secret(self) -> str | None:
        """Read the client secret from where it is configured (each call reads env/file afresh)."""
        if self.client_secret:
            return self.client_secret
        if self.client_secret_env:
            value = os.environ.get(self.client_secret_env)
            if not value:
                raise ValueError(f"client secret variable {self.client_secret_env} is not set or empty")
            return value
        if self.client_secret_file:
            path = Path(self.client_secret_file)
            try:
                value = path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(f"client secret file {path}: {exc.strerror or exc}") from None
            if not value:
                raise ValueError(f"client secret file {path} is empty")
            return value
        return None

    def grant_form(self, refresh_token: str | None) -> dict[str, str]:
        """The form fields of a token request, client authentication excluded."""
        form: dict[str, str] = {}
        if refresh_token is not None:
            form["grant_type"] = "refresh_token"
            form["refresh_token"] = refresh_token
        elif self.grant == "password":
            form["grant_type"] = "password"
            form["username"] = self.username or ""
            form["password"] = self.password or ""
        else:
            form["grant_type"] = "client_credentials"
        if self.scope_text:
            form["scope"] = self.scope_text
        if self.audience:
            form["audience"] = self.audience
        if self.resource:
            form["resource"] = self.resource
        form.update(self.extra)
        return form

    def authenticate(self, form: dict[str, str], headers: dict[str, str]) -> set[str]:
        """Add client authentication to ``form`` or ``headers``; returns the secret values used, so a
        caller can make sure none of them ends up in an error message."""
        secret = self.secret()
        secrets = {v for v in (secret, self.password, form.get("refresh_token")) if v}
        if self.auth_method == "client_secret_basic" and secret is not None:
            # RFC 6749 section 2.3.1: both halves are form-urlencoded before being joined.
            pair = f"{quote_plus(self.client_id)}:{quote_plus(secret)}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        else:
            form["client_id"] = self.client_id
            if secret is not None:
                form["client_secret"] = secret
        return secrets

    def __repr__(self) -> str:
        if self.client_secret:
            secret = f"fp:{fingerprint(self.client_secret)}"
        elif self.client_secret_env:
            secret = f"env:{self.client_secret_env}"
        elif self.client_secret_file:
            secret = f"file:{self.client_secret_file}"
        else:
            secret = "none"
        parts = [
            f"token_url={self.endpoint!r}",
            f"client_id={self.client_id!r}",
            f"secret={secret}",
            f"auth_method={self.auth_method!r}",
            f"grant={self.grant!r}",
        ]
        if self.scope_text:
            parts.append(f"scope={self.scope_text!r}")
        if self.audience:
            parts.append(f"audience={self.audience!r}")
        if self.resource:
            parts.append(f"resource={self.resource!r}")
        if self.refresh_token:
            parts.append(f"refresh_token=fp:{fingerprint(self.refresh_token)}")
        return f"Credentials({', '.join(parts)})"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries of a token request that failed with a 5xx, a timeout or a connection error.

    Attempt ``n`` (from 1) that fails waits ``min(cap, base * 2 ** (n - 1))`` scaled by a jitter factor
    in [0.5, 1) ("equal jitter": spread out, never zero) before attempt ``n + 1``. At most
    ``attempts`` requests are made, and no wait starts that would end after ``total`` seconds from
    the first attempt. ``timeout`` is each request's own timeout.
    """

    attempts: int = 4
    base: float = 0.5
    cap: float = 8.0
    total: float = 30.0
    timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if min(self.base, self.cap, self.total, self.timeout) < 0:
            raise ValueError("retry times must not be negative")

    def delay(self, attempt: int, jitter: float) -> float:
        """The wait after failed attempt ``attempt`` (1-based), for a jitter sample in [0, 1)."""
        ceiling: float = min(self.cap, self.base * 2.0 ** (attempt - 1))
        return ceiling * (0.5 + jitter / 2)
