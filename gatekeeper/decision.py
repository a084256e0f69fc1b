"""One decision, three front doors: is this request allowed, and as whom (sans-I/O).

The middleware, the gateway's forward-auth endpoint and its reverse proxy all ask the same
question of plain data (method, path, headers, query string): which rule applies, is there a
token, is it valid, does it carry the rule's scopes, who is the principal? :class:`Gate`
answers it with an :class:`Allow` or a :class:`Deny` (never by raising), the verified-token
cache in front.

:meth:`Gate.cached` is the hot path as a plain call: the claims of a request whose token the
cache already holds, or None when the full :meth:`Gate.decide` must run (which tries the same
fast path first). It finds the one ``Authorization`` header and looks its raw value up in a
memo of the header values whose tokens verified: no syntax check, no decoding, no copy of the
token, and no hash of it either. Hashing an 800-byte token is most of a dict lookup's cost, so
the memo is keyed by the value's last bytes (the signature's, effectively random) and the whole
value is then compared (a memcmp, several times cheaper than the hash).

The memo holds the verifier's cache entry itself (see :mod:`gatekeeper.cache` for the rules of
holding one), so a hit is decided here, with one clock read: the entry's revalidation time not
passed, its signing key still in the key set, the claims checked against the current revocation
list generation, the rule's scopes present. Anything else (a revalidation due, a changed list,
a killed entry) goes to the slow path, which asks the verifier and refreshes the memo.

A value is remembered only after its token verified, so it was well-formed; a malformed or
unknown value misses and goes to the slow path, which checks the syntax and refuses what is
wrong.

The fast path after the query check (:func:`probe_py`: header scan, memo lookup, the entry's and
the claims' checks) also exists in C, ``gatekeeper._speedups.probe``, built at install time where
a C compiler is available (``SPEEDUPS`` says which one runs). In Python the header scan alone
is ~60 bytecodes for six headers, most of what the middleware added to a cached request. The
extension also holds the middleware's whole call around it (``Dispatch``, see
:mod:`gatekeeper.middleware`). Tests hold the C and Python paths to the same answers.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from .bearer import BearerSource
from .cache import CLAIMS, KEY, UNTIL, USED
from .claims import Claims
from .errors import AuthError
from .revocation import Revocations
from .rules import Rule, RuleSet
from .verifier import Verifier

#: A remembered header value: (the value, the token string, the verifier's cache entry, its
#: claims). An entry's claims never change (a new verification makes a new entry).
MemoRecord = tuple[bytes, str, list[Any], Claims]
#: The fast path as one function: (rule, headers, query string) -> the record of a cached
#: token the rule allows, or None for the slow path.
Probe = Callable[[Rule, Sequence[tuple[bytes, bytes]], bytes], MemoRecord | None]

#: Maps verified claims to the app's principal (a project, a member). Returning None, or
#: raising ``AuthError("unknown_principal")``, rejects the request (Addressfinder's 1025).
PrincipalHook = Callable[[Claims], Any]

#: How many header values :class:`Gate` remembers (as many as the verifier caches by default).
MEMO_SIZE: Final = 10_000
# How many trailing bytes of a header value key the memo: 96 bits of the signature. Equal
# tails of different values only cost the later one the slow path (the whole value is
# compared), never a wrong answer.
_TAIL: Final = slice(-16, None)  # a constant: no slice object built per request


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
    ``memo_size`` bounds the memo of ``Authorization`` values whose tokens verified (each entry
    holds the header value's bytes; the token string is shared with the verifier's cache).
    """

    __slots__ = (
        "_memo_size",
        "_query_names",
        "fast_probe",
        "memo",
        "principal",
        "probe",
        "rules",
        "source",
        "verifier",
    )

    def __init__(
        self,
        verifier: Verifier,
        *,
        rules: RuleSet,
        source: BearerSource,
        principal: PrincipalHook | None = None,
        memo_size: int = MEMO_SIZE,
    ) -> None:
        if memo_size < 0:
            raise ValueError("memo_size must be >= 0")
        self.verifier = verifier
        #: Header value's tail -> (value, token, cache entry, claims).
        self.memo: dict[bytes, MemoRecord] = {}
        #: :func:`probe_py` or its C twin. With no token source in the query,
        #: ``gate.fast_probe(headers, gate.memo, clock(), revocations, rule)`` is :attr:`probe`
        #: (the middleware calls it so: one Python frame fewer per request).
        self.fast_probe = fast_probe
        self._memo_size = memo_size
        self.rules = rules
        self.source = source
        self.principal = principal
        # As the slow path reads the query (latin-1); a name latin-1 cannot spell can only
        # arrive percent-encoded, which the "%" test catches.
        self._query_names = tuple(name.encode("latin-1", "replace") for name in source.query_params)
        #: The hot path as one plain function (see :meth:`cached`); the middleware calls it.
        self.probe: Probe = self._make_probe()

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
        hit = self.probe(rule, headers, query_string)
        if hit is not None:  # a cached token the rule allows: no syntax check, no token hash
            principal = None
            if self.principal is not None:
                try:
                    principal = await resolve_principal(self.principal, hit[3])
                except AuthError as error:
                    return Deny(rule, error, hit[1])
            return Allow(rule, hit[3], hit[1], True, principal)
        token: str | None = None
        raw: bytes | None = None
        try:
            token, raw = self.source.find(headers, query_string)
            if token is None and rule.access == "optional":
                return Allow(rule, None, None, False)
            claims = self.verifier.cached(token) if token is not None else None
            cached = claims is not None
            if claims is None:
                try:
                    claims = await self.verifier.verify_async(token)
                except AuthError:
                    if raw is not None:
                        self._forget(raw)  # no longer good: freed now rather than at a clear
                    raise
            if raw is not None and token is not None:
                # Kept when only the scopes or the principal fail.
                self._remember(raw, token)
            check_scopes(rule, claims)
            principal = None
            if self.principal is not None:
                principal = await resolve_principal(self.principal, claims)
        except AuthError as error:
            return Deny(rule, error, token)
        return Allow(rule, claims, token, cached, principal)

    def _remember(self, raw: bytes, token: str) -> None:
        memo = self.memo
        if not self._memo_size:
            return
        entry = self.verifier.cache_entry(token)
        if entry is None:
            return  # nothing cached (a cache of size 0): nothing for the fast path to serve
        known = memo.get(raw[_TAIL])
        if known is not None and known[0] == raw and known[2] is entry:
            return  # the memo is not rewritten on every slow-path request
        if len(memo) >= self._memo_size:
            # Wholesale: a forgotten value costs one syntax check on its next request, and
            # clearing is O(1) amortised with no bookkeeping on the hot path.
            memo.clear()
        memo[raw[_TAIL]] = (raw, token, entry, entry[CLAIMS])

    def _forget(self, raw: bytes) -> None:
        entry = self.memo.get(raw[_TAIL])
        if entry is not None and entry[0] == raw:
            del self.memo[raw[_TAIL]]

    def cached(
        self, rule: Rule, headers: Sequence[tuple[bytes, bytes]], query_string: bytes = b""
    ) -> Claims | None:
        """The hot path as a plain call: the claims when the cache holds the request's header
        token and the rule's scopes are there, else None (then :meth:`decide_rule` decides,
        and refuses what is wrong). The principal hook is not run here.

        Only a request the slow path would allow is answered: one ``Authorization`` header
        (in any spelling of the name), whose value the slow path has seen verify, no token in
        the query, a cache entry still to be served (not due for revalidation, its key still
        published, not killed), claims checked against the current revocation list.
        """
        hit = self.probe(rule, headers, query_string)
        if hit is None:
            return None
        return hit[3]

    def allow_cached(
        self, rule: Rule, headers: Sequence[tuple[bytes, bytes]], query_string: bytes = b""
    ) -> Allow | None:
        """:meth:`decide_rule`'s answer as a plain call when it is a cache hit (see
        :meth:`cached`) on a rule that is not exempt and no principal hook is set; else None,
        and :meth:`decide_rule` decides. Saves a front door a coroutine per cached request."""
        if rule.access == "exempt" or self.principal is not None:
            return None
        hit = self.probe(rule, headers, query_string)
        return None if hit is None else Allow(rule, hit[3], hit[1], True)

    def _make_probe(self) -> Probe:
        # A closure: what a hit needs is in cells and locals, not attributes (each attribute or
        # method call is a measurable share of a microsecond).
        memo = self.memo  # cleared in place, never replaced
        fast = self.fast_probe
        query_names = self._query_names
        may_carry = self._query_may_carry_token
        clock = self.verifier.clock
        revocations = self.verifier.revocations

        def probe(
            rule: Rule, headers: Sequence[tuple[bytes, bytes]], query_string: bytes = b""
        ) -> MemoRecord | None:
            if query_names and query_string and may_carry(query_string):
                return None  # a token in the query too (or maybe): the slow path decides
            return fast(headers, memo, clock(), revocations, rule)

        def no_probe(
            rule: Rule, headers: Sequence[tuple[bytes, bytes]], query_string: bytes = b""
        ) -> MemoRecord | None:
            return None

        return probe if self.source.header else no_probe

    def _query_may_carry_token(self, query_string: bytes) -> bool:
        # No false negatives: a name may be percent-encoded, so any "%" counts.
        return b"%" in query_string or any(name in query_string for name in self._query_names)


def probe_py(
    headers: Iterable[Sequence[bytes]],
    memo: Mapping[bytes, MemoRecord],
    now: float,
    revocations: Revocations,
    rule: Rule,
) -> MemoRecord | None:
    """The memo's record for the request's one ``Authorization`` header when the request may be
    served from it, else None: the cache entry it holds may be served at ``now``
    (:mod:`gatekeeper.cache`'s rule for a holder: not due for revalidation, its key alive), its
    claims were checked against the current revocation list, they satisfy the rule. Then the
    entry is marked used (for the cache's eviction).

    None whenever anything is unusual, for the slow path to decide: no such header, two of them
    in any spelling of the name, a name or value that is not bytes, an item that is not a pair.
    ``gatekeeper._speedups.probe`` is the same function in C (the tests hold the two to the same
    answers); this one runs where the extension could not be built.
    """
    found: bytes | None = None
    try:
        for name, value in headers:
            if type(name) is not bytes:
                return None
            # ASGI servers send lower-case names, a hand-built scope may not (and two headers in
            # any spelling are for the slow path to refuse).
            if len(name) == 13 and (name == b"authorization" or name.lower() == b"authorization"):
                if found is not None:
                    return None
                found = value
    except (TypeError, ValueError):  # an item that is not a pair
        return None
    if type(found) is not bytes:
        return None
    record = memo.get(found[_TAIL])
    if record is None or record[0] != found:
        return None
    entry, claims = record[2], record[3]
    if not (now < entry[UNTIL] and entry[KEY].alive):
        return None
    # Cached claims carry the list generation they were last checked at.
    if revocations.active and claims.checked_at != revocations.generation:
        return None  # the list changed since then: the slow path re-checks
    if rule.wanted and not rule.satisfied_by(claims.scopes):
        return None
    entry[USED] = True
    return record


try:
    from . import _speedups
except ImportError:  # built without a C compiler: the same in Python
    _speedups = None  # type: ignore[assignment]

#: The fast path a :class:`Gate` binds when built: ``gatekeeper._speedups.probe`` or its twin.
fast_probe: Callable[
    [Iterable[Sequence[bytes]], Mapping[bytes, MemoRecord], float, Revocations, Rule], MemoRecord | None
] = probe_py if _speedups is None else _speedups.probe

#: Whether the fast path runs in C (``gatekeeper._speedups``) or in Python.
SPEEDUPS: Final = fast_probe is not probe_py


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
