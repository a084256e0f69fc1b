"""Bearer token extraction from an ASGI scope (sans-I/O; shared by middleware and gateway).

Sources: ``Authorization: Bearer <token>`` (scheme case-insensitive, RFC 6750 2.1), a query
parameter such as PlaceOS's ``bearer_token``, and RFC 6750's ``access_token`` (2.3) when
enabled. A token sent in more than one way, a repeated parameter, two Authorization headers or
a malformed header is ``invalid_request``; another scheme (Basic, ...) counts as no token.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl

from .errors import AuthError

# RFC 6750 2.1: credentials = "Bearer" 1*SP b64token
# RFC 6750 2.1's b64token alphabet. The header value is checked as bytes with a C byte loop
# (``translate`` deleting the allowed bytes leaves nothing) and decoded once: this runs on every
# request, and a regex or a chain of str copies of an 800-byte token costs several times more.
_B64TOKEN_CHARS: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/"


def _is_b64token(credentials: bytes) -> bool:
    """b64token characters, then only trailing ``=`` (RFC 6750 2.1)."""
    body = credentials.rstrip(b"=")
    return bool(body) and not body.translate(None, _B64TOKEN_CHARS)


def _malformed(description: str) -> AuthError:
    return AuthError("invalid_request", description)


#: RFC 6750 2.3's query parameter.
ACCESS_TOKEN_PARAM: Final = "access_token"


@dataclass(frozen=True, slots=True)
class BearerSource:
    """Where tokens may come from. ``query_params`` names the query parameters to accept
    (e.g. ``("bearer_token",)`` for PlaceOS, ``"access_token"`` for RFC 6750 2.3)."""

    header: bool = True
    query_params: tuple[str, ...] = ()

    @classmethod
    def of(
        cls,
        query_param: str | Sequence[str] | None = None,
        *,
        header: bool = True,
        access_token: bool = False,
    ) -> BearerSource:
        """``query_param`` names the query parameter(s) to accept (e.g. ``"bearer_token"``);
        ``access_token=True`` also accepts RFC 6750's ``access_token`` parameter."""
        if query_param is None:
            names: tuple[str, ...] = ()
        elif isinstance(query_param, str):
            names = (query_param,)
        else:
            names = tuple(query_param)
        if access_token and ACCESS_TOKEN_PARAM not in names:
            names += (ACCESS_TOKEN_PARAM,)
        if any(not name for name in names):
            raise ValueError("a token query parameter needs a name")
        return cls(header, names)

    def extract(self, scope: Mapping[str, Any]) -> str | None:
        """The token in this request, None when there is none, or ``invalid_request``."""
        return self.find(scope.get("headers", ()), scope.get("query_string", b""))[0]

    def find(
        self, headers: Iterable[tuple[bytes, bytes]], query_string: bytes = b""
    ) -> tuple[str | None, bytes | None]:
        """The token in a request given as plain data, and the raw ``Authorization`` value it
        came from (None when it came from the query or there is none); ``invalid_request``
        when the request is malformed."""
        raw = authorization_value(headers) if self.header else None
        token = None if raw is None else bearer_credentials(raw)
        if self.query_params:
            query_token = _from_query(query_string, self.query_params)
            if query_token is not None:
                if token is not None:
                    raise _malformed("The token was sent in more than one way")
                return query_token, None
        return token, (raw if token is not None else None)


def authorization_value(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The value of the request's one ``Authorization`` header, None when there is none;
    ``invalid_request`` when there are two."""
    found: bytes | None = None
    for name, value in headers:
        # ASGI servers lower-case header names; a hand-built scope may not. The length test
        # keeps the per-header cost of the common case to one comparison.
        if name == b"authorization" or (len(name) == 13 and name.lower() == b"authorization"):
            if found is not None:
                raise _malformed("Only one Authorization header is allowed")
            found = value
    return found


def bearer_credentials(value: bytes) -> str | None:
    """The token in an ``Authorization`` value, None for another scheme (Basic, ...);
    ``invalid_request`` when a bearer value is malformed."""
    scheme, _, credentials = value.partition(b" ")
    if scheme.lower() != b"bearer":
        if not scheme or scheme.lower().startswith(b"bearer"):
            raise _malformed("The Authorization header is malformed")
        return None  # Basic, Digest, ...: not ours to judge
    credentials = credentials.lstrip(b" ")
    if not _is_b64token(credentials):
        raise _malformed("The Authorization header is malformed")
    return credentials.decode("ascii")


def _from_query(query_string: bytes, names: tuple[str, ...]) -> str | None:
    if not query_string:
        return None
    text = query_string.decode("latin-1")
    if "%" not in text and not any(name in text for name in names):
        # The common case: no token parameter, nothing to parse. (With a "%" a name may be
        # percent-encoded, and parse_qsl would decode it: parse rather than miss a token.)
        return None
    found: str | None = None
    for key, value in parse_qsl(text, keep_blank_values=True):
        if key in names:
            if found is not None:
                raise _malformed("The token was sent in more than one parameter")
            if not value:
                raise _malformed("The token parameter is empty")
            found = value
    return found
