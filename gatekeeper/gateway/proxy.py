"""The streaming reverse proxy: decide each request with the gate, then forward it upstream.

Settings are plain frozen dataclasses (``config.py`` builds them from TOML). The app itself is
:class:`ReverseProxy`, an ASGI app: ``ReverseProxy(gate, profile, settings, identity, reporter)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ..responses import ErrorProfile
from .record import Reporter

HostMode = Literal["rewrite", "forward"]
ForwardedMode = Literal["set", "append", "off"]


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    """One upstream service.

    ``url`` is ``http(s)://host[:port][/base]``; the request's normalised path is appended to the
    base path. Websocket requests go to the same URL with ``ws(s)://``.

    - ``connect_timeout`` / ``read_timeout`` (seconds, per read of the response) map to httpx's;
      ``total_timeout`` bounds the whole exchange until the last body byte (None: no bound, so
      long downloads and server-sent event streams are not cut off).
    - ``host``: ``"rewrite"`` sends the upstream's own host (nginx's default), ``"forward"``
      passes the client's ``Host`` on.
    - ``x_forwarded``: ``"set"`` replaces ``X-Forwarded-For``/``-Proto``/``-Host`` with what this
      proxy saw (the safe default at the edge: a client cannot choose its own address);
      ``"append"`` appends the peer to the client's ``X-Forwarded-For`` and keeps a client's
      ``-Proto``/``-Host`` (behind a trusted proxy); ``"off"`` removes all three and adds none.
    - ``forward_authorization``: pass the client's ``Authorization`` header upstream (default:
      removed, the token goes no further than it must).
    """

    url: str
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    write_timeout: float = 60.0
    total_timeout: float | None = None
    host: HostMode = "rewrite"
    x_forwarded: ForwardedMode = "set"
    forward_authorization: bool = False


@dataclass(frozen=True, slots=True)
class UpstreamRoute:
    """Requests whose (normalised) path matches ``path`` (a rule pattern: ``/api/**``) go to
    ``upstream``. The first matching route wins; the rest go to the default upstream."""

    path: str
    upstream: UpstreamSettings


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """The reverse proxy as a whole.

    - ``upstream``: the default upstream (None: only ``routes``; other paths get 404).
    - ``routes``: per-path upstreams, first match wins.
    - ``max_request_body``: bytes; a larger body is refused with 413 in the error profile's
      shape (None: no limit). Checked against ``Content-Length`` up front and counted while a
      chunked body streams.
    - ``max_in_flight``: upstream exchanges at once in this process; beyond it, 503.
    - ``pool_size``: connections the one httpx client keeps (and opens at most) in total.
    - ``websockets``: proxy websocket upgrades (after the handshake is verified).
    """

    upstream: UpstreamSettings | None = None
    routes: tuple[UpstreamRoute, ...] = ()
    max_request_body: int | None = 10 * 1024 * 1024
    max_in_flight: int = 1024
    pool_size: int = 100
    websockets: bool = True


class ReverseProxy:
    """ASGI app: decide each request with ``gate``; deny in ``profile``'s shape; forward the
    allowed ones to their upstream, streaming both ways, with ``identity`` headers set from the
    verified claims; one :class:`~gatekeeper.gateway.record.RequestRecord` per request goes to
    ``reporter``."""

    def __init__(
        self,
        gate: Any,
        profile: ErrorProfile,
        settings: ProxySettings,
        identity: Any,
        reporter: Reporter,
    ) -> None:
        self.gate = gate
        self.profile = profile
        self.settings = settings
        self.identity = identity
        self.reporter = reporter
