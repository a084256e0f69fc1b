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

from typing import Final

Headers = list[tuple[bytes, bytes]]

#: Always hop-by-hop, whatever ``Connection`` says (lower case).
HOP_BY_HOP: Final = frozenset(
    {b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)


def is_hop_by_hop(name: bytes) -> bool:
    """Whether a (lower-case) header name is hop-by-hop whatever ``Connection`` says; the names
    a ``Connection`` header lists are hop-by-hop as well (:mod:`.rewrite` removes them)."""
    return name in HOP_BY_HOP or name.startswith(b"proxy-")
