"""gatekeeper: verify OAuth2 JWT access tokens in front of APIs."""

from .claims import Claims
from .errors import ERROR_KINDS, AuthError, ErrorKind
from .keystore import FetchPolicy
from .middleware import GatekeeperMiddleware, requires_scopes
from .policy import DEFAULT_ALGORITHMS, Issuer
from .responses import ErrorResponse, get_profile
from .revocation import Revocation, RevocationListFull, Revocations, StoreUnavailable
from .rules import Rule
from .verifier import Verifier, load_issuers

__all__ = [
    "DEFAULT_ALGORITHMS",
    "ERROR_KINDS",
    "AuthError",
    "Claims",
    "ErrorKind",
    "ErrorResponse",
    "FetchPolicy",
    "GatekeeperMiddleware",
    "Issuer",
    "Revocation",
    "RevocationListFull",
    "Revocations",
    "Rule",
    "StoreUnavailable",
    "Verifier",
    "get_profile",
    "load_issuers",
    "requires_scopes",
]
__version__ = "0.1.0"
