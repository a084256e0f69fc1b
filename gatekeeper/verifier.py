"""The verifier: one call, sync or async, from token to verified claims.

The algorithm lives once, in :meth:`Verifier._flow`, a generator that yields a
:class:`_Refresh` when it needs keys fetched; :meth:`Verifier.verify` and
:meth:`Verifier.verify_async` only differ in how they carry out that step.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cachetools import TTLCache

from .cache import TokenCache
from .claims import Claims, normalise_scopes
from .errors import AuthError
from .fetch import AsyncFetcher, SyncFetcher
from .jws import check_signature, loads_object, parse_compact
from .keys import VerificationKey
from .keystore import FetchPolicy, KeyStore
from .policy import MAX_NUMERIC_DATE, Issuer, check_claims, check_header_type
from .revocation import Revocation, Revocations, enforce, revocation_request

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class _Refresh:
    store: KeyStore
    wait: bool
    kid: str | None = None  # the unknown key id the refresh looks for


_Flow = Generator[_Refresh, None, Claims]


class _Transient(AuthError):
    """A rejection that may not hold a moment later (key not fetched yet, token not valid
    yet): never remembered by the rejection cache."""


class _Trusted:
    """An issuer's configuration with its live key store."""

    __slots__ = ("config", "store")

    def __init__(self, config: Issuer) -> None:
        self.config = config
        self.store = config.key_store()


class Verifier:
    """Verifies JWT access tokens from one or more trusted issuers.

    Give one issuer with keyword arguments (``issuer``, ``jwks_url``, ``audience``, and any
    other :class:`Issuer` field), or several with ``issuers=[Issuer(...), ...]``. The unverified
    ``iss`` only picks the issuer's configuration; each issuer's keys verify only its tokens.

    ``cache_size`` bounds the verified-token cache (0 turns it off, along with the cache of
    recent rejections, which keeps each for ``rejection_ttl`` seconds); ``clock`` returns Unix
    time and is what tests move; ``http_client``/``async_http_client`` replace the httpx
    clients used to fetch keys.
    """

    def __init__(
        self,
        issuer: str | None = None,
        *,
        issuers: Iterable[Issuer] = (),
        jwks_url: str | None = None,
        audience: str | Sequence[str] | None = None,
        cache_size: int = 10_000,
        rejection_ttl: float = 30.0,
        clock: Clock = time.time,
        http_client: httpx.Client | None = None,
        async_http_client: httpx.AsyncClient | None = None,
        revocations: Revocations | None = None,
        **issuer_options: Any,
    ) -> None:
        configs = list(issuers)
        if issuer is not None:
            configs.append(Issuer(issuer, audience=audience, jwks_url=jwks_url, **issuer_options))
        elif jwks_url is not None or audience is not None or issuer_options:
            raise TypeError("issuer options given without issuer=")
        if not configs:
            raise ValueError("configure at least one trusted issuer")
        self._issuers: dict[str, _Trusted] = {}
        for config in configs:
            if config.issuer in self._issuers:
                raise ValueError(f"issuer {config.issuer!r} configured twice")
            self._issuers[config.issuer] = _Trusted(config)
        self._max_token = max(t.config.max_token_bytes for t in self._issuers.values())
        self._clock = clock
        self._cache = TokenCache(cache_size)
        # Recently rejected tokens, so a client repeating a bad token costs a lookup, not a
        # signature check. Short-lived: a rejection is final for a token, but a key set is not.
        self._rejected: TTLCache[str, AuthError] = TTLCache(
            maxsize=min(cache_size, 1024), ttl=rejection_ttl, timer=clock
        )
        self._rejected_lock = threading.Lock()
        self._sync = SyncFetcher(clock, http_client)
        self._async = AsyncFetcher(clock, async_http_client)
        # Consulted on every verification, cache hits included; may be shared by verifiers.
        self._revocations = revocations if revocations is not None else Revocations(clock=clock)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **options: Any) -> Verifier | None:
        """A single-issuer verifier from ``GATEKEEPER_ISSUER``, ``GATEKEEPER_AUDIENCE`` and
        ``GATEKEEPER_JWKS_URL`` (without it, discovery), or None when no issuer is set.

        ``options`` go to the constructor (``clock``, ``cache_size``, Issuer fields, ...).
        """
        env = os.environ if env is None else env
        issuer = env.get("GATEKEEPER_ISSUER")
        if not issuer:
            return None
        audience = env.get("GATEKEEPER_AUDIENCE")
        if not audience:
            raise ValueError("GATEKEEPER_AUDIENCE must be set along with GATEKEEPER_ISSUER")
        jwks_url = env.get("GATEKEEPER_JWKS_URL")
        if jwks_url:
            return cls(issuer, jwks_url=jwks_url, audience=audience, **options)
        return cls(issuer, discovery=True, audience=audience, **options)

    @property
    def issuers(self) -> Mapping[str, Issuer]:
        return {name: trusted.config for name, trusted in self._issuers.items()}

    # -- the public calls --------------------------------------------------------------------

    def verify(self, token: str | None) -> Claims:
        """Verify a token and return its claims, or raise :class:`AuthError`.

        For workers and sync code: a key fetch, when one is needed, blocks this thread only.
        """
        # The cache lookup is inlined here and in verify_async (not a shared helper): it is the
        # whole hot path, and a method call would add a fifth to its cost.
        if isinstance(token, str):
            claims = self._cache.get(token, self._clock())
            if claims is not None:
                revocations = self._revocations
                # The claims remember the list generation they were last checked at: with an
                # unchanged list (of any size) a hit costs this one comparison.
                if revocations.active and claims.checked_at != revocations.generation:
                    enforce(revocations, claims)
                return claims
            self._check_rejected(token)
        flow = self._flow(token)
        try:
            step = next(flow)
            while True:
                if step.wait:
                    self._sync.refresh(step.store, step.kid)
                else:
                    self._sync.refresh_in_background(step.store)
                step = next(flow)
        except StopIteration as done:
            result: Claims = done.value
            return result
        except AuthError as error:
            self._remember_rejection(token, error)
            raise

    async def verify_async(self, token: str | None) -> Claims:
        """Verify a token and return its claims, or raise :class:`AuthError`.

        For async code: key fetches are awaited (and shared between concurrent callers), so the
        event loop is never blocked on the network.
        """
        if isinstance(token, str):
            claims = self._cache.get(token, self._clock())
            if claims is not None:
                revocations = self._revocations
                # The claims remember the list generation they were last checked at: with an
                # unchanged list (of any size) a hit costs this one comparison.
                if revocations.active and claims.checked_at != revocations.generation:
                    enforce(revocations, claims)
                return claims
            self._check_rejected(token)
        flow = self._flow(token)
        try:
            step = next(flow)
            while True:
                if step.wait:
                    await self._async.refresh(step.store, step.kid)
                else:
                    self._async.refresh_in_background(step.store)
                step = next(flow)
        except StopIteration as done:
            result: Claims = done.value
            return result
        except AuthError as error:
            self._remember_rejection(token, error)
            raise

    def cached(self, token: str) -> Claims | None:
        """The claims of a token verified before and still valid, verifying nothing: the hot
        path of :meth:`verify_async` as a plain call, with no coroutine to create and run."""
        claims = self._cache.get(token, self._clock())
        revocations = self._revocations
        if claims is not None and revocations.active and claims.checked_at != revocations.generation:
            try:
                enforce(revocations, claims)
            except AuthError:
                return None  # revoked (or the list is unavailable): verify_async says which
        return claims

    def cache_entry(self, token: str) -> list[Any] | None:
        """The verified-token cache's entry for a token, for a memo that serves hits itself
        (:class:`gatekeeper.decision.Gate`), under the rules :mod:`gatekeeper.cache` states;
        None when the token is not cached. Read it after a verification, off the hot path."""
        return self._cache.entry(token)

    @property
    def clock(self) -> Clock:
        """The clock the verifier reads (Unix time; tests move it)."""
        return self._clock

    async def prefetch(self) -> None:
        """Fetch every remote issuer's keys now (at app startup), without raising on failure."""
        now = self._clock()
        for trusted in self._issuers.values():
            if trusted.store.needs_refresh(now):
                await self._async.refresh(trusted.store)

    def prefetch_sync(self) -> None:
        """:meth:`prefetch` for sync code."""
        now = self._clock()
        for trusted in self._issuers.values():
            if trusted.store.needs_refresh(now):
                self._sync.refresh(trusted.store)

    def status(self) -> list[dict[str, Any]]:
        """Each issuer's key status: key ids, skipped keys, freshness and the last fetch error."""
        now = self._clock()
        return [trusted.store.status(now) for trusted in self._issuers.values()]

    def key_stores(self) -> Mapping[str, KeyStore]:
        """Each issuer's live key store (issuer -> store), for metrics: ``fetch_counts`` and
        ``stale_served`` are plain attributes a gateway mirrors periodically."""
        return {name: trusted.store for name, trusted in self._issuers.items()}

    def clear_cache(self) -> None:
        self._cache.clear()

    # -- revocation --------------------------------------------------------------------------

    @property
    def revocations(self) -> Revocations:
        """The revocation list this verifier consults (see :mod:`gatekeeper.revocation`)."""
        return self._revocations

    def revoke(self, **request: Any) -> Revocation:
        """Revoke one token (``jti=..., issuer=...``, optionally ``expires_at=`` its ``exp``),
        or every token of a subject (``sub=...``) or client (``client_id=...``) issued before
        ``before`` (default now), optionally of one ``issuer`` only. Returns the entry.

        With a shared store (Redis) the entry is written there first: raises
        :class:`~gatekeeper.revocation.StoreUnavailable` when it cannot be, and
        :class:`~gatekeeper.revocation.RevocationListFull` when the list is full.
        """
        entry = revocation_request(self.issuers, self._clock(), **request)
        self._revocations.submit(entry)
        return entry

    async def revoke_async(self, **request: Any) -> Revocation:
        """:meth:`revoke` for async code (a store write is awaited, not blocking the loop)."""
        entry = revocation_request(self.issuers, self._clock(), **request)
        await self._revocations.submit_async(entry)
        return entry

    def unrevoke(self, **request: Any) -> bool:
        """Undo a revocation named as for :meth:`revoke`; False if there was none."""
        entry = revocation_request(self.issuers, self._clock(), **request)
        return self._revocations.withdraw(entry)

    async def aclose(self) -> None:
        """Close the HTTP clients the verifier opened itself."""
        await self._async.aclose()
        self._sync.close()

    def close(self) -> None:
        """Close the sync HTTP client (async code: use :meth:`aclose`, which closes both)."""
        self._sync.close()

    # -- rejections --------------------------------------------------------------------------

    def _check_rejected(self, token: str) -> None:
        if not self._rejected.maxsize:
            return
        with self._rejected_lock:
            error = self._rejected.get(token)
        if error is not None:
            # A fresh exception each time: re-raising one instance from many threads would
            # grow and share its traceback.
            raise AuthError(error.kind, error.description, issuer=error.issuer, kid=error.kid)

    def _remember_rejection(self, token: object, error: AuthError) -> None:
        if (
            isinstance(token, str)
            and self._rejected.maxsize
            and error.kind in ("invalid_token", "expired_token")
            and not isinstance(error, _Transient)
        ):
            with self._rejected_lock:
                self._rejected[token] = error

    # -- the algorithm -----------------------------------------------------------------------

    def _flow(self, token: object) -> _Flow:
        if token is None or (isinstance(token, str) and not token):
            raise AuthError("missing_token")
        if not isinstance(token, str):
            raise AuthError("invalid_token", "The token is not a string")
        jws = parse_compact(token, self._max_token)
        payload = loads_object(jws.payload, "payload")
        iss = payload.get("iss")
        trusted = self._issuers.get(iss) if isinstance(iss, str) else None
        if trusted is None:
            raise AuthError("invalid_token", "The token issuer is not trusted")
        config, store = trusted.config, trusted.store
        if len(token) > config.max_token_bytes:
            raise AuthError("invalid_token", "The token is too large", issuer=config.issuer)
        if jws.alg not in config.allowed_algorithms:
            raise AuthError("invalid_token", "The token algorithm is not allowed", issuer=config.issuer)
        check_header_type(jws.header, config)
        # Claims before keys: an expired or misaddressed token costs no signature check and
        # never triggers a key fetch.
        now = self._clock()
        try:
            exp = check_claims(payload, config, now)
        except AuthError as error:
            error.kid = error.kid or jws.kid  # for the rejection log
            if error.kind == "invalid_token" and _dated_in_future(payload, now):
                raise _Transient(error.kind, error.description, issuer=config.issuer, kid=jws.kid) from None
            raise

        waited = store.needs_refresh(now)
        if waited:
            yield _Refresh(store, wait=True)
        elif store.wants_refresh_ahead(now):
            yield _Refresh(store, wait=False)
        kid = jws.kid
        now = self._clock()  # a refresh may have been waited for
        keys = store.usable(now)
        if keys is not None:
            # Verified before with a key still in the set: the cached entry was only due for a
            # look at the key store (which may have started a background refresh above), not
            # for another signature check.
            known = self._cache.revalidate(token, now, store.revalidate_at(now))
            if known is not None:
                if now >= store.fresh_until:
                    store.stale_served += 1
                enforce(self._revocations, known)
                return known
        candidates = keys.candidates(kid, jws.alg) if keys is not None else []
        # Not right after this very call waited for a fetch: those keys are as new as any.
        if not candidates and not waited and store.may_refetch_for_kid(kid, self._clock()):
            yield _Refresh(store, wait=True, kid=kid)
            keys = store.usable(self._clock())
            candidates = keys.candidates(kid, jws.alg) if keys is not None else []
        if keys is None:
            raise store.unavailable(self._clock())
        if not candidates and kid is not None and not keys.has_kid(kid):
            raise _Transient(
                "invalid_token", "The token signing key is unknown", issuer=config.issuer, kid=kid
            )
        if len(candidates) > 1:
            # No kid selects a key (a kid-less token, or a kid that names nothing here while
            # several kid-less keys fit): trying each would turn one bad token into N signature
            # checks and make the answer depend on key order.
            raise AuthError(
                "invalid_token",
                "The token signing key is ambiguous: no kid and several keys fit its algorithm",
                issuer=config.issuer,
                kid=kid,
            )
        key = _first_verifying(jws, candidates)
        if key is None:
            raise AuthError("invalid_token", "The token signature is invalid", issuer=config.issuer, kid=kid)

        claims = Claims(
            payload, normalise_scopes(payload, config.scope_claims), issuer=config.issuer, kid=key.kid
        )
        now = self._clock()
        if now >= store.fresh_until:
            store.stale_served += 1
        # The entry lives until exp while its key stays in the set (a removal ends it at once);
        # past the set's freshness a lookup goes back through the key store, which refreshes
        # it (in the background while the keys are usable) and revalidates the entry.
        self._cache.put(token, claims, exp, key, store.revalidate_at(now))
        # After caching: a revoked token presented again costs a cache hit and a list
        # lookup, not a signature check.
        enforce(self._revocations, claims)
        return claims


def _dated_in_future(payload: Mapping[str, Any], now: float) -> bool:
    """Whether ``nbf`` or ``iat`` lies ahead: a rejection for that may not hold later."""
    for name in ("nbf", "iat"):
        value = payload.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if now < value <= MAX_NUMERIC_DATE:  # past year 9999 it is malformed for good, not early
            return True
    return False


def _first_verifying(jws: Any, candidates: list[VerificationKey]) -> VerificationKey | None:
    for key in candidates:
        if check_signature(jws, key.key):
            return key
    return None


def load_issuers(entries: Iterable[Mapping[str, Any]]) -> list[Issuer]:
    """Issuers from plain dicts (e.g. parsed from a config file); ``fetch`` may be a dict too."""
    issuers = []
    for entry in entries:
        options = dict(entry)
        if isinstance(options.get("fetch"), Mapping):
            options["fetch"] = FetchPolicy(**options["fetch"])
        if isinstance(options.get("jwks"), str):
            options["jwks"] = Path(options["jwks"])
        issuers.append(Issuer(**options))
    return issuers
