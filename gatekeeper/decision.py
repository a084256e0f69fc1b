"""One decision, three front doors: is this request allowed, and as whom (sans-I/O).

The middleware, the gateway's forward-auth endpoint and its reverse proxy all ask the same
question of plain data (method, path, headers, query string): which rule applies, is there a
token, is it valid, does it carry the rule's scopes, who is the principal? :class:`Gate`
answers it with an :class:`Allow` or a :class:`Deny` (never by raising), the verified-token
cache in front.

:meth:`Gate.cached` is the hot path as a plain call: the claims of a request whose token the
cache already holds, or None when the full :meth:`Gate.decide` must run. It reads the one
``Authorization`` header and probes the cache with the token *before* checking its syntax: a
cached token was well-formed when it was verified, and a malformed one is never in the cache,
so the syntax check (and every other refusal) happens on the slow path only.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from .bearer import BearerSource
from .claims import Claims
from .errors import AuthError
from .rules import Rule, RuleSet
from .verifier import Verifier

#: Maps verified claims to the app's principal (a project, a member). Returning None, or
#: raising ``AuthError("unknown_principal")``, rejects the request (Addressfinder's 1025).
PrincipalHook = Callable[[Claims], Any]

# The schemes the fast path recognises by prefix; any other spelling ("BEARER", extra
# spaces) is still accepted, by the slow path's full parser.
_FAST_PREFIXES: Final = (b"Bearer ", b"bearer ")
_PREFIX_LEN: Final = 7


@dataclass(slots=True)
class Allow:
    """The request may go on. ``claims`` is None for an exempt route, or an optional route
    with no token; ``token`` is the raw token (for a fingerprint and for forwarding only;
    never log it); ``cached`` says the verified-token cache answered; ``principal`` is what
    the principal hook returned."""

    rule: Rule
    claims: Claims | None
    token: str | None = field(repr=False)  # a repr may end up in a log line
    cached: bool
    principal: Any = None


@dataclass(slots=True)
class Deny:
    """The request is refused: ``error`` says why (an error profile renders it); ``token`` is
    the raw token when one was found (for its fingerprint in the log only)."""

    rule: Rule
    error: AuthError
    token: str | None = field(repr=False)


class Gate:
    """The decision for one request, given as plain data.

    ``rules`` say which requests need a token and which scopes; ``source`` where tokens may
    come from; ``principal`` maps verified claims to the app's principal (sync or async).
    """

    __slots__ = ("_query_names", "principal", "rules", "source", "verifier")

    def __init__(
        self,
        verifier: Verifier,
        *,
        rules: RuleSet,
        source: BearerSource,
        principal: PrincipalHook | None = None,
    ) -> None:
        self.verifier = verifier
        self.rules = rules
        self.source = source
        self.principal = principal
        # As the slow path reads the query (latin-1); a name latin-1 cannot spell can only
        # arrive percent-encoded, which the "%" test catches.
        self._query_names = tuple(name.encode("latin-1", "replace") for name in source.query_params)

    def match(self, method: str, path: str) -> Rule:
        """The rule for a request (``path`` as the rules see it)."""
        return self.rules.match(method, path)

    async def decide(
        self,
        method: str,
        path: str,
        headers: Sequence[tuple[bytes, bytes]],
        query_string: bytes = b"",
    ) -> Allow | Deny:
        """`path` is already the path the rules see (normalised by the caller). Never raises
        AuthError: failures come back as Deny."""
        return await self.decide_rule(self.rules.match(method, path), headers, query_string)

    async def decide_rule(
        self, rule: Rule, headers: Sequence[tuple[bytes, bytes]], query_string: bytes = b""
    ) -> Allow | Deny:
        """:meth:`decide` for a rule the caller has matched already."""
        if rule.access == "exempt":
            return Allow(rule, None, None, False)
        token: str | None = None
        try:
            token, _ = self.source.find(headers, query_string)
            if token is None and rule.access == "optional":
                return Allow(rule, None, None, False)
            claims = self.verifier.cached(token) if token is not None else None
            cached = claims is not None
            if claims is None:
                claims = await self.verifier.verify_async(token)
            check_scopes(rule, claims)
            principal = None
            if self.principal is not None:
                principal = await resolve_principal(self.principal, claims)
        except AuthError as error:
            return Deny(rule, error, token)
        return Allow(rule, claims, token, cached, principal)

    def cached(
        self, rule: Rule, headers: Sequence[tuple[bytes, bytes]], query_string: bytes = b""
    ) -> Claims | None:
        """The hot path as a plain call: the claims when the cache holds the request's header
        token and the rule's scopes are there, else None (then :meth:`decide_rule` decides,
        and refuses what is wrong). The principal hook is not run here.

        Only a request this could never refuse is answered: one lower-case ``Authorization``
        header (any other header spelled like it sends the request to the slow path, which
        refuses two), no token in the query, a cached token.
        """
        found: bytes | None = None
        for name, value in headers:
            if name == b"authorization":
                if found is not None:
                    return None
                found = value
            elif len(name) == 13 and name.lower() == b"authorization":
                return None
        if found is None or not found.startswith(_FAST_PREFIXES) or not self.source.header:
            return None
        if self._query_names and query_string and self._query_may_carry_token(query_string):
            return None
        # latin-1 maps every byte: a value that is not ASCII is not in the cache, and the
        # slow path refuses it.
        claims = self.verifier.cached(found[_PREFIX_LEN:].decode("latin-1"))
        if claims is None or (rule.wanted and not rule.satisfied_by(claims.scopes)):
            return None
        return claims

    def _query_may_carry_token(self, query_string: bytes) -> bool:
        # No false negatives: a name may be percent-encoded, so any "%" counts.
        return b"%" in query_string or any(name in query_string for name in self._query_names)


def check_scopes(rule: Rule, claims: Claims) -> None:
    """Raise ``insufficient_scope`` (naming the rule's scopes) unless the claims satisfy the rule."""
    if not rule.satisfied_by(claims.scopes):
        raise AuthError(
            "insufficient_scope",
            required_scopes=rule.scopes,
            scope_mode=rule.mode,
            issuer=claims.issuer,
            kid=claims.kid,
        )


async def resolve_principal(hook: PrincipalHook, claims: Claims) -> Any:
    """Run a principal hook (sync or async). None, or an ``AuthError`` the hook raises,
    rejects the request; the error is given the token's issuer and key id for the log."""
    try:
        principal = hook(claims)
        if inspect.isawaitable(principal):
            principal = await principal
    except AuthError as error:
        if error.issuer is None:
            error.issuer = claims.issuer
        if error.kid is None:
            error.kid = claims.kid
        raise
    if principal is None:
        raise AuthError("unknown_principal", issuer=claims.issuer, kid=claims.kid)
    return principal
