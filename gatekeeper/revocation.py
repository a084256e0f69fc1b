"""The revocation list the verifier consults on every verification, cache hits included.

Three kinds of entry, each living only as long as it is needed:

- ``jti``: one token, named by its ``jti`` and its issuer, until the token's ``exp``;
- ``sub``: every token of a subject issued before a time ``before`` (``iat <= before``: ``iat``
  counts whole seconds, so a token from the revocation's own second is covered; a token
  without ``iat`` is revoked whatever its age), until ``before`` plus the issuer's longest token
  lifetime (after that, every token it could match has expired);
- ``client_id``: the same, for the ``client_id`` claim.

A subject or client entry may name an issuer or apply to every issuer (``issuer=None``).

The list is bounded by ``max_entries`` (all kinds together). When it is full, expired entries
are purged first; if it is still full, :class:`RevocationListFull` is raised: a new revocation
is refused loudly, and no entry that is still needed is ever dropped to make room.

The hot path (:meth:`Revocations.is_revoked`) is a few dict lookups keyed on claim values, with
no allocation and no lock: one attribute read when nothing is revoked at all. Writes take a
short lock. Entries are plain data (:class:`Revocation`), which is what the Redis store writes
and reads.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final, Literal, Protocol

from .claims import Claims
from .errors import AuthError
from .policy import Issuer

Kind = Literal["jti", "sub", "client_id"]
KINDS: Final[tuple[Kind, ...]] = ("jti", "sub", "client_id")

#: Default bound on the number of entries (all kinds together). An entry costs about half a KiB
#: (measured by benchmarks/hot_path.py), so the list stays under ~55 MiB at the bound.
DEFAULT_MAX_ENTRIES: Final = 100_000
#: How long a subject/client entry lives when the issuer sets no ``max_lifetime``: one day, the
#: longest access-token lifetime the providers in the seeds document. Configure the issuer's
#: ``max_lifetime`` (or pass ``until=``) when tokens may live longer.
FALLBACK_LIFETIME: Final = 86_400.0


class RevocationListFull(Exception):
    """The list holds ``max_entries`` entries that are all still needed: the new one is refused."""


class StoreUnavailable(Exception):
    """The shared store could not record the change: nothing was revoked (or undone)."""


class RevocationStore(Protocol):
    """A shared store behind a :class:`Revocations` list (Redis): writes go through it, so that
    every process sharing the store learns of them; it keeps the local list up to date."""

    def publish(self, entry: Revocation) -> None: ...
    async def publish_async(self, entry: Revocation) -> None: ...
    def retract(self, entry: Revocation) -> bool: ...
    async def retract_async(self, entry: Revocation) -> bool: ...


@dataclass(frozen=True, slots=True)
class Revocation:
    """One entry. ``value`` is the jti, subject or client id; ``issuer`` is required for a
    ``jti`` and optional (None: every issuer) otherwise; ``before`` (sub/client only) is the
    issued-at bound; ``until`` is when the entry is no longer needed (Unix time)."""

    kind: Kind
    value: str
    issuer: str | None
    until: float
    before: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown revocation kind {self.kind!r}")
        if not isinstance(self.value, str) or not self.value:
            raise ValueError(f"the {self.kind} to revoke must be a non-empty string")
        if self.issuer is not None and (not isinstance(self.issuer, str) or not self.issuer):
            raise ValueError("issuer must be a non-empty string")
        if self.kind == "jti":
            if self.issuer is None:
                raise ValueError("a jti is revoked together with its issuer")
            if self.before is not None:
                raise ValueError("before applies to sub and client_id revocations only")
        elif self.before is None:
            raise ValueError(f"a {self.kind} revocation needs before=")

    @property
    def key(self) -> tuple[Kind, str, str | None]:
        """What identifies the entry (a second revocation of the same key replaces the first)."""
        return (self.kind, self.value, self.issuer)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Revocation:
        """Parse an entry from plain data (raises ValueError on anything malformed)."""
        if not isinstance(data, dict):
            raise ValueError("a revocation is a JSON object")
        try:
            until = float(data["until"])
            before = data.get("before")
            return cls(
                kind=data["kind"],
                value=data["value"],
                issuer=data.get("issuer"),
                until=until,
                before=None if before is None else float(before),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed revocation: {exc}") from None


# Per kind: value -> {issuer or None: entry}. Nested dicts keyed on the claim value keep the
# hot-path lookup free of tuple allocation; a value shared by two issuers is rare.
_Index = dict[str, dict[str | None, Revocation]]


class Revocations:
    """A bounded, self-expiring revocation list, shareable by several verifiers and threads.

    ``clock`` returns Unix time (tests move it). ``generation`` grows by one on every change.
    ``blocked`` (set by a store whose mirror is too old under a fail-closed policy) makes every
    check fail with :class:`RevocationsUnavailable` until it is cleared.
    """

    def __init__(
        self, *, max_entries: int = DEFAULT_MAX_ENTRIES, clock: Callable[[], float] = time.time
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.max_entries = max_entries
        self.clock = clock
        self.generation = 0
        #: True when a check must look at the lists (there are entries, or the list is blocked):
        #: the whole cost of revocation on the hot path when nothing is revoked.
        self.active = False
        self.blocked = False
        self._jti: _Index = {}
        self._sub: _Index = {}
        self._client: _Index = {}
        self._count = 0
        self._kinds: dict[str, int] = dict.fromkeys(KINDS, 0)  # kept as entries come and go
        # (until, sequence, key) for purging in O(log n); stale items (replaced or removed) are
        # skipped. The sequence breaks ties, so keys (with None issuers) are never compared.
        self._expiry: list[tuple[float, int, tuple[Kind, str, str | None]]] = []
        self._sequence = itertools.count()
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []
        #: The shared store writes go through, when there is one (set by the store).
        self.store: RevocationStore | None = None

    def __len__(self) -> int:
        return self._count

    # -- the hot path ------------------------------------------------------------------------

    def is_revoked(self, claims: Claims) -> bool:
        """Whether a verified token is revoked (raises RevocationsUnavailable when blocked).

        Reads the claims' own dict (not the Mapping interface, whose ``get`` costs an exception
        per missing claim): this runs on every cache hit.
        """
        if self.blocked:
            raise RevocationsUnavailable()
        data = claims._data
        if self._jti:
            jti = data.get("jti")
            if jti.__class__ is str:
                hit = self._jti.get(jti)
                if hit is not None and claims.issuer in hit:
                    return True
        if self._sub:
            sub = data.get("sub")
            if sub.__class__ is str:
                hit = self._sub.get(sub)
                if hit is not None and _issued_before(hit, claims.issuer, data.get("iat")):
                    return True
        if self._client:
            client = data.get("client_id")
            if client.__class__ is str:
                hit = self._client.get(client)
                if hit is not None and _issued_before(hit, claims.issuer, data.get("iat")):
                    return True
        return False

    # -- requests (through the store, when there is one) ----------------------------------

    def submit(self, entry: Revocation) -> None:
        """Revoke: through the shared store when there is one (raising StoreUnavailable when it
        cannot be written), else in this list only."""
        if self.store is not None:
            self.store.publish(entry)
        else:
            self.add(entry)

    async def submit_async(self, entry: Revocation) -> None:
        """:meth:`submit` for async code."""
        if self.store is not None:
            await self.store.publish_async(entry)
        else:
            self.add(entry)

    def withdraw(self, entry: Revocation) -> bool:
        """Undo the revocation with the entry's key; False if there was none."""
        if self.store is not None:
            return self.store.retract(entry)
        return self.remove(entry.kind, entry.value, entry.issuer)

    async def withdraw_async(self, entry: Revocation) -> bool:
        """:meth:`withdraw` for async code."""
        if self.store is not None:
            return await self.store.retract_async(entry)
        return self.remove(entry.kind, entry.value, entry.issuer)

    # -- changes -----------------------------------------------------------------------------

    def add(self, entry: Revocation) -> bool:
        """Add (or replace) an entry; False if it is already expired (nothing to do).

        Raises :class:`RevocationListFull` when the list is full of entries still needed.
        """
        now = self.clock()
        if entry.until <= now:
            return False
        index = self._index(entry.kind)
        with self._lock:
            by_issuer = index.get(entry.value)
            exists = by_issuer is not None and entry.issuer in by_issuer
            if not exists and self._count >= self.max_entries:
                self._purge_locked(now)
                by_issuer = index.get(entry.value)  # the purge may have dropped it
                if self._count >= self.max_entries:
                    raise RevocationListFull(
                        f"the revocation list holds {self._count:,} entries still needed "
                        f"(max_entries={self.max_entries:,}); refusing the new one"
                    )
            if by_issuer is None:
                by_issuer = index[entry.value] = {}
            by_issuer[entry.issuer] = entry
            if not exists:
                self._count += 1
                self._kinds[entry.kind] += 1
            heapq.heappush(self._expiry, (entry.until, next(self._sequence), entry.key))
            self._changed_locked()
        return True

    def remove(self, kind: Kind, value: str, issuer: str | None) -> bool:
        """Undo a revocation; False if there was no such entry."""
        index = self._index(kind)
        with self._lock:
            removed = self._remove_locked(index, value, issuer)
            if removed:
                self._changed_locked()
        return removed is not None

    def get(self, kind: Kind, value: str, issuer: str | None) -> Revocation | None:
        by_issuer = self._index(kind).get(value)
        return None if by_issuer is None else by_issuer.get(issuer)

    def purge(self) -> int:
        """Drop the entries no longer needed; returns how many went."""
        with self._lock:
            dropped = self._purge_locked(self.clock())
            if dropped:
                self._changed_locked()
        return dropped

    def replace_all(self, entries: list[Revocation]) -> None:
        """Make the list exactly ``entries`` (the expired ones dropped), atomically for readers.

        Used by a store's full resync. Raises :class:`RevocationListFull` (changing nothing)
        when they do not fit.
        """
        now = self.clock()
        live = [entry for entry in entries if entry.until > now]
        indexes: dict[Kind, _Index] = {"jti": {}, "sub": {}, "client_id": {}}
        count = 0
        kinds: dict[str, int] = dict.fromkeys(KINDS, 0)
        for entry in live:
            by_issuer = indexes[entry.kind].setdefault(entry.value, {})
            new = entry.issuer not in by_issuer
            count += new
            kinds[entry.kind] += new
            by_issuer[entry.issuer] = entry
        if count > self.max_entries:
            raise RevocationListFull(f"{count:,} revocations do not fit in max_entries={self.max_entries:,}")
        expiry = [(entry.until, next(self._sequence), entry.key) for entry in live]
        heapq.heapify(expiry)
        with self._lock:
            # Each index is swapped whole: a reader sees the old or the new one, never half.
            self._jti, self._sub, self._client = indexes["jti"], indexes["sub"], indexes["client_id"]
            self._count = count
            self._kinds = kinds
            self._expiry = expiry
            self._changed_locked()

    def entries(self) -> list[Revocation]:
        """Every entry still needed (a copy)."""
        now = self.clock()
        with self._lock:
            return [
                e for index in (self._jti, self._sub, self._client) for e in _walk(index) if e.until > now
            ]

    def counts(self) -> dict[str, int]:
        """Entries still needed, per kind (what the admin endpoint shows: never identities).

        Purges what expired, then reads counts kept up to date by every change: no walk over
        the list (metrics and readiness call this on the event loop).
        """
        self.purge()
        with self._lock:
            return dict(self._kinds)

    def set_blocked(self, blocked: bool) -> None:
        """Refuse (True) or resume (False) every check: a store's fail-closed policy."""
        with self._lock:
            if self.blocked != blocked:
                self.blocked = blocked
                self._changed_locked()

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` (under no guarantee of thread) after every change."""
        self._listeners.append(listener)

    # -- internals ---------------------------------------------------------------------------

    def _index(self, kind: Kind) -> _Index:
        if kind == "jti":
            return self._jti
        if kind == "sub":
            return self._sub
        if kind == "client_id":
            return self._client
        raise ValueError(f"unknown revocation kind {kind!r}")

    def _remove_locked(self, index: _Index, value: str, issuer: str | None) -> Revocation | None:
        by_issuer = index.get(value)
        if by_issuer is None or issuer not in by_issuer:
            return None
        entry = by_issuer[issuer]
        if len(by_issuer) == 1:
            del index[value]
        else:
            # A new inner dict rather than a delete in place: a reader mid-check keeps a
            # consistent (old) view.
            index[value] = {k: v for k, v in by_issuer.items() if k != issuer}
        self._count -= 1
        self._kinds[entry.kind] -= 1
        return entry

    def _purge_locked(self, now: float) -> int:
        dropped = 0
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:
            until, _, (kind, value, issuer) = heapq.heappop(expiry)
            index = self._index(kind)
            current = index.get(value, {}).get(issuer)
            # Only if this heap item is the entry's latest: a replaced entry has a newer item.
            if current is not None and current.until == until:
                self._remove_locked(index, value, issuer)
                dropped += 1
        return dropped

    def _changed_locked(self) -> None:
        self.generation += 1
        self.active = self.blocked or bool(self._count)
        for listener in self._listeners:
            listener()


class RevocationsUnavailable(Exception):
    """The revocation list is too stale to trust and the policy is fail-closed."""


def enforce(revocations: Revocations, claims: Claims) -> None:
    """Raise ``revoked_token`` if the claims are revoked (``keys_unavailable`` when the list is
    blocked); otherwise mark them checked at the current generation.

    The slow path: the verifier calls it on a fresh verification and on a cache hit whose
    claims were checked against an older generation.
    """
    generation = revocations.generation  # read first: a change during the check re-checks
    try:
        revoked = revocations.is_revoked(claims)
    except RevocationsUnavailable:
        raise AuthError(
            "keys_unavailable",
            "The revocation list is temporarily unavailable",
            issuer=claims.issuer,
            kid=claims.kid,
            retry_after=5,
        ) from None
    if revoked:
        raise AuthError("revoked_token", issuer=claims.issuer, kid=claims.kid)
    claims.checked_at = generation


def _issued_before(by_issuer: dict[str | None, Revocation], issuer: str, iat: object) -> bool:
    for entry in (by_issuer.get(issuer), by_issuer.get(None)):
        if entry is None:
            continue
        if not isinstance(iat, (int, float)) or isinstance(iat, bool):
            return True  # no usable iat: the token may be one of those revoked
        assert entry.before is not None
        if iat <= entry.before:  # iat has one-second granularity: the same second counts
            return True
    return False


def plan(
    kind: Kind,
    value: str,
    issuers: Mapping[str, Issuer],
    *,
    issuer: str | None = None,
    before: float | None = None,
    expires_at: float | None = None,
    now: float,
) -> Revocation:
    """The entry for a revocation request, with how long it must live worked out.

    ``issuers`` are the trusted issuers (name -> :class:`Issuer`). A ``jti`` needs its issuer
    (one of them); it lives until ``expires_at`` (the token's ``exp``) when given, else for the
    issuer's longest token lifetime from now. A ``sub``/``client_id`` entry covers tokens issued
    before ``before`` (default: now) and lives until ``before`` plus the longest lifetime of the
    issuer it names (of every issuer when it names none). Raises ValueError on bad input.
    """
    if issuer is not None and issuer not in issuers:
        raise ValueError("the issuer is not one of the trusted issuers")
    if kind == "jti":
        if issuer is None:
            raise ValueError("revoking a jti needs its issuer")
        if before is not None:
            raise ValueError("before applies to sub and client_id revocations only")
        until = expires_at if expires_at is not None else now + longest_lifetime(issuers[issuer])
        return Revocation("jti", value, issuer, float(until))
    if expires_at is not None:
        raise ValueError("expires_at applies to jti revocations only")
    start = now if before is None else float(before)
    if not math.isfinite(start):
        raise ValueError("before must be a finite time")
    configs = [issuers[issuer]] if issuer is not None else list(issuers.values())
    lifetime = max((longest_lifetime(config) for config in configs), default=FALLBACK_LIFETIME)
    return Revocation(kind, value, issuer, start + lifetime, before=start)


def revocation_request(
    issuers: Mapping[str, Issuer],
    now: float,
    *,
    jti: str | None = None,
    sub: str | None = None,
    client_id: str | None = None,
    issuer: str | None = None,
    before: float | None = None,
    expires_at: float | None = None,
) -> Revocation:
    """The entry for ``jti=`` + ``issuer=``, ``sub=`` or ``client_id=`` (exactly one), as
    :func:`plan` works it out. Raises ValueError on a malformed request."""
    named = [
        (kind, value)
        for kind, value in (("jti", jti), ("sub", sub), ("client_id", client_id))
        if value is not None
    ]
    if len(named) != 1:
        raise ValueError("name exactly one of jti (with issuer), sub or client_id")
    kind, value = named[0]
    if not isinstance(value, str) or not value:
        raise ValueError(f"{kind} must be a non-empty string")
    for name, number in (("before", before), ("expires_at", expires_at)):
        if number is not None and (
            not isinstance(number, (int, float)) or isinstance(number, bool) or not math.isfinite(number)
        ):
            raise ValueError(f"{name} must be a finite number (Unix time)")
    return plan(kind, value, issuers, issuer=issuer, before=before, expires_at=expires_at, now=now)  # type: ignore[arg-type]


def longest_lifetime(issuer: Issuer) -> float:
    """How long the issuer's tokens can live at most, plus its leeway: its ``max_lifetime``
    when it has one, else :data:`FALLBACK_LIFETIME`."""
    configured = getattr(issuer, "max_lifetime", None)
    lifetime = float(configured) if configured else FALLBACK_LIFETIME
    return lifetime + float(issuer.leeway)


def _walk(index: _Index) -> Iterator[Revocation]:
    for by_issuer in index.values():
        yield from by_issuer.values()
