"""The reverse proxy's header rewriting, each direction in one pass over the headers.

Every proxied request runs both, so each header name is classified once (what the proxy does
with it, and its lower-case form) and the verdict is remembered, bounded: names are the
client's or the upstream's choice, so at most :data:`CLASSIFIED_MAX` are kept per table and
the rest are classified each time they come.

Request (:class:`RequestRewriter`), the headers the upstream gets:

- hop-by-hop headers are removed (:mod:`.hop`): the fixed list, ``Proxy-*``, ``Connection``
  and every header a ``Connection`` header names (compared as :func:`~.identity.normal_name`
  does, so a named ``X_Auth_Subject`` takes ``X-Auth-Subject`` with it), except
  ``Content-Length``: the body goes on as it came, and without its length the upstream would
  read it as the next request (request smuggling);
- every client copy of an identity header is removed, on every route, before the verified
  values are added (:meth:`~.identity.IdentityHeaders.is_gatekeeper_header`);
- ``Host``, ``X-Forwarded-For/-Proto/-Host`` and ``Forwarded`` are set as the upstream's
  settings say; ``Expect`` is never sent on; ``Authorization`` only when configured;
- the same pass reads the body's framing: the ``Content-Length`` value (None when absent,
  :data:`BAD_LENGTH` when malformed or repeated with another value) and whether a
  ``Transfer-Encoding`` header came (the upstream connection frames such a body itself).

Response (:class:`ResponseRewriter`): hop-by-hop headers and the ones the serving stack stamps
itself (``Date``, ``Server``) are removed, names come back lower case, and the
``Content-Length`` is read in the same pass.

Each direction has a common pass for the usual message (every name already classified, none of
the rare kinds: framing, forwarding, ``Connection``; a response with at most one plain
``Content-Length``) and the general pass for the rest. The common passes run in C where
``gatekeeper.gateway._headers`` was built (:func:`rewrite_request_py` and
:func:`rewrite_response_py` are their Python twins, held to the same answers by the tests).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Final

from .hop import Headers, is_hop_by_hop
from .identity import IdentityHeaders, normal_name

if TYPE_CHECKING:
    from .proxy import UpstreamSettings

#: Classifications remembered per table (header names are the sender's choice).
CLASSIFIED_MAX: Final = 1024
#: The Content-Length "value" of a malformed or contradictory Content-Length.
BAD_LENGTH: Final = -1

# What the proxy does with a header, by name.
_KEEP, _DROP, _CONNECTION, _HOST, _AUTHORIZATION, _LENGTH, _CODED = range(7)
_FOR, _PROTO, _FWD_HOST, _FORWARDED = range(7, 11)
_BY_NAME: Final = {
    b"connection": _CONNECTION,
    b"transfer-encoding": _CODED,
    b"host": _HOST,
    b"expect": _DROP,  # a client's 100-continue is answered in front; the upstream gets the body
    b"x-forwarded-for": _FOR,
    b"x-forwarded-proto": _PROTO,
    b"x-forwarded-host": _FWD_HOST,
    b"forwarded": _FORWARDED,
    b"authorization": _AUTHORIZATION,
    b"content-length": _LENGTH,
}


# Never removed for being named in Connection: the body is sent on as it came, so its framing
# must go with it (without it the upstream would read the body as the next request).
_FRAMING: Final = frozenset({"content-length"})


def _content_length(value: bytes, found: int | None) -> int:
    """The Content-Length after one more header with ``value`` (:data:`BAD_LENGTH` when it is
    not digits or differs from one already ``found``)."""
    if not value.strip().isdigit():
        return BAD_LENGTH
    number = int(value)
    return number if found is None or found == number else BAD_LENGTH


def rewrite_request_py(
    headers: Sequence[tuple[bytes, bytes]],
    classified: Mapping[bytes, tuple[int, bytes]],
    forward_authorization: bool,
    forward_host: bool,
    x_forwarded: bool,
    netloc: bytes,
    peer: bytes,
    scheme: bytes,
    identity: Sequence[tuple[bytes, bytes]],
) -> Headers | None:
    """The request's common pass: the upstream's headers (:meth:`RequestRewriter.rewrite`'s)
    when every name is in ``classified`` and none is of a rare kind, else None (the general
    pass decides). Twin of ``gatekeeper.gateway._headers.rewrite_request``."""
    out: Headers = []
    client_host: bytes | None = None
    for name, value in headers:
        known = classified.get(name)
        if known is None:
            return None
        kind, lower = known
        if kind == _KEEP:
            out.append((lower, value))
        elif kind == _HOST:
            client_host = value
        elif kind == _AUTHORIZATION:
            if forward_authorization:
                out.append((lower, value))
        elif kind != _DROP:
            return None
    return _add_tail(out, forward_host, x_forwarded, client_host, client_host, netloc, peer, scheme, identity)


def _add_tail(
    out: Headers,
    forward_host: bool,
    x_forwarded: bool,
    client_host: bytes | None,
    forwarded_host: bytes | None,
    netloc: bytes,
    peer: bytes,
    scheme: bytes,
    identity: Sequence[tuple[bytes, bytes]],
) -> Headers:
    """``out`` with Host, X-Forwarded-* and the verified identity added."""
    out.append((b"host", client_host if forward_host and client_host else netloc))
    if x_forwarded:
        out.append((b"x-forwarded-for", peer))
        out.append((b"x-forwarded-proto", scheme))
        if forwarded_host is not None:
            out.append((b"x-forwarded-host", forwarded_host))
    out.extend(identity)
    return out


def rewrite_response_py(
    headers: Sequence[tuple[bytes, bytes]],
    classified: Mapping[bytes, tuple[bool, bool, bool, bytes]],
) -> tuple[Headers, int | None] | None:
    """The response's common pass: ``(the headers the client gets, the Content-Length)`` when
    every name is in ``classified``, no ``Connection`` header came and at most one
    ``Content-Length`` of plain digits (at most 18), else None (the general pass decides). Twin
    of ``gatekeeper.gateway._headers.rewrite_response``."""
    out: Headers = []
    length: int | None = None
    for name, value in headers:
        known = classified.get(name)
        if known is None:
            return None
        relayed, is_length, is_connection, lower = known
        if is_connection:
            return None
        if not relayed:
            continue
        if is_length:
            if length is not None or not value.isdigit() or len(value) > 18:
                return None
            length = int(value)
        out.append((lower, value))
    return out, length


RequestPass = Callable[
    [
        Sequence[tuple[bytes, bytes]],
        Mapping[bytes, tuple[int, bytes]],
        bool,
        bool,
        bool,
        bytes,
        bytes,
        bytes,
        Sequence[tuple[bytes, bytes]],
    ],
    Headers | None,
]
ResponsePass = Callable[
    [Sequence[tuple[bytes, bytes]], Mapping[bytes, tuple[bool, bool, bool, bytes]]],
    tuple[Headers, int | None] | None,
]

try:
    from . import _headers
except ImportError:  # built without a C compiler: the twins
    _headers = None  # type: ignore[assignment]

#: The common passes the rewriters use by default: C where it was built, else the twins.
COMMON_REQUEST: RequestPass = rewrite_request_py if _headers is None else _headers.rewrite_request
COMMON_RESPONSE: ResponsePass = rewrite_response_py if _headers is None else _headers.rewrite_response


def _connection_names(values: Iterable[bytes]) -> frozenset[str]:
    """The header names ``Connection`` values list, as :func:`normal_name` gives them."""
    return frozenset(normal_name(token) for value in values for token in value.split(b",") if token.strip())


class RequestRewriter:
    """The upstream's request headers (see the module docstring), for one ``identity``;
    ``common`` is the common pass (None: :data:`COMMON_REQUEST`)."""

    def __init__(self, identity: IdentityHeaders, common: RequestPass | None = None) -> None:
        self.identity = identity
        self._common = common or COMMON_REQUEST
        self._classified: dict[bytes, tuple[int, bytes]] = {}

    def classify(self, name: bytes) -> tuple[int, bytes]:
        """What the proxy does with a request header of this name, and the name lower case."""
        known = self._classified.get(name)
        if known is None:
            lower = name.lower()
            if self.identity.is_gatekeeper_header(name):
                kind = _DROP
            else:
                kind = _BY_NAME.get(lower, _KEEP)
                if kind == _KEEP and is_hop_by_hop(lower):
                    kind = _DROP
            known = (kind, lower)
            if len(self._classified) < CLASSIFIED_MAX:
                self._classified[name] = known
        return known

    def rewrite(
        self,
        headers: Sequence[tuple[bytes, bytes]],
        settings: UpstreamSettings,
        netloc: bytes,
        peer: bytes,
        scheme: bytes,
        identity: Sequence[tuple[bytes, bytes]],
    ) -> tuple[Headers, int | None, bool]:
        """``(headers for the upstream, Content-Length, Transfer-Encoding present)``.

        ``netloc`` is the upstream's own host (``Host`` unless it is forwarded), ``peer`` the
        client's address and ``scheme`` the request's (``X-Forwarded-For``/``-Proto``),
        ``identity`` the verified identity headers, added last."""
        forward_host = settings.host == "forward"
        x_forwarded = settings.x_forwarded != "off"
        out = self._common(
            headers, self._classified, settings.forward_authorization, forward_host, x_forwarded,
            netloc, peer, scheme, identity,
        )  # fmt: skip
        if out is not None:
            return out, None, False
        out, length, coded, client_host, forwarded_host, peer, scheme = self._general(
            headers, settings, peer, scheme
        )
        out = _add_tail(
            out, forward_host, x_forwarded, client_host, forwarded_host, netloc, peer, scheme, identity
        )
        return out, length, coded

    def _general(
        self, headers: Iterable[tuple[bytes, bytes]], settings: UpstreamSettings, peer: bytes, scheme: bytes
    ) -> tuple[Headers, int | None, bool, bytes | None, bytes | None, bytes, bytes]:
        """The general pass: names classified (and remembered) as they come, the rare kinds
        applied by :func:`_apply_rare`."""
        known = self._classified.get
        classify = self.classify
        out: Headers = []
        client_host: bytes | None = None
        rare: list[tuple[int, bytes, bytes]] = []  # framing, forwarding, Connection
        for name, value in headers:
            kind, lower = known(name) or classify(name)
            if kind == _KEEP:
                out.append((lower, value))
            elif kind == _HOST:
                client_host = value
            elif kind == _AUTHORIZATION:
                if settings.forward_authorization:
                    out.append((lower, value))
            elif kind != _DROP:
                rare.append((kind, lower, value))
        if not rare:
            return out, None, False, client_host, client_host, peer, scheme
        return _apply_rare(rare, out, settings, client_host, peer, scheme)


def _apply_rare(
    rare: list[tuple[int, bytes, bytes]],
    out: Headers,
    settings: UpstreamSettings,
    client_host: bytes | None,
    peer: bytes,
    scheme: bytes,
) -> tuple[Headers, int | None, bool, bytes | None, bytes | None, bytes, bytes]:
    """The headers most requests do not carry: the body's framing, the client's forwarding
    headers (kept only in ``append`` mode) and ``Connection`` (whose named headers go as if
    never sent). Returns the headers so far, the framing, the client's ``Host``, and the
    ``X-Forwarded-Host``, ``-For`` and ``-Proto`` values as they stand after them."""
    append_mode = settings.x_forwarded == "append"
    length: int | None = None
    coded = False
    connections: list[bytes] = []
    prior_for: list[bytes] = []
    prior_proto: bytes | None = None
    prior_host: bytes | None = None
    for kind, lower, value in rare:
        if kind == _LENGTH:
            length = _content_length(value, length)
            out.append((lower, value))
        elif kind == _CODED:
            coded = True
        elif kind == _CONNECTION:
            connections.append(value)
        elif kind == _FOR:
            prior_for.append(value)
        elif kind == _PROTO:
            prior_proto = value
        elif kind == _FWD_HOST:
            prior_host = value
        elif kind == _FORWARDED and append_mode:
            out.append((lower, value))  # RFC 7239 Forwarded: left to the trusted proxy
    if connections:  # the headers Connection names go as if never sent
        named = _connection_names(connections) - _FRAMING
        out = [(name, value) for name, value in out if normal_name(name) not in named]
        client_host = None if "host" in named else client_host
        prior_for = [] if "x-forwarded-for" in named else prior_for
        prior_proto = None if "x-forwarded-proto" in named else prior_proto
        prior_host = None if "x-forwarded-host" in named else prior_host
    forwarded_host = client_host
    if append_mode:
        peer = b", ".join([*prior_for, peer]) if prior_for else peer
        scheme = prior_proto if prior_proto is not None else scheme
        forwarded_host = prior_host if prior_host is not None else client_host
    return out, length, coded, client_host, forwarded_host, peer, scheme


class ResponseRewriter:
    """The response headers the client gets (see the module docstring): hop-by-hop headers
    and the ``stamped`` ones (lower case) removed, names lower case; ``common`` is the common
    pass (None: :data:`COMMON_RESPONSE`)."""

    def __init__(self, stamped: frozenset[bytes], common: ResponsePass | None = None) -> None:
        self.stamped = stamped
        self._common = common or COMMON_RESPONSE
        # name -> (relayed, is Content-Length, is Connection, lower-case name)
        self._classified: dict[bytes, tuple[bool, bool, bool, bytes]] = {}

    def classify(self, name: bytes) -> tuple[bool, bool, bool, bytes]:
        """Whether a response header of this name is relayed, whether it is Content-Length or
        Connection, and the name lower case."""
        known = self._classified.get(name)
        if known is None:
            lower = name.lower()
            relayed = not (is_hop_by_hop(lower) or lower in self.stamped)
            known = (relayed, lower == b"content-length", lower == b"connection", lower)
            if len(self._classified) < CLASSIFIED_MAX:
                self._classified[name] = known
        return known

    def rewrite(self, headers: Sequence[tuple[bytes, bytes]]) -> tuple[Headers, int | None]:
        """``(the headers for the client, the Content-Length)``; the length is None when
        absent and :data:`BAD_LENGTH` when malformed or contradictory."""
        common = self._common(headers, self._classified)
        if common is not None:
            return common
        known = self._classified.get
        classify = self.classify
        out: Headers = []
        length: int | None = None
        connections: list[bytes] = []
        for name, value in headers:
            relayed, is_length, is_connection, lower = known(name) or classify(name)
            if relayed:
                out.append((lower, value))
                if is_length:
                    length = (
                        int(value) if length is None and value.isdigit() else _content_length(value, length)
                    )
            elif is_connection:
                connections.append(value)
        if connections:  # (rare) and the headers a Connection header names
            named = frozenset(
                token.strip().lower() for value in connections for token in value.split(b",") if token.strip()
            )
            out = [(name, value) for name, value in out if name not in named]
        return out, length
