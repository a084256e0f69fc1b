"""A token endpoint's answers, parsed: :class:`Token` from a 200, the provider's error otherwise.

Pure functions of a status and a body (no I/O), so every provider shape is tested directly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..redact import fingerprint
from .errors import TokenEndpointError, TokenResponseError

__all__ = ["Token", "parse_error", "parse_token"]

_TEXT_LIMIT = 200


@dataclass(frozen=True, slots=True, repr=False)
class Token:
    """An access token with the instants (on the manager's clock) it is renewed and expires at."""

    access_token: str
    obtained_at: float
    expires_at: float
    renew_at: float
    refresh_token: str | None = None
    scope: str | None = None

    def usable(self, now: float) -> bool:
        """Fresh enough to send: not yet due for renewal."""
        return now < self.renew_at

    def __repr__(self) -> str:
        refresh = f", refresh=fp:{fingerprint(self.refresh_token)}" if self.refresh_token else ""
        return (
            f"Token(fp:{fingerprint(self.access_token)}, lifetime={self.expires_at - self.obtained_at:g}s"
            f"{refresh})"
        )


def _number(value: Any) -> float | None:
    """``expires_in`` as seconds: a JSON number, or a numeric string (some IdPs send "3599")."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def parse_token(
    endpoint: str, body: bytes, now: float, *, renew_before: float, default_expires_in: float
) -> Token:
    """Parse an RFC 6749 section 5.1 success response; raise :class:`TokenResponseError` if unusable.

    ``token_type`` must be ``Bearer`` in any case (Prisjakt sends ``bearer``). The token is renewed
    ``renew_before`` seconds ahead of its expiry, but never in the first half of its lifetime (so a
    60-second token is not renewed on every request).
    """
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise TokenResponseError(endpoint, "the token response is not JSON") from None
    if not isinstance(data, dict):
        raise TokenResponseError(endpoint, "the token response is not a JSON object")
    access = data.get("access_token")
    if not isinstance(access, str) or not access.strip():
        raise TokenResponseError(endpoint, "the token response has no access_token")
    if any(c in access for c in "\r\n\0 ") or not access.isascii():
        raise TokenResponseError(endpoint, "the access_token cannot be sent in a header")
    token_type = data.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        shown = _clean(str(token_type))[:40] if token_type is not None else "missing"
        raise TokenResponseError(endpoint, f"token_type is {shown}, expected Bearer")
    if "expires_in" in data:
        lifetime = _number(data["expires_in"])
        if lifetime is None:
            raise TokenResponseError(endpoint, "expires_in is not a number")
        if lifetime <= 0:
            raise TokenResponseError(endpoint, "expires_in is not positive")
    else:
        lifetime = default_expires_in
    refresh = data.get("refresh_token")
    if refresh is not None and (not isinstance(refresh, str) or not refresh):
        raise TokenResponseError(endpoint, "refresh_token is not a string")
    scope = data.get("scope")
    lead = min(renew_before, lifetime / 2)
    return Token(
        access_token=access,
        obtained_at=now,
        expires_at=now + lifetime,
        renew_at=now + lifetime - lead,
        refresh_token=refresh,
        scope=scope if isinstance(scope, str) else None,
    )


def parse_error(endpoint: str, status: int, body: bytes, secrets: Iterable[str]) -> TokenEndpointError:
    """The provider's error from a 4xx body, in any of the known shapes; nothing secret in it."""
    error, description = f"http_{status}", ""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        data = None
    if isinstance(data, dict):
        raw = data.get("error")
        if isinstance(raw, dict):  # Placepoint: {"error": {"code": 401, "message": "..."}}
            code, message = raw.get("code"), raw.get("message")
            error = str(code) if isinstance(code, int | str) and not isinstance(code, bool) else error
            description = message if isinstance(message, str) else ""
        elif isinstance(raw, str):  # RFC 6749 (code + description) or Placewise (a sentence)
            error = raw
            desc = data.get("error_description", data.get("message"))
            description = desc if isinstance(desc, str) else ""
    elif body:
        description = body.decode("utf-8", "replace")
    error, description = _scrub(_clean(error), secrets), _scrub(_clean(description), secrets)
    return TokenEndpointError(endpoint, status, error[:80], description[:_TEXT_LIMIT])


def _clean(text: str) -> str:
    """One printable line."""
    return "".join(c if c.isprintable() else " " for c in text).strip()


def _scrub(text: str, secrets: Iterable[str]) -> str:
    """An endpoint that echoes a secret back must not get it into our messages."""
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, f"[fp:{fingerprint(secret)}]")
    return text
