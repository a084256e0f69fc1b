"""What the gateway's front doors report about each request, for the access log and metrics.

The forward-auth endpoint and the reverse proxy each fill one :class:`RequestRecord` per request
and hand it to a :data:`Reporter`; the app's reporter writes the JSON access log line and updates
the Prometheus metrics. Nothing in a record is a token: ``token`` is its fingerprint, ``path`` has
token query parameters redacted, and the labels metrics take from it are bounded (``rule`` is a
configured pattern, ``issuer`` a configured issuer, ``error_kind`` one of the error kinds).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Final, Literal

from ..redact import fingerprint, redact_query

Decision = Literal["allow", "deny", "error"]
Door = Literal["forward_auth", "proxy"]


@dataclass(slots=True)
class RequestRecord:
    """One request through a front door.

    ``decision`` is ``allow`` (the token was good enough, or the route needs none), ``deny`` (an
    ``AuthError``, rendered by the error profile) or ``error`` (the request could not be decided
    or forwarded: a bad path, an upstream failure). ``status`` is what the client got.
    """

    door: Door
    method: str
    path: str  # token query parameters redacted, control characters escaped
    status: int
    decision: Decision
    latency: float  # seconds, the whole request as this process saw it
    decision_latency: float  # seconds spent deciding (extraction, cache or verification)
    rule: str | None = None  # the matching rule's path pattern
    error_kind: str | None = None  # an ErrorKind for "deny"; a short slug for "error"
    issuer: str | None = None
    subject: str | None = None
    client_id: str | None = None
    token: str | None = None  # fingerprint only
    cached: bool | None = None  # the verified-token cache answered
    upstream_status: int | None = None
    upstream_latency: float | None = None  # seconds until the upstream's response headers


#: Receives one record per request; must be cheap and must not raise.
Reporter = Callable[[RequestRecord], None]


#: How many verified claims objects' token fingerprints are kept (the memo is then emptied).
MEMO_SIZE: Final = 4096
# id(claims) -> (claims, token, fingerprint). The verified-token cache hands back the same
# Claims object for the same token, so its fingerprint is computed once; the entry holds the
# claims (their id cannot be reused meanwhile) and both the object and the token are checked.
_fingerprints: dict[int, tuple[Any, str, str]] = {}


def token_fingerprint(token: str, claims: Any = None) -> str:
    """:func:`gatekeeper.redact.fingerprint` of ``token``, remembered per verified ``claims``
    object (pass the claims the token verified to; ``None`` computes it every time)."""
    if claims is None:
        return fingerprint(token)
    entry = _fingerprints.get(id(claims))
    if entry is not None and entry[0] is claims and entry[1] == token:
        return entry[2]
    value = fingerprint(token)
    if len(_fingerprints) >= MEMO_SIZE:
        _fingerprints.clear()
    _fingerprints[id(claims)] = (claims, token, value)
    return value


# A query redact_query would give back unchanged: non-empty ``key=value`` pairs of characters
# that neither parse_qsl decodes nor quote encodes.
_PLAIN_QUERY: Final = re.compile(r"[A-Za-z0-9._~-]+=[A-Za-z0-9._~-]*(?:&[A-Za-z0-9._~-]+=[A-Za-z0-9._~-]*)*")
_ALWAYS_SECRET: Final = ("access_token", "bearer_token")


def logged_query(query_string: bytes, names: Collection[str]) -> str:
    """Exactly :func:`gatekeeper.redact.redact_query`, without parsing and re-encoding a plain
    query that names no token parameter (the common case): that one comes back as it is."""
    if not query_string:
        return ""
    text = query_string.decode("latin-1")
    if _PLAIN_QUERY.fullmatch(text) is not None:
        # Keys in a plain query are literal, so a token parameter's name would be a substring.
        for name in _secret_names(names if isinstance(names, frozenset) else frozenset(names)):
            if name in text:
                break
        else:
            return text
    return redact_query(query_string, names)


@functools.lru_cache(maxsize=64)
def _secret_names(names: frozenset[str]) -> tuple[str, ...]:
    return (*_ALWAYS_SECRET, *(name for name in names if name not in _ALWAYS_SECRET))
