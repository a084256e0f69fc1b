"""Hop-by-hop headers (RFC 9110 7.6.1): they describe one connection and are never forwarded.

As Go's ``httputil.ReverseProxy`` does, a proxy removes ``Connection`` itself, every header the
``Connection`` header names, and the fixed list ``Keep-Alive``, ``TE``, ``Trailer``,
``Transfer-Encoding``, ``Upgrade`` and ``Proxy-*`` (``Proxy-Connection``,
``Proxy-Authorization``, ...), in both directions. Headers are ASGI-style ``(name, value)``
byte pairs; names are compared case-insensitively.

Order matters for identity headers: hop-by-hop headers are removed from the *client's* headers
before the gateway adds its own, so a client cannot name ``X-Auth-Subject`` in ``Connection``
to make a proxy drop the verified value after it was set.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

Headers = list[tuple[bytes, bytes]]

#: Always hop-by-hop, whatever ``Connection`` says (lower case).
HOP_BY_HOP: Final = frozenset(
    {b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)


def connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """The header names listed in every ``Connection`` header (lower case, trimmed)."""
    names: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            names.update(token.strip().lower() for token in value.split(b",") if token.strip())
    return frozenset(names)


def is_hop_by_hop(name: bytes, named: frozenset[bytes] = frozenset()) -> bool:
    """Whether a (lower-case) header name is hop-by-hop, given the ``Connection``-named ones."""
    return name in HOP_BY_HOP or name.startswith(b"proxy-") or name in named


def strip_hop_by_hop(headers: Iterable[tuple[bytes, bytes]], also: frozenset[bytes] = frozenset()) -> Headers:
    """The headers without hop-by-hop ones (nor those named in ``also``, lower case); names come
    back lower case."""
    # One pass (this runs twice per proxied request); the Connection-named headers, rare,
    # are removed in a second pass only when a Connection header named any.
    out: Headers = []
    named: set[bytes] = set()
    for name, value in headers:
        name = name.lower()
        if name in HOP_BY_HOP or name.startswith(b"proxy-") or name in also:
            if name == b"connection":
                named.update(token.strip().lower() for token in value.split(b",") if token.strip())
            continue
        out.append((name, value))
    if named:
        out = [(name, value) for name, value in out if name not in named]
    return out
