"""What can go wrong when obtaining a token, as exceptions a worker can catch by kind.

Every message names the token endpoint and the provider's error, never a token or a secret.
"""

from __future__ import annotations

__all__ = [
    "InvalidRefreshToken",
    "TokenEndpointError",
    "TokenEndpointUnavailable",
    "TokenError",
    "TokenResponseError",
]


class TokenError(Exception):
    """Base class: a token could not be obtained from ``endpoint``."""

    def __init__(self, endpoint: str, message: str) -> None:
        super().__init__(f"token endpoint {endpoint}: {message}")
        #: The token endpoint URL (without query string or credentials).
        self.endpoint = endpoint


class TokenEndpointError(TokenError):
    """The token endpoint refused the request (a 4xx): bad credentials, scope, grant, ...

    ``error`` and ``description`` are the provider's own words, parsed from RFC 6749 section 5.2
    (``{"error": "invalid_client", "error_description": ...}``), Placepoint
    (``{"error": {"code": 401, "message": ...}}``) or Placewise (``{"error": "Invalid refresh token"}``).
    """

    def __init__(self, endpoint: str, status: int, error: str, description: str) -> None:
        detail = f"{error}: {description}" if description and description != error else error
        super().__init__(endpoint, f"HTTP {status} {detail}")
        self.status, self.error, self.description = status, error, description


class InvalidRefreshToken(TokenEndpointError):
    """The refresh token was rejected (RFC 6749 ``invalid_grant``, Placewise HTTP 462) and there is no
    other grant to fall back on: the user or client must authenticate again."""


class TokenEndpointUnavailable(TokenError):
    """The token endpoint kept failing (5xx, timeouts, connection errors) until the retry budget ran
    out (``attempts`` made, ``last`` describes the final failure)."""

    def __init__(self, endpoint: str, attempts: int, last: str) -> None:
        super().__init__(endpoint, f"unavailable after {attempts} attempt(s); last: {last}")
        self.attempts, self.last = attempts, last


class TokenResponseError(TokenError):
    """A 200 answer that is not a usable token response (no ``access_token``, ``expires_in`` not a
    number, a ``token_type`` other than bearer, not JSON, ...)."""
