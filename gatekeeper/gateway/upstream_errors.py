"""What can go wrong between the reverse proxy and an upstream, as exception classes.

The proxy maps them to its answers (``proxy.py``): :class:`UpstreamUnreachable` and
:class:`UpstreamBroken` are 502 before the response started (and an aborted client connection
after), :class:`UpstreamTimeout` is 504, :class:`PoolTimeout` is 503 (every connection busy),
:class:`UnsafeRequest` is 400. Messages never carry header values or body bytes.
"""

from __future__ import annotations


class UpstreamError(Exception):
    """Base class: the exchange with the upstream failed."""


class UpstreamUnreachable(UpstreamError):
    """No connection: refused, DNS failure, TLS handshake or certificate failure."""


class UpstreamBroken(UpstreamError):
    """The connection broke or the upstream's response is not valid HTTP/1.1 (EOF mid-response,
    a malformed status line or header block, an unexpected protocol switch)."""


class UpstreamTimeout(UpstreamError):
    """Connecting, sending or waiting for the next response bytes took longer than allowed."""


class PoolTimeout(UpstreamTimeout):
    """Every connection the pool may open is busy, and none became free in time."""


class UnsafeRequest(UpstreamError):
    """The request cannot be written as HTTP/1.1 (a CR, LF or NUL in its target or a header):
    refused rather than sent, so nothing a client sends can split the upstream request."""
