"""gatekeeper: verify OAuth2 JWT access tokens in front of APIs."""

from .claims import Claims
from .errors import ERROR_KINDS, AuthError, ErrorKind
from .keystore import FetchPolicy
from .policy import DEFAULT_ALGORITHMS, Issuer
from .verifier import Verifier, load_issuers

__all__ = [
    "DEFAULT_ALGORITHMS",
    "ERROR_KINDS",
    "AuthError",
    "Claims",
    "ErrorKind",
    "FetchPolicy",
    "Issuer",
    "Verifier",
    "load_issuers",
]
__version__ = "0.1.0"
