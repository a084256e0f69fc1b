"""Client side of the flow: bearer tokens for outgoing httpx requests, from an OAuth2 token endpoint.

``httpx.Client(auth=ClientCredentialsAuth(Credentials(token_url, client_id, client_secret_env=...)))``
obtains a token with client credentials, caches it, renews it ahead of expiry (one fetch however
many threads and tasks are waiting), renews and replays once on a 401, and backs off when the token
endpoint fails. Tokens and secrets appear only as fingerprints in logs and reprs.
"""

from .auth import ClientCredentialsAuth, NoCredentials
from .config import AuthMethod, Credentials, Grant, RetryPolicy
from .errors import (
    InvalidRefreshToken,
    TokenEndpointError,
    TokenEndpointUnavailable,
    TokenError,
    TokenResponseError,
)
from .manager import TokenManager
from .token import Token

__all__ = [
    "AuthMethod",
    "ClientCredentialsAuth",
    "Credentials",
    "Grant",
    "InvalidRefreshToken",
    "NoCredentials",
    "RetryPolicy",
    "Token",
    "TokenEndpointError",
    "TokenEndpointUnavailable",
    "TokenError",
    "TokenManager",
    "TokenResponseError",
]
