"""Identity headers: which verified claims the upstream receives, and as which headers.

Identity headers are the gateway's alone. Every client-sent copy of a header the gateway sets
(:meth:`IdentityHeaders.is_gatekeeper_header`) is removed before the verified values are added
(:mod:`.rewrite`, in the reverse proxy; behind forward-auth, the proxy in front overwrites them
with the decision's values, :mod:`.forward_auth`), and
:meth:`IdentityHeaders.values` builds those values so that no claim can forge or split a header.

Value encoding (the rule an upstream decodes with, e.g. Python's ``urllib.parse.unquote``):

* A string claim is UTF-8 encoded and every byte outside ``A-Z a-z 0-9 - . _ ~ ! $ & ' ( ) *
  ; = : @ /`` is percent-encoded (RFC 3986 2.1, upper-case hex). So CR, LF, NUL, every other
  control character, non-ASCII, space, ``%``, ``"``, ``\\``, ``+`` and ``,`` never appear raw:
  a claim cannot end a header, start another, or add a member to a list.
* Numbers are written in decimal (JSON's form), booleans ``true``/``false``; an object is
  written as compact JSON, then encoded like a string.
* An array becomes its members, each encoded as above, joined by ``,`` (``X-Auth-Scopes``:
  sorted and joined by a space); since members have ``,`` and space encoded, splitting on the
  separator gives back exactly the members.
* A claim that is absent, ``null``, or an empty array sends no header at all.

Claims are named by a path: ``sub``, or ``realm_access.roles`` for a nested claim (a name that
exists as a top-level claim is taken literally first, so ``https://example.com/roles`` works).
A header may name several claims, the first present one wins (``client_id`` then ``azp``).
``$scopes`` is the token's normalised scopes (``scope`` and ``scp``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote

from ..claims import Claims

__all__ = [
    "CLIENT_ID_CLAIMS",
    "DEFAULT_HEADERS",
    "MEMO_SIZE",
    "SCOPES",
    "HeaderSpec",
    "IdentityHeaders",
    "client_id_of",
    "encode_value",
    "normal_name",
]

#: The pseudo-claim for the token's normalised scopes.
SCOPES: Final = "$scopes"
#: Where a token names its client: RFC 9068's ``client_id``, else OIDC's ``azp``.
CLIENT_ID_CLAIMS: Final = ("client_id", "azp")
_SAFE: Final = "-._~!$&'()*;=:@/"  # quote() always keeps A-Z a-z 0-9 and "_.-~"
#: How many verified claims objects' rendered headers are kept (the memo is then emptied).
MEMO_SIZE: Final = 4096

Headers = list[tuple[bytes, bytes]]


def encode_value(value: str) -> str:
    """Percent-encode a claim string so it is one safe header token (see the module rule)."""
    return quote(value.encode("utf-8", "surrogatepass"), safe=_SAFE)


def normal_name(name: str | bytes) -> str:
    """A header name as compared here: lower case, ``_`` read as ``-`` (nginx and WSGI/CGI
    servers turn one into the other, so ``X_Auth_Subject`` can arrive as ``X-Auth-Subject``)."""
    if isinstance(name, bytes):
        name = name.decode("latin-1")
    return name.strip().lower().replace("_", "-")


def _scalar(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return encode_value(value)
    if isinstance(value, int | float):
        return json.dumps(value)
    return encode_value(json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False))


def client_id_of(claims: Mapping[str, Any] | None) -> str | None:
    """The client a token was issued to, for the access log: the first *string* among
    :data:`CLIENT_ID_CLAIMS` (a non-string ``client_id`` does not hide ``azp``). Both front
    doors log it this way, so the same token is logged as the same client whichever door saw
    it. (The ``X-Auth-Client-Id`` header renders the first claim present, whatever its type.)"""
    if claims is None:
        return None
    for name in CLIENT_ID_CLAIMS:
        value = claims.get(name)
        if isinstance(value, str):
            return value
    return None


def lookup(claims: Mapping[str, Any], path: str) -> Any:
    """A claim by path: a top-level name taken literally first, else dotted into objects."""
    if path in claims:
        return claims[path]
    node: Any = claims
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


@dataclass(frozen=True)
class HeaderSpec:
    """One identity header: its name, the claims it is read from (first present wins) and the
    separator for array members."""

    name: str
    claims: tuple[str, ...]
    separator: str = ","

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in ' \t\r\n:()<>@,;\\"/[]?={}'):
            raise ValueError(f"invalid header name {self.name!r}")
        if not self.claims or not all(self.claims):
            raise ValueError(f"header {self.name!r} names no claim")
        if self.separator not in (",", " "):
            raise ValueError("the array separator is ',' or ' '")

    def value(self, claims: Claims) -> str | None:
        """The encoded header value for these claims, or None to send no header."""
        for path in self.claims:
            raw: Any = sorted(claims.scopes) if path == SCOPES else lookup(claims, path)
            if raw is None:
                continue
            if isinstance(raw, list | tuple):
                members = [m for m in (_scalar(item) for item in raw) if m is not None]
                if path == SCOPES:
                    members.sort()
                return self.separator.join(members) if members else None
            return _scalar(raw)
        return None


DEFAULT_HEADERS: Final[tuple[HeaderSpec, ...]] = (
    HeaderSpec("X-Auth-Subject", ("sub",)),
    HeaderSpec("X-Auth-Client-Id", CLIENT_ID_CLAIMS),
    HeaderSpec("X-Auth-Scopes", (SCOPES,), " "),
    HeaderSpec("X-Auth-Issuer", ("iss",)),
)


@dataclass(frozen=True)
class IdentityHeaders:
    """Which claims become which upstream headers, and the client copies to remove.

    ``prefix`` (default ``X-Auth-``): every client header under it is removed too, so an
    upstream that trusts ``X-Auth-*`` never sees one the gateway did not set. ``None`` or
    ``""`` turns that off (the configured names are still removed).
    """

    headers: tuple[HeaderSpec, ...] = DEFAULT_HEADERS
    prefix: str | None = "X-Auth-"
    _names: frozenset[str] = field(init=False, repr=False, compare=False)
    _prefix: str = field(init=False, repr=False, compare=False)
    # id(claims) -> (claims, rendered pairs): the verified-token cache hands back the same
    # Claims object for a token, so its headers are rendered once. The entry holds the claims,
    # so the id cannot be reused while it is cached, and `is` checks it anyway.
    _memo: dict[int, tuple[Claims, tuple[tuple[bytes, bytes], ...]]] = field(
        init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        names = [normal_name(spec.name) for spec in self.headers]
        if len(set(names)) != len(names):
            raise ValueError("two identity headers have the same name")
        object.__setattr__(self, "_names", frozenset(names))
        object.__setattr__(self, "_prefix", normal_name(self.prefix) if self.prefix else "")
        object.__setattr__(self, "_memo", {})

    @classmethod
    def from_mapping(
        cls, mapping: Mapping[str, str | Sequence[str]], prefix: str | None = "X-Auth-"
    ) -> IdentityHeaders:
        """From ``{"X-Auth-Subject": "sub", "X-Auth-Client-Id": ["client_id", "azp"]}``; a header
        named ``...Scopes`` reading ``$scopes`` is space-separated, others comma-separated."""
        specs = []
        for name, source in mapping.items():
            claims = (source,) if isinstance(source, str) else tuple(source)
            specs.append(HeaderSpec(name, claims, " " if SCOPES in claims else ","))
        return cls(tuple(specs), prefix)

    @property
    def names(self) -> tuple[str, ...]:
        """The configured header names, as configured."""
        return tuple(spec.name for spec in self.headers)

    def is_gatekeeper_header(self, name: str | bytes) -> bool:
        """Whether a client header with this name would shadow one the gateway sets."""
        normal = normal_name(name)
        return normal in self._names or bool(self._prefix and normal.startswith(self._prefix))

    def values(self, claims: Claims | None) -> list[tuple[str, str]]:
        """The identity headers for verified claims (none for an anonymous request)."""
        if claims is None:
            return []
        out = []
        for spec in self.headers:
            value = spec.value(claims)
            if value is not None:
                out.append((spec.name, value))
        return out

    def raw_values(self, claims: Claims | None) -> Headers:
        """:meth:`values` as ASGI header pairs (lower-case names, bytes)."""
        return list(self.rendered(claims))

    def rendered(self, claims: Claims | None) -> tuple[tuple[bytes, bytes], ...]:
        """:meth:`raw_values` as a tuple, rendered once per verified :class:`Claims` object.

        Claims are read-only, so the rendering of one object never changes; the memo is keyed
        by the object itself (an identity check, never equality), holds at most
        :data:`MEMO_SIZE` entries and is emptied wholesale when full. It decides nothing: the
        claims come from a decision that already allowed the request.
        """
        if claims is None:
            return ()
        memo = self._memo
        entry = memo.get(id(claims))
        if entry is not None and entry[0] is claims:
            return entry[1]
        pairs = tuple(
            (name.lower().encode("ascii"), value.encode("ascii")) for name, value in self.values(claims)
        )
        if len(memo) >= MEMO_SIZE:
            memo.clear()
        memo[id(claims)] = (claims, pairs)
        return pairs
