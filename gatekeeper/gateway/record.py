"""What the gateway's front doors report about each request, for the access log and metrics.

The forward-auth endpoint and the reverse proxy each fill one :class:`RequestRecord` per request
and hand it to a :data:`Reporter`; the app's reporter writes the JSON access log line and updates
the Prometheus metrics. Nothing in a record is a token: ``token`` is its fingerprint, ``path`` has
token query parameters redacted, and the labels metrics take from it are bounded (``rule`` is a
configured pattern, ``issuer`` a configured issuer, ``error_kind`` one of the error kinds).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

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
